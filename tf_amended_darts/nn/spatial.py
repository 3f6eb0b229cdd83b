"""Padding and subsampling of NHWC maps with few, fast graph nodes."""

import tensorflow as tf

from tf_amended_darts.nn.graph_constants import graph_constant


def subsample_hw(x, stride, start=0):
    """`x[:, start::stride, start::stride, :]` (index constants shared).

    Written with `tf.slice` and reshapes where the sizes are known: their
    derivatives are `tf.pad` and reshapes, while a strided slice's
    (``StridedSliceGrad``) is a slow scatter on CPU (measured: 5-8% of a
    3-cell supernet's search step, benchmarks/s1_cpu.md section 6).
    """
    sizes = x.shape[1:3]
    if start:
        x = tf.slice(
            x,
            graph_constant((0, start, start, 0), tf.int32),
            graph_constant((-1, -1, -1, -1), tf.int32),
        )
        sizes = [None if n is None else n - start for n in sizes]
    if stride == 1:
        return x
    if None in sizes or x.shape[-1] is None:
        return tf.strided_slice(
            x,
            graph_constant((0, 0, 0, 0), tf.int32),
            graph_constant((0, 0, 0, 0), tf.int32),
            graph_constant((1, stride, stride, 1), tf.int32),
            end_mask=15,
        )
    # Pad to whole blocks, view as (N, H/s, s, W/s, s, C), keep offset 0.
    out = [-(-n // stride) for n in sizes]
    pads = tuple((0, o * stride - n) for o, n in zip(out, sizes, strict=True))
    x = pad_hw(x, pads)
    channels = x.shape[-1]
    blocks = tf.reshape(
        x,
        graph_constant((-1, out[0], stride, out[1], stride, channels),
                       tf.int32),
    )
    first = tf.slice(
        blocks,
        graph_constant((0,) * 6, tf.int32),
        graph_constant((-1, -1, 1, -1, 1, -1), tf.int32),
    )
    return tf.reshape(
        first, graph_constant((-1, out[0], out[1], channels), tf.int32)
    )


def pad_hw(x, pads, constant=None):
    """Pads height and width by `pads = ((top, bottom), (left, right))`.

    An `int` pads all four sides alike (PyTorch style). `constant` (a
    Python number) fills the padding; zeros by default.
    """
    if isinstance(pads, int):
        pads = ((pads, pads), (pads, pads))
    pads = tuple(tuple(int(p) for p in side) for side in pads)
    if not any(any(side) for side in pads):
        return x
    paddings = graph_constant(((0, 0),) + pads + ((0, 0),), tf.int32)
    if constant is None:
        return tf.pad(x, paddings)
    return tf.pad(
        x, paddings, constant_values=graph_constant(constant, x.dtype)
    )
