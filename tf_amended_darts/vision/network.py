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
parameter (``count_params``; tests/test_network.py). Layout is NHWC.

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

from tf_amended_darts.nn import layers as L
from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision import ops as O
from tf_amended_darts.vision import search_space

# quark0/darts cnn/model.py, NetworkCIFAR: `stem_multiplier = 3`.
STEM_MULTIPLIER = 3
# quark0/darts cnn/model.py, AuxiliaryHead*: 1x1 conv to 128 channels, 2x2
# conv to 768 channels, average pool 5x5 (stride 3 CIFAR, 2 ImageNet).
AUX_CHANNELS_1 = 128
AUX_CHANNELS_2 = 768
AUX_POOL_SIZE = 5
AUX_POOL_STRIDE_CIFAR = 3
AUX_POOL_STRIDE_IMAGENET = 2
# quark0/darts cnn/train.py (CIFAR): --init_channels 36, --layers 20,
# --drop_path_prob 0.2 (ramped linearly over the epochs).
CIFAR_INIT_CHANNELS = 36
CIFAR_LAYERS = 20
CIFAR_NUM_CLASSES = 10
DROP_PATH_PROB = 0.2
# quark0/darts cnn/train_imagenet.py: --init_channels 48, --layers 14.
IMAGENET_INIT_CHANNELS = 48
IMAGENET_LAYERS = 14
IMAGENET_NUM_CLASSES = 1000

_PACKAGE = "tf_amended_darts"


# --------------------------------------------------------------------------
# Helpers.


def _check_prob(name, value):
    """Raises a ValueError echoing `value` unless it is a float in [0, 1)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 <= value < 1.0
    ):
        raise ValueError(
            f"Expected `{name}` to be a number in [0, 1). "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _check_seed(seed):
    if seed is not None:
        L.check_int("seed", seed, minimum=0)


def _build_chain(layers, input_shape):
    """Builds unbuilt `layers` in sequence; returns the output shape."""
    shape = tuple(input_shape)
    for layer in layers:
        if not layer.built:
            layer.build(shape)
        shape = tuple(layer.compute_output_shape(shape))
    return shape


def _chain_shape(layers, input_shape):
    shape = tuple(input_shape)
    for layer in layers:
        shape = tuple(layer.compute_output_shape(shape))
    return shape


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


def output_dtype_policy(policy):
    """The dtype policy of a network's classifiers: float32 logits.

    Under a mixed-precision policy (compute dtype narrower than the
    variables', e.g. ``mixed_float16``) the final linear layers compute in
    the variable dtype (float32), so the logits, the softmax and the loss
    are float32 (the Keras mixed-precision guide's advice; a float16
    softmax over-/underflows). Other policies are returned unchanged, so a
    float32 or float64 network is untouched.

    Args:
        policy: a `keras.DTypePolicy` or its name.

    Returns:
        A `keras.DTypePolicy`.
    """
    policy = keras.dtype_policies.get(policy)
    if policy.compute_dtype != policy.variable_dtype:
        return keras.dtype_policies.DTypePolicy(policy.variable_dtype)
    return policy


def drop_path(x, drop_prob, seed=None):
    """Zeroes whole samples with probability `drop_prob`, rescales the rest.

    Reference ``utils.drop_path`` (quark0/darts): a per-sample mask drawn
    from Bernoulli(keep), keep = 1 - drop_prob, and ``x / keep * mask``.
    With ``drop_prob == 0`` the result equals `x` exactly.

    Args:
        x: NHWC tensor.
        drop_prob: Python float or scalar tensor in [0, 1).
        seed: A `keras.random.SeedGenerator`, an int or None.

    Returns:
        A tensor like `x`.
    """
    keep = 1.0 - tf.cast(drop_prob, "float32")
    shape = tf.stack([tf.shape(x)[0], 1, 1, 1])
    noise = keras.random.uniform(shape, dtype="float32", seed=seed)
    mask = tf.cast(noise < keep, x.dtype)  # P(mask = 1) = keep
    return x / tf.cast(keep, x.dtype) * mask


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Linear(L.ConfigLayer):
    """Fully connected layer initialised as `torch.nn.Linear`.

    Kernel and bias uniform in +-1 / sqrt(fan_in) (`torch.nn.Linear`'s
    kaiming_uniform(a=sqrt(5)) and bias init). Input: (batch, features).

    Args:
        units: Output features.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("units",)

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        L.check_int("units", units)
        self.units = units

    def build(self, input_shape):
        fan_in = input_shape[-1]
        if fan_in is None:
            raise ValueError(
                f"Expected a known feature count. Received: {input_shape}"
            )
        self.kernel = self.add_weight(
            shape=(fan_in, self.units),
            name="kernel",
            initializer=L.pytorch_conv_initializer(),
        )
        bound = 1.0 / math.sqrt(fan_in)
        self.bias = self.add_weight(
            shape=(self.units,),
            name="bias",
            initializer=keras.initializers.RandomUniform(-bound, bound),
        )

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        kernel = tf.cast(self.kernel, self.compute_dtype)
        return tf.matmul(x, kernel) + tf.cast(self.bias, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)


# --------------------------------------------------------------------------
# Cells.


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiscreteCell(L.ConfigLayer):
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
        L.check_bool("reduction", reduction)
        L.check_bool("reduction_prev", reduction_prev)
        L.check_int("channels", channels)
        _check_seed(seed)
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
        self.drop_path_prob = _check_prob("drop_path_prob", drop_path_prob)
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
        run = _build_chain if build else _chain_shape
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


# --------------------------------------------------------------------------
# Auxiliary heads.


class _AuxiliaryHead(L.ConfigLayer):
    """ReLU, avg pool 5, 1x1 conv 128, BN, ReLU, 2x2 conv 768, [BN], ReLU,
    flatten, linear (DARTS ``model.py``, ``AuxiliaryHead*``)."""

    _config_keys = ("num_classes",)
    _pool_stride = AUX_POOL_STRIDE_CIFAR
    _second_bn = True

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        L.check_int("num_classes", num_classes)
        self.num_classes = num_classes
        dtype = self.dtype_policy
        self.pool = L.AvgPool2D(
            AUX_POOL_SIZE,
            self._pool_stride,
            0,
            count_include_pad=False,
            name="pool",
            dtype=dtype,
        )
        self.conv_1 = L.Conv2D(AUX_CHANNELS_1, 1, name="conv_1", dtype=dtype)
        self.bn_1 = L.BatchNorm(affine=True, name="bn_1", dtype=dtype)
        self.conv_2 = L.Conv2D(AUX_CHANNELS_2, 2, name="conv_2", dtype=dtype)
        self.bn_2 = (
            L.BatchNorm(affine=True, name="bn_2", dtype=dtype)
            if self._second_bn
            else None
        )
        self.classifier = Linear(
            num_classes, name="classifier", dtype=output_dtype_policy(dtype)
        )

    def _features(self):
        layers = [self.pool, self.conv_1, self.bn_1, self.conv_2]
        return layers + ([self.bn_2] if self.bn_2 is not None else [])

    def _check_size(self, input_shape):
        for size in input_shape[1:3]:
            if size is not None and size < AUX_POOL_SIZE:
                raise ValueError(
                    f"{type(self).__name__} needs at least "
                    f"{AUX_POOL_SIZE}x{AUX_POOL_SIZE} inputs. Received: "
                    f"input_shape={tuple(input_shape)}"
                )

    def build(self, input_shape):
        self._check_size(input_shape)
        shape = _build_chain(self._features(), input_shape)
        _build_chain([self.classifier], (shape[0], math.prod(shape[1:])))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def call(self, inputs, training=None):
        x = self.pool(tf.nn.relu(inputs))
        x = tf.nn.relu(self.bn_1(self.conv_1(x), training=training))
        x = self.conv_2(x)
        if self.bn_2 is not None:
            x = self.bn_2(x, training=training)
        x = tf.nn.relu(x)
        x = tf.reshape(x, [tf.shape(x)[0], math.prod(x.shape[1:])])
        return self.classifier(x)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AuxiliaryHeadCIFAR(_AuxiliaryHead):
    """Auxiliary classifier for 8x8 inputs (DARTS ``AuxiliaryHeadCIFAR``).

    ReLU, average pool 5x5 stride 3 (no padding; 8x8 -> 2x2), 1x1 conv to
    128, BN, ReLU, 2x2 conv to 768 (-> 1x1), BN, ReLU, linear.

    Args:
        num_classes: Output logits.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AuxiliaryHeadImageNet(_AuxiliaryHead):
    """Auxiliary classifier of the ImageNet network.

    ReLU, average pool 5x5 stride 2, 1x1 conv to 128, BN, ReLU, 2x2 conv to
    768, ReLU, linear. The reference has no BN after the 2x2 conv ("This
    batchnorm was omitted in my earlier implementation due to a typo.
    Commenting it out for consistency with the experiments in the paper.").

    The reference docstring says "assuming input size 14x14", but the head
    sits after cell ``2 * layers // 3``, the second reduction cell, whose
    output at 224x224 is 7x7: 7x7 -> pool 2x2 -> conv 1x1x768, matching the
    reference's ``nn.Linear(768, num_classes)`` (a 14x14 input would give
    4x4x768 features and fail there). Here the linear layer takes the
    flattened features, which are 768 at that size.

    Args:
        num_classes: Output logits.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _pool_stride = AUX_POOL_STRIDE_IMAGENET
    _second_bn = False


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
        L.check_int("num_classes", num_classes)
        L.check_int("layers", layers)
        L.check_int("init_channels", init_channels)
        L.check_bool("auxiliary", auxiliary)
        drop_path_prob = _check_prob("drop_path_prob", drop_path_prob)
        _check_seed(seed)
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
        self._drop_path_prob.assign(_check_prob("drop_path_prob", value))

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
                _build_chain([self.auxiliary_head], s1)
        _build_chain([self.classifier], (s1[0], s1[-1]))

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
        self.stem_conv = L.Conv2D(
            c_stem, 3, 1, 1, name="stem_conv", dtype=dtype
        )
        self.stem_bn = L.BatchNorm(affine=True, name="stem_bn", dtype=dtype)

    def _cell_input_shapes(self, input_shape, build):
        run = _build_chain if build else _chain_shape
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
            return L.Conv2D(c_out, 3, 2, 1, name=name, dtype=dtype)

        def bn(name):
            return L.BatchNorm(affine=True, name=name, dtype=dtype)

        self.stem0_conv_1 = conv(channels // 2, "stem0_conv_1")
        self.stem0_bn_1 = bn("stem0_bn_1")
        self.stem0_conv_2 = conv(channels, "stem0_conv_2")
        self.stem0_bn_2 = bn("stem0_bn_2")
        self.stem1_conv = conv(channels, "stem1_conv")
        self.stem1_bn = bn("stem1_bn")

    def _cell_input_shapes(self, input_shape, build):
        run = _build_chain if build else _chain_shape
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


# --------------------------------------------------------------------------
# Drop-path schedule and parameter counts.


def drop_path_prob_at(epoch, max_prob, epochs):
    """``max_prob * epoch / epochs`` (reference ``train.py``, epoch from 0)."""
    return max_prob * epoch / epochs


class DropPathSchedule(keras.callbacks.Callback):
    """Ramps the model's drop-path probability linearly from 0.

    At the start of epoch ``e`` (0-based) sets ``model.drop_path_prob =
    max_prob * e / epochs``, as the reference ``train.py``:
    ``model.drop_path_prob = args.drop_path_prob * epoch / args.epochs``.

    Args:
        max_prob: The probability the ramp tends to, in [0, 1) (reference
            default 0.2).
        epochs: Total training epochs.
    """

    def __init__(self, max_prob=DROP_PATH_PROB, epochs=600):
        super().__init__()
        self.max_prob = _check_prob("max_prob", max_prob)
        L.check_int("epochs", epochs)
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.drop_path_prob = drop_path_prob_at(
            epoch, self.max_prob, self.epochs
        )


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
