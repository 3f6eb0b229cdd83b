"""Gradient fidelity against closed forms and an explicit-Hessian solve."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.core.test_bilevel import (
    DT,
    NW,
    W_SHAPES,
    Quadratic,
    _flat,
    _split,
)
from tf_amended_darts.core import bilevel, diagnostics, engine, fidelity
from tf_amended_darts.jobs import toy


def _toy(w, a):
    def loss(x):
        return lambda ws, as_: tf.square(ws[0] * x - as_[0])

    return (
        loss(tf.constant(toy.TRAIN_X, DT)),
        loss(tf.constant(toy.VAL_X, DT)),
        [tf.constant(w, DT)],
        [tf.constant(a, DT)],
    )


@pytest.mark.parametrize("compile_", [False, True])
def test_toy_closed_forms(compile_):
    # L_train = (w - a)^2: H = 2, D = -2; L_val = (2w - a)^2: v = 4(2w - a).
    w0, a0, xi, eta = 0.3, 0.7, 0.5, 0.1
    train_loss, val_loss, w, a = _toy(w0, a0)
    measure = fidelity.GradientFidelity(
        train_loss, val_loss, eta=eta, compile=compile_
    )
    result = measure(w, a, bilevel.VirtualStep(tf.constant(xi, DT)))
    v = 4 * (2 * w0 - a0)  # -0.4
    assert float(result.g2[0]) == pytest.approx(v, rel=1e-12)  # 2 v / H
    assert result.damping == 0.0 and result.residual < 1e-10
    assert float(result.terms["amended"][0]) == pytest.approx(
        4 * eta * v, rel=1e-12
    )  # -eta D H v
    w_virtual = w0 - xi * 2 * (w0 - a0)  # 0.7
    v_virtual = 4 * (2 * w_virtual - a0)  # 2.8: the other sign
    assert float(result.terms["second_order"][0]) == pytest.approx(
        2 * xi * v_virtual, rel=1e-12
    )  # -xi D v'
    assert result.cosines["amended"] == pytest.approx(1.0)
    assert result.cosines["second_order"] == pytest.approx(-1.0)


def test_toy_damping_closed_form():
    train_loss, val_loss, w, a = _toy(0.3, 0.7)
    measure = fidelity.GradientFidelity(
        train_loss, val_loss, damping=0.5, compile=False
    )
    g2, solve = measure.true_g2(w, a)
    assert solve.damping == 0.5
    assert float(g2[0]) == pytest.approx(2 * -0.4 / 2.5, rel=1e-12)


def _indefinite(seed, negative):
    """The test quadratic with `negative` eigenvalues of A made negative."""
    quad = Quadratic(seed)
    rng = np.random.default_rng(seed + 100)
    q, _ = np.linalg.qr(rng.normal(size=(NW, NW)))
    eig = rng.uniform(0.5, 3.0, NW)
    eig[:negative] = -rng.uniform(0.2, 1.0, negative)
    quad.A = q @ np.diag(eig) @ q.T
    return quad, eig


@pytest.mark.parametrize("negative", [0, 1, 3])
def test_quadratic_against_numpy_solve(negative):
    quad, eig = _indefinite(3, negative)
    w, a = quad.values()
    measure = fidelity.GradientFidelity(
        quad.train_loss, quad.val_loss, eta=0.3, iterations=200,
        tolerance=1e-12,
    )
    lr, mu, wd = 0.05, 0.9, 3e-4
    buffers = _split(tf.constant(quad.buf, DT), W_SHAPES)
    result = measure(w, a, bilevel.VirtualStep(lr, mu, buffers, wd))

    lam = result.damping
    if negative:
        # raised where needed: A + lambda I is positive definite, within a
        # factor of two of the least eigenvalue's magnitude
        assert -eig.min() < lam <= 2 * -eig.min() + 1e-12
    else:
        assert lam == 0.0
    v = quad.P @ quad.w + quad.Q @ quad.a + quad.r
    g2 = -quad.B.T @ np.linalg.solve(quad.A + lam * np.eye(NW), v)
    assert result.residual < 1e-10
    np.testing.assert_allclose(_flat(result.g2), g2, rtol=1e-8, atol=1e-10)
    amended = -0.3 * quad.B.T @ (quad.A @ v)
    grad_train = quad.A @ quad.w + quad.B @ quad.a + quad.c
    w_virtual = quad.w - lr * (mu * quad.buf + grad_train + wd * quad.w)
    v_virtual = quad.P @ w_virtual + quad.Q @ quad.a + quad.r
    second = -lr * quad.B.T @ v_virtual
    for name, term in (("amended", amended), ("second_order", second)):
        np.testing.assert_allclose(
            _flat(result.terms[name]), term, rtol=1e-9, atol=1e-12
        )
        cos = term @ g2 / np.linalg.norm(term) / np.linalg.norm(g2)
        assert result.cosines[name] == pytest.approx(cos, abs=1e-9)


def test_damped_cg_keeps_plain_cg_for_positive_definite():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(5, 5))
    m = m @ m.T + np.eye(5)
    b = [tf.constant(rng.normal(size=5), DT)]
    solve = diagnostics.damped_conjugate_gradient(
        lambda x: [tf.linalg.matvec(tf.constant(m), x[0])], b
    )
    assert solve.damping == 0.0 and solve.restarts == 0
    np.testing.assert_allclose(
        solve.x[0], np.linalg.solve(m, b[0].numpy()), rtol=1e-8
    )


def test_arguments_are_checked():
    train_loss, val_loss, _, _ = _toy(0.0, 1.0)
    with pytest.raises(ValueError, match="eta > 0"):
        fidelity.GradientFidelity(train_loss, val_loss, eta=0.0)
    with pytest.raises(ValueError, match="damping >= 0"):
        fidelity.GradientFidelity(train_loss, val_loss, damping=-1.0)
    with pytest.raises(ValueError, match="hvp"):
        fidelity.GradientFidelity(train_loss, val_loss, hvp="bogus")
    with pytest.raises(ValueError, match="damping >= 0"):
        diagnostics.damped_conjugate_gradient(
            lambda x: x, [tf.constant([1.0])], damping=-1.0
        )


# --- a small super-network against tf.hessians and np.linalg.solve ----------


def _tiny_supernet():
    from tf_amended_darts.vision.supernet import SearchNetwork

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float64")
    try:
        net = SearchNetwork(
            4,
            layers=3,
            init_channels=2,
            operators=("sep_conv_3x3", "skip_connect", "none"),
            steps=1,  # S3's operators, 1314 weights
            multiplier=1,
            arch_init_scale=0.5,
            dtype="float64",
        )
        net.build((None, 4, 4, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    search = engine.BilevelSearch(net, arch_grad="amended")
    search.compile()
    rng = np.random.default_rng(0)

    def batch(seed):
        r = np.random.default_rng(seed)
        x = tf.constant(r.normal(size=(4, 4, 4, 3)), tf.float64)
        return x, tf.constant(r.integers(0, 4, 4), tf.int32)

    train, val = batch(1), batch(2)
    w = [tf.convert_to_tensor(v.value) for v in net.weight_variables]
    a = [tf.convert_to_tensor(v.value) for v in net.arch_variables]
    buffers = [tf.constant(rng.normal(size=x.shape), tf.float64) for x in w]
    return (
        search.functional_loss(*train),
        search.functional_loss(*val),
        w,
        a,
        buffers,
    )


@pytest.mark.slow  # ~80 s: 1314 backward passes for the explicit Hessian
def test_supernet_against_explicit_hessian_solve():
    train_loss, val_loss, w, a, buffers = _tiny_supernet()
    shapes_w = [x.shape for x in w]
    shapes_a = [x.shape for x in a]
    flat_w, flat_a = _flat(w), _flat(a)
    n = int(flat_w.shape[0])
    assert n < 1500  # small enough for an explicit Hessian

    def split(vec, shapes):
        return _split(vec, shapes)

    @tf.function
    def explicit():
        with tf.GradientTape(persistent=True) as outer:
            outer.watch([flat_w, flat_a])
            with tf.GradientTape() as inner:
                inner.watch(flat_w)
                loss = train_loss(split(flat_w, shapes_w),
                                  split(flat_a, shapes_a))
            grad_w = inner.gradient(loss, flat_w)
        hessian = outer.jacobian(grad_w, flat_w, experimental_use_pfor=False)
        mixed = outer.jacobian(grad_w, flat_a, experimental_use_pfor=False)
        with tf.GradientTape() as tape:
            tape.watch(flat_w)
            val = val_loss(split(flat_w, shapes_w), split(flat_a, shapes_a))
        return hessian, mixed, tape.gradient(val, flat_w)

    hessian, mixed, v = (t.numpy() for t in explicit())
    hessian = 0.5 * (hessian + hessian.T)
    eig = np.linalg.eigvalsh(hessian)
    assert eig.min() < 0  # the supernet's H is indefinite here

    measure = fidelity.GradientFidelity(
        train_loss, val_loss, eta=0.1, iterations=4 * n, tolerance=1e-10
    )
    lr, mu, wd = 0.025, 0.9, 3e-4
    result = measure(w, a, bilevel.VirtualStep(lr, mu, buffers, wd))
    lam = result.damping
    assert -eig.min() < lam <= 2 * -eig.min() + 1e-9
    g2 = -mixed.T @ np.linalg.solve(hessian + lam * np.eye(n), v)
    assert result.residual < 1e-8
    np.testing.assert_allclose(
        _flat(result.g2), g2, rtol=1e-5, atol=1e-7 * np.abs(g2).max()
    )
    amended = -0.1 * mixed.T @ (hessian @ v)
    np.testing.assert_allclose(
        _flat(result.terms["amended"]), amended, rtol=1e-6,
        atol=1e-9 * np.abs(amended).max(),
    )
    cos = amended @ g2 / np.linalg.norm(amended) / np.linalg.norm(g2)
    assert result.cosines["amended"] == pytest.approx(cos, abs=1e-6)
    assert -1.0 <= result.cosines["second_order"] <= 1.0
