"""Tests of `nn.layers`: derivatives, forward parity, config.

Derivatives are checked inside `tf.function` against float64 central finite
differences: first derivatives, Hessian-vector products by nested tapes (with
respect to the trainable weights and the input) and the mixed second
derivative d/dalpha <grad_w L, u>, alpha scaling the output.
"""

import gc
import threading
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.nn.batch_norm import (
    BN_MOMENTUM,
    PYTORCH_BN_EPSILON,
    BatchNorm,
)
from tf_amended_darts.nn.contexts import frozen_statistics, statistics_frozen
from tf_amended_darts.nn.conv import Conv2D, DepthwiseConv2D
from tf_amended_darts.nn.graph_constants import graph_constant
from tf_amended_darts.nn.pooling import AvgPool2D, MaxPool2D
from tf_amended_darts.nn.spatial import subsample_hw

F64 = "float64"
FD_EPS = 1e-6  # central-difference step (float64)
FD_RTOL = 1e-6  # relative error allowed against finite differences
LOSS_PHASE = 0.3  # loss = sum(sin(alpha * y + phase)): non-trivial Hessian
ALPHA = 0.7  # output scale alpha of the mixed derivative


# ---------------------------------------------------------------------------
# Derivative harness (also used by test_ops.py).
# ---------------------------------------------------------------------------


def make_case(layers, forward, extra=()):
    """Turns built layers into a pure function `fn(params, x)`.

    Each layer is evaluated by `stateless_call` in training mode with its
    trainable values taken from `params`; `extra` tensors (e.g. architecture
    logits) are appended to `params` and passed to `forward` as well.

    Args:
        layers: Built layers.
        forward: `forward(calls, extra_params, x)`, `calls[i](h)` evaluating
            `layers[i]` on `h`.
        extra: Additional float64 parameter arrays.

    Returns:
        `(fn, params0)`.
    """
    sizes = [len(layer.trainable_variables) for layer in layers]
    params0 = [v.value for layer in layers for v in layer.trainable_variables]
    params0 += [tf.constant(e, F64) for e in extra]
    non_trainable = [
        [v.value for v in layer.non_trainable_variables] for layer in layers
    ]

    def fn(params, x):
        calls, start = [], 0
        for layer, size, nt in zip(layers, sizes, non_trainable, strict=True):
            p = params[start : start + size]
            start += size

            def call(h, layer=layer, p=p, nt=nt):
                # stateless_call passes kwargs straight to `call`.
                kwargs = {}
                if layer._call_has_training_arg:
                    kwargs["training"] = True
                return layer.stateless_call(p, nt, h, **kwargs)[0]

            calls.append(call)
        return forward(calls, params[start:], x)

    return fn, params0


def single_layer_case(layer, input_shape, seed=0):
    """A `make_case` for one layer, built on `input_shape`; returns x too."""
    x = np.random.default_rng(seed).normal(size=input_shape)
    layer(x)  # build (float64 layers)
    fn, params = make_case([layer], lambda calls, extra, h: calls[0](h))
    return fn, params, tf.constant(x, F64)


def _dot(a, b):
    return tf.add_n(
        [tf.reduce_sum(ai * bi) for ai, bi in zip(a, b, strict=True)]
        + [tf.constant(0.0, F64)]
    )


def _flat(tensors):
    return np.concatenate([np.ravel(np.asarray(t)) for t in tensors])


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def check_derivatives(fn, params, x, seed=0, eps=FD_EPS, rtol=FD_RTOL):
    """Checks graph-mode first/second derivatives of `fn` against FD.

    Args:
        fn: Pure function `fn(params, x) -> y` (float64).
        params: List of float64 parameter tensors (may be empty).
        x: Float64 input tensor.
        seed: Seed of the random directions.
        eps: Finite-difference step.
        rtol: Allowed relative error.
    """
    params = [tf.convert_to_tensor(p, F64) for p in params]
    alpha0 = tf.constant(ALPHA, F64)

    def loss(p, h, alpha):
        y = tf.cast(fn(p, h), F64)
        return tf.reduce_sum(tf.sin(alpha * y + LOSS_PHASE))

    @tf.function
    def loss_fn(p, h, alpha):
        return loss(p, h, alpha)

    @tf.function
    def grad_fn(p, h, alpha):
        with tf.GradientTape() as tape:
            tape.watch([p, h])
            value = loss(p, h, alpha)
        return tape.gradient(
            value, [p, h], unconnected_gradients=tf.UnconnectedGradients.ZERO
        )

    @tf.function
    def second_fn(p, h, alpha, vp, vh, up):
        zero = tf.UnconnectedGradients.ZERO
        with tf.GradientTape(persistent=True) as outer:
            outer.watch([p, h, alpha])
            with tf.GradientTape() as inner:
                inner.watch([p, h])
                value = loss(p, h, alpha)
            gp, gh = inner.gradient(value, [p, h], unconnected_gradients=zero)
            hv_target = _dot(gp, vp) + tf.reduce_sum(gh * vh)
            mixed_target = _dot(gp, up)
        hvp = outer.gradient(hv_target, [p, h], unconnected_gradients=zero)
        mixed = outer.gradient(mixed_target, alpha, unconnected_gradients=zero)
        return hvp, mixed

    rng = np.random.default_rng(seed)

    def rand_like(t):
        return tf.constant(rng.normal(size=t.shape), F64)

    vp_full = [rand_like(p) for p in params]
    vh_full = rand_like(x)
    up = [rand_like(p) for p in params]
    zeros_p = [tf.zeros_like(p) for p in params]
    directions = [(zeros_p, vh_full)]
    if params:
        directions += [(vp_full, tf.zeros_like(x)), (vp_full, vh_full)]

    def shift(vp, vh, sign):
        p = [pi + sign * eps * vi for pi, vi in zip(params, vp, strict=True)]
        return p, x + sign * eps * vh

    g_params, g_x = grad_fn(params, x, alpha0)
    for vp, vh in directions:
        # (a) first derivative along (vp, vh).
        l_plus = loss_fn(*shift(vp, vh, 1.0), alpha0)
        l_minus = loss_fn(*shift(vp, vh, -1.0), alpha0)
        fd = float(l_plus - l_minus) / (2 * eps)
        exact = float(_dot(g_params, vp) + tf.reduce_sum(g_x * vh))
        assert abs(fd - exact) <= rtol * max(abs(exact), 1.0), (fd, exact)
        # (b) Hessian-vector product on (params, x).
        hvp, _ = second_fn(params, x, alpha0, vp, vh, up)
        g_plus = grad_fn(*shift(vp, vh, 1.0), alpha0)
        g_minus = grad_fn(*shift(vp, vh, -1.0), alpha0)
        fd_hvp = (
            _flat(g_plus[0] + [g_plus[1]]) - _flat(g_minus[0] + [g_minus[1]])
        ) / (2 * eps)
        assert _rel(_flat(hvp[0] + [hvp[1]]), fd_hvp) < rtol
    if params:
        # (c) mixed derivative d/dalpha <grad_params L, up>.
        _, mixed = second_fn(params, x, alpha0, vp_full, vh_full, up)
        g_plus = grad_fn(params, x, alpha0 + eps)[0]
        g_minus = grad_fn(params, x, alpha0 - eps)[0]
        fd_mixed = float(_dot(g_plus, up) - _dot(g_minus, up)) / (2 * eps)
        assert abs(float(mixed) - fd_mixed) <= rtol * max(abs(fd_mixed), 1.0)


# ---------------------------------------------------------------------------
# Derivatives of every layer, and of ReLU, concatenation, weighted sums.
# ---------------------------------------------------------------------------

SHAPE = (2, 5, 5, 3)

SINGLE_LAYERS = {
    "bn_affine": lambda: BatchNorm(affine=True, dtype=F64),
    "bn_non_affine": lambda: BatchNorm(affine=False, dtype=F64),
    "max_pool_s1": lambda: MaxPool2D(3, 1, 1, dtype=F64),
    "max_pool_s2": lambda: MaxPool2D(3, 2, 1, dtype=F64),
    "avg_pool_s1": lambda: AvgPool2D(3, 1, 1, dtype=F64),
    "avg_pool_s2": lambda: AvgPool2D(3, 2, 1, dtype=F64),
    "avg_pool_incl_pad": lambda: AvgPool2D(
        3, 2, 1, count_include_pad=True, dtype=F64
    ),
    "conv_k3_s1": lambda: Conv2D(4, 3, 1, 1, dtype=F64),
    "conv_k1_s2": lambda: Conv2D(4, 1, 2, 0, dtype=F64),
    "conv_k3_s2_dil2": lambda: Conv2D(2, 3, 2, 2, dilation=2, dtype=F64),
    "depthwise_k3_s2": lambda: DepthwiseConv2D(3, 2, 1, dtype=F64),
    "depthwise_k3_s2_dil2": lambda: DepthwiseConv2D(
        3, 2, 2, dilation=2, dtype=F64
    ),
    "depthwise_bias": lambda: DepthwiseConv2D(
        3, 1, 1, use_bias=True, dtype=F64
    ),
    # Undilated padding paths: 'SAME' (stride 1, 2 p = k - 1), tf.pad.
    "depthwise_k5_s1": lambda: DepthwiseConv2D(5, 1, 2, dtype=F64),
    "depthwise_k3_s1_p2": lambda: DepthwiseConv2D(3, 1, 2, dtype=F64),
    # Dilated depthwise paths: space-to-batch (stride 1), x[::d] (stride ==
    # dilation, padding a multiple of it, above), generic (below).
    "depthwise_k3_s1_dil2": lambda: DepthwiseConv2D(
        3, 1, 2, dilation=2, dtype=F64
    ),
    "depthwise_k3_s2_dil2_p1": lambda: DepthwiseConv2D(
        3, 2, 1, dilation=2, dtype=F64
    ),
}

# Layers whose 5x5 case takes TF's 'SAME' pooling path, again on 6x6, where
# PyTorch's stride-2 windows need explicit padding.
EVEN_SHAPE = (2, 6, 6, 3)
EVEN_LAYERS = {
    "max_pool_s2_even": lambda: MaxPool2D(3, 2, 1, dtype=F64),
    "avg_pool_s2_even": lambda: AvgPool2D(3, 2, 1, dtype=F64),
    "conv_k3_s2_even": lambda: Conv2D(4, 3, 2, 1, dtype=F64),
}


@pytest.mark.parametrize("name", sorted(SINGLE_LAYERS))
def test_layer_derivatives_match_finite_differences(name):
    fn, params, x = single_layer_case(SINGLE_LAYERS[name](), SHAPE)
    check_derivatives(fn, params, x)


@pytest.mark.parametrize("name", sorted(EVEN_LAYERS))
def test_layer_derivatives_on_even_sizes_match_finite_differences(name):
    fn, params, x = single_layer_case(EVEN_LAYERS[name](), EVEN_SHAPE)
    check_derivatives(fn, params, x)


def test_relu_derivatives_match_finite_differences():
    conv = Conv2D(4, 3, 1, 1, dtype=F64)
    fn, params, x = single_layer_case(conv, SHAPE)
    check_derivatives(lambda p, h: tf.nn.relu(fn(p, h)), params, x)


@pytest.mark.parametrize("strides", [1, 2])
def test_max_pool_after_relu_ties_match_finite_differences(strides):
    # ReLU zeros tie inside pooling windows; stock tf.nn.max_pool2d's
    # graph-mode second derivative is wrong here (design.md).
    conv = Conv2D(4, 3, 1, 1, dtype=F64)
    pool = MaxPool2D(3, strides, 1, dtype=F64)
    fn, params, x = single_layer_case(conv, SHAPE)
    check_derivatives(lambda p, h: pool(tf.nn.relu(fn(p, h))), params, x)


def test_concatenation_derivatives_match_finite_differences():
    conv = Conv2D(2, 3, 1, 1, dtype=F64)
    pool = MaxPool2D(3, 1, 1, dtype=F64)
    bn = BatchNorm(affine=True, dtype=F64)
    x = tf.constant(np.random.default_rng(1).normal(size=SHAPE), F64)
    conv(x), pool(x), bn(tf.zeros((1, 5, 5, 8), F64))

    def forward(calls, extra, h):
        y = tf.concat([calls[0](tf.nn.relu(h)), calls[1](h), h], axis=-1)
        return calls[2](y)

    fn, params = make_case([conv, pool, bn], forward)
    check_derivatives(fn, params, x)


def test_weighted_sum_derivatives_match_finite_differences():
    conv = DepthwiseConv2D(3, 1, 1, dtype=F64)
    pool = AvgPool2D(3, 1, 1, dtype=F64)
    bn = BatchNorm(affine=False, dtype=F64)
    x = tf.constant(np.random.default_rng(2).normal(size=SHAPE), F64)
    conv(x), pool(x), bn(x)
    logits = np.array([0.2, -0.5, 0.9])

    def forward(calls, extra, h):
        w = tf.nn.softmax(extra[0])
        outs = [calls[0](tf.nn.relu(h)), calls[2](calls[1](h)), h]
        return tf.add_n([w[i] * o for i, o in enumerate(outs)])

    fn, params = make_case([conv, pool, bn], forward, extra=[logits])
    check_derivatives(fn, params, x)


def test_tape_on_variables_matches_stateless_hvp():
    """Nested tapes on the layer's own variables agree with stateless_call."""
    bn = BatchNorm(affine=True, dtype=F64)
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=SHAPE), F64)
    bn(x)
    bn.gamma.assign(rng.normal(size=(3,)))
    v = [tf.constant(rng.normal(size=(3,)), F64) for _ in range(2)]

    @tf.function
    def hvp_on_variables():
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = tf.reduce_sum(tf.sin(bn(x, training=True)))
            g = inner.gradient(value, bn.trainable_variables)
            target = _dot(g, v)
        return outer.gradient(target, bn.trainable_variables)

    fn, params, _ = single_layer_case(bn, SHAPE)

    @tf.function
    def hvp_stateless(p):
        with tf.GradientTape() as outer:
            outer.watch(p)
            with tf.GradientTape() as inner:
                inner.watch(p)
                value = tf.reduce_sum(tf.sin(fn(p, x)))
            target = _dot(inner.gradient(value, p), v)
        return outer.gradient(target, p)

    np.testing.assert_allclose(
        _flat(hvp_on_variables()), _flat(hvp_stateless(params)), rtol=1e-12
    )


# ---------------------------------------------------------------------------
# Forward parity with numpy references (PyTorch semantics).
# ---------------------------------------------------------------------------


def _np_bn_train(x, gamma, beta, eps=PYTORCH_BN_EPSILON):
    mean = x.mean(axis=(0, 1, 2))
    var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_training_forward_matches_numpy_and_keras(dtype):
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(4, 3, 3, 5)) * 2 + 1).astype(dtype)
    gamma, beta = rng.normal(size=5), rng.normal(size=5)
    bn = BatchNorm(dtype=dtype)
    bn.build(x.shape)
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    y = np.asarray(bn(x, training=True))
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y, _np_bn_train(x, gamma, beta), atol=tol)
    stock = keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=PYTORCH_BN_EPSILON, dtype=dtype
    )
    stock.build(x.shape)
    stock.gamma.assign(gamma)
    stock.beta.assign(beta)
    np.testing.assert_allclose(y, stock(x, training=True), atol=tol)
    np.testing.assert_allclose(
        bn.moving_mean, stock.moving_mean, atol=tol
    )  # same momentum convention


def test_batch_norm_moving_statistics_follow_pytorch():
    rng = np.random.default_rng(5)
    bn = BatchNorm(affine=False, dtype=F64)
    mean, var = np.zeros(3), np.ones(3)
    for step in range(2):
        x = rng.normal(size=(2, 3, 3, 3)) * (step + 2) + step
        bn(x, training=True)
        n = x.size // 3
        batch_var = x.var(axis=(0, 1, 2)) * n / (n - 1)  # unbiased
        mean = 0.9 * mean + 0.1 * x.mean(axis=(0, 1, 2))
        var = 0.9 * var + 0.1 * batch_var
        np.testing.assert_allclose(bn.moving_mean, mean, rtol=1e-12)
        np.testing.assert_allclose(bn.moving_variance, var, rtol=1e-12)
    y = bn(x, training=False)  # inference: moving statistics, no update
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5))
    np.testing.assert_allclose(bn.moving_mean, mean, rtol=1e-12)


def test_batch_norm_weights():
    assert len(BatchNorm(affine=False)(np.zeros((1, 2, 2, 3))).shape) == 4
    affine, plain = BatchNorm(), BatchNorm(affine=False)
    affine.build((None, 4, 4, 6))
    plain.build((None, 4, 4, 6))
    assert [v.name for v in affine.trainable_variables] == ["gamma", "beta"]
    assert plain.trainable_variables == []
    assert len(plain.non_trainable_variables) == 2


def _np_pool(x, k, s, p, kind, count_include_pad=False):
    """PyTorch max_pool2d / avg_pool2d (floor mode) on NHWC numpy data."""
    n, h, w, c = x.shape
    fill = -np.inf if kind == "max" else 0.0
    xp = np.full((n, h + 2 * p, w + 2 * p, c), fill)
    xp[:, p : p + h, p : p + w] = x
    real = np.zeros((h + 2 * p, w + 2 * p))
    real[p : p + h, p : p + w] = 1.0
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, i * s : i * s + k, j * s : j * s + k]
            if kind == "max":
                out[:, i, j] = win.max(axis=(1, 2))
            else:
                count = (
                    k * k
                    if count_include_pad
                    else real[i * s : i * s + k, j * s : j * s + k].sum()
                )
                out[:, i, j] = win.sum(axis=(1, 2)) / count
    return out


POOL_CASES = [  # (size, pool_size, strides, padding)
    (32, 3, 2, 1),
    (7, 3, 2, 1),
    (6, 3, 1, 1),
    (6, 2, 2, 0),
    (5, 5, 2, 2),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size,k,s,p", POOL_CASES)
def test_max_pool_forward_matches_pytorch_semantics(size, k, s, p, dtype):
    x = np.random.default_rng(6).normal(size=(2, size, size, 2)) - 3.0
    y = MaxPool2D(k, s, p, dtype=dtype)(x.astype(dtype))
    np.testing.assert_allclose(y, _np_pool(x, k, s, p, "max"), rtol=1e-6)
    if (size, s) == (32, 2):
        assert y.shape == (2, 16, 16, 2)


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("size,k,s,p", POOL_CASES)
def test_avg_pool_forward_matches_pytorch_semantics(size, k, s, p, include):
    x = np.random.default_rng(7).normal(size=(2, size, size, 2))
    layer = AvgPool2D(k, s, p, count_include_pad=include, dtype=F64)
    expected = _np_pool(x, k, s, p, "avg", count_include_pad=include)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-12)
    assert layer.compute_output_shape(x.shape) == expected.shape


def _np_max_pool_grad(x, w, k, s, p):
    """d sum(w * max_pool(x)) / dx, each window's gradient going to its
    first maximum in row-major order (PyTorch's and the layer's choice)."""
    n, h, wd, c = x.shape
    xp = np.full((n, h + 2 * p, wd + 2 * p, c), -np.inf)
    xp[:, p : p + h, p : p + wd] = x
    grad = np.zeros_like(xp)
    for i in range(w.shape[1]):
        for j in range(w.shape[2]):
            window = xp[:, i * s : i * s + k, j * s : j * s + k]
            first = window.reshape(n, k * k, c).argmax(axis=1)
            for b in range(n):
                for ch in range(c):
                    di, dj = divmod(first[b, ch], k)
                    grad[b, i * s + di, j * s + dj, ch] += w[b, i, j, ch]
    return grad[:, p : p + h, p : p + wd]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("size,k,s,p", POOL_CASES[1:])
def test_max_pool_gradient_at_ties_goes_to_first_maximum(size, k, s, p, jit):
    rng = np.random.default_rng(11)
    x = rng.integers(0, 3, size=(2, size, size, 2)).astype(F64)  # ties
    layer = MaxPool2D(k, s, p, dtype=F64)
    w = rng.normal(size=layer.compute_output_shape(x.shape))

    @tf.function(jit_compile=jit)  # XLA: the shifted-slices fallback
    def grad(h):
        with tf.GradientTape() as tape:
            tape.watch(h)
            value = tf.reduce_sum(w * layer(h))
        return tape.gradient(value, h)

    np.testing.assert_allclose(
        grad(tf.constant(x)), _np_max_pool_grad(x, w, k, s, p), atol=1e-12
    )


@pytest.mark.parametrize("strides", [1, 2])
def test_max_pool_xla_fallback_matches_gather_and_its_hvp(strides):
    # XLA has no arg-max pooling: under jit_compile the layer takes maxima
    # of shifted slices; both must agree on outputs and second derivatives.
    layer = MaxPool2D(3, strides, 1, dtype=F64)
    rng = np.random.default_rng(12)
    x, v = (tf.constant(rng.normal(size=EVEN_SHAPE)) for _ in range(2))

    def hvp(h):
        with tf.GradientTape() as outer:
            outer.watch(h)
            with tf.GradientTape() as inner:
                inner.watch(h)
                y = layer(h)
                value = tf.reduce_sum(tf.sin(y))
            target = tf.reduce_sum(inner.gradient(value, h) * v)
        return y, outer.gradient(target, h)

    plain, xla = tf.function(hvp), tf.function(hvp, jit_compile=True)
    for fn, argmax in ((plain, True), (xla, False)):
        graph = fn.get_concrete_function(x).graph
        types = {op.type for op in graph.get_operations()}
        assert ("MaxPoolWithArgmax" in types) == argmax
        assert "MaxPoolGradGrad" not in types and "MaxPool" not in types
    (y0, h0), (y1, h1) = plain(x), xla(x)
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_allclose(h0, h1, rtol=1e-12, atol=1e-12)


DYNAMIC_LAYERS = [
    lambda: MaxPool2D(3, 2, 1, dtype=F64),
    lambda: AvgPool2D(3, 2, 1, dtype=F64),
    lambda: AvgPool2D(3, 1, 1, dtype=F64),
    lambda: AvgPool2D(3, 2, 1, count_include_pad=True, dtype=F64),
    lambda: DepthwiseConv2D(3, 1, 2, dilation=2, dtype=F64),
    lambda: DepthwiseConv2D(3, 2, 2, dilation=2, dtype=F64),
    lambda: Conv2D(3, 3, 2, 1, dtype=F64),
]


@pytest.mark.parametrize("size", [6, 7])
@pytest.mark.parametrize("index", range(len(DYNAMIC_LAYERS)))
def test_unknown_spatial_sizes_give_the_same_outputs(index, size):
    # Static sizes select TF's 'SAME' / space-to-batch shortcuts; traced
    # with unknown sizes, the generic paths must agree.
    layer = DYNAMIC_LAYERS[index]()
    x = tf.constant(np.random.default_rng(13).normal(size=(2, size, size, 3)))
    spec = tf.TensorSpec((None, None, None, 3), F64)
    dynamic = tf.function(layer, input_signature=[spec])
    np.testing.assert_allclose(dynamic(x), layer(x), rtol=1e-12, atol=1e-14)


def _np_conv(x, kernel, s, p, d, depthwise=False):
    """PyTorch conv2d (groups=C when depthwise) on NHWC numpy data."""
    n, h, w, c = x.shape
    k = kernel.shape[0]
    xp = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    span = d * (k - 1)
    oh, ow = (h + 2 * p - span - 1) // s + 1, (w + 2 * p - span - 1) // s + 1
    out_c = c if depthwise else kernel.shape[-1]
    out = np.zeros((n, oh, ow, out_c))
    for i in range(oh):
        for j in range(ow):
            win = xp[
                :, i * s : i * s + span + 1 : d, j * s : j * s + span + 1 : d
            ]
            if depthwise:
                out[:, i, j] = np.einsum("nabc,abc->nc", win, kernel[..., 0])
            else:
                out[:, i, j] = np.einsum("nabc,abco->no", win, kernel)
    return out


CONV_CASES = [  # (size, kernel_size, strides, padding, dilation)
    (8, 3, 2, 1, 1),
    (7, 3, 2, 1, 1),
    (8, 5, 2, 2, 1),
    (8, 3, 2, 2, 2),
    (7, 5, 2, 4, 2),
    (6, 3, 1, 2, 2),
    (6, 1, 2, 0, 1),
    (7, 3, 2, 1, 2),  # stride == dilation, padding not a multiple of it
    (7, 3, 1, 1, 2),  # stride 1, dilated: space-to-batch with a cropped row
    (8, 5, 1, 4, 2),
    (7, 3, 1, 1, 1),  # depthwise: 'SAME' padding
    (8, 5, 1, 2, 1),  # depthwise: 'SAME' padding
    (6, 3, 1, 2, 1),  # depthwise: tf.pad, then 'VALID'
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size,k,s,p,d", CONV_CASES)
def test_convolutions_match_pytorch_semantics(size, k, s, p, d, dtype):
    x = np.random.default_rng(8).normal(size=(2, size, size, 3))
    conv = Conv2D(4, k, s, p, dilation=d, dtype=dtype)
    dw = DepthwiseConv2D(k, s, p, dilation=d, dtype=dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for layer, depthwise in ((conv, False), (dw, True)):
        y = layer(x.astype(dtype))
        kernel = np.asarray(layer.kernel, np.float64)
        expected = _np_conv(x, kernel, s, p, d, depthwise=depthwise)
        np.testing.assert_allclose(y, expected, atol=tol)
        assert layer.compute_output_shape(x.shape) == expected.shape
        assert y.dtype == dtype


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("size", [5, 6, 7])
@pytest.mark.parametrize("stride,start", [(1, 1), (2, 0), (2, 1), (3, 0)])
def test_subsample_hw_matches_numpy_slicing(size, stride, start, known):
    x = np.random.default_rng(3).normal(size=(2, size, size + 1, 3))
    spec = (2, size, size + 1, 3) if known else (None, None, None, 3)
    sub = tf.function(
        lambda h: subsample_hw(h, stride, start=start),
        input_signature=[tf.TensorSpec(spec, tf.float64)],
    )
    np.testing.assert_array_equal(
        sub(x), x[:, start::stride, start::stride, :]
    )


def test_conv_kernel_shapes_and_default_init():
    conv = Conv2D(None, 3, padding=1)
    conv.build((None, 8, 8, 6))
    assert tuple(conv.kernel.shape) == (3, 3, 6, 6)
    assert conv.trainable_variables == [conv.kernel]  # no bias
    dw = DepthwiseConv2D(5, padding=2)
    dw.build((None, 8, 8, 6))
    assert tuple(dw.kernel.shape) == (5, 5, 6, 1)
    # PyTorch init bounds 1 / sqrt(fan_in): fan_in = 54 and 25.
    assert np.max(np.abs(conv.kernel)) <= 1 / np.sqrt(54)
    assert np.max(np.abs(dw.kernel)) <= 1 / 5


# ---------------------------------------------------------------------------
# stateless_call, config round trips, argument validation.
# ---------------------------------------------------------------------------


def test_stateless_call_returns_updated_moving_statistics():
    model = keras.Sequential(
        [
            keras.Input((5, 5, 3)),
            Conv2D(4, 3, 2, 1),
            BatchNorm(affine=True),
            MaxPool2D(3, 1, 1),
        ]
    )
    x = np.random.default_rng(9).normal(size=(2, 5, 5, 3)).astype("float32")
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @tf.function
    def run(tv, ntv, h):
        return model.stateless_call(tv, ntv, h, training=True)

    y, new_non_trainable = run(trainable, non_trainable, x)
    conv_out = np.asarray(model.layers[0](x))
    n = conv_out.size // 4
    names = [v.name for v in model.non_trainable_variables]
    new = dict(
        zip(names, [np.asarray(v) for v in new_non_trainable], strict=True)
    )
    np.testing.assert_allclose(
        new["moving_mean"], 0.1 * conv_out.mean(axis=(0, 1, 2)), atol=1e-6
    )
    np.testing.assert_allclose(
        new["moving_variance"],
        0.9 + 0.1 * conv_out.var(axis=(0, 1, 2)) * n / (n - 1),
        atol=1e-6,
    )
    bn = model.layers[1]
    np.testing.assert_array_equal(bn.moving_mean, np.zeros(4))
    np.testing.assert_array_equal(bn.moving_variance, np.ones(4))
    assert y.shape == (2, 3, 3, 4)


def test_frozen_statistics_normalise_without_updates():
    rng = np.random.default_rng(14)
    x = tf.constant(rng.normal(size=(4, 3, 3, 5)) * 2 + 1, "float32")
    bn = BatchNorm(affine=True)
    bn.build(x.shape)
    bn.gamma.assign(rng.normal(size=5))
    before = [np.asarray(v) for v in bn.non_trainable_variables]
    traced = tf.function(lambda h: bn(h, training=True))
    assert not statistics_frozen()
    with frozen_statistics():
        assert statistics_frozen()
        with frozen_statistics():  # nests
            pass
        assert statistics_frozen()
        frozen_eager = bn(x, training=True)
        graph = traced.get_concrete_function(x).graph
        frozen_graph = traced(x)
    assert not statistics_frozen()
    types = [op.type for op in graph.get_operations()]
    assert not [t for t in types if t.startswith("Assign")]
    assert types.count("ReadVariableOp") == 2  # gamma and beta only
    for var, value in zip(bn.non_trainable_variables, before, strict=True):
        np.testing.assert_array_equal(var, value)
    # Same output as an updating training-mode call (which does update).
    updating = bn(x, training=True)
    np.testing.assert_array_equal(frozen_eager, updating)
    np.testing.assert_array_equal(frozen_graph, updating)
    assert not np.array_equal(bn.moving_mean, before[0])
    # The trace keeps the switch it was traced with.
    traced(x)
    np.testing.assert_array_equal(bn.moving_mean, 0.1 * np.mean(x, (0, 1, 2)))


def test_frozen_statistics_under_stateless_call():
    bn = BatchNorm(affine=False)
    x = np.random.default_rng(15).normal(size=(2, 4, 4, 3)).astype("float32")
    bn.build(x.shape)
    non_trainable = [v.value for v in bn.non_trainable_variables]

    @tf.function
    def run(h):
        with frozen_statistics():
            return bn.stateless_call([], non_trainable, h, training=True)

    y, new_non_trainable = run(x)
    for new, old in zip(new_non_trainable, non_trainable, strict=True):
        np.testing.assert_array_equal(new, old)
    np.testing.assert_allclose(y, _np_bn_train(x, 1.0, 0.0), atol=1e-5)


def test_frozen_statistics_reach_replica_threads_of_the_traced_graph():
    # MirroredStrategy traces each replica in its own thread, which does not
    # inherit context variables; the switch entered while tracing the
    # graph still holds there.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x = tf.constant(np.ones((2, 3, 3, 4)), "float32")
    with strategy.scope():
        bn = BatchNorm(affine=False)
        bn.build(x.shape)
    threads = []

    def replica(h):
        threads.append(threading.current_thread())
        return bn(h, training=True)

    def traced_types(frozen):
        @tf.function
        def step(h):
            if not frozen:
                return strategy.run(replica, (h,))
            with frozen_statistics():
                return strategy.run(replica, (h,))

        graph = step.get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    assert "AssignVariableOp" in traced_types(False)
    assert "AssignVariableOp" not in traced_types(True)
    assert threading.main_thread() not in threads


def test_moving_variance_with_unknown_batch_size_is_unbiased():
    x = np.random.default_rng(16).normal(size=(3, 2, 2, 4))
    static, dynamic = BatchNorm(dtype=F64), BatchNorm(dtype=F64)
    static(x, training=True)
    dynamic.build(x.shape)
    spec = tf.TensorSpec((None, None, None, 4), F64)
    tf.function(lambda h: dynamic(h, training=True), input_signature=[spec])(x)
    for a, b in zip(static.weights, dynamic.weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_graph_constants_are_shared_and_free_of_control_dependencies():
    @tf.function
    def fn(h):
        first = graph_constant((0, 1, 2), tf.int32)
        with tf.control_dependencies([tf.print(h)]):
            again = graph_constant((0, 1, 2), tf.int32)
            other = graph_constant(1e-5, h.dtype)
        assert again is first
        assert not other.op.control_inputs
        return h

    fn(tf.zeros(()))


def test_graph_constants_die_with_their_graph():
    # The cache once sat in a module-level WeakKeyDictionary whose values
    # (tensors of the graph) held the graph: no traced step was ever freed.
    @tf.function
    def fn(h):
        return h + graph_constant(2.0, h.dtype)

    concrete = fn.get_concrete_function(tf.TensorSpec((), tf.float32))
    graph = weakref.ref(concrete.graph)
    assert concrete(tf.constant(1.0)).numpy() == 3.0
    del fn, concrete
    gc.collect()
    assert graph() is None


CONFIG_LAYERS = [
    lambda: BatchNorm(affine=False, momentum=0.8, epsilon=1e-4),
    lambda: MaxPool2D(3, 2, 1),
    lambda: AvgPool2D(3, 2, 1, count_include_pad=True),
    lambda: Conv2D(6, 3, 2, 2, dilation=2),
    lambda: Conv2D(None, 1),
    lambda: DepthwiseConv2D(5, 1, 2, use_bias=True),
]


@pytest.mark.parametrize("index", range(len(CONFIG_LAYERS)))
def test_config_round_trip(index):
    layer = CONFIG_LAYERS[index]()
    x = np.random.default_rng(10).normal(size=(2, 6, 6, 4))
    y = layer(x, training=True)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x, training=True), y, atol=1e-6)
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(revived) is type(layer)
    assert revived.get_config() == config


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: MaxPool2D(3, 1, -1), "Received: padding=-1"),
        (lambda: MaxPool2D(3, 1, 2), "Received: padding=2"),
        (lambda: AvgPool2D(0), "Received: pool_size=0"),
        (lambda: AvgPool2D(count_include_pad=1), "count_include_pad=1"),
        (lambda: Conv2D(4, 3, strides=0), "Received: strides=0"),
        (lambda: Conv2D(0, 3), "Received: filters=0"),
        (lambda: DepthwiseConv2D(3, dilation=0), "Received: dilation=0"),
        (lambda: Conv2D(4, 3, padding=1.5), "Received: padding=1.5"),
        (lambda: BatchNorm(momentum=1.5), "Received: momentum=1.5"),
        (lambda: BatchNorm(epsilon=0.0), "Received: epsilon=0.0"),
        (lambda: BatchNorm(affine="yes"), "Received: affine='yes'"),
    ],
)
def test_argument_errors_echo_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()
