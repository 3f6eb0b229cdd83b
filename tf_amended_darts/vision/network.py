"""Re-training networks built from a genotype (DARTS ``cnn/model.py``).

Structure, layer by layer, as the DARTS reference (quark0/darts,
``cnn/model.py``, ``cnn/operations.py``, ``cnn/utils.py``):

* ``DiscreteCell``: ``preprocess0`` is ``FactorizedReduce(C)`` after a
  reduction cell, else ReLU-1x1 conv-BN; ``preprocess1`` is ReLU-1x1 conv-BN;
  each intermediate node sums two operators applied to earlier states
  (stride 2 on the cell inputs of a reduction cell); the output
  concatenates the ``concat`` states. Every batch norm is affine; pooling
  operators have no extra batch norm (unlike the search cell).
* Drop-path: in training mode each operator output except ``Identity``
  is multiplied by a per-sample Bernoulli(1 - p) mask and divided by
  1 - p (reference ``utils.drop_path``).
* ``NetworkCIFAR``: 3x3 conv stem to 3C + BN; ``layers`` cells, reduction
  (channels doubled) at ``layers // 3`` and ``2 * layers // 3``; auxiliary
  head after cell ``2 * layers // 3``; global average pool; linear.
* ``NetworkImageNet``: two stride-2 stems (input / 8 before the cells), the
  first cell preprocessing ``c_{k-2}`` with ``FactorizedReduce``.

Parameter counts of the published genotypes equal the reference's to the
parameter (``count_params``; tests/vision/test_network.py). Layout is NHWC.

Mixed precision: pass ``dtype="mixed_float16"`` or ``"mixed_bfloat16"``
(a Keras dtype policy) to a network; every layer gets it, variables stay
float32, batch norm computes its statistics in float32
(`layers.BatchNorm`), and the classifiers compute in float32
(`output_dtype_policy`), so the logits are float32 under every policy.
"""

import math
import os

import keras
import tensorflow as tf

from tf_amended_darts.nn.base import (
    build_chain,
    chain_shape,
    output_dtype_policy,
)
from tf_amended_darts.nn.batch_norm import BatchNorm
from tf_amended_darts.nn.conv import Conv2D
from tf_amended_darts.nn.linear import Linear
from tf_amended_darts.nn.validate import (
    check_bool,
    check_int,
    check_prob,
    check_seed,
)
from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision import search_space
from tf_amended_darts.vision.auxiliary import (
    AuxiliaryHeadCIFAR,
    AuxiliaryHeadImageNet,
)
from tf_amended_darts.vision.discrete_cell import DiscreteCell

# quark0/darts cnn/model.py, NetworkCIFAR: `stem_multiplier = 3`.
STEM_MULTIPLIER = 3
# quark0/darts cnn/train.py (CIFAR): --init_channels 36, --layers 20,
# --drop_path_prob 0.2 (ramped linearly over the epochs).
CIFAR_INIT_CHANNELS = 36
CIFAR_LAYERS = 20
CIFAR_NUM_CLASSES = 10
# quark0/darts cnn/train_imagenet.py: --init_channels 48, --layers 14.
IMAGENET_INIT_CHANNELS = 48
IMAGENET_LAYERS = 14
IMAGENET_NUM_CLASSES = 1000

_PACKAGE = "tf_amended_darts"


# --------------------------------------------------------------------------
# Helpers.


def as_genotype(genotype):
    """A `Genotype` from a `Genotype`, its JSON dict, a name or a path.

    Args:
        genotype: A `Genotype`; its JSON dict (`genotype.to_dict`; the
            published layout without header is accepted too); one of
            `genotype.published_names()`; or the path of a genotype file.

    Returns:
        The `Genotype`.

    Raises:
        ValueError: For another type, an unknown name (listing the
            published ones) or an invalid genotype.
        FileNotFoundError: For a path naming no file.
    """
    if isinstance(genotype, G.Genotype):
        return genotype
    if isinstance(genotype, dict):
        return G.from_dict(genotype, require_header=False)
    if isinstance(genotype, (str, os.PathLike)):
        return G.load(genotype)
    raise ValueError(
        "Expected `genotype` to be a Genotype, its JSON dict, a published "
        f"name or a JSON path. Received: genotype={genotype!r}"
    )


# --------------------------------------------------------------------------
# Networks.


class _Network(keras.Model):
    """Cells, auxiliary head, pooling and classifier shared by both nets."""

    _aux_class = AuxiliaryHeadCIFAR
    _reduction_prev_first = False

    def __init__(
        self,
        genotype,
        num_classes,
        layers,
        init_channels,
        auxiliary,
        drop_path_prob,
        seed,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("num_classes", num_classes)
        check_int("layers", layers)
        check_int("init_channels", init_channels)
        check_bool("auxiliary", auxiliary)
        drop_path_prob = check_prob("drop_path_prob", drop_path_prob)
        check_seed(seed)
        self.genotype = as_genotype(genotype)
        self.num_classes = num_classes
        self.num_layers = layers
        self.init_channels = init_channels
        self.auxiliary = auxiliary
        self.seed = seed
        self.aux_index = 2 * layers // 3
        self._drop_path_prob = self.add_weight(
            shape=(),
            name="drop_path_prob",
            initializer=keras.initializers.Constant(drop_path_prob),
            trainable=False,
            dtype="float32",
        )
        self._build_stem(init_channels)
        dtype = self.dtype_policy
        cell_genotypes = self.genotype.cell_genotypes(layers)
        reductions = search_space.reduction_indices(layers)
        channels = init_channels
        reduction_prev = self._reduction_prev_first
        self.cells = []
        for i, cell in enumerate(cell_genotypes):
            if i in reductions:
                channels *= 2
            self.cells.append(
                DiscreteCell(
                    cell.edges,
                    cell.concat,
                    cell.reduction,
                    reduction_prev,
                    channels,
                    seed=None if seed is None else seed + i,
                    name=f"cell_{i}",
                    dtype=dtype,
                )
            )
            reduction_prev = cell.reduction
        self.auxiliary_head = (
            self._aux_class(num_classes, name="auxiliary_head", dtype=dtype)
            if auxiliary
            else None
        )
        self.classifier = Linear(
            num_classes, name="classifier", dtype=output_dtype_policy(dtype)
        )

    # Subclasses: the stem layers and how they run.
    def _build_stem(self, channels):
        raise NotImplementedError

    def _stem(self, inputs, training):
        raise NotImplementedError

    @property
    def drop_path_prob(self):
        """Current drop-path probability (a float; assignable)."""
        # Shortest decimal that round-trips the float32 (0.1, not 0.100..1).
        return float(str(keras.ops.convert_to_numpy(self._drop_path_prob)))

    @drop_path_prob.setter
    def drop_path_prob(self, value):
        self._drop_path_prob.assign(check_prob("drop_path_prob", value))

    def _cell_input_shapes(self, input_shape, build):
        """Shapes (s0, s1) entering the first cell."""
        raise NotImplementedError

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "Expected a 4D NHWC input shape. Received: "
                f"input_shape={tuple(input_shape)}"
            )
        s0, s1 = self._cell_input_shapes(tuple(input_shape), build=True)
        for i, cell in enumerate(self.cells):
            if not cell.built:
                cell.build((s0, s1))
            s0, s1 = s1, cell.compute_output_shape((s0, s1))
            if i == self.aux_index and self.auxiliary_head is not None:
                build_chain([self.auxiliary_head], s1)
        build_chain([self.classifier], (s1[0], s1[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def call(self, inputs, training=None):
        """Runs the network.

        Args:
            inputs: NHWC images.
            training: Training mode (batch statistics, drop-path, auxiliary
                head).

        Returns:
            ``(logits, aux_logits)`` in training mode with an auxiliary
            head, else ``logits``.
        """
        s0, s1 = self._stem(inputs, training)
        drop_prob = tf.convert_to_tensor(self._drop_path_prob)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell([s0, s1], training=training, drop_prob=drop_prob)
            if (
                i == self.aux_index
                and self.auxiliary_head is not None
                and training
            ):
                aux_logits = self.auxiliary_head(s1, training=training)
        pooled = tf.reduce_mean(s1, axis=(1, 2))
        logits = self.classifier(pooled)
        if aux_logits is not None:
            return logits, aux_logits
        return logits

    def get_config(self):
        config = super().get_config()
        config.update(
            genotype=G.to_dict(self.genotype),
            num_classes=self.num_classes,
            layers=self.num_layers,
            init_channels=self.init_channels,
            auxiliary=self.auxiliary,
            drop_path_prob=self.drop_path_prob,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["genotype"] = G.from_dict(config["genotype"])
        return cls(**config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NetworkCIFAR(_Network):
    """The CIFAR re-training network (DARTS ``NetworkCIFAR``).

    3x3 conv stem (padding 1) to ``3 * C`` channels + BN; ``layers`` cells
    with reduction cells at ``layers // 3`` and ``2 * layers // 3`` (width
    doubled there); global average pool; linear. The auxiliary head
    (``AuxiliaryHeadCIFAR``, 8x8 input at 32x32) runs on the output of cell
    ``2 * layers // 3`` in training mode only.

    Args:
        genotype: A `Genotype` (shared normal/reduce or per-cell), its JSON
            dict, a published name or a JSON path.
        num_classes: Output logits.
        layers: Number of cells.
        init_channels: C, the width of the first cells.
        auxiliary: Whether to build the auxiliary head.
        drop_path_prob: Initial drop-path probability in [0, 1); held in a
            non-trainable variable, assignable as ``net.drop_path_prob = p``
            (see `DropPathSchedule`).
        seed: Optional int seeding the drop-path masks.
        **kwargs: Base model keyword arguments (`name`, `dtype`, ...).

    Call returns ``(logits, aux_logits)`` in training mode when
    ``auxiliary``, else ``logits``.
    """

    def __init__(
        self,
        genotype,
        num_classes=CIFAR_NUM_CLASSES,
        layers=CIFAR_LAYERS,
        init_channels=CIFAR_INIT_CHANNELS,
        auxiliary=True,
        drop_path_prob=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(
            genotype,
            num_classes,
            layers,
            init_channels,
            auxiliary,
            drop_path_prob,
            seed,
            **kwargs,
        )

    def _build_stem(self, channels):
        dtype = self.dtype_policy
        c_stem = STEM_MULTIPLIER * channels
        self.stem_conv = Conv2D(
            c_stem, 3, 1, 1, name="stem_conv", dtype=dtype
        )
        self.stem_bn = BatchNorm(affine=True, name="stem_bn", dtype=dtype)

    def _cell_input_shapes(self, input_shape, build):
        run = build_chain if build else chain_shape
        shape = run([self.stem_conv, self.stem_bn], input_shape)
        return shape, shape

    def _stem(self, inputs, training):
        x = self.stem_bn(self.stem_conv(inputs), training=training)
        return x, x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NetworkImageNet(_Network):
    """The ImageNet re-training network (DARTS ``NetworkImageNet``).

    stem0: 3x3 conv stride 2 to C/2, BN, ReLU, 3x3 conv stride 2 to C, BN;
    stem1: ReLU, 3x3 conv stride 2 to C, BN (224 -> 56 -> 28). The first
    cell takes ``c_{k-2}`` = stem0 output (56x56) through
    ``FactorizedReduce``. Cells as `NetworkCIFAR`; auxiliary head
    ``AuxiliaryHeadImageNet`` after cell ``2 * layers // 3`` (7x7 at 224).
    The reference's final ``nn.AvgPool2d(7)`` on the 7x7 map is a global
    average pool; global average pooling is used here, which equals it at
    224x224 and also accepts other input sizes.

    Args:
        genotype: A `Genotype` (shared or per-cell), its JSON dict, a
            published name or a JSON path.
        num_classes: Output logits.
        layers: Number of cells.
        init_channels: C; must be even (``FactorizedReduce`` halves it).
        auxiliary: Whether to build the auxiliary head.
        drop_path_prob: Initial drop-path probability in [0, 1).
        seed: Optional int seeding the drop-path masks.
        **kwargs: Base model keyword arguments (`name`, `dtype`, ...).
    """

    _aux_class = AuxiliaryHeadImageNet
    _reduction_prev_first = True

    def __init__(
        self,
        genotype,
        num_classes=IMAGENET_NUM_CLASSES,
        layers=IMAGENET_LAYERS,
        init_channels=IMAGENET_INIT_CHANNELS,
        auxiliary=True,
        drop_path_prob=0.0,
        seed=None,
        **kwargs,
    ):
        if (
            isinstance(init_channels, int)
            and not isinstance(init_channels, bool)
            and init_channels % 2
        ):
            raise ValueError(
                "Expected an even `init_channels` (the first cell's "
                "FactorizedReduce splits it in halves). Received: "
                f"init_channels={init_channels}"
            )
        super().__init__(
            genotype,
            num_classes,
            layers,
            init_channels,
            auxiliary,
            drop_path_prob,
            seed,
            **kwargs,
        )

    def _build_stem(self, channels):
        dtype = self.dtype_policy

        def conv(c_out, name):
            return Conv2D(c_out, 3, 2, 1, name=name, dtype=dtype)

        def bn(name):
            return BatchNorm(affine=True, name=name, dtype=dtype)

        self.stem0_conv_1 = conv(channels // 2, "stem0_conv_1")
        self.stem0_bn_1 = bn("stem0_bn_1")
        self.stem0_conv_2 = conv(channels, "stem0_conv_2")
        self.stem0_bn_2 = bn("stem0_bn_2")
        self.stem1_conv = conv(channels, "stem1_conv")
        self.stem1_bn = bn("stem1_bn")

    def _cell_input_shapes(self, input_shape, build):
        run = build_chain if build else chain_shape
        s0 = run(
            [
                self.stem0_conv_1,
                self.stem0_bn_1,
                self.stem0_conv_2,
                self.stem0_bn_2,
            ],
            input_shape,
        )
        s1 = run([self.stem1_conv, self.stem1_bn], s0)
        return s0, s1

    def _stem(self, inputs, training):
        x = self.stem0_bn_1(self.stem0_conv_1(inputs), training=training)
        x = tf.nn.relu(x)
        s0 = self.stem0_bn_2(self.stem0_conv_2(x), training=training)
        x = self.stem1_conv(tf.nn.relu(s0))
        s1 = self.stem1_bn(x, training=training)
        return s0, s1


def _size(variable):
    return math.prod(int(d) for d in variable.shape)


def _check_built(model):
    if not model.built:
        raise ValueError(
            "Build the network first (e.g. `net.build((None, 32, 32, 3))`). "
            f"Received: an unbuilt {type(model).__name__} {model.name!r}"
        )


def aux_params(model):
    """Trainable parameters of the auxiliary head (0 without one).

    Args:
        model: A built `NetworkCIFAR` or `NetworkImageNet`.
    """
    _check_built(model)
    head = getattr(model, "auxiliary_head", None)
    if head is None:
        return 0
    return sum(_size(w) for w in head.trainable_weights)


def count_params(model, include_aux=False):
    """Trainable parameters (BN gamma/beta counted, moving statistics not).

    The reference's ``utils.count_parameters_in_MB`` likewise skips
    parameters whose name contains "auxiliary".

    Args:
        model: A built network (or any built Keras layer).
        include_aux: Whether to count the auxiliary head too.

    Returns:
        An int.
    """
    _check_built(model)
    total = sum(_size(w) for w in model.trainable_weights)
    if include_aux or getattr(model, "auxiliary_head", None) is None:
        return total
    return total - aux_params(model)
