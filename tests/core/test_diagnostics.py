"""The true-hypergradient reference against closed forms."""

import numpy as np
import pytest
import tensorflow as tf

from tests.core.test_bilevel import Quadratic, _flat
from tf_amended_darts.core import diagnostics
from tf_amended_darts.jobs import toy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_true_hypergradient_closed_form(seed):
    quad = Quadratic(seed)
    w, a = quad.values()
    truth, g1, g2, residual = diagnostics.true_hypergradient(
        quad.train_loss, quad.val_loss, w, a)
    expected_g2 = -quad.B.T @ np.linalg.solve(quad.A, quad.v(quad.w))
    assert residual < 1e-9
    np.testing.assert_allclose(_flat(g1), quad.g1(quad.w), rtol=1e-10)
    np.testing.assert_allclose(_flat(g2), expected_g2, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(_flat(truth), quad.g1(quad.w) + expected_g2,
                               rtol=1e-7, atol=1e-9)


def test_conjugate_gradient_solves_spd_system():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 6))
    m = m @ m.T + np.eye(6)
    b = rng.normal(size=6)
    x, residual = diagnostics.conjugate_gradient(
        lambda v: [tf.linalg.matvec(tf.constant(m), v[0])],
        [tf.constant(b)])
    np.testing.assert_allclose(x[0], np.linalg.solve(m, b), rtol=1e-8)
    assert residual < 1e-9


def _toy_problem(w, a):
    def loss(x):
        return lambda ws, as_: tf.square(ws[0] * x - as_[0])
    return (loss(tf.constant(toy.TRAIN_X, tf.float64)),
            loss(tf.constant(toy.VAL_X, tf.float64)),
            [tf.constant(w, tf.float64)], [tf.constant(a, tf.float64)])


def test_toy_fidelity_closed_form():
    # At w = w*(a) = a: true hypergradient 2a, g1 = -2a, amended
    # (16 eta - 2) a: cosine -1 for first_order, +1 for amended if eta > 1/8.
    train_loss, val_loss, w, a = _toy_problem(0.7, 0.7)
    truth, g1, g2, _ = diagnostics.true_hypergradient(
        train_loss, val_loss, w, a)
    assert float(truth[0]) == pytest.approx(1.4, rel=1e-12)
    assert float(g2[0]) == pytest.approx(2.8, rel=1e-12)
    low = diagnostics.estimator_fidelity(train_loss, val_loss, w, a, eta=0.1)
    high = diagnostics.estimator_fidelity(train_loss, val_loss, w, a,
                                          eta=0.2)
    assert low["first_order"] == pytest.approx(-1.0)
    assert low["amended"] == pytest.approx(-1.0)
    assert high["amended"] == pytest.approx(1.0)
    assert high["g2_alignment"] == pytest.approx(1.0)


def test_cosine_similarity():
    x = [tf.constant([1.0, 0.0]), tf.constant([0.0])]
    y = [tf.constant([1.0, 1.0]), tf.constant([0.0])]
    assert diagnostics.cosine_similarity(x, y) == pytest.approx(2 ** -0.5)
