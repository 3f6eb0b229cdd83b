"""3x3 pooling with PyTorch padding and exact second derivatives.

Max pooling is a gather at the arg-max positions: `tf.nn.max_pool2d`'s
second derivative (MaxPoolGradGrad) inside `tf.function` disagrees with
finite differences (design.md). Average pooling excludes the padding, as
DARTS' `count_include_pad=False`.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts.nn.base import ConfigLayer
from tf_amended_darts.nn.graph_constants import (
    graph_cached,
    graph_constant,
    in_xla_context,
)
from tf_amended_darts.nn.spatial import pad_hw
from tf_amended_darts.nn.validate import check_bool, check_int


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

    def _out_size(self, size):
        return (size + 2 * self.padding - self.pool_size) // self.strides + 1

    def compute_output_shape(self, input_shape):
        out = list(input_shape)
        for axis in (1, 2):
            if out[axis] is not None:
                out[axis] = self._out_size(out[axis])
        return tuple(out)

    def _window(self):
        k, s = self.pool_size, self.strides
        return [1, k, k, 1], [1, s, s, 1]

    def _same_is_pytorch(self, size):
        """Whether TF 'SAME' windows on `size` are PyTorch's windows.

        TF pads `total // 2` before and the rest after, to `ceil(size / s)`
        outputs; PyTorch pads `padding` before, to `_out_size` outputs.
        (The padding never wins a max and never counts in TF's average.)
        """
        k, s, p = self.pool_size, self.strides, self.padding
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        return out == self._out_size(size) and total // 2 == p

    def _tf_padding(self, x, same_allowed):
        """The TF pooling padding giving PyTorch's windows on `x`.

        Returns:
            `("SAME", None)`, or `("VALID", pads)` with the explicit padding
            `((top, bottom), (left, right))` to apply first (None: none);
            `padding` before, and after only as much as the last window
            needs.
        """
        k, s, p = self.pool_size, self.strides, self.padding
        if p == 0:
            return "VALID", None
        sizes = (x.shape[1], x.shape[2])
        if None in sizes:
            return "VALID", ((p, p), (p, p))
        if same_allowed and all(self._same_is_pytorch(n) for n in sizes):
            return "SAME", None
        pads = tuple(
            (p, max((self._out_size(n) - 1) * s + k - n - p, 0)) for n in sizes
        )
        return "VALID", pads


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class MaxPool2D(_Pool2D):
    """Max pooling that gathers the window maxima (exact second derivatives).

    Same output as `torch.nn.MaxPool2d(pool_size, strides, padding)`
    (padding never selected, floor mode). `tf.nn.max_pool_with_argmax`
    finds each window's maximum (first in row-major order on ties) and the
    output gathers those elements from the input, so derivatives of every
    order are those of a gather (a scatter-add, then a gather again): exact
    in graph mode, unlike `tf.nn.max_pool2d`, whose second derivative
    (MaxPoolGradGrad) is wrong inside `tf.function` (design.md). Under XLA
    (`jit_compile`), which has no arg-max pooling, the maximum is taken over
    shifted strided slices instead (columns, then rows: same tie order).

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
        if in_xla_context():
            return self._max_of_slices(x)
        padding, pads = self._tf_padding(x, same_allowed=True)
        if pads is not None:
            x = pad_hw(x, pads, constant=x.dtype.min)
        ksize, strides = self._window()
        # The arg-max positions carry no derivative; without the stop a
        # forward accumulator (forward-over-reverse products) would ask for
        # the second derivative of MaxPoolWithArgmax, which TF lacks.
        _, argmax = tf.raw_ops.MaxPoolWithArgmax(
            input=tf.stop_gradient(x),
            ksize=ksize,
            strides=strides,
            padding=padding,
            Targmax=tf.int64,
            include_batch_in_index=True,
        )
        flat = tf.reshape(x, graph_constant((-1,), tf.int32))
        return tf.gather(flat, argmax, axis=graph_constant(0, tf.int32))

    def _max_of_slices(self, x):
        k, s = self.pool_size, self.strides
        x = pad_hw(x, self.padding, constant=x.dtype.min)
        for axis in (2, 1):  # first row-major maximum wins ties
            size = x.shape[axis]
            if size is None:
                size = tf.shape(x)[axis]
            span = ((size - k) // s) * s + 1
            outputs = None
            for offset in range(k):
                index = [slice(None)] * 4
                index[axis] = slice(offset, offset + span, s)
                view = x[tuple(index)]
                outputs = view if outputs is None else tf.maximum(outputs, view)
            x = outputs
        return x


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class AvgPool2D(_Pool2D):
    """Average pooling with PyTorch's explicit symmetric zero padding.

    Same output as `torch.nn.AvgPool2d(pool_size, strides, padding,
    count_include_pad=...)` (floor mode): with `count_include_pad=False` each
    window sum is divided by the number of its non-padding elements. One
    `tf.nn.avg_pool2d` ('SAME' where TF's windows are PyTorch's, which
    then also excludes the padding from the divisor; otherwise 'VALID' on
    the zero-padded input, times a constant map `k * k / count`). Average
    pooling is linear, so its derivatives of every order are exact.

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

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        exclude_pad = not self.count_include_pad and self.padding > 0
        padding, pads = self._tf_padding(x, same_allowed=exclude_pad)
        ksize, strides = self._window()
        if padding == "SAME":
            return tf.nn.avg_pool2d(x, ksize, strides, "SAME")
        padded = x if pads is None else pad_hw(x, pads)
        outputs = tf.nn.avg_pool2d(padded, ksize, strides, "VALID")
        if not exclude_pad:
            return outputs
        sizes = (x.shape[1], x.shape[2])
        if None in sizes:  # k * k / count from a pooled map of ones
            ones = pad_hw(tf.ones_like(x[:1, :, :, :1]), pads)
            return outputs / tf.nn.avg_pool2d(ones, ksize, strides, "VALID")
        key = ("avg_pool_scale", x.dtype.name, sizes, pads) + (
            self.pool_size,
            self.strides,
        )
        return outputs * graph_cached(
            key, lambda: tf.constant(self._scale_map(sizes, pads), x.dtype)
        )

    def _scale_map(self, sizes, pads):
        """`k * k / count` per output (count: real elements per window)."""
        k, s = self.pool_size, self.strides
        counts = []
        for size, (before, _) in zip(sizes, pads, strict=True):
            start = np.arange(self._out_size(size)) * s - before
            counts.append(np.minimum(start + k, size) - np.maximum(start, 0))
        scale = float(k * k) / np.outer(counts[0], counts[1])
        return scale[None, :, :, None]
