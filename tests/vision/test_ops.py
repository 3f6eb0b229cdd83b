"""Tests of `vision.ops`: shapes, parameter counts, derivatives."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.nn.batch_norm import PYTORCH_BN_EPSILON, BatchNorm
from tf_amended_darts.nn.contexts import frozen_statistics
from tf_amended_darts.vision import ops, search_space

try:  # pytest's default (prepend) import mode puts tests/ on sys.path.
    from test_layers import check_derivatives, make_case
except ImportError:  # tests/ imported as a package
    from tests.nn.test_layers import check_derivatives, make_case

F64 = "float64"
CHANNELS = 8


def _pytorch_out_size(name, size, stride):
    """Output size of the reference operator (quark0/darts, PyTorch)."""

    def conv(k, p, d=1):
        return (size + 2 * p - d * (k - 1) - 1) // stride + 1

    return {
        "none": -(-size // stride),  # x[:, :, ::s, ::s]
        "max_pool_3x3": conv(3, 1),
        "avg_pool_3x3": conv(3, 1),
        # Identity, or FactorizedReduce (reference: even sizes only; here
        # ceil(size / 2) on odd ones, like a 1x1 stride-2 convolution).
        "skip_connect": conv(1, 0),
        "sep_conv_3x3": conv(3, 1),
        "sep_conv_5x5": conv(5, 2),
        "dil_conv_3x3": conv(3, 2, 2),
        "dil_conv_5x5": conv(5, 4, 2),
    }[name]


def _n_params(layer):
    return sum(int(np.prod(v.shape)) for v in layer.trainable_variables)


def test_primitives_are_the_darts_list_and_all_in_the_table():
    assert ops.PRIMITIVES == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
    )
    # plus R-DARTS' S4 operator, which DARTS' list does not hold
    assert set(ops.OPS) == set(ops.PRIMITIVES) | {"noise"}
    assert set(ops.OPS) == set(search_space.KNOWN_OPERATORS)


@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", ops.PRIMITIVES)
def test_output_shape_matches_pytorch_reference(name, stride, size):
    op = ops.make_op(name, CHANNELS, stride, affine=False)
    x = np.random.default_rng(0).normal(size=(2, size, size, CHANNELS))
    y = op(x.astype("float32"), training=True)
    out = _pytorch_out_size(name, size, stride)
    assert tuple(y.shape) == (2, out, out, CHANNELS)
    assert tuple(op.compute_output_shape(x.shape)) == tuple(y.shape)
    assert y.dtype == "float32"


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", ops.PRIMITIVES)
def test_trainable_parameter_count_matches_formula(name, stride, affine):
    op = ops.make_op(name, CHANNELS, stride, affine=affine)
    op.build((None, 8, 8, CHANNELS))
    expected = ops.expected_param_count(name, CHANNELS, stride, affine)
    assert _n_params(op) == expected
    assert ops.is_parametric(name, stride) == (expected > 0)
    # Only moving statistics are non-trainable (never counted).
    names = {v.name for v in op.non_trainable_variables}
    assert names <= {"moving_mean", "moving_variance"}


@pytest.mark.parametrize(
    "name,stride,affine,count",
    [  # hand-computed at C = 16 (PyTorch: sum of p.numel())
        ("sep_conv_3x3", 1, True, 2 * (16 * 9 + 256 + 32)),  # 864
        ("sep_conv_3x3", 2, False, 2 * (16 * 9 + 256)),  # 800
        ("sep_conv_5x5", 1, True, 2 * (16 * 25 + 256 + 32)),  # 1376
        ("dil_conv_3x3", 2, True, 16 * 9 + 256 + 32),  # 432
        ("dil_conv_5x5", 1, False, 16 * 25 + 256),  # 656
        ("skip_connect", 2, True, 2 * 16 * 8 + 32),  # 288
        ("skip_connect", 1, True, 0),
        ("max_pool_3x3", 2, True, 0),
    ],
)
def test_expected_param_count_golden_values(name, stride, affine, count):
    assert ops.expected_param_count(name, 16, stride, affine) == count


def test_relu_conv_bn_and_sep_conv_channel_layout():
    pre = ops.ReLUConvBN(6, 1, 1, 0, affine=True)
    pre.build((None, 8, 8, 4))
    assert _n_params(pre) == 4 * 6 + 2 * 6
    sep = ops.SepConv(6, 3, 2, 1, affine=False)
    y = sep(np.zeros((1, 8, 8, 4), "float32"))
    assert tuple(y.shape) == (1, 4, 4, 6)
    # First block keeps C_in (4 -> 4), second maps C_in -> c_out (4 -> 6).
    assert tuple(sep.block_1.pointwise.kernel.shape) == (1, 1, 4, 4)
    assert tuple(sep.block_2.pointwise.kernel.shape) == (1, 1, 4, 6)
    assert sep.block_2.depthwise.strides == 1


def test_factorized_reduce_matches_reference_alignment():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 6, 4))
    fr = ops.FactorizedReduce(6, affine=False, dtype=F64)
    y = np.asarray(fr(x, training=False))  # moving stats 0 / 1
    relu = np.maximum(x, 0.0)
    w1 = np.asarray(fr.conv_1.kernel)[0, 0]
    w2 = np.asarray(fr.conv_2.kernel)[0, 0]
    # PyTorch: cat([conv_1(x), conv_2(x[:, :, 1:, 1:])]), 1x1 stride 2.
    expected = np.concatenate(
        [relu[:, ::2, ::2] @ w1, relu[:, 1:, 1:][:, ::2, ::2] @ w2], axis=-1
    ) / np.sqrt(1.0 + PYTORCH_BN_EPSILON)
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_factorized_reduce_pads_the_shifted_half_on_odd_sizes():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 7, 7, 4))
    fr = ops.FactorizedReduce(6, affine=False, dtype=F64)
    y = np.asarray(fr(x, training=False))
    relu = np.maximum(x, 0.0)
    w1 = np.asarray(fr.conv_1.kernel)[0, 0]
    w2 = np.asarray(fr.conv_2.kernel)[0, 0]
    shifted = np.pad(relu[:, 1:, 1:], [(0, 0), (0, 1), (0, 1), (0, 0)])
    expected = np.concatenate(
        [relu[:, ::2, ::2] @ w1, shifted[:, ::2, ::2] @ w2], axis=-1
    ) / np.sqrt(1.0 + PYTORCH_BN_EPSILON)
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_zero_and_identity():
    x = np.random.default_rng(2).normal(size=(1, 5, 5, 3)).astype("float32")
    zero = ops.make_op("none", 3, 2)(x)
    np.testing.assert_array_equal(zero, np.zeros((1, 3, 3, 3)))
    np.testing.assert_array_equal(ops.make_op("skip_connect", 3, 1)(x), x)


def _op_case(name, stride, affine, shape, seed):
    """A derivative-check case for `make_op(name)`, float64, built."""
    op = ops.make_op(name, shape[-1], stride, affine=affine, dtype=F64)
    layers = [op]
    if "pool" in name:  # the search MixedOp appends a non-affine BN
        layers.append(BatchNorm(affine=False, dtype=F64))
    x = np.random.default_rng(seed).normal(size=shape)
    h = x
    for layer in layers:
        h = layer(h, training=True)

    def forward(calls, extra, h):
        for call in calls:
            h = call(h)
        return h

    fn, params = make_case(layers, forward)
    return fn, params, tf.constant(x, F64)


@pytest.mark.parametrize(
    "name,stride,affine",
    [
        ("sep_conv_3x3", 1, False),
        ("sep_conv_3x3", 2, True),
        ("dil_conv_3x3", 1, True),
        ("dil_conv_3x3", 2, False),
        ("max_pool_3x3", 1, False),
        ("max_pool_3x3", 2, False),
        ("avg_pool_3x3", 2, False),
        ("skip_connect", 2, False),
        ("skip_connect", 2, True),
    ],
)
def test_graph_hvp_matches_finite_differences(name, stride, affine):
    fn, params, x = _op_case(name, stride, affine, (2, 6, 6, 4), seed=3)
    check_derivatives(fn, params, x)


def _graph_hvp(op, x, v):
    """Graph-mode HVP w.r.t. the input of sum(sin(bn(relu(op(x)))))."""
    bn = BatchNorm(affine=False, dtype=op.dtype_policy)
    kwargs = {"training": True} if op._call_has_training_arg else {}

    @tf.function
    def hvp(h):
        with tf.GradientTape() as outer:
            outer.watch(h)
            with tf.GradientTape() as inner:
                inner.watch(h)
                y = bn(tf.nn.relu(op(h, **kwargs)), training=True)
                value = tf.reduce_sum(tf.sin(0.7 * y + 0.3))
            target = tf.reduce_sum(inner.gradient(value, h) * v)
        return outer.gradient(target, h)

    return np.asarray(hvp(x), np.float64)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", [n for n in ops.PRIMITIVES if n != "none"])
def test_float32_graph_hvp_matches_float64(name, stride):
    # The float64 checks above do not run the float32 kernels (oneDNN on
    # CPU); their graph-mode second derivatives must agree too.
    rng = np.random.default_rng(7)
    x, v = (rng.normal(size=(2, 6, 6, 4)) for _ in range(2))
    results, weights = [], None
    for dtype in (F64, "float32"):
        op = ops.make_op(name, 4, stride, affine=False, dtype=dtype)
        op.build(x.shape)
        if weights is None:
            weights = op.get_weights()
        else:
            op.set_weights(weights)
        h, direction = (tf.constant(a, dtype) for a in (x, v))
        with frozen_statistics():
            results.append(_graph_hvp(op, h, direction))
    exact, single = results
    assert np.linalg.norm(single - exact) < 1e-4 * np.linalg.norm(exact)


def test_relu_conv_bn_hvp_matches_finite_differences():
    layer = ops.ReLUConvBN(4, 1, 1, 0, affine=True, dtype=F64)
    x = np.random.default_rng(4).normal(size=(2, 5, 5, 3))
    layer(x)
    fn, params = make_case([layer], lambda calls, extra, h: calls[0](h))
    check_derivatives(fn, params, tf.constant(x, F64))


@pytest.mark.parametrize("name", ops.PRIMITIVES)
def test_config_round_trip(name):
    op = ops.make_op(name, 4, 2, affine=True)
    x = np.random.default_rng(5).normal(size=(2, 6, 6, 4)).astype("float32")
    y = op(x, training=True)
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(op)
    )
    assert type(revived) is type(op)
    assert revived.get_config() == op.get_config()
    revived.build(x.shape)
    revived.set_weights(op.get_weights())
    # Moving statistics moved once in `op`; training mode ignores them.
    np.testing.assert_allclose(revived(x, training=True), y, atol=1e-5)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: ops.make_op("conv_7x7", 8, 1), "sep_conv_3x3"),
        (lambda: ops.make_op("conv_7x7", 8, 1), "Received: name='conv_7x7'"),
        (lambda: ops.make_op("max_pool_3x3", 8, 3), "Received: stride=3"),
        (lambda: ops.make_op("none", 8, 0), "Received: stride=0"),
        (lambda: ops.make_op("sep_conv_3x3", 0, 1), "Received: channels=0"),
        (lambda: ops.make_op("skip_connect", 7, 2), "Received: c_out=7"),
        (lambda: ops.FactorizedReduce(5), "even"),
        (lambda: ops.expected_param_count("bogus", 8, 1), "bogus"),
        (lambda: ops.is_parametric("sep_conv_3x3", 4), "stride=4"),
        (lambda: ops.SepConv(8, 3, 1, 1, affine=None), "affine=None"),
    ],
)
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
