"""Mixed edges and cells: the search cell and the discrete (genotype) cell.

Structure follows the DARTS reference (quark0/darts, ``model_search.py`` and
``model.py``): two cell inputs ``c_{k-2}``, ``c_{k-1}`` preprocessed to C
channels (ReLU-1x1 conv-BN, or FactorizedReduce after a reduction cell),
``steps`` intermediate nodes, the output concatenating the last
``multiplier`` nodes. In a reduction cell, edges leaving the two cell inputs
have stride 2.
"""

import keras
import tensorflow as tf
from keras import ops as kops

from tf_amended_darts.nn.batch_norm import BatchNorm
from tf_amended_darts.nn.contexts import shared_relu
from tf_amended_darts.nn.drop_path import drop_path
from tf_amended_darts.vision import ops as O

NONE = "none"


def _preprocess0(channels, reduction_prev, affine, name):
    if reduction_prev:
        return O.FactorizedReduce(channels, affine=affine, name=name)
    return O.ReLUConvBN(channels, 1, 1, 0, affine=affine, name=name)


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class MixedEdge(keras.layers.Layer):
    """``sum_k w_k op_k(x)`` over candidate operators (DARTS ``MixedOp``).

    Pooling operators get a non-affine batch norm appended, as in the
    reference. ``none`` contributes exactly zero to the sum and to every
    derivative, so it is not computed (its weight still takes part in the
    softmax, which the caller computes).

    Drop-path (hyper-parameter consistency, paper 2.4 / B.1): given a
    ``drop_prob`` and a seed generator in training mode, each computed
    candidate's output except ``Identity`` (``skip_connect`` at stride 1)
    gets its own per-sample mask, as the re-training cell
    (`discrete_cell.DiscreteCell`) treats its operators.

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

    def call(self, x, weights, training=False, drop_prob=None, seed=None):
        """Runs the mixed edge.

        Args:
            x: the edge's input state.
            weights: (num_operators,) operator weights.
            training: training mode (batch statistics, drop-path).
            drop_prob: drop-path probability (float or scalar tensor), or
                None for no drop-path (no extra graph nodes).
            seed: a `keras.random.SeedGenerator` for the drop-path masks
                (required with ``drop_prob``).

        Returns:
            ``sum_k w_k op_k(x)``.
        """
        if not self.candidates:
            return self.zero(x)
        apply_drop = bool(training) and drop_prob is not None
        if apply_drop and seed is None:
            raise ValueError("Drop-path needs a `seed` generator.")
        # one unstack instead of a strided slice per operator
        weights = tf.unstack(weights, num=len(self.operators))
        out = None
        with shared_relu():  # one relu(x) for all conv candidates
            for k, op in zip(self.indices, self.candidates, strict=True):
                h = op(x, training=training)
                if apply_drop and not isinstance(op, O.Identity):
                    h = drop_path(h, drop_prob, seed=seed)
                y = weights[k] * h
                out = y if out is None else out + y
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            operators=list(self.operators),
            channels=self.channels,
            stride=self.stride,
            affine=self.affine,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class SearchCell(keras.layers.Layer):
    """A cell of the search network.

    Args:
        node_inputs: for each intermediate node, the states it receives
            (0, 1: cell inputs; 2 + i: node i); see
            `search_space.edge_list`. Edges are numbered in this order.
        operators: candidate operators on every edge.
        channels: C of this cell.
        reduction: whether this is a reduction cell.
        reduction_prev: whether the previous cell reduced.
        multiplier: how many last nodes the output concatenates.
        pair_logits: stage 1 of the ``searched`` layout (paper eq. 16): each
            node's output is ``sum_pairs softmax(b)_(i1,i2) (y_i1 + y_i2)``.
        **kwargs: base layer arguments.
    """

    def __init__(
        self,
        node_inputs,
        operators,
        channels,
        reduction,
        reduction_prev,
        multiplier=4,
        pair_logits=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.node_inputs = [list(n) for n in node_inputs]
        self.operators = tuple(operators)
        self.channels = channels
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        self.multiplier = multiplier
        self.pair_logits = pair_logits
        self.preprocess0 = _preprocess0(
            channels, reduction_prev, False, "preprocess0"
        )
        self.preprocess1 = O.ReLUConvBN(
            channels, 1, 1, 0, affine=False, name="preprocess1"
        )
        self.edges = []
        for j, inputs in enumerate(self.node_inputs):
            for i in inputs:
                stride = 2 if reduction and i < 2 else 1
                self.edges.append(
                    MixedEdge(
                        self.operators,
                        channels,
                        stride,
                        affine=False,
                        name=f"edge_{i}_{j + 2}",
                    )
                )

    @property
    def num_edges(self):
        return len(self.edges)

    def build(self, input_shapes):
        s0_shape, s1_shape = input_shapes
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s1_shape)
        state = self.preprocess1.compute_output_shape(s1_shape)
        for edge in self.edges:
            edge.build(tuple(state))
        self.built = True

    def call(
        self,
        inputs,
        edge_weights,
        pair_weights=None,
        training=False,
        drop_prob=None,
        seed=None,
    ):
        """Runs the cell.

        Args:
            inputs: ``(s0, s1)``, the outputs of the previous two cells.
            edge_weights: (num_edges, num_operators) operator weights.
            pair_weights: stage 1 of ``searched``: per node, the pair
                probabilities.
            training: training mode (batch statistics, drop-path).
            drop_prob: drop-path probability or None (see `MixedEdge`).
            seed: the `keras.random.SeedGenerator` of the masks.

        Returns:
            The concatenation of the last ``multiplier`` nodes.
        """
        s0, s1 = inputs
        states = [
            self.preprocess0(s0, training=training),
            self.preprocess1(s1, training=training),
        ]
        edge_weights = tf.unstack(edge_weights, num=self.num_edges)
        e = 0
        for j, node_in in enumerate(self.node_inputs):
            coeffs = None
            if self.pair_logits:
                coeffs = _pair_coefficients(pair_weights[j], len(node_in))
            s = None
            for n, i in enumerate(node_in):
                y = self.edges[e](
                    states[i],
                    edge_weights[e],
                    training=training,
                    drop_prob=drop_prob,
                    seed=seed,
                )
                if coeffs is not None:
                    y = coeffs[n] * y
                s = y if s is None else s + y
                e += 1
            states.append(s)
        return kops.concatenate(states[-self.multiplier :], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            node_inputs=self.node_inputs,
            operators=list(self.operators),
            channels=self.channels,
            reduction=self.reduction,
            reduction_prev=self.reduction_prev,
            multiplier=self.multiplier,
            pair_logits=self.pair_logits,
        )
        return config


def _pair_coefficients(pair_probs, num_inputs):
    """Per-input coefficient ``sum of p(pair) over pairs containing it``.

    ``sum_pairs p (y_i1 + y_i2) = sum_i (sum_{pairs ∋ i} p) y_i``; pairs are
    in `search_space.input_pairs` order (itertools.combinations).
    """
    import itertools

    pairs = list(itertools.combinations(range(num_inputs), 2))
    return [
        kops.sum(
            kops.stack(
                [pair_probs[p] for p, pair in enumerate(pairs) if i in pair]
            )
        )
        for i in range(num_inputs)
    ]
