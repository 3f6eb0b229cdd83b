"""Primitive layers with correct first and second derivatives in graph mode.

The bi-level engine differentiates twice through the supernet (Hessian-vector
and mixed second-derivative products by nested `tf.GradientTape`s inside
`tf.function`). Two stock pieces get that wrong on TensorFlow 2.21 / Keras 3.15
(design.md, "Second derivatives in TensorFlow ... traps"):

- `keras.layers.BatchNormalization` computes the batch variance through
  `tf.nn.moments`, which stops the gradient through the mean inside the
  variance: Hessian-vector products come out biased.
- `tf.nn.max_pool2d`'s second derivative (MaxPoolGradGrad) inside
  `tf.function` disagrees with finite differences.

This module holds replacements built from ops whose derivatives of every order
are right, with PyTorch semantics (explicit symmetric padding, PyTorch batch
norm statistics) so that outputs align with the PyTorch DARTS reference
(quark0/darts) at every stride. All layers take NHWC input and compute in the
layer's compute dtype (any float dtype).
"""

import keras
import tensorflow as tf

# torch.nn.BatchNorm2d defaults, used by DARTS (quark0/darts, operations.py).
# PyTorch's momentum weights the new batch statistic; the Keras convention
# (weight of the old moving value) is 1 - 0.1 = 0.9.
PYTORCH_BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d(eps=1e-5); Keras uses 1e-3
PYTORCH_BN_MOMENTUM = 0.1  # torch.nn.BatchNorm2d(momentum=0.1)
BN_MOMENTUM = 1.0 - PYTORCH_BN_MOMENTUM  # Keras convention: 0.9

# torch.nn.Conv2d default init, kaiming_uniform_(a=sqrt(5)): uniform with
# bound 1 / sqrt(fan_in), i.e. VarianceScaling(scale=1/3, fan_in, uniform).
PYTORCH_CONV_INIT_SCALE = 1.0 / 3.0


def pytorch_conv_initializer():
    """Returns `torch.nn.Conv2d`'s kernel init (uniform, 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=PYTORCH_CONV_INIT_SCALE, mode="fan_in", distribution="uniform"
    )


def check_int(name, value, minimum=1):
    """Raises a ValueError echoing `value` unless it is an int >= minimum."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"Expected `{name}` to be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )


def check_bool(name, value):
    """Raises a ValueError echoing `value` unless it is a bool."""
    if not isinstance(value, bool):
        raise ValueError(
            f"Expected `{name}` to be a bool. Received: {name}={value!r}"
        )


def _pad_hw(x, padding, constant=0):
    """Pads height and width symmetrically by `padding` (PyTorch style)."""
    if padding == 0:
        return x
    pads = [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    return tf.pad(x, pads, constant_values=constant)


def _window_slices(x, pool_size, strides):
    """Yields the `pool_size**2` strided shifted views of a padded NHWC `x`.

    Element `(i, j)` of view `(di, dj)` is `x[:, i * s + di, j * s + dj, :]`;
    there are `(size - pool_size) // s + 1` rows and columns (floor mode, as
    PyTorch's `ceil_mode=False`). Works with unknown (dynamic) sizes.
    """
    sizes = []
    for axis in (1, 2):
        size = x.shape[axis]
        if size is None:
            size = tf.shape(x)[axis]
        sizes.append((size - pool_size) // strides + 1)
    out_h, out_w = sizes
    for di in range(pool_size):
        end_h = di + (out_h - 1) * strides + 1
        for dj in range(pool_size):
            end_w = dj + (out_w - 1) * strides + 1
            yield x[:, di:end_h:strides, dj:end_w:strides, :]


class ConfigLayer(keras.layers.Layer):
    """A layer whose `get_config` adds the attributes named in `_config_keys`.

    Each name is both a constructor argument and a public attribute; the
    base layer's config (name, dtype, trainable) is chained first.

    Args:
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ()

    def get_config(self):
        config = super().get_config()
        config.update({key: getattr(self, key) for key in self._config_keys})
        return config


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class BatchNorm(ConfigLayer):
    """Batch normalisation over N, H, W per channel, with PyTorch semantics.

    Training mode normalises with the biased batch variance computed as
    `mean(square(x - mean))`, the gradient flowing through the mean in both
    places (no `stop_gradient`, unlike `tf.nn.moments`), so that second
    derivatives are exact. Moving statistics follow `torch.nn.BatchNorm2d`:
    `moving = momentum * moving + (1 - momentum) * batch`, with the unbiased
    batch variance (`n / (n - 1)`) for `moving_variance`. The updates are plain
    `variable.assign` calls, so under `model.stateless_call` they come back in
    the returned non-trainable values; every training-mode call updates them.
    Under a `tf.distribute` strategy each replica normalises with its own
    batch statistics and the moving statistics take the mean of the replicas'
    updates (`aggregation="mean"`). Inference mode uses the moving statistics.

    Reference: Ioffe & Szegedy, 2015; `torch.nn.BatchNorm2d`. DARTS
    (quark0/darts) uses `affine=False` during search, `True` in re-training.

    Args:
        affine: Whether to learn a per-channel scale `gamma` (init 1) and
            offset `beta` (init 0).
        momentum: Keras-convention momentum, the weight of the old moving
            value (PyTorch momentum 0.1 == 0.9 here).
        epsilon: Added to the variance (PyTorch default 1e-5).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("affine", "momentum", "epsilon")

    def __init__(
        self,
        affine=True,
        momentum=BN_MOMENTUM,
        epsilon=PYTORCH_BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_bool("affine", affine)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"Expected `momentum` in [0, 1]. Received: momentum={momentum}"
            )
        if not epsilon > 0.0:
            raise ValueError(
                f"Expected `epsilon` > 0. Received: epsilon={epsilon}"
            )
        self.affine = affine
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "Expected a 4D NHWC input with a known channel count. "
                f"Received: input_shape={input_shape}"
            )
        shape = (input_shape[-1],)
        if self.affine:
            self.gamma = self.add_weight(
                shape=shape, name="gamma", initializer="ones", autocast=False
            )
            self.beta = self.add_weight(
                shape=shape, name="beta", initializer="zeros", autocast=False
            )
        for name, init in (
            ("moving_mean", "zeros"),
            ("moving_variance", "ones"),
        ):
            variable = self.add_weight(
                shape=shape,
                name=name,
                initializer=init,
                trainable=False,
                autocast=False,
                aggregation="mean",
            )
            setattr(self, name, variable)

    def call(self, inputs, training=None):
        dtype = self.compute_dtype
        x = tf.cast(inputs, dtype)
        if training:
            mean = tf.reduce_mean(x, axis=(0, 1, 2))
            centred = x - mean
            variance = tf.reduce_mean(tf.square(centred), axis=(0, 1, 2))
            self._update_moving_statistics(x, mean, variance)
        else:
            centred = x - tf.cast(self.moving_mean, dtype)
            variance = tf.cast(self.moving_variance, dtype)
        outputs = centred * tf.math.rsqrt(variance + self.epsilon)
        if self.affine:
            outputs = outputs * tf.cast(self.gamma, dtype)
            outputs = outputs + tf.cast(self.beta, dtype)
        return outputs

    def _update_moving_statistics(self, x, mean, variance):
        variance = tf.stop_gradient(variance)
        shape = tf.shape(x)
        count = tf.cast(shape[0] * shape[1] * shape[2], variance.dtype)
        # PyTorch stores the unbiased variance; guard n == 1.
        unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
        for var, value in (
            (self.moving_mean, tf.stop_gradient(mean)),
            (self.moving_variance, unbiased),
        ):
            value = tf.cast(value, var.dtype)
            var.assign(self.momentum * var + (1.0 - self.momentum) * value)

    def compute_output_shape(self, input_shape):
        return input_shape


class _Pool2D(ConfigLayer):
    """Shared arguments and output shape of the two pooling layers."""

    _config_keys = ("pool_size", "strides", "padding")

    def __init__(self, pool_size=3, strides=1, padding=1, **kwargs):
        super().__init__(**kwargs)
        check_int("pool_size", pool_size)
        check_int("strides", strides)
        check_int("padding", padding, minimum=0)
        if padding > pool_size // 2:
            # torch max_pool2d / avg_pool2d: "pad should be at most half of
            # kernel size"; so every window holds a real element.
            raise ValueError(
                f"Expected `padding` <= pool_size // 2 = {pool_size // 2}. "
                f"Received: padding={padding}"
            )
        self.pool_size = pool_size
        self.strides = strides
        self.padding = padding

    def compute_output_shape(self, input_shape):
        out = list(input_shape)
        for axis in (1, 2):
            if out[axis] is not None:
                size = out[axis] + 2 * self.padding - self.pool_size
                out[axis] = size // self.strides + 1
        return tuple(out)


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class MaxPool2D(_Pool2D):
    """Max pooling as `tf.maximum` over shifted strided slices.

    Same output as `torch.nn.MaxPool2d(pool_size, strides, padding)`
    (symmetric padding with the dtype's lowest finite value, floor mode). Built
    from slices and `tf.maximum` because the second derivative of
    `tf.nn.max_pool2d` is wrong inside `tf.function` (design.md).

    Reference: DARTS `nn.MaxPool2d(3, stride=stride, padding=1)`
    (quark0/darts, operations.py).

    Args:
        pool_size: Window height and width.
        strides: Step of the window in height and width.
        padding: Symmetric padding on each side (at most `pool_size // 2`).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        x = _pad_hw(x, self.padding, constant=x.dtype.min)
        outputs = None
        for view in _window_slices(x, self.pool_size, self.strides):
            outputs = view if outputs is None else tf.maximum(outputs, view)
        return outputs


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class AvgPool2D(_Pool2D):
    """Average pooling with PyTorch's explicit symmetric zero padding.

    Same output as `torch.nn.AvgPool2d(pool_size, strides, padding,
    count_include_pad=...)` (floor mode): with `count_include_pad=False` each
    window sum is divided by the number of its non-padding elements.

    Reference: DARTS `nn.AvgPool2d(3, stride=stride, padding=1,
    count_include_pad=False)` (quark0/darts, operations.py).

    Args:
        pool_size: Window height and width.
        strides: Step of the window in height and width.
        padding: Symmetric zero padding on each side (<= `pool_size // 2`).
        count_include_pad: Whether padding zeros count in the divisor.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = _Pool2D._config_keys + ("count_include_pad",)

    def __init__(
        self,
        pool_size=3,
        strides=1,
        padding=1,
        count_include_pad=False,
        **kwargs,
    ):
        super().__init__(pool_size, strides, padding, **kwargs)
        check_bool("count_include_pad", count_include_pad)
        self.count_include_pad = count_include_pad

    def _window_sum(self, x):
        outputs = None
        x = _pad_hw(x, self.padding)
        for view in _window_slices(x, self.pool_size, self.strides):
            outputs = view if outputs is None else outputs + view
        return outputs

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        sums = self._window_sum(x)
        if self.count_include_pad or self.padding == 0:
            return sums / float(self.pool_size * self.pool_size)
        return sums / self._window_sum(tf.ones_like(x[:1, :, :, :1]))


class _Conv(ConfigLayer):
    """Shared arguments, padding, striding and bias of the convolutions."""

    _config_keys = (
        "kernel_size",
        "strides",
        "padding",
        "dilation",
        "use_bias",
    )

    def __init__(
        self,
        kernel_size,
        strides=1,
        padding=0,
        dilation=1,
        use_bias=False,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("kernel_size", kernel_size)
        check_int("strides", strides)
        check_int("padding", padding, minimum=0)
        check_int("dilation", dilation)
        check_bool("use_bias", use_bias)
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.dilation = dilation
        self.use_bias = use_bias
        if kernel_initializer is None:
            kernel_initializer = self._default_initializer()
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _default_initializer(self):
        return pytorch_conv_initializer()

    def _add_weights(self, kernel_shape, fan_in, channels):
        self.kernel = self.add_weight(
            shape=kernel_shape,
            name="kernel",
            initializer=self.kernel_initializer,
        )
        if self.use_bias:  # torch.nn.Conv2d bias: uniform, 1 / sqrt(fan_in)
            bound = 1.0 / fan_in**0.5
            self.bias = self.add_weight(
                shape=(channels,),
                name="bias",
                initializer=keras.initializers.RandomUniform(-bound, bound),
            )

    def call(self, inputs):
        x = _pad_hw(tf.cast(inputs, self.compute_dtype), self.padding)
        kernel = tf.cast(self.kernel, self.compute_dtype)
        s = self.strides
        if self.dilation > 1 and s > 1:
            # TF's convolutions reject (or, depthwise, silently mis-shape)
            # dilation with stride; the strided output is every s-th
            # element of the stride-1 output.
            outputs = self._convolve(x, kernel, 1)[:, ::s, ::s, :]
        else:
            outputs = self._convolve(x, kernel, s)
        if self.use_bias:
            outputs = outputs + tf.cast(self.bias, self.compute_dtype)
        return outputs

    def _out_size(self, size):
        if size is None:
            return None
        span = self.dilation * (self.kernel_size - 1)
        return (size + 2 * self.padding - span - 1) // self.strides + 1

    def get_config(self):
        config = super().get_config()
        config["kernel_initializer"] = keras.initializers.serialize(
            self.kernel_initializer
        )
        return config


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class Conv2D(_Conv):
    """2D convolution with PyTorch-style explicit symmetric padding.

    Same output as `torch.nn.Conv2d(c_in, filters, kernel_size, strides,
    padding, dilation, bias=use_bias)` on NHWC data: the input is zero padded
    by `padding` on all four sides, then convolved with 'VALID' padding, so
    outputs align with PyTorch at stride 2 (TF 'SAME' pads bottom/right only).
    Output size: `(size + 2 * padding - dilation * (kernel_size - 1) - 1)
    // strides + 1`. Kernel shape `(k, k, c_in, filters)`.

    Reference: DARTS `ReLUConvBN`, `FactorizedReduce` (quark0/darts).

    Args:
        filters: Output channels; `None` means as many as the input has
            (resolved in `build`).
        kernel_size: Kernel height and width.
        strides: Step in height and width.
        padding: Symmetric zero padding on each side.
        dilation: Dilation rate in height and width.
        use_bias: Whether to add a bias (DARTS convolutions have none).
        kernel_initializer: Kernel initializer; defaults to PyTorch's
            (uniform with bound `1 / sqrt(fan_in)`).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("filters",) + _Conv._config_keys

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding=0,
        dilation=1,
        use_bias=False,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(
            kernel_size,
            strides=strides,
            padding=padding,
            dilation=dilation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            **kwargs,
        )
        if filters is not None:
            check_int("filters", filters)
        self.filters = filters

    def build(self, input_shape):
        c_in, k = input_shape[-1], self.kernel_size
        if c_in is None:
            raise ValueError(
                f"Expected a known channel count. Received: {input_shape}"
            )
        c_out = c_in if self.filters is None else self.filters
        self._add_weights((k, k, c_in, c_out), c_in * k * k, c_out)

    def _convolve(self, x, kernel, strides):
        # tf.nn.convolution realises dilation by space-to-batch; the raw
        # Conv2D op's input gradient rejects dilation > 1 on CPU.
        return tf.nn.convolution(
            x, kernel, strides=strides, padding="VALID", dilations=self.dilation
        )

    def compute_output_shape(self, input_shape):
        c_out = input_shape[-1] if self.filters is None else self.filters
        h, w = (self._out_size(s) for s in input_shape[1:3])
        return (input_shape[0], h, w, c_out)


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class DepthwiseConv2D(_Conv):
    """Depthwise 2D convolution (multiplier 1) with PyTorch-style padding.

    Same output as `torch.nn.Conv2d(c, c, kernel_size, strides, padding,
    dilation, groups=c, bias=use_bias)` on NHWC data (explicit symmetric zero
    padding, then 'VALID'). Dilation with stride > 1 is computed at stride 1
    and subsampled, which TF's own op does not support. Kernel shape
    `(k, k, c, 1)`.

    Reference: DARTS `SepConv`, `DilConv` (quark0/darts, operations.py).

    Args:
        kernel_size: Kernel height and width.
        strides: Step in height and width.
        padding: Symmetric zero padding on each side.
        dilation: Dilation rate in height and width.
        use_bias: Whether to add a bias (DARTS convolutions have none).
        kernel_initializer: Kernel initializer; defaults to PyTorch's
            (uniform with bound `1 / kernel_size`, as fan_in = k * k).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    def _default_initializer(self):
        bound = 1.0 / self.kernel_size  # 1 / sqrt(fan_in), fan_in = k * k
        return keras.initializers.RandomUniform(-bound, bound)

    def build(self, input_shape):
        c_in, k = input_shape[-1], self.kernel_size
        if c_in is None:
            raise ValueError(
                f"Expected a known channel count. Received: {input_shape}"
            )
        self._add_weights((k, k, c_in, 1), k * k, c_in)

    def _convolve(self, x, kernel, strides):
        return tf.nn.depthwise_conv2d(
            x,
            kernel,
            strides=(1, strides, strides, 1),
            padding="VALID",
            dilations=(self.dilation, self.dilation),
        )

    def compute_output_shape(self, input_shape):
        h, w = (self._out_size(s) for s in input_shape[1:3])
        return (input_shape[0], h, w, input_shape[-1])
