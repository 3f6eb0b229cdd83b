"""The cell of a re-training network, built from a genotype (DARTS
``cnn/model.py``, ``Cell``).

``preprocess0`` is ``FactorizedReduce(C)`` after a reduction cell, else
ReLU-1x1 conv-BN; ``preprocess1`` is ReLU-1x1 conv-BN; each intermediate
node sums two operators applied to earlier states (stride 2 on the cell
inputs of a reduction cell); the output concatenates the ``concat`` states.
Every batch norm is affine; pooling operators have no extra batch norm
(unlike the search cell). Drop-path: in training mode each operator output
except ``Identity`` is multiplied by a per-sample Bernoulli(1 - p) mask and
divided by 1 - p (reference ``utils.drop_path``).
"""


import keras
import tensorflow as tf

from tf_amended_darts.nn.base import ConfigLayer, build_chain, chain_shape
from tf_amended_darts.nn.drop_path import drop_path
from tf_amended_darts.nn.validate import (
    check_bool,
    check_int,
    check_prob,
    check_seed,
)
from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision import ops as O

_PACKAGE = "tf_amended_darts"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiscreteCell(ConfigLayer):
    """A cell of the re-training network (DARTS ``model.py``, ``Cell``).

    Called on ``[s0, s1]`` (outputs of the previous two cells); returns the
    concatenation of the ``concat`` states, ``len(concat) * channels``
    channels.

    Args:
        cell_edges: ``(operator, input)`` pairs, two per intermediate node
            (input 0 is ``c_{k-2}``, 1 is ``c_{k-1}``, ``2 + i`` node ``i``).
        concat: States concatenated into the output.
        reduction: Whether the cell halves height and width.
        reduction_prev: Whether the previous cell reduced (``c_{k-2}`` then
            has twice the spatial size of ``c_{k-1}``).
        channels: C of this cell (each operator's width).
        drop_path_prob: Default drop-path probability in [0, 1) when the
            call gets none (the networks pass their own).
        seed: Optional int seeding the drop-path masks.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Raises:
        ValueError: For invalid edges, concat, operator names or arguments,
            echoing the value.
    """

    _config_keys = (
        "cell_edges",
        "concat",
        "reduction",
        "reduction_prev",
        "channels",
        "drop_path_prob",
        "seed",
    )

    def __init__(
        self,
        cell_edges,
        concat,
        reduction,
        reduction_prev,
        channels,
        drop_path_prob=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_bool("reduction", reduction)
        check_bool("reduction_prev", reduction_prev)
        check_int("channels", channels)
        check_seed(seed)
        cell = G.CellGenotype(
            tuple(tuple(e) if isinstance(e, list) else e for e in cell_edges),
            tuple(concat),
            reduction,
        )
        for op_name, _ in cell.edges:
            if op_name not in O.OPS:
                raise ValueError(
                    f"Unknown operator in `cell_edges`. Expected one of "
                    f"{sorted(O.OPS)}. Received: cell_edges={cell_edges!r}"
                )
        self.cell_edges = [list(edge) for edge in cell.edges]
        self.concat = list(cell.concat)
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        self.channels = channels
        self.drop_path_prob = check_prob("drop_path_prob", drop_path_prob)
        self.seed = seed
        self.steps = cell.steps
        self.indices = [index for _, index in cell.edges]
        dtype = self.dtype_policy
        if reduction_prev:
            self.preprocess0 = O.FactorizedReduce(
                channels, affine=True, name="preprocess0", dtype=dtype
            )
        else:
            self.preprocess0 = O.ReLUConvBN(
                channels, 1, 1, 0, affine=True, name="preprocess0", dtype=dtype
            )
        self.preprocess1 = O.ReLUConvBN(
            channels, 1, 1, 0, affine=True, name="preprocess1", dtype=dtype
        )
        self.cell_ops = []
        for k, (op_name, index) in enumerate(cell.edges):
            stride = 2 if reduction and index < 2 else 1
            # `O.OPS` rather than `O.make_op`, whose first argument is
            # called `name` (the layer name goes through **kwargs here).
            self.cell_ops.append(
                O.OPS[op_name](
                    channels,
                    stride,
                    True,
                    name=f"op_{k}_{op_name}",
                    dtype=dtype,
                )
            )
        self.seed_generator = keras.random.SeedGenerator(
            seed, name="drop_path_seed"
        )

    @property
    def multiplier(self):
        """Number of concatenated states (output channels / C)."""
        return len(self.concat)

    def _state_shapes(self, input_shapes, build):
        s0_shape, s1_shape = (tuple(s) for s in input_shapes)
        run = build_chain if build else chain_shape
        states = [
            run([self.preprocess0], s0_shape),
            run([self.preprocess1], s1_shape),
        ]
        if states[0][1:3] != states[1][1:3]:
            raise ValueError(
                "The preprocessed cell inputs differ in size; check "
                f"`reduction_prev` (={self.reduction_prev}). Received: "
                f"input_shapes={[s0_shape, s1_shape]}"
            )
        for j in range(self.steps):
            outs = [
                run([self.cell_ops[k]], states[self.indices[k]])
                for k in (2 * j, 2 * j + 1)
            ]
            states.append(outs[0])
        return states

    def build(self, input_shapes):
        self._state_shapes(input_shapes, build=True)

    def compute_output_shape(self, input_shapes):
        states = self._state_shapes(input_shapes, build=False)
        out = list(states[self.concat[0]])
        out[-1] = self.multiplier * self.channels
        return tuple(out)

    def call(self, inputs, training=None, drop_prob=None):
        """Runs the cell.

        Args:
            inputs: ``[s0, s1]``.
            training: Training mode (batch statistics, drop-path).
            drop_prob: Drop-path probability (float or scalar tensor);
                defaults to the constructor's ``drop_path_prob``.

        Returns:
            The concatenated states.
        """
        s0, s1 = inputs
        if drop_prob is None:
            drop_prob = self.drop_path_prob
        apply_drop = bool(training) and not (
            isinstance(drop_prob, (int, float)) and drop_prob == 0.0
        )
        states = [
            self.preprocess0(s0, training=training),
            self.preprocess1(s1, training=training),
        ]
        for j in range(self.steps):
            node = None
            for k in (2 * j, 2 * j + 1):
                op = self.cell_ops[k]
                h = op(states[self.indices[k]], training=training)
                if apply_drop and not isinstance(op, O.Identity):
                    h = drop_path(h, drop_prob, seed=self.seed_generator)
                node = h if node is None else node + h
            states.append(node)
        return tf.concat([states[i] for i in self.concat], axis=-1)
