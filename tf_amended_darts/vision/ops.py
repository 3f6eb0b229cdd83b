"""DARTS candidate operators and the one factory table that builds them.

Structural parity with the PyTorch DARTS reference (quark0/darts,
`operations.py`), on NHWC data, with PyTorch-style explicit symmetric padding
(see `layers.py`) so that outputs align with the reference at stride 2.
Convolutions have no bias. Every operator maps `C` channels to `C` channels
(`channels` of the factory); the input channel count is read from the input
shape in `build`.

The search-time MixedOp of the reference appends a non-affine batch norm to
the pooling operators; that belongs to the mixed edge, not here.
"""

from collections.abc import Callable

import keras
import tensorflow as tf

from tf_amended_darts.nn.base import ConfigLayer, build_chain
from tf_amended_darts.nn.batch_norm import BatchNorm
from tf_amended_darts.nn.contexts import relu
from tf_amended_darts.nn.conv import Conv2D, DepthwiseConv2D
from tf_amended_darts.nn.graph_constants import graph_constant
from tf_amended_darts.nn.pooling import AvgPool2D, MaxPool2D
from tf_amended_darts.nn.spatial import pad_hw, subsample_hw
from tf_amended_darts.nn.validate import check_bool, check_int
from tf_amended_darts.vision.search_space import NOISE_OP

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

VALID_STRIDES = (1, 2)  # normal cells (1) and reduction cells (2)

# Kernel size, padding and dilation of each convolutional operator
# (quark0/darts, operations.py, OPS).
_SEP_CONV = {"sep_conv_3x3": (3, 1), "sep_conv_5x5": (5, 2)}
_DIL_CONV = {"dil_conv_3x3": (3, 2, 2), "dil_conv_5x5": (5, 4, 2)}
POOL_SIZE = 3  # nn.MaxPool2d(3, ...) / nn.AvgPool2d(3, ...)
POOL_PADDING = 1


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class Identity(keras.layers.Layer):
    """Returns its input (`skip_connect` at stride 1).

    Reference: DARTS `Identity` (quark0/darts, operations.py).

    Args:
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class Zero(ConfigLayer):
    """Outputs zeros: `x * 0`, strided `x[:, ::s, ::s, :] * 0` when `s > 1`.

    Multiplying (rather than creating zeros) keeps the reference's shape and
    NaN propagation. Output size is `ceil(size / stride)`.

    Reference: DARTS `Zero` (quark0/darts, operations.py).

    Args:
        stride: Spatial subsampling step.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("stride",)

    def __init__(self, stride=1, **kwargs):
        super().__init__(**kwargs)
        check_int("stride", stride)
        self.stride = stride

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        if self.stride > 1:
            x = subsample_hw(x, self.stride)
        return x * graph_constant(0, x.dtype)

    def compute_output_shape(self, input_shape):
        out = list(input_shape)
        for axis in (1, 2):
            if out[axis] is not None:
                out[axis] = -(-out[axis] // self.stride)
        return tuple(out)


# R-DARTS' S4 operator (Zela et al., ICLR 2020; automl/RobustDARTS
# src/operations.py: `'noise': NoiseOp(stride, 0., 1.)`); not in PRIMITIVES.
NOISE = NOISE_OP
NOISE_MEAN = 0.0  # NoiseOp(stride, 0., 1.)
NOISE_STD = 1.0
# Weight-file entry of a `Noise` layer's seed-generator state.
NOISE_SEED_KEY = "noise_seed"


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class Noise(ConfigLayer):
    """Gaussian noise shaped like its (strided) input, whatever its values.

    R-DARTS' S4 pairs it with ``sep_conv_3x3`` on every edge: an operator
    that carries no information, which a robust search should never pick.
    The output ignores the input values (its derivatives with respect to
    the input are zero to every order) and is drawn afresh on every call,
    in training and inference alike, as the reference's ``NoiseOp``. Output
    size is ``ceil(size / stride)``.

    The draws come from the layer's own `keras.random.SeedGenerator`, whose
    state is saved with the weights (Keras weight files skip seed
    generators: without it a resumed search would draw other noise).

    Reference: R-DARTS `NoiseOp` (automl/RobustDARTS, src/operations.py).

    Args:
        stride: Spatial subsampling step.
        mean: Mean of the noise.
        std: Standard deviation of the noise (>= 0).
        seed: Seed of the generator (an int), or None for Keras' default
            (from the global seed, `keras.utils.set_random_seed`).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("stride", "mean", "std", "seed")

    def __init__(
        self, stride=1, mean=NOISE_MEAN, std=NOISE_STD, seed=None, **kwargs
    ):
        super().__init__(**kwargs)
        check_int("stride", stride)
        if isinstance(mean, bool) or not isinstance(mean, (int, float)):
            raise ValueError(f"Expected a number `mean`. Received: {mean!r}")
        if isinstance(std, bool) or not isinstance(std, (int, float)) or (
            std < 0
        ):
            raise ValueError(
                f"Expected a number `std` >= 0. Received: std={std!r}"
            )
        if seed is not None:
            check_int("seed", seed, minimum=0)
        self.stride = stride
        self.mean = float(mean)
        self.std = float(std)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(
            seed, name="noise_seed"
        )

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        if self.stride > 1:
            x = subsample_hw(x, self.stride)
        return keras.random.normal(
            tf.shape(x),
            mean=self.mean,
            stddev=self.std,
            dtype=self.compute_dtype,
            seed=self.seed_generator,
        )

    def compute_output_shape(self, input_shape):
        return Zero(self.stride).compute_output_shape(input_shape)

    def save_own_variables(self, store):
        """Saves the seed-generator state (the layer has no weights)."""
        super().save_own_variables(store)
        store[NOISE_SEED_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        """Restores the seed-generator state saved by `save_own_variables`.

        Raises:
            ValueError: when the entry is missing (weights of another
                layer).
        """
        if NOISE_SEED_KEY not in store.keys():
            raise ValueError(
                f"The weights of {self.name!r} hold {sorted(store.keys())}; "
                f"a Noise layer expects its seed state {NOISE_SEED_KEY!r}."
            )
        self.seed_generator.state.assign(store[NOISE_SEED_KEY])


class _Sequential(ConfigLayer):
    """Builds and shapes its sub-layers in the order `_chain()` lists."""

    def _chain(self):
        raise NotImplementedError

    def build(self, input_shape):
        build_chain(self._chain(), input_shape)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._chain():
            shape = tuple(layer.compute_output_shape(shape))
        return shape


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class ReLUConvBN(_Sequential):
    """ReLU -> convolution (no bias) -> batch norm.

    Reference: DARTS `ReLUConvBN` (quark0/darts, operations.py), the cell
    preprocessing with `kernel_size=1, stride=1, padding=0`.

    Args:
        c_out: Output channels.
        kernel_size: Convolution kernel size.
        stride: Convolution stride.
        padding: Symmetric zero padding (PyTorch style).
        affine: Whether the batch norm learns a scale and offset.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("c_out", "kernel_size", "stride", "padding", "affine")

    def __init__(
        self, c_out, kernel_size=1, stride=1, padding=0, affine=True, **kwargs
    ):
        super().__init__(**kwargs)
        check_int("c_out", c_out)
        check_bool("affine", affine)
        self.c_out = c_out
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.affine = affine
        dtype = self.dtype_policy
        self.conv = Conv2D(
            c_out, kernel_size, stride, padding, name="conv", dtype=dtype
        )
        self.bn = BatchNorm(affine=affine, name="bn", dtype=dtype)

    def _chain(self):
        return (self.conv, self.bn)

    def call(self, inputs, training=None):
        x = self.conv(relu(inputs))
        return self.bn(x, training=training)


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class DilConv(_Sequential):
    """ReLU -> depthwise kxk (dilated) -> 1x1 convolution -> batch norm.

    Reference: DARTS `DilConv` (quark0/darts, operations.py);
    `dil_conv_3x3` is `DilConv(C, C, 3, stride, 2, 2)`, `dil_conv_5x5`
    is `DilConv(C, C, 5, stride, 4, 2)`.

    Args:
        c_out: Output channels of the 1x1 convolution; `None` keeps the
            input channel count (resolved in `build`).
        kernel_size: Depthwise kernel size.
        stride: Depthwise stride.
        padding: Depthwise symmetric zero padding (PyTorch style).
        dilation: Depthwise dilation rate.
        affine: Whether the batch norm learns a scale and offset.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = (
        "c_out",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "affine",
    )

    def __init__(
        self,
        c_out,
        kernel_size,
        stride,
        padding,
        dilation=1,
        affine=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if c_out is not None:
            check_int("c_out", c_out)
        check_bool("affine", affine)
        self.c_out = c_out
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.affine = affine
        dtype = self.dtype_policy
        self.depthwise = DepthwiseConv2D(
            kernel_size,
            stride,
            padding,
            dilation,
            name="depthwise",
            dtype=dtype,
        )
        self.pointwise = Conv2D(c_out, 1, name="pointwise", dtype=dtype)
        self.bn = BatchNorm(affine=affine, name="bn", dtype=dtype)

    def _chain(self):
        return (self.depthwise, self.pointwise, self.bn)

    def call(self, inputs, training=None):
        x = self.pointwise(self.depthwise(relu(inputs)))
        return self.bn(x, training=training)


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class SepConv(_Sequential):
    """Two stacked [ReLU -> depthwise kxk -> 1x1 convolution -> batch norm].

    The first block has stride `stride` and keeps the input channel count
    (C_in -> C_in); the second has stride 1 and maps C_in -> `c_out`.

    Reference: DARTS `SepConv` (quark0/darts, operations.py);
    `sep_conv_3x3` is `SepConv(C, C, 3, stride, 1)`, `sep_conv_5x5` is
    `SepConv(C, C, 5, stride, 2)`.

    Args:
        c_out: Output channels.
        kernel_size: Depthwise kernel size.
        stride: Stride of the first depthwise convolution.
        padding: Depthwise symmetric zero padding (PyTorch style).
        affine: Whether the batch norms learn a scale and offset.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("c_out", "kernel_size", "stride", "padding", "affine")

    def __init__(
        self, c_out, kernel_size, stride, padding, affine=True, **kwargs
    ):
        super().__init__(**kwargs)
        check_int("c_out", c_out)
        check_bool("affine", affine)
        self.c_out = c_out
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.affine = affine
        dtype = self.dtype_policy
        self.block_1 = DilConv(
            None,
            kernel_size,
            stride,
            padding,
            affine=affine,
            name="block_1",
            dtype=dtype,
        )
        self.block_2 = DilConv(
            c_out,
            kernel_size,
            1,
            padding,
            affine=affine,
            name="block_2",
            dtype=dtype,
        )

    def _chain(self):
        return (self.block_1, self.block_2)

    def call(self, inputs, training=None):
        x = self.block_1(inputs, training=training)
        return self.block_2(x, training=training)


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class FactorizedReduce(ConfigLayer):
    """Halves height and width: ReLU -> two 1x1 stride-2 convs -> concat -> BN.

    `conv_1` sees pixels (2i, 2j) and `conv_2` pixels (2i + 1, 2j + 1), each
    with `c_out // 2` filters; outputs are concatenated on channels. The
    reference applies `conv_2` to `x[:, :, 1:, 1:]`, which fails on odd sizes
    (the two halves differ in size); here `conv_2` sees the input shifted by
    one pixel and zero padded at the bottom/right, which is identical on even
    sizes and gives `ceil(size / 2)` on odd ones (as NAS-Bench-201 does).

    Reference: DARTS `FactorizedReduce` (quark0/darts, operations.py).

    Args:
        c_out: Output channels; must be even.
        affine: Whether the batch norm learns a scale and offset.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("c_out", "affine")

    def __init__(self, c_out, affine=True, **kwargs):
        super().__init__(**kwargs)
        check_int("c_out", c_out)
        if c_out % 2:
            raise ValueError(
                "Expected `c_out` to be even (two halves of c_out // 2 "
                f"channels). Received: c_out={c_out}"
            )
        check_bool("affine", affine)
        self.c_out = c_out
        self.affine = affine
        dtype = self.dtype_policy
        half = c_out // 2
        self.conv_1 = Conv2D(half, 1, 2, name="conv_1", dtype=dtype)
        self.conv_2 = Conv2D(half, 1, 2, name="conv_2", dtype=dtype)
        self.bn = BatchNorm(affine=affine, name="bn", dtype=dtype)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        build_chain([self.conv_1], input_shape)
        build_chain([self.conv_2], input_shape)
        build_chain([self.bn], self.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        x = relu(tf.cast(inputs, self.compute_dtype))
        # x[:, 1:, 1:, :], zero padded at the bottom / right where the size
        # is odd (or unknown): even sizes need no padding for size / 2.
        shifted = subsample_hw(x, 1, start=1)
        shifted = pad_hw(
            shifted,
            tuple((0, 1 if n is None or n % 2 else 0) for n in x.shape[1:3]),
        )
        x = tf.concat(
            [self.conv_1(x), self.conv_2(shifted)],
            axis=graph_constant(-1, tf.int32),
        )
        return self.bn(x, training=training)

    def compute_output_shape(self, input_shape):
        out = list(self.conv_1.compute_output_shape(input_shape))
        out[-1] = self.c_out
        return tuple(out)


def _skip_connect(channels, stride, affine, **kwargs):
    if stride == 1:
        return Identity(**kwargs)
    return FactorizedReduce(channels, affine=affine, **kwargs)


def _sep_conv(kernel_size, padding):
    def factory(channels, stride, affine, **kwargs):
        return SepConv(
            channels, kernel_size, stride, padding, affine=affine, **kwargs
        )

    return factory


def _dil_conv(kernel_size, padding, dilation):
    def factory(channels, stride, affine, **kwargs):
        return DilConv(
            channels,
            kernel_size,
            stride,
            padding,
            dilation,
            affine=affine,
            **kwargs,
        )

    return factory


# name -> (channels, stride, affine) -> layer (quark0/darts, operations.py).
# Extra keyword arguments (`name`, `dtype`) go to the layer's constructor.
OPS: dict[str, Callable[[int, int, bool], keras.layers.Layer]] = {
    "none": lambda c, stride, affine, **kwargs: Zero(stride, **kwargs),
    "max_pool_3x3": lambda c, stride, affine, **kwargs: MaxPool2D(
        POOL_SIZE, stride, POOL_PADDING, **kwargs
    ),
    "avg_pool_3x3": lambda c, stride, affine, **kwargs: AvgPool2D(
        POOL_SIZE, stride, POOL_PADDING, count_include_pad=False, **kwargs
    ),
    "skip_connect": _skip_connect,
    NOISE: lambda c, stride, affine, **kwargs: Noise(stride, **kwargs),
    **{name: _sep_conv(k, p) for name, (k, p) in _SEP_CONV.items()},
    **{name: _dil_conv(k, p, d) for name, (k, p, d) in _DIL_CONV.items()},
}


def _check_name(name):
    if name not in OPS:
        raise ValueError(
            f"Unknown operator name. Expected one of {sorted(OPS)}. "
            f"Received: name={name!r}"
        )


def _check_stride(stride):
    if stride not in VALID_STRIDES or isinstance(stride, bool):
        raise ValueError(
            f"Expected `stride` in {VALID_STRIDES}. Received: stride={stride!r}"
        )


def make_op(name, channels, stride, affine=True, **kwargs):
    """Builds the candidate operator `name` (C -> C channels).

    Args:
        name: One of `OPS` (e.g. the entries of `PRIMITIVES`).
        channels: Channel count C of input and output.
        stride: 1 (normal cell) or 2 (reduction cell).
        affine: Whether batch norms learn a scale and offset (False during
            search, True in re-training networks).
        **kwargs: Layer keyword arguments (`name`, `dtype`, ...).

    Returns:
        An unbuilt `keras.layers.Layer`.

    Raises:
        ValueError: For an unknown name, a stride not in (1, 2), or a
            non-positive channel count.
    """
    _check_name(name)
    _check_stride(stride)
    check_int("channels", channels)
    check_bool("affine", affine)
    return OPS[name](channels, stride, affine, **kwargs)


def is_parametric(name, stride=1):
    """Whether operator `name` at `stride` has trainable weights.

    Convolutions always do; `skip_connect` does at stride 2 only (it is
    `FactorizedReduce` there); `none` and the pooling operators never do.

    Raises:
        ValueError: For an unknown name or a stride not in (1, 2).
    """
    _check_name(name)
    _check_stride(stride)
    if name in _SEP_CONV or name in _DIL_CONV:
        return True
    return name == "skip_connect" and stride == 2


def expected_param_count(name, channels, stride, affine=True):
    """Trainable parameter count of an operator, from closed-form formulas.

    With C channels, batch norm contributing 2C when affine (0 otherwise):
    `sep_conv_k`: 2 * (C*k*k + C*C) + 2 * bn; `dil_conv_k`: C*k*k + C*C + bn;
    `skip_connect` at stride 2 (FactorizedReduce): 2 * C * (C/2) + bn; all
    others 0. Moving statistics are not counted (as in the reference).

    Raises:
        ValueError: For an unknown name or a stride not in (1, 2).
    """
    _check_name(name)
    _check_stride(stride)
    check_int("channels", channels)
    c = channels
    bn = 2 * c if affine else 0
    if name in _SEP_CONV:
        k = _SEP_CONV[name][0]
        return 2 * (c * k * k + c * c + bn)
    if name in _DIL_CONV:
        k = _DIL_CONV[name][0]
        return c * k * k + c * c + bn
    if name == "skip_connect" and stride == 2:
        return 2 * c * (c // 2) + bn
    return 0
