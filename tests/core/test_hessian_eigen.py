"""R-DARTS' dominant eigenvalue against explicitly built Hessians."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import engine, hessian_eigen
from tf_amended_darts.vision.supernet import SearchNetwork


def _matvec(matrix):
    return lambda v: [matrix @ v[0]]


@pytest.mark.parametrize("eigenvalues", [
    [5.0, 2.0, -1.0, 0.5],      # dominant and largest: positive
    [3.0, -7.0, 1.0, 0.0],      # dominant negative, largest 3
    [-2.0, -9.0, -0.5, -4.0],   # all negative: largest -0.5
])
def test_largest_algebraic_eigenvalue_of_a_matrix(eigenvalues):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    matrix = q @ np.diag(eigenvalues) @ q.T
    result = hessian_eigen.largest_eigenvalue(
        _matvec(matrix), [rng.normal(size=4)], iterations=2000,
        tolerance=1e-8)
    assert result.converged
    np.testing.assert_allclose(result.value, max(eigenvalues), rtol=1e-6)
    vector = result.vector[0]
    np.testing.assert_allclose(matrix @ vector, result.value * vector,
                               atol=1e-4)


def test_power_iteration_reports_when_it_did_not_converge():
    matrix = np.diag([1.0, -1.0])  # |lambda| tie: the quotient oscillates
    result = hessian_eigen.power_iteration(
        _matvec(matrix), [np.array([1.0, 0.5])], iterations=5,
        tolerance=1e-12)
    assert result.products == 5 and not result.converged


def _search(dtype="float64"):
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(dtype)
    try:
        net = SearchNetwork(10, layers=3, init_channels=4,
                            operators=("none", "skip_connect",
                                       "sep_conv_3x3"),
                            steps=2, multiplier=2,
                            arch_init_scale=1.0, dtype=dtype)
        net.build((None, 8, 8, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    search = engine.BilevelSearch(net, arch_grad="first_order")
    search.compile()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(8, 8, 8, 3)), dtype)
    y = tf.constant(rng.integers(0, 10, 8), tf.int32)
    return search, x, y


def _explicit_hessian(search, x, y, weight_decay, eps=1e-5):
    """The full Hessian over the alphas, column by column, by float64
    central differences of the gradient (no second-order autodiff)."""
    loss = search.functional_loss(x, y)
    w = [v.value for v in search.weight_variables]
    a = [tf.convert_to_tensor(v.value) for v in search.arch_variables]
    sizes = [int(np.prod(t.shape)) for t in a]
    flat = tf.concat([tf.reshape(t, [-1]) for t in a], 0)

    def unflatten(f):
        parts = tf.split(f, sizes)
        return [tf.reshape(p, t.shape) for p, t in zip(parts, a,
                                                       strict=True)]

    @tf.function
    def gradient(point):
        with tf.GradientTape() as tape:
            tape.watch(point)
            value = loss(w, unflatten(point))
            value += 0.5 * weight_decay * tf.reduce_sum(point * point)
        return tape.gradient(value, point)

    columns = []
    for e in np.eye(flat.shape[0]):
        step = tf.constant(eps * e)
        columns.append(
            (gradient(flat + step) - gradient(flat - step)).numpy() / (2 * eps)
        )
    return np.stack(columns, axis=1)


def test_validation_hessian_eigenvalue_matches_eigvalsh():
    # float64 supernet of 2-node cells, alphas of 2 x (5 edges x 3
    # operators) = 30 parameters: the explicit Hessian (central
    # differences, plus the arch weight decay as R-DARTS) and its largest
    # eigenvalue by numpy, against power iteration on exact Hessian-vector
    # products through the search's functional loss.
    search, x, y = _search()
    wd = 1e-3
    matrix = _explicit_hessian(search, x, y, wd)
    assert matrix.shape == (30, 30)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)
    expected = np.linalg.eigvalsh(0.5 * (matrix + matrix.T)).max()
    result = hessian_eigen.ValidationHessian(
        search, weight_decay=wd, iterations=3000, tolerance=1e-6)(x, y)
    assert result.converged
    np.testing.assert_allclose(result.value, expected, rtol=1e-5)
    # the variables were not touched
    assert search.network.alphas["normal"].shape == (5, 3)
