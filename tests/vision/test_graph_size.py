"""Graph-size regression tests: traced node counts of the search operators.

Tracing costs Python time per graph node (about 0.4 ms here), and the
bi-level step traces the supernet forward, backward and double-backward, so
graph size is the search's compile time. Unlike wall-clock time, node counts
are deterministic: each limit sits a little above the count measured on
TensorFlow 2.21 / Keras 3.15.1 (stated next to it, with the count before the
graph-size work in parentheses). A TF upgrade may shift the counts a little;
a large jump means a layer regressed (e.g. back to a per-call constant or a
slice-built pooling).

Counted as `len(graph.as_graph_def().node)` of the traced `tf.function`
(placeholders, variable reads and the output identity included), on an
8x16x16x4 input, operators built by `make_op(name, 4, stride, affine=False)`
and called with `training=True`.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import bilevel
from tf_amended_darts.nn.batch_norm import BatchNorm
from tf_amended_darts.nn.contexts import frozen_statistics
from tf_amended_darts.vision import ops
from tf_amended_darts.vision.supernet import SearchNetwork

INPUT_SHAPE = (8, 16, 16, 4)

# (name, stride): (limit, limit under frozen_statistics). Measured (strided
# subsampling and padding are a few nodes larger since they are written with
# slices, reshapes and pads, whose derivatives are fast on CPU:
# `layers.subsample_hw`, `layers._depthwise`):
OP_LIMITS = {
    ("none", 1): (5, 5),  # 4, 4 (4)
    ("none", 2): (12, 12),  # 11, 11 (8; 7 as one strided slice)
    ("max_pool_3x3", 1): (9, 9),  # 7, 7 (49)
    ("max_pool_3x3", 2): (12, 12),  # 10, 10 (49)
    ("avg_pool_3x3", 1): (5, 5),  # 3, 3 (100)
    ("avg_pool_3x3", 2): (9, 9),  # 7, 7 (100)
    ("skip_connect", 1): (3, 3),  # 2, 2 (2)
    ("skip_connect", 2): (41, 25),  # 37, 22 (68)
    ("sep_conv_3x3", 1): (58, 30),  # 53, 26 (125)
    ("sep_conv_3x3", 2): (60, 31),  # 55, 28 (125)
    ("sep_conv_5x5", 1): (58, 30),  # 53, 26 (125)
    ("sep_conv_5x5", 2): (60, 31),  # 55, 28 (125)
    ("dil_conv_3x3", 1): (41, 25),  # 37, 22 (74)
    ("dil_conv_3x3", 2): (43, 27),  # 39, 24 (78)
    ("dil_conv_5x5", 1): (41, 25),  # 37, 22 (74)
    ("dil_conv_5x5", 2): (43, 27),  # 39, 24 (78)
}

# affine: (training, frozen training, inference). Measured:
BN_LIMITS = {
    False: (28, 11, 15),  # 25, 9, 13 (53, -, 12): the fused kernel
    True: (36, 20, 21),  # 33, 18, 19 (59, -, 18)
}

# Graph of an input Hessian-vector product (nested tapes) through the layer:
# the pooling layers' second derivatives must stay small too. Measured:
HVP_LIMITS = {
    ("max_pool_3x3", 1): 110,  # 97 (468)
    ("max_pool_3x3", 2): 145,  # 130 (468)
    ("avg_pool_3x3", 1): 35,  # 31 (302)
    ("avg_pool_3x3", 2): 82,  # 74 (302)
}

# SearchNetwork(10, layers=3, init_channels=4), 2x16x16x3 input, training
# forward. Measured: 7,965 (30,009; 11,084 before batch norm's hand-written
# derivatives, 10,143 before its fused kernels and the shared ReLU of each
# edge); frozen statistics 3,652 (6,771; 5,830).
SUPERNET_LIMIT = 9_000
SUPERNET_FROZEN_LIMIT = 4_000

# The amended product (`bilevel.amended_product_exact`: forward, backward,
# two double-backward passes) through one frozen, non-affine batch norm,
# L = sum(sin(bn(x * w) * a)): batch norm dominated the supernet's amended
# graph (~300 of its nodes per batch norm). Measured: 176 (363 with
# autodiff of the plain formula; 172 with the hand-written derivatives
# before the fused kernels).
BN_AMENDED_LIMIT = 195


def _graph(fn, *args):
    """The graph of `fn` traced by `tf.function` on `args`."""
    concrete = tf.function(fn, autograph=False).get_concrete_function(*args)
    return concrete.graph


def _count(fn, *args):
    """Node count of `fn` traced by `tf.function` on `args`."""
    return len(_graph(fn, *args).as_graph_def().node)


def _training_call(layer):
    if layer._call_has_training_arg:
        return lambda h: layer(h, training=True)
    return layer


def _input():
    return tf.constant(
        np.random.default_rng(0).normal(size=INPUT_SHAPE), "float32"
    )


@pytest.mark.parametrize("name,stride", sorted(OP_LIMITS))
def test_operator_forward_graph_size(name, stride):
    limit, frozen_limit = OP_LIMITS[name, stride]
    op = ops.make_op(name, INPUT_SHAPE[-1], stride, affine=False)
    op.build(INPUT_SHAPE)
    x = _input()
    call = _training_call(op)
    assert _count(call, x) <= limit
    with frozen_statistics():
        assert _count(call, x) <= frozen_limit


@pytest.mark.parametrize("affine", [False, True])
def test_batch_norm_graph_size(affine):
    limit, frozen_limit, inference_limit = BN_LIMITS[affine]
    bn = BatchNorm(affine=affine)
    bn.build(INPUT_SHAPE)
    x = _input()

    def train(h):
        return bn(h, training=True)

    assert _count(train, x) <= limit
    with frozen_statistics():
        assert _count(train, x) <= frozen_limit
    assert _count(lambda h: bn(h, training=False), x) <= inference_limit


def test_batch_norm_amended_product_graph_size():
    bn = BatchNorm(affine=False)
    bn.build(INPUT_SHAPE)
    x = _input()

    def loss_fn(w, a):
        with frozen_statistics():
            return tf.reduce_sum(tf.sin(bn(x * w[0], training=True) * a[0]))

    def product(w, a, v):
        return bilevel.amended_product_exact(loss_fn, w, a, v)

    one = [tf.constant(1.0)]
    assert _count(product, one, one, one) <= BN_AMENDED_LIMIT


@pytest.mark.parametrize("name,stride", sorted(HVP_LIMITS))
def test_pooling_hvp_graph_size(name, stride):
    op = ops.make_op(name, INPUT_SHAPE[-1], stride, affine=False)
    x = _input()

    def hvp(h):
        with tf.GradientTape() as outer:
            outer.watch(h)
            with tf.GradientTape() as inner:
                inner.watch(h)
                value = tf.reduce_sum(tf.sin(op(h)))
            target = tf.reduce_sum(inner.gradient(value, h))
        return outer.gradient(target, h)

    assert _count(hvp, x) <= HVP_LIMITS[name, stride]


def test_supernet_forward_graph_size():
    net = SearchNetwork(10, layers=3, init_channels=4)
    net.build((None, 16, 16, 3))
    x = tf.zeros((2, 16, 16, 3))

    def forward(h):
        return net(h, training=True)

    assert _count(forward, x) <= SUPERNET_LIMIT
    with frozen_statistics():
        graph = _graph(forward, x)
    assert len(graph.as_graph_def().node) <= SUPERNET_FROZEN_LIMIT
    # Frozen passes make no moving-statistic assignment.
    assert not any(
        op.type.startswith("Assign") for op in graph.get_operations()
    )
