"""Batch norm's hand-written derivatives (`layers.normalize_batch`).

The oracle is TensorFlow's autodiff of the plain formula
``(x - mean) * rsqrt(mean((x - mean)^2) + eps)`` (itself checked against
float64 finite differences in tests/test_layers.py), in float64 inside
`tf.function`: the amended step's ``H v`` and ``D H v`` through one batch
norm, and a third derivative, must agree to rounding. The derivatives are
recorded on the tapes, never registered: tracing must leave TensorFlow's
global gradient registry as it was.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from tf_amended_darts import bilevel
from tf_amended_darts import layers as L

F64 = tf.float64
SHAPE = (3, 4, 4, 2)
EPSILON = 1e-5
RTOL = 1e-12  # float64 rounding of two orderings of the same sums


def _plain(x, axes, epsilon):
    mean = tf.reduce_mean(x, axes)
    centred = x - mean
    variance = tf.reduce_mean(tf.square(centred), axes)
    return centred * tf.math.rsqrt(variance + epsilon), mean, variance


def _problem(normalize, seed=0):
    """``L(w, a)``: batch norm of an input built from ``w``, then a loss
    that ``a`` enters after the normalisation (so ``D`` runs through it)."""
    rng = np.random.default_rng(seed)
    x0 = tf.constant(rng.normal(size=SHAPE), F64)
    k = tf.constant(rng.normal(size=SHAPE), F64)
    axes = tf.constant([0, 1, 2])
    eps = tf.constant(EPSILON, F64)

    def loss_fn(w, a):
        y, _, _ = normalize(x0 * w[0] + w[1], axes, eps)
        return tf.reduce_sum(tf.sin(y * a[0]) * k) + tf.reduce_sum(y**3 * k)

    def rand(shape):
        return tf.constant(rng.normal(size=shape), F64)

    w = [rand(SHAPE), rand(SHAPE)]
    a = [rand(SHAPE[-1:])]
    v = [rand(SHAPE), rand(SHAPE)]
    return loss_fn, w, a, v


def _rel(xs, ys):
    x = np.concatenate([np.ravel(t) for t in xs])
    y = np.concatenate([np.ravel(t) for t in ys])
    return np.linalg.norm(x - y) / np.linalg.norm(y)


@pytest.mark.parametrize("seed", [0, 1])
def test_amended_product_matches_autodiff_of_plain_formula(seed):
    outs = []
    for normalize in (L.normalize_batch, _plain):
        loss_fn, w, a, v = _problem(normalize, seed)
        product = tf.function(bilevel.amended_product_exact)
        hv, dhv = product(loss_fn, w, a, v)
        outs.append(hv + dhv)
    assert _rel(outs[0], outs[1]) < RTOL


def test_values_and_statistics_equal_plain_formula():
    x = tf.constant(np.random.default_rng(2).normal(size=SHAPE), F64)
    axes = tf.constant([0, 1, 2])
    eps = tf.constant(EPSILON, F64)
    for got, want in zip(L.normalize_batch(x, axes, eps),
                         _plain(x, axes, eps), strict=True):
        np.testing.assert_array_equal(got, want)


def test_third_derivative_matches_autodiff_of_plain_formula():
    """A gradient of ``<H v, z>``: the second derivative's ops are recorded
    functions of the input, so even a third tape differentiates right."""
    outs = []
    for normalize in (L.normalize_batch, _plain):
        loss_fn, w, a, v = _problem(normalize, 3)

        @tf.function
        def third(w, a, v, loss_fn=loss_fn):
            with tf.GradientTape() as tape:
                tape.watch(w)
                hv = bilevel.hvp_exact(loss_fn, w, a, v)
                target = bilevel.dot(hv, v)
            return tape.gradient(target, w)

        outs.append(third(w, a, v))
    assert _rel(outs[0], outs[1]) < RTOL


def test_nothing_is_registered_globally():
    loss_fn, w, a, v = _problem(L.normalize_batch)
    before = len(tf_ops._gradient_registry.list())
    tf.function(bilevel.amended_product_exact)(loss_fn, w, a, v)
    assert len(tf_ops._gradient_registry.list()) == before
