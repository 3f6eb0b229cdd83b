"""Every estimator's architecture gradient on a tiny recurrent super-network
against independent float64 oracles.

The super-network is the real `SearchRNNModel` (8-node mixed highway cell
in a while loop, batch normalisation, every dropout on with its masks
fixed within the step, temporal activation regularisation), shrunk to
``nhid = 2`` and a 5-word vocabulary so that its Hessian can be built.
Oracles: float64 central differences of the gradients (tiny steps, so
that none crosses a ReLU kink), of the loss, autodiff through the unrolled
virtual step, and (slow) the explicit Hessian ``H`` and mixed block ``D``
by row-by-row jacobians. The default tests use a 3-node cell (the same
code as 8 nodes; tracing the double-backward pass of a while loop costs
tens of seconds per node count); the slow ones add the 8-node cell.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import bilevel, engine, hparams
from tf_amended_darts.core.optimizers import TorchAdam, TorchSGD
from tf_amended_darts.language import data, evaluation, models, space

DT = tf.float64
SMOOTH = ("none", "tanh", "sigmoid", "identity")  # no ReLU kink


def _flat(xs):
    return tf.concat([tf.reshape(x, [-1]) for x in xs], 0)


def _split(vec, like):
    out, start = [], 0
    for x in like:
        n = int(np.prod(x.shape))
        out.append(tf.reshape(vec[start:start + n], x.shape))
        start += n
    return out


def _rel(x, y):
    return float(tf.norm(_flat(x) - _flat(y)) / tf.norm(_flat(y)))


def _batches(vocab, batch, length, seed):
    rng = np.random.default_rng(seed)
    out = []
    for stream in (models.TRAIN_STREAM, models.VALID_STREAM):
        tokens = rng.integers(0, vocab, (batch, length + 1))
        x, y = data.make_batch(tokens[:, :-1], tokens[:, 1:], length, stream,
                               max_length=length + 1)
        out.append((x, y))
    return out


def _search(operators=space.PRIMITIVES, arch_grad="amended", hvp="exact",
            clip=None, seed=0, steps=3):
    keras.utils.set_random_seed(seed)
    keras.config.set_dtype_policy("float64")
    try:
        net = models.SearchRNNModel(
            5, 2, 2, steps=steps, operators=operators, dropout=0.3,
            dropouth=0.2,
            dropoutx=0.3, dropouti=0.2, dropoute=0.2, tar_beta=0.1,
            batch_size=3, seed=seed, arch_init_scale=0.5)
        net.build()
    finally:
        keras.config.set_dtype_policy("float32")
    # Nonzero carried states, so that the initial state matters.
    rng = np.random.default_rng(seed + 7)
    net.train_state.assign(rng.normal(size=(3, 2)))
    net.valid_state.assign(rng.normal(size=(3, 2)))
    search = engine.BilevelSearch(
        net, arch_grad=arch_grad, hvp=hvp, loss=evaluation.language_loss,
        classification=False, virtual_step_clip_norm=clip)
    search.compile(weight_optimizer=TorchSGD(0.5, 0.0, 1e-3),
                   arch_optimizer=TorchAdam(0.01))
    train, val = _batches(5, 3, 3, seed)
    return search, net, train, val


def _values(net):
    w = [tf.convert_to_tensor(v.value) for v in net.weight_variables]
    a = [tf.convert_to_tensor(v.value) for v in net.arch_variables]
    return w, a


def _explicit(loss, w, a):
    """``H`` (ww) and ``D`` (aw, shape |a| x |w|) by row-by-row jacobians."""
    wf, af = _flat(w), _flat(a)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([wf, af])
        with tf.GradientTape() as inner:
            inner.watch(wf)
            value = loss(_split(wf, w), _split(af, a))
        gw = inner.gradient(value, wf)
    # pfor cannot vectorise the while loop's gradient: one row at a time.
    h = outer.jacobian(gw, wf, experimental_use_pfor=False)
    d = tf.transpose(outer.jacobian(gw, af, experimental_use_pfor=False))
    return h, d


def _difference_products(loss, w, a, v, eps=1e-6):
    """``H v`` and ``D (H v)`` by float64 central differences of gradients.

    The steps are tiny (``eps`` along unit directions), so that they do not
    cross a ReLU kink.
    """
    grads = tf.function(
        lambda ws: bilevel.loss_and_grads(loss, ws, a)[1:])

    def along(u):
        norm = bilevel.global_norm(u)
        unit = bilevel.scale(1 / norm, u)
        plus = grads(bilevel.axpy(eps, unit, w))
        minus = grads(bilevel.axpy(-eps, unit, w))
        return [[norm * (p - m) / (2 * eps) for p, m in zip(pl, mi,
                                                            strict=True)]
                for pl, mi in zip(plus, minus, strict=True)]

    hv = along(v)[0]
    return hv, along(hv)[1]


def _random_like(xs, seed):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=x.shape), DT) for x in xs]


def test_masks_are_fixed_within_a_step_and_dropout_is_on():
    search, net, (xt, yt), _ = _search()
    w, a = _values(net)
    loss = search.functional_loss(xt, yt)
    first = float(loss(w, a))
    assert float(loss(w, a)) == first  # same masks in every pass
    net.mask_counter.assign_add(1)  # what the weight step does
    assert float(search.functional_loss(xt, yt)(w, a)) != first
    out = net.stateless_call(
        [v.value for v in net.trainable_variables],
        [v.value for v in net.non_trainable_variables], xt,
        training=False)[0]
    nll = evaluation.language_loss(yt, out)
    assert abs(float(nll) - first) > 1e-6  # dropout changes the loss


@pytest.mark.slow
def test_exact_products_equal_explicit_hessian():
    # The full Hessian of a 3-node cell (55 weights): about a minute.
    search, net, (xt, yt), _ = _search()
    w, a = _values(net)
    loss = search.functional_loss(xt, yt)
    h, d = tf.function(lambda: _explicit(loss, w, a))()
    assert h.shape == (55, 55) and d.shape == (30, 55)
    np.testing.assert_allclose(h, tf.transpose(h), atol=1e-10)
    v = _random_like(w, 5)
    hv, dhv = tf.function(
        lambda: bilevel.amended_product_exact(loss, w, a, v))()
    np.testing.assert_allclose(_flat(hv), tf.linalg.matvec(h, _flat(v)),
                               rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(
        _flat(dhv), tf.linalg.matvec(d, tf.linalg.matvec(h, _flat(v))),
        rtol=1e-9, atol=1e-11)


def _directional_g1(loss, w, a, u, eps=1e-4):
    """``<grad_a L, u>`` by a central difference (smooth operators)."""
    f = tf.function(lambda x: loss(w, x))
    plus, minus = f(bilevel.axpy(eps, u, a)), f(bilevel.axpy(-eps, u, a))
    return float((plus - minus) / (2 * eps))


def _check_estimator(arch_grad, hvp, operators, rtol, steps=3):
    search, net, train, val = _search(operators, arch_grad, hvp,
                                      steps=steps)
    w, a = _values(net)
    train_loss = search.functional_loss(*train)
    val_loss = search.functional_loss(*val)
    result, _ = tf.function(lambda: search.arch_gradient(train, val))()
    _, v, g1 = tf.function(lambda: bilevel.loss_and_grads(val_loss, w, a))()
    if operators == SMOOTH:  # g1 itself against differences of L_val
        for seed in (1, 2):
            u = _random_like(a, seed)
            u = bilevel.scale(1 / bilevel.global_norm(u), u)
            want = _directional_g1(val_loss, w, a, u)
            got = float(bilevel.dot(result.g1, u))
            assert abs(got - want) <= 1e-6 * float(bilevel.global_norm(g1))
    if arch_grad == "first_order":
        np.testing.assert_allclose(_flat(result.arch_grads), _flat(g1),
                                   rtol=1e-12, atol=1e-18)
        return
    _, dhv = _difference_products(train_loss, w, a, v)
    expected = bilevel.axpy(-search.eta, dhv, g1)
    assert float(bilevel.global_norm(dhv)) > 1e-3 * float(
        bilevel.global_norm(g1))  # the amending term matters here
    assert _rel(result.arch_grads, expected) < rtol


@pytest.mark.parametrize("arch_grad,hvp,operators,rtol", [
    ("first_order", "exact", SMOOTH, 0.0),
    ("amended", "exact", space.PRIMITIVES, 1e-6),
])
def test_estimators_match_float64_oracles(arch_grad, hvp, operators, rtol):
    # D H v against nested float64 central differences of the gradients
    # (H v from differences of grad_w, then D (H v) from grad_a).
    _check_estimator(arch_grad, hvp, operators, rtol)


@pytest.mark.parametrize("scale,rtol", [(None, 1e-2), (1e-3, 1e-4)])
def test_finite_difference_estimator_converges_at_second_order(
        monkeypatch, scale, rtol):
    # The estimator's own central differences (eps = 0.01 / ||v||) err by
    # O(eps^2): 3e-3 on this tiny net (batch norm over 3 rows is very
    # curved); a 10x smaller step must bring the error 100x down.
    if scale is not None:
        monkeypatch.setattr(hparams, "FD_EPSILON_SCALE", scale)
    _check_estimator("amended", "finite_difference", SMOOTH, rtol)


@pytest.mark.slow
def test_amended_exact_on_the_full_eight_node_cell():
    _check_estimator("amended", "exact", space.PRIMITIVES, 1e-6,
                     steps=space.STEPS)


def _unrolled(train_loss, val_loss, w, a, step):
    with tf.GradientTape() as outer:
        outer.watch(a)
        with tf.GradientTape() as inner:
            inner.watch(w)
            loss = train_loss(w, a)
        gw = inner.gradient(loss, w)
        c = step.clip_coefficient(gw)
        w_virtual = [x - step.learning_rate * (c * g + step.weight_decay * x)
                     for x, g in zip(w, gw, strict=True)]
        loss_v = val_loss(w_virtual, a)
    return outer.gradient(loss_v, a)


@pytest.mark.parametrize("hvp,operators,rtol,clip", [
    ("exact", space.PRIMITIVES, 1e-9, 0.05),
    ("finite_difference", SMOOTH, 1e-2, None),
])
def test_second_order_equals_autodiff_through_unroll(hvp, operators, rtol,
                                                     clip):
    search, net, train, val = _search(operators, "second_order", hvp, clip)
    w, a = _values(net)
    step = search.virtual_step()
    assert step.grad_clip_norm == clip and step.momentum == 0.0
    result, _ = tf.function(lambda: search.arch_gradient(train, val))()
    oracle = tf.function(lambda: _unrolled(
        search.functional_loss(*train), search.functional_loss(*val), w, a,
        step))()
    assert _rel(result.arch_grads, oracle) < rtol


def test_one_search_step_carries_both_streams_states():
    search, net, train, val = _search(arch_grad="first_order")
    w0 = [v.numpy() for v in net.trainable_variables]
    nt0 = [v.numpy() for v in net.non_trainable_variables]
    val_hidden = net.stateless_call(w0, nt0, val[0], training=True)[0][
        "hidden"]
    ds = tf.data.Dataset.from_tensors((train, val))
    search.fit(ds, epochs=1, verbose=0)
    np.testing.assert_allclose(net.valid_state.numpy(), val_hidden,
                               rtol=1e-12)
    # The weight step ran at the old weights and the new architecture.
    arch = {id(v) for v in net.arch_variables}
    values = [v.numpy() if id(v) in arch else x
              for v, x in zip(net.trainable_variables, w0, strict=True)]
    train_hidden = net.stateless_call(values, nt0, train[0],
                                      training=True)[0]["hidden"]
    np.testing.assert_allclose(net.train_state.numpy(), train_hidden,
                               rtol=1e-12)
    assert int(net.mask_counter.numpy()) == 1
    assert not np.allclose(net.cell.moving_mean.numpy(), 0.0)
