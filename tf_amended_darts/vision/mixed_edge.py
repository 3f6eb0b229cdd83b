"""The mixed edge of a search cell: ``sum_k w_k op_k(x)`` (DARTS ``MixedOp``).

Structure follows the DARTS reference (quark0/darts, ``model_search.py``):
pooling candidates get a non-affine batch norm appended; ``none`` is not
computed. Two regularisers act on the candidates' outputs:

* drop-path (hyper-parameter consistency, paper 2.4 / B.1): a per-sample
  mask on every candidate but identity, as the re-training cell
  (`discrete_cell.DiscreteCell`) treats its operators;
* P-DARTS' dropout on skip-connections (Chen et al., "Progressive
  Differentiable Architecture Search", ICCV 2019; chenxin061/pdarts
  ``model_search.py``: ``MixedOp`` wraps the stride-1 ``Identity`` in
  ``nn.Dropout(p)``): element-wise dropout on ``skip_connect`` at stride 1
  only (the stride-2 FactorizedReduce is not wrapped).
"""

import keras
import tensorflow as tf

from tf_amended_darts.nn.batch_norm import BatchNorm
from tf_amended_darts.nn.contexts import shared_relu
from tf_amended_darts.nn.drop_path import dropout, path_factors
from tf_amended_darts.vision import ops as O

NONE = "none"


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class MixedEdge(keras.layers.Layer):
    """``sum_k w_k op_k(x)`` over candidate operators (DARTS ``MixedOp``).

    Pooling operators get a non-affine batch norm appended, as in the
    reference. ``none`` contributes exactly zero to the sum and to every
    derivative, so it is not computed (its weight still takes part in the
    softmax, which the caller computes).

    Drop-path: given a ``drop_prob`` and a seed generator in training mode,
    each computed candidate's output except ``Identity`` (``skip_connect``
    at stride 1) gets its own per-sample mask, all of an edge's masks from
    one draw (`nn.drop_path.path_factors`), folded into the candidates'
    weights. Skip dropout: given a
    ``skip_drop_prob`` and a seed generator in training mode, the output of
    ``Identity`` gets an element-wise dropout mask (P-DARTS).

    Args:
        operators: candidate operator names (columns of the weights).
        channels: C.
        stride: 1 or 2.
        affine: batch-norm affinity of the operators (False in search).
        **kwargs: base layer arguments.
    """

    def __init__(self, operators, channels, stride, affine=False, **kwargs):
        super().__init__(**kwargs)
        self.operators = tuple(operators)
        self.channels = channels
        self.stride = stride
        self.affine = affine
        self.candidates = []
        self.indices = []
        for k, name in enumerate(self.operators):
            if name == NONE:
                continue
            op = O.make_op(name, channels, stride, affine)
            if "pool" in name:
                op = keras.Sequential(
                    [op, BatchNorm(affine=False, name=f"{name}_bn")],
                    name=f"{name}_seq",
                )
            self.candidates.append(op)
            self.indices.append(k)
        self.zero = O.Zero(stride) if not self.candidates else None

    def build(self, input_shape):
        for op in self.candidates:
            op.build(input_shape)
        self.built = True

    def call(
        self,
        x,
        weights,
        training=False,
        drop_prob=None,
        seed=None,
        skip_drop_prob=None,
        skip_seed=None,
    ):
        """Runs the mixed edge.

        Args:
            x: the edge's input state.
            weights: (num_operators,) operator weights.
            training: training mode (batch statistics, drop-path).
            drop_prob: drop-path probability (float or scalar tensor), or
                None for no drop-path (no extra graph nodes).
            seed: a `keras.random.SeedGenerator` for the drop-path masks
                (required with ``drop_prob``).
            skip_drop_prob: dropout rate on the stride-1 ``skip_connect``,
                or None for none (no extra graph nodes).
            skip_seed: a `keras.random.SeedGenerator` for its masks
                (required with ``skip_drop_prob``).

        Returns:
            ``sum_k w_k op_k(x)``.
        """
        if not self.candidates:
            return self.zero(x)
        apply_drop = bool(training) and drop_prob is not None
        if apply_drop and seed is None:
            raise ValueError("Drop-path needs a `seed` generator.")
        apply_skip_drop = bool(training) and skip_drop_prob is not None
        if apply_skip_drop and skip_seed is None:
            raise ValueError("Skip dropout needs a `skip_seed` generator.")
        # one unstack instead of a strided slice per operator
        weights = tf.unstack(weights, num=len(self.operators))
        factors = {}
        if apply_drop:
            factors = self._drop_path_factors(x, weights[0].dtype,
                                              drop_prob, seed)
        out = None
        with shared_relu():  # one relu(x) for all conv candidates
            for k, op in zip(self.indices, self.candidates, strict=True):
                h = op(x, training=training)
                if apply_skip_drop and isinstance(op, O.Identity):
                    h = dropout(h, skip_drop_prob, seed=skip_seed)
                w = weights[k]
                if k in factors:  # drop_path(h) * w, as (w * mask) * h
                    w = tf.reshape(w * factors[k], [-1, 1, 1, 1])
                y = w * h
                out = y if out is None else out + y
        return out

    def _drop_path_factors(self, x, dtype, drop_prob, seed):
        """Operator index -> its per-sample drop-path factors ``(batch,)``,
        for every candidate but identity, from one draw."""
        dropped = [
            k for k, op in zip(self.indices, self.candidates, strict=True)
            if not isinstance(op, O.Identity)
        ]
        if not dropped:
            return {}
        factors = path_factors(tf.shape(x)[0], len(dropped), drop_prob,
                               dtype, seed=seed)
        columns = tf.unstack(factors, num=len(dropped), axis=1)
        return dict(zip(dropped, columns, strict=True))

    def get_config(self):
        config = super().get_config()
        config.update(
            operators=list(self.operators),
            channels=self.channels,
            stride=self.stride,
            affine=self.affine,
        )
        return config
