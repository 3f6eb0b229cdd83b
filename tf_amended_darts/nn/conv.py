"""Convolutions that pad like PyTorch, with PyTorch's initialiser.

Padding is folded into the op where TensorFlow allows it and matches
PyTorch ('SAME' where it coincides, else `tf.pad` + 'VALID'; oneDNN skips
EXPLICIT-padded depthwise convolutions, benchmarks/s1_cpu.md section 6).
No bias, as in DARTS.
"""

import keras
import tensorflow as tf

from tf_amended_darts.nn.base import ConfigLayer
from tf_amended_darts.nn.graph_constants import graph_constant
from tf_amended_darts.nn.spatial import pad_hw, subsample_hw
from tf_amended_darts.nn.validate import check_bool, check_int

# torch.nn.Conv2d default init, kaiming_uniform_(a=sqrt(5)): uniform with
# bound 1 / sqrt(fan_in), i.e. VarianceScaling(scale=1/3, fan_in, uniform).
PYTORCH_CONV_INIT_SCALE = 1.0 / 3.0


def pytorch_conv_initializer():
    """Returns `torch.nn.Conv2d`'s kernel init (uniform, 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=PYTORCH_CONV_INIT_SCALE, mode="fan_in", distribution="uniform"
    )


def _depthwise(x, kernel, strides, padding):
    """Undilated depthwise convolution with symmetric zero padding.

    The padding is written the way oneDNN runs fastest: 'SAME' where it
    equals PyTorch's (stride 1, ``2 padding = k - 1``), else `tf.pad` and
    'VALID'. The op's own EXPLICIT padding is correct too, but its
    input and filter gradients fall back to TensorFlow's generic CPU kernels
    (~2x slower, and run three times per conv in the amended step's double
    backward; benchmarks/s1_cpu.md section 6).
    """
    p = padding
    if p and strides == 1 and 2 * p == kernel.shape[0] - 1:
        padding_mode = "SAME"
    else:
        x = pad_hw(x, p)
        padding_mode = "VALID"
    return tf.raw_ops.DepthwiseConv2dNative(
        input=x,
        filter=kernel,
        strides=[1, strides, strides, 1],
        padding=padding_mode,
    )


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
        dtype = self.compute_dtype
        x = tf.cast(inputs, dtype)
        outputs = self._convolve(x, tf.cast(self.kernel, dtype))
        if self.use_bias:
            outputs = outputs + tf.cast(self.bias, dtype)
        return outputs

    def _dilated(self, x, kernel, convolve):
        """Pads, convolves at stride 1 with dilation, subsamples.

        TF's convolutions reject (or, depthwise, silently mis-shape)
        dilation with stride; the strided output is every s-th element of
        the stride-1 output. `convolve(x, kernel)` is the 'VALID' dilated
        convolution.
        """
        outputs = convolve(pad_hw(x, self.padding), kernel)
        if self.strides > 1:
            outputs = subsample_hw(outputs, self.strides)
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
    by `padding` on all four sides (the op's explicit padding), so outputs
    align with PyTorch at stride 2 (TF 'SAME' pads bottom/right only).
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

    def _convolve(self, x, kernel):
        p = self.padding
        if self.dilation == 1:  # PyTorch padding inside the op
            padding = [[0, 0], [p, p], [p, p], [0, 0]] if p else "VALID"
            return tf.nn.conv2d(x, kernel, self.strides, padding)

        def convolve(x, kernel):
            # tf.nn.convolution realises dilation by space-to-batch; the raw
            # Conv2D op's input gradient rejects dilation > 1 on CPU.
            return tf.nn.convolution(
                x, kernel, padding="VALID", dilations=self.dilation
            )

        return self._dilated(x, kernel, convolve)

    def compute_output_shape(self, input_shape):
        c_out = input_shape[-1] if self.filters is None else self.filters
        h, w = (self._out_size(s) for s in input_shape[1:3])
        return (input_shape[0], h, w, c_out)


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class DepthwiseConv2D(_Conv):
    """Depthwise 2D convolution (multiplier 1) with PyTorch-style padding.

    Same output as `torch.nn.Conv2d(c, c, kernel_size, strides, padding,
    dilation, groups=c, bias=use_bias)` on NHWC data (explicit symmetric zero
    padding, inside the op). TF's depthwise op has no dilation on CPU: a
    dilated convolution runs undilated on a space-to-batch view (stride 1)
    or on `x[:, ::d, ::d]` (stride == dilation); otherwise it is computed
    at stride 1 by `tf.nn.depthwise_conv2d` and subsampled. Kernel shape
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

    def _convolve(self, x, kernel):
        s, p, d = self.strides, self.padding, self.dilation
        if d == 1:
            return _depthwise(x, kernel, s, p)
        if s == d and p % d == 0:
            # Output (i, j) is the stride-1 output at (d i, d j), which
            # only sees padded pixels (d m, d n): x[:, ::d, ::d] padded by
            # p / d, undilated.
            return _depthwise(subsample_hw(x, d), kernel, 1, p // d)
        sizes = (x.shape[1], x.shape[2])
        if s == 1 and None not in sizes:
            # Space-to-batch by the dilation (zero padding included), an
            # undilated convolution, batch-to-space (cropping the excess).
            extra = [(-(n + 2 * p)) % d for n in sizes]
            block = graph_constant((d, d), tf.int32)
            pads = tuple((p, p + e) for e in extra)
            crops = tuple((0, e) for e in extra)
            x = tf.space_to_batch_nd(x, block, graph_constant(pads, tf.int32))
            outputs = _depthwise(x, kernel, 1, 0)
            return tf.batch_to_space(
                outputs, block, graph_constant(crops, tf.int32)
            )

        def convolve(x, kernel):
            return tf.nn.depthwise_conv2d(
                x, kernel, (1, 1, 1, 1), "VALID", dilations=(d, d)
            )

        return self._dilated(x, kernel, convolve)

    def compute_output_shape(self, input_shape):
        h, w = (self._out_size(s) for s in input_shape[1:3])
        return (input_shape[0], h, w, input_shape[-1])
