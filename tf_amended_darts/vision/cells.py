"""The search cell: mixed edges between two inputs and ``steps`` nodes.

Structure follows the DARTS reference (quark0/darts, ``model_search.py``):
two cell inputs ``c_{k-2}``, ``c_{k-1}`` preprocessed to C channels
(ReLU-1x1 conv-BN, or FactorizedReduce after a reduction cell), ``steps``
intermediate nodes, the output concatenating the last ``multiplier`` nodes.
In a reduction cell, edges leaving the two cell inputs have stride 2.

Baselines' variants (../shared/baselines.md): per-edge operator subsets
(P-DARTS' switches, R-DARTS' space S1), partial channel connections
(PC-DARTS, `partial_channels.PartialChannelEdge`) and edge normalisation
(PC-DARTS: each edge's output scaled by its node-normalised beta weight,
``edge_scales``).
"""

import keras
import tensorflow as tf
from keras import ops as kops

from tf_amended_darts.nn.validate import check_int
from tf_amended_darts.vision import ops as O
from tf_amended_darts.vision.mixed_edge import NONE, MixedEdge
from tf_amended_darts.vision.partial_channels import PartialChannelEdge

__all__ = ["NONE", "MixedEdge", "SearchCell"]


def _preprocess0(channels, reduction_prev, affine, name):
    if reduction_prev:
        return O.FactorizedReduce(channels, affine=affine, name=name)
    return O.ReLUConvBN(channels, 1, 1, 0, affine=affine, name=name)


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
        edge_operators: optional per-edge operator lists (edge order), all
            of one length k: edge ``e`` mixes ``edge_operators[e]`` and
            column ``j`` of its weights is its ``j``-th operator (P-DARTS'
            switches, R-DARTS' S1). Default: ``operators`` on every edge.
        partial_channels: K; above 1, every edge is a
            `partial_channels.PartialChannelEdge` on ``C // K`` channels.
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
        edge_operators=None,
        partial_channels=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("partial_channels", partial_channels)
        self.node_inputs = [list(n) for n in node_inputs]
        self.operators = tuple(operators)
        self.channels = channels
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        self.multiplier = multiplier
        self.pair_logits = pair_logits
        self.partial_channels = partial_channels
        num_edges = sum(map(len, self.node_inputs))
        if edge_operators is None:
            self.edge_operators = None
            per_edge = [self.operators] * num_edges
        else:
            per_edge = [tuple(ops) for ops in edge_operators]
            if len(per_edge) != num_edges or len(set(map(len, per_edge))) > 1:
                raise ValueError(
                    f"Expected `edge_operators` to hold {num_edges} operator "
                    "lists (one per edge) of one length. Received: "
                    f"edge_operators={edge_operators!r}"
                )
            self.edge_operators = [list(ops) for ops in per_edge]
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
                ops = per_edge[len(self.edges)]
                name = f"edge_{i}_{j + 2}"
                if partial_channels > 1:
                    edge = PartialChannelEdge(
                        ops, channels, stride, partial_channels, name=name
                    )
                else:
                    edge = MixedEdge(ops, channels, stride, name=name)
                self.edges.append(edge)

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
        edge_scales=None,
        skip_drop_prob=None,
        skip_seed=None,
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
            edge_scales: (num_edges,) factors multiplying each edge's
                output (PC-DARTS edge normalisation), or None.
            skip_drop_prob: P-DARTS' dropout rate on stride-1
                ``skip_connect``, or None (see `MixedEdge`).
            skip_seed: the `keras.random.SeedGenerator` of its masks.

        Returns:
            The concatenation of the last ``multiplier`` nodes.
        """
        states = self.preprocess(inputs, training=training)
        return self.nodes(
            states,
            edge_weights,
            pair_weights,
            training=training,
            drop_prob=drop_prob,
            seed=seed,
            edge_scales=edge_scales,
            skip_drop_prob=skip_drop_prob,
            skip_seed=skip_seed,
        )

    def preprocess(self, inputs, training=False):
        """The two cell inputs ``(s0, s1)`` brought to C channels at this
        cell's input resolution: ``[preprocess0(s0), preprocess1(s1)]``."""
        s0, s1 = inputs
        return [
            self.preprocess0(s0, training=training),
            self.preprocess1(s1, training=training),
        ]

    def nodes(
        self,
        states,
        edge_weights,
        pair_weights=None,
        training=False,
        drop_prob=None,
        seed=None,
        edge_scales=None,
        skip_drop_prob=None,
        skip_seed=None,
    ):
        """The cell after `preprocess`: its mixed edges and nodes on the
        preprocessed ``states`` (arguments as `call`)."""
        states = list(states)
        edge_weights = tf.unstack(edge_weights, num=self.num_edges)
        if edge_scales is not None:
            edge_scales = tf.unstack(edge_scales, num=self.num_edges)
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
                    skip_drop_prob=skip_drop_prob,
                    skip_seed=skip_seed,
                )
                if edge_scales is not None:
                    y = edge_scales[e] * y
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
            edge_operators=self.edge_operators,
            partial_channels=self.partial_channels,
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
