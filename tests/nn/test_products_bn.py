"""Batch norm's hand-written derivatives (`normalize_batch`).

The oracle is TensorFlow's autodiff of the plain formula
``(x - mean) * rsqrt(mean((x - mean)^2) + eps)`` (itself checked against
float64 finite differences in tests/nn/test_layers.py), in float64 inside
`tf.function`: the amended step's ``H v`` and ``D H v`` through one batch
norm, and a third derivative, must agree to rounding. The derivatives are
recorded on the tapes, never registered: tracing must leave TensorFlow's
global gradient registry as it was.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from tf_amended_darts.core import bilevel
from tf_amended_darts.nn.batch_norm_grad import normalize_batch

F64 = tf.float64
SHAPE = (3, 4, 4, 2)
EPSILON = 1e-5

# name: (dtype, fused, relative tolerance against the float64 oracle).
# float64 runs the formula (the fused kernels have no float64): two
# orderings of the same sums. float32 runs the fused kernels (the default
# for float32): float32 rounding.
VARIANTS = {
    "formula_float64": (tf.float64, False, 1e-12),
    "fused_float32": (tf.float32, True, 1e-4),
}


def _plain(x, axes, epsilon):
    mean = tf.reduce_mean(x, axes)
    centred = x - mean
    variance = tf.reduce_mean(tf.square(centred), axes)
    return centred * tf.math.rsqrt(variance + epsilon), mean, variance


def _subject(fused):
    return lambda x, axes, eps: normalize_batch(x, axes, eps, fused=fused)


def _problem(normalize, seed=0, dtype=F64):
    """``L(w, a)``: batch norm of an input built from ``w``, then a loss
    that ``a`` enters after the normalisation (so ``D`` runs through it).
    Values are drawn in float64 and rounded to float32, so that both dtypes
    see the same numbers."""
    rng = np.random.default_rng(seed)

    def rand(shape):
        values = rng.normal(size=shape).astype(np.float32)
        return tf.constant(values.astype(np.float64), dtype)

    x0 = rand(SHAPE)
    k = rand(SHAPE)
    axes = tf.constant([0, 1, 2])

    def loss_fn(w, a):
        y, _, _ = normalize(x0 * w[0] + w[1], axes, EPSILON)
        return tf.reduce_sum(tf.sin(y * a[0]) * k) + tf.reduce_sum(y**3 * k)

    w = [rand(SHAPE), rand(SHAPE)]
    a = [rand(SHAPE[-1:])]
    v = [rand(SHAPE), rand(SHAPE)]
    return loss_fn, w, a, v


def _rel(xs, ys):
    x = np.concatenate([np.ravel(t).astype(np.float64) for t in xs])
    y = np.concatenate([np.ravel(t) for t in ys])
    return np.linalg.norm(x - y) / np.linalg.norm(y)


def _amended(normalize, seed, dtype):
    loss_fn, w, a, v = _problem(normalize, seed, dtype)
    hv, dhv = tf.function(bilevel.amended_product_exact)(loss_fn, w, a, v)
    return hv + dhv


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("seed", [0, 1])
def test_amended_product_matches_autodiff_of_plain_formula(seed, variant):
    dtype, fused, rtol = VARIANTS[variant]
    got = _amended(_subject(fused), seed, dtype)
    assert _rel(got, _amended(_plain, seed, F64)) < rtol


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_values_and_statistics_equal_plain_formula(variant):
    dtype, fused, rtol = VARIANTS[variant]
    x = np.random.default_rng(2).normal(size=SHAPE).astype(np.float32)
    axes = tf.constant([0, 1, 2])
    got = tf.function(_subject(fused))(tf.constant(x, dtype), axes, EPSILON)
    want = _plain(tf.constant(x, F64), axes, EPSILON)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        if fused:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)
        else:
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_third_derivative_matches_autodiff_of_plain_formula(variant):
    """A gradient of ``<H v, z>``: the second derivative's ops are recorded
    functions of the input, so even a third tape differentiates right."""

    def third_derivative(normalize, dtype):
        loss_fn, w, a, v = _problem(normalize, 3, dtype)

        @tf.function
        def third(w, a, v):
            with tf.GradientTape() as tape:
                tape.watch(w)
                hv = bilevel.hvp_exact(loss_fn, w, a, v)
                target = bilevel.dot(hv, v)
            return tape.gradient(target, w)

        return third(w, a, v)

    dtype, fused, rtol = VARIANTS[variant]
    got = third_derivative(_subject(fused), dtype)
    assert _rel(got, third_derivative(_plain, F64)) < rtol


def test_float32_runs_the_fused_kernels_in_every_pass():
    """The forward, the VJP and the VJP inside the second derivative."""
    loss_fn, w, a, v = _problem(normalize_batch, 0, tf.float32)
    graph = (
        tf.function(bilevel.amended_product_exact)
        .get_concrete_function(loss_fn, w, a, v)
        .graph
    )
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count("FusedBatchNormV3") == 1
    # first backward; H v: the VJP again (the forward's adjoint) and inside
    # the second derivative; D H v: the same two.
    assert kinds.count("FusedBatchNormGradV3") == 5


def test_nothing_is_registered_globally():
    loss_fn, w, a, v = _problem(normalize_batch)
    before = len(tf_ops._gradient_registry.list())
    tf.function(bilevel.amended_product_exact)(loss_fn, w, a, v)
    assert len(tf_ops._gradient_registry.list()) == before


def _forward_products(normalize, seed, dtype):
    """``(H v, D H v)`` forward-over-reverse (`bilevel.hvp_forward`,
    `bilevel.mixed_forward`): the batch norm's JVPs (`_record`'s
    ``forward``) are exercised here and nowhere else."""
    loss_fn, w, a, v = _problem(normalize, seed, dtype)

    @tf.function
    def products(w, a, v):
        hv = bilevel.hvp_forward(loss_fn, w, a, v)
        return hv + bilevel.mixed_forward(loss_fn, w, a, hv)

    return products(w, a, v)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_over_reverse_matches_autodiff_of_plain_formula(
    seed, variant
):
    # oracle: double backward (reverse over reverse) of the plain formula
    dtype, fused, rtol = VARIANTS[variant]
    got = _forward_products(_subject(fused), seed, dtype)
    assert _rel(got, _amended(_plain, seed, F64)) < rtol
