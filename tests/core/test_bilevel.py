"""Estimators and products against closed forms and explicit Hessians.

All in float64 and inside `tf.function` (graph mode), where TensorFlow's
second derivatives have been seen to go wrong.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import downstream, waits_for
from tf_amended_darts.core import bilevel

DT = tf.float64
W_SHAPES = [(3,), (2, 2)]  # 7 weights in two tensors
A_SHAPES = [(2,), (1,)]  # 3 architecture parameters in two tensors
NW, NA = 7, 3


def _flat(xs):
    return tf.concat([tf.reshape(x, [-1]) for x in xs], 0)


def _split(vec, shapes):
    out, i = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(tf.reshape(vec[i:i + n], s))
        i += n
    return out


class Quadratic:
    """L_train = 1/2 w'Aw + w'Ba + c'w + 1/2 a'Ea;
    L_val = 1/2 w'Pw + w'Qa + r'w + s'a + 1/2 a'Fa."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)

        def spd(n):
            m = rng.normal(size=(n, n))
            return m @ m.T + n * np.eye(n)

        self.A, self.P = spd(NW), spd(NW)
        self.E, self.F = spd(NA), spd(NA)
        self.B = rng.normal(size=(NW, NA))
        self.Q = rng.normal(size=(NW, NA))
        self.c, self.r = rng.normal(size=NW), rng.normal(size=NW)
        self.s = rng.normal(size=NA)
        self.w = rng.normal(size=NW)
        self.a = rng.normal(size=NA)
        self.buf = rng.normal(size=NW)

    def train_loss(self, w, a):
        w, a = _flat(w), _flat(a)
        return (0.5 * tf.tensordot(w, tf.linalg.matvec(self.A, w), 1)
                + tf.tensordot(w, tf.linalg.matvec(self.B, a), 1)
                + tf.tensordot(self.c, w, 1)
                + 0.5 * tf.tensordot(a, tf.linalg.matvec(self.E, a), 1))

    def val_loss(self, w, a):
        w, a = _flat(w), _flat(a)
        return (0.5 * tf.tensordot(w, tf.linalg.matvec(self.P, w), 1)
                + tf.tensordot(w, tf.linalg.matvec(self.Q, a), 1)
                + tf.tensordot(self.r, w, 1) + tf.tensordot(self.s, a, 1)
                + 0.5 * tf.tensordot(a, tf.linalg.matvec(self.F, a), 1))

    def values(self):
        return (_split(tf.constant(self.w, DT), W_SHAPES),
                _split(tf.constant(self.a, DT), A_SHAPES))

    # closed forms
    def g1(self, w):
        return self.Q.T @ w + self.s + self.F @ self.a

    def v(self, w):
        return self.P @ w + self.Q @ self.a + self.r

    def grad_w_train(self, w):
        return self.A @ w + self.B @ self.a + self.c


def _run(fn, *args):
    return tf.function(fn)(*args)


@pytest.fixture(params=[0, 1])
def quad(request):
    return Quadratic(request.param)


@pytest.mark.parametrize("hvp", bilevel.HVP_MODES)
def test_products_equal_closed_form(quad, hvp):
    w, a = quad.values()
    rng = np.random.default_rng(5)
    v_np, u_np = rng.normal(size=NW), rng.normal(size=NW)
    v, u = _split(tf.constant(v_np), W_SHAPES), _split(tf.constant(u_np),
                                                       W_SHAPES)
    hvp_fn, mixed_fn = {
        "exact": (bilevel.hvp_exact, bilevel.mixed_exact),
        "forward": (bilevel.hvp_forward, bilevel.mixed_forward),
        "finite_difference": (bilevel.hvp_finite_difference,
                              bilevel.mixed_finite_difference),
    }[hvp]
    hv = _flat(_run(lambda: hvp_fn(quad.train_loss, w, a, v)))
    du = _flat(_run(lambda: mixed_fn(quad.train_loss, w, a, u)))
    np.testing.assert_allclose(hv, quad.A @ v_np, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(du, quad.B.T @ u_np, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("hvp", bilevel.HVP_MODES)
@pytest.mark.parametrize("eta", [0.1, 0.7])
def test_amended_equals_closed_form(quad, hvp, eta):
    w, a = quad.values()
    res = _run(lambda: bilevel.estimate(
        "amended", quad.train_loss, quad.val_loss, w, a, eta=eta, hvp=hvp))
    v = quad.v(quad.w)
    g1 = quad.g1(quad.w)
    g2 = -eta * quad.B.T @ quad.A @ v
    np.testing.assert_allclose(_flat(res.g1), g1, rtol=1e-10)
    np.testing.assert_allclose(_flat(res.g2), g2, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(_flat(res.arch_grads), g1 + g2, rtol=1e-8,
                               atol=1e-9)
    np.testing.assert_allclose(float(res.val_loss),
                               float(quad.val_loss(w, a)), rtol=1e-12)


def test_first_order_is_g1(quad):
    w, a = quad.values()
    res = _run(lambda: bilevel.estimate(
        "first_order", quad.train_loss, quad.val_loss, w, a))
    np.testing.assert_allclose(_flat(res.arch_grads), quad.g1(quad.w),
                               rtol=1e-12)
    assert float(bilevel.global_norm(res.g2)) == 0.0


@pytest.mark.parametrize("hvp", bilevel.HVP_MODES)
def test_amended_with_zero_eta_is_first_order_exactly(quad, hvp):
    w, a = quad.values()
    first = _run(lambda: bilevel.estimate(
        "first_order", quad.train_loss, quad.val_loss, w, a))
    amended = _run(lambda: bilevel.estimate(
        "amended", quad.train_loss, quad.val_loss, w, a, eta=0.0, hvp=hvp))
    for x, y in zip(first.arch_grads, amended.arch_grads, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.parametrize("hvp", bilevel.HVP_MODES)
@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 3e-4)])
def test_second_order_closed_form(quad, hvp, momentum, weight_decay):
    w, a = quad.values()
    xi = 0.05
    buf = _split(tf.constant(quad.buf), W_SHAPES)
    step = bilevel.VirtualStep(
        learning_rate=tf.constant(xi, DT), momentum=momentum,
        momentum_buffers=buf, weight_decay=weight_decay)
    res = _run(lambda: bilevel.estimate(
        "second_order", quad.train_loss, quad.val_loss, w, a, hvp=hvp,
        virtual_step=step))
    w_virtual = quad.w - xi * (momentum * quad.buf
                               + quad.grad_w_train(quad.w)
                               + weight_decay * quad.w)
    expected = quad.g1(w_virtual) - xi * quad.B.T @ quad.v(w_virtual)
    np.testing.assert_allclose(_flat(res.arch_grads), expected, rtol=1e-8,
                               atol=1e-9)


def _rel(x, y):
    return float(tf.norm(x - y) / tf.norm(y))


def _unrolled_oracle(train_loss, val_loss, w, a, step):
    """d/da L_val(w'(a), a) by autodiff through the virtual step."""
    with tf.GradientTape() as outer:
        outer.watch(a)
        with tf.GradientTape() as inner:
            inner.watch(w)
            loss = train_loss(w, a)
        gw = inner.gradient(loss, w)
        w_virtual = step.apply(w, gw)
        loss_v = val_loss(w_virtual, a)
    return outer.gradient(loss_v, a)


class SmallNet:
    """A tiny non-quadratic model: softmax-weighted tanh/relu branches."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.xt = tf.constant(rng.normal(size=(6, 3)), DT)
        self.xv = tf.constant(rng.normal(size=(6, 3)), DT)
        self.yt = tf.constant(rng.normal(size=(6, 2)), DT)
        self.yv = tf.constant(rng.normal(size=(6, 2)), DT)
        self.w = [tf.constant(rng.normal(size=(3, 4)) * 0.5, DT),
                  tf.constant(rng.normal(size=(4, 2)) * 0.5, DT)]
        self.a = [tf.constant(rng.normal(size=(3,)), DT)]

    @staticmethod
    def loss(x, y):
        def f(w, a):
            h = tf.matmul(x, w[0])
            p = tf.nn.softmax(a[0])
            h = p[0] * tf.tanh(h) + p[1] * tf.nn.softplus(h) + p[2] * h
            out = tf.matmul(h, w[1])
            return tf.reduce_mean(tf.reduce_sum(tf.square(out - y), -1))
        return f

    def problem(self):
        return (self.loss(self.xt, self.yt), self.loss(self.xv, self.yv),
                self.w, self.a)


def _explicit(train_loss, w, a):
    """Full Hessian H (ww) and mixed block D (aw) by nested jacobians."""
    wf = _flat(w)
    af = _flat(a)

    def unflat(wv, av):
        return (_split(wv, [x.shape for x in w]),
                _split(av, [x.shape for x in a]))

    with tf.GradientTape(persistent=True) as outer:
        outer.watch([wf, af])
        with tf.GradientTape() as inner:
            inner.watch(wf)
            loss = train_loss(*unflat(wf, af))
        gw = inner.gradient(loss, wf)
    h = outer.jacobian(gw, wf)
    d = tf.transpose(outer.jacobian(gw, af))
    return h, d


@pytest.mark.parametrize("seed", [0, 1])
def test_products_equal_explicit_hessian_on_nonlinear_model(seed):
    net = SmallNet(seed)
    train_loss, val_loss, w, a = net.problem()
    h, d = tf.function(lambda: _explicit(train_loss, w, a))()
    v = [tf.constant(np.random.default_rng(9).normal(size=x.shape), DT)
         for x in w]
    hv = _flat(tf.function(lambda: bilevel.hvp_exact(train_loss, w, a, v))())
    du = _flat(tf.function(
        lambda: bilevel.mixed_exact(train_loss, w, a, v))())
    np.testing.assert_allclose(hv, tf.linalg.matvec(h, _flat(v)), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(du, tf.linalg.matvec(d, _flat(v)), rtol=1e-10,
                               atol=1e-12)
    hv_fd = _flat(tf.function(
        lambda: bilevel.hvp_finite_difference(train_loss, w, a, v))())
    du_fd = _flat(tf.function(
        lambda: bilevel.mixed_finite_difference(train_loss, w, a, v))())
    # Central differences: O(eps^2) error, eps = 0.01 / ||v||.
    assert _rel(hv_fd, hv) < 1e-4
    assert _rel(du_fd, du) < 1e-4
    hv2, dhv = tf.function(
        lambda: bilevel.amended_product_exact(train_loss, w, a, v))()
    np.testing.assert_allclose(_flat(hv2), hv, rtol=1e-12)
    np.testing.assert_allclose(
        _flat(dhv), tf.linalg.matvec(d, tf.linalg.matvec(h, _flat(v))),
        rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_forward_over_reverse_products_equal_explicit_hessian(seed):
    # `hvp_forward` / `mixed_forward`: a forward accumulator over one
    # reverse pass, against the explicit H and D blocks.
    net = SmallNet(seed)
    train_loss, _, w, a = net.problem()
    h, d = tf.function(lambda: _explicit(train_loss, w, a))()
    v = [tf.constant(np.random.default_rng(9).normal(size=x.shape), DT)
         for x in w]
    hv = tf.function(lambda: bilevel.hvp_forward(train_loss, w, a, v))()
    du = tf.function(lambda: bilevel.mixed_forward(train_loss, w, a, v))()
    np.testing.assert_allclose(_flat(hv), tf.linalg.matvec(h, _flat(v)),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_flat(du), tf.linalg.matvec(d, _flat(v)),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hvp,rtol", [("exact", 1e-10), ("forward", 1e-10),
                                      ("finite_difference", 1e-4)])
def test_second_order_equals_autodiff_through_unroll(hvp, rtol):
    net = SmallNet(3)
    train_loss, val_loss, w, a = net.problem()
    buf = [tf.ones_like(x) * 0.1 for x in w]
    step = bilevel.VirtualStep(tf.constant(0.3, DT), 0.9, buf, 3e-4)
    res = tf.function(lambda: bilevel.estimate(
        "second_order", train_loss, val_loss, w, a, hvp=hvp,
        virtual_step=step))()
    oracle = tf.function(
        lambda: _unrolled_oracle(train_loss, val_loss, w, a, step))()
    assert _rel(_flat(res.arch_grads), _flat(oracle)) < rtol


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(arch_grad="third_order"), "--arch_grad='third_order'.*"
         "first_order, second_order, amended"),
        (dict(arch_grad="amended", eta=-0.1), "--eta.*>= 0"),
        (dict(arch_grad="amended", eta="big"), "--eta"),
        (dict(arch_grad="amended", hvp="lanczos"),
         "--hvp='lanczos'.*exact, finite_difference, forward"),
    ],
)
def test_bad_estimator_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bilevel.validate_estimator(**kwargs)


def test_second_order_needs_virtual_step(quad):
    w, a = quad.values()
    with pytest.raises(ValueError, match="VirtualStep"):
        bilevel.estimate("second_order", quad.train_loss, quad.val_loss, w, a)


@pytest.mark.parametrize("product", ["hvp", "mixed"])
def test_central_difference_passes_run_one_after_the_other(quad, product):
    # The two passes of a central difference are independent, so the
    # executor would run them side by side and hold both passes'
    # activations (S1 amended finite_difference: 12.6 GB, 10.9 GB once
    # ordered; benchmarks/s1_cpu.md section 7). The second pass's first op
    # must carry a control dependency on the first pass's gradients.
    fn = {"hvp": bilevel.hvp_finite_difference,
          "mixed": bilevel.mixed_finite_difference}[product]
    markers = []

    def loss(w, a):
        markers.append(tf.identity(w[0], name="pass_start"))
        return quad.train_loss([markers[-1]] + list(w[1:]), a)

    w, a = quad.values()
    u = [tf.ones_like(x) for x in w]
    tf.function(lambda: fn(loss, w, a, u)).get_concrete_function()
    first, second = (m.op for m in markers)
    assert not first.control_inputs
    assert len(second.control_inputs) == 1  # a NoOp gathers the gradients
    deps = waits_for(second)
    assert deps, "the second pass does not wait for the first"
    # ... and what it waits for is the first pass's gradient (the ops
    # downstream of the first pass's start), not something unrelated.
    after_first = downstream(first)
    assert deps <= after_first, sorted(deps - after_first)[:3]


@pytest.mark.parametrize("hvp", bilevel.HVP_MODES)
def test_amended_training_passes_wait_for_the_validation_pass(quad, hvp):
    # Independent of the validation pass, the training pass of the amended
    # products would start beside it and hold both passes' activations
    # (benchmarks/s1_cpu.md section 7). Every training pass's first op must
    # wait for ops downstream of the validation pass.
    train_marks, val_marks = [], []

    def marked(loss_fn, marks):
        def loss(w, a):
            marks.append(tf.identity(w[0], name="pass_start"))
            return loss_fn([marks[-1]] + list(w[1:]), a)

        return loss

    w, a = quad.values()
    tf.function(lambda: bilevel.estimate(
        "amended", marked(quad.train_loss, train_marks),
        marked(quad.val_loss, val_marks), w, a, hvp=hvp,
    )).get_concrete_function()
    (val,) = val_marks
    validation = downstream(val.op)
    assert train_marks
    for mark in train_marks:
        # one edge per waited-for pass (a NoOp gathers its tensors)
        assert len(mark.op.control_inputs) <= 2
        deps = waits_for(mark.op)
        assert deps, "a training pass does not wait for the validation pass"
        assert deps <= validation | downstream(train_marks[0].op)
    first = waits_for(train_marks[0].op)
    assert first <= validation, sorted(first - validation)[:3]
