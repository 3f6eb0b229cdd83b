"""Recomputed blocks: first and second derivatives against explicit
Hessians (float64, graph mode)."""

import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import bilevel
from tf_amended_darts.nn.recompute import Recomputed, recompute

DT = tf.float64


def _block(xs):
    """A softmax-weighted tanh / softplus / linear branch (non-quadratic)."""
    x, w, a = xs
    h = tf.matmul(x, w)
    p = tf.nn.softmax(a)
    return p[0] * tf.tanh(h) + p[1] * tf.nn.softplus(h) + p[2] * h


def _problem(seed):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(6, 3)), DT)
    y = tf.constant(rng.normal(size=(6, 3)), DT)
    w = [tf.constant(rng.normal(size=s) * 0.5, DT) for s in [(3, 3)] * 2]
    a = [tf.constant(rng.normal(size=(3,)), DT) for _ in range(2)]
    return x, y, w, a


def _loss(x, y, recomputed):
    # Two chained blocks; the second gets its input twice (x and x), as a
    # cell gets the stem's output as both of its inputs.
    def run(block, xs):
        return recompute(block, xs) if recomputed else block(xs)

    def twice(xs):
        h, h_again, w, a = xs
        return _block([h + 0.5 * tf.sin(h_again), w, a])

    def f(w, a):
        h = run(_block, [x, w[0], a[0]])
        out = run(twice, [h, h, w[1], a[1]])
        return tf.reduce_mean(tf.square(out - y))

    return f


def _explicit(loss, w, a):
    """H (ww) and D (aw) by nested jacobians of flat parameter vectors."""
    wf = tf.concat([tf.reshape(t, [-1]) for t in w], 0)
    af = tf.concat([tf.reshape(t, [-1]) for t in a], 0)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([wf, af])
        with tf.GradientTape() as inner:
            inner.watch(wf)
            ws = [tf.reshape(t, (3, 3)) for t in tf.split(wf, len(w))]
            loss_value = loss(ws, tf.split(af, len(a)))
        gw = inner.gradient(loss_value, wf)
    return outer.jacobian(gw, wf), tf.transpose(outer.jacobian(gw, af))


def _flat(xs):
    return tf.concat([tf.reshape(t, [-1]) for t in xs], 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_recomputed_second_derivatives_equal_explicit_hessian(seed):
    x, y, w, a = _problem(seed)
    h, d = tf.function(lambda: _explicit(_loss(x, y, False), w, a))()
    v = [
        tf.constant(np.random.default_rng(9).normal(size=t.shape), DT)
        for t in w
    ]
    hv_oracle = tf.linalg.matvec(h, _flat(v))
    loss = _loss(x, y, True)

    @tf.function
    def products():
        return (
            bilevel.loss_and_grads(loss, w, a),
            bilevel.amended_product_exact(loss, w, a, v),
            bilevel.mixed_exact(loss, w, a, v),
        )

    (value, gw, ga), (hv, dhv), dv = products()
    plain = tf.function(
        lambda: bilevel.loss_and_grads(_loss(x, y, False), w, a)
    )()
    np.testing.assert_allclose(value, plain[0], rtol=1e-14)
    np.testing.assert_allclose(_flat(gw), _flat(plain[1]), rtol=1e-12)
    np.testing.assert_allclose(_flat(ga), _flat(plain[2]), rtol=1e-12)
    np.testing.assert_allclose(_flat(hv), hv_oracle, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        _flat(dv), tf.linalg.matvec(d, _flat(v)), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        _flat(dhv), tf.linalg.matvec(d, hv_oracle), rtol=1e-10, atol=1e-12
    )


def _tanh_count(node_defs):
    return sum(n.op == "Tanh" for n in node_defs)


def test_recomputations_are_calls_of_one_function_per_level():
    # The recomputation is real and reuses its functions: without it each
    # block's interior (one tanh) is built once in the step's graph and
    # kept; with it the step's graph holds none, and each block has one
    # forward function, one first-level function (forward + backward) and
    # one second-level function, each with one tanh, defined once and
    # called by every pass that needs it: the forward by the block's call,
    # the first level by the first backward and by both outer passes (H v,
    # D H v: the outer tape reaches the forward op through the block's
    # output), the second level by both outer passes.
    x, y, w, a = _problem(0)
    v = [tf.ones_like(t) for t in w]

    def graph_def(recomputed):
        loss = _loss(x, y, recomputed)
        fn = tf.function(lambda: bilevel.amended_product_exact(loss, w, a, v))
        return fn.get_concrete_function().graph.as_graph_def()

    plain = graph_def(False)
    assert _tanh_count(plain.node) == 2
    assert not plain.library.function

    recomputed = graph_def(True)
    assert _tanh_count(recomputed.node) == 0
    bodies = {
        f.signature.name: f
        for f in recomputed.library.function
        if _tanh_count(f.node_def)
    }
    assert len(bodies) == 6  # three levels x two blocks
    assert all(_tanh_count(f.node_def) == 1 for f in bodies.values())
    assert all(f.attr["_noinline"].b for f in bodies.values())
    calls = [
        n.attr["f"].func.name
        for n in recomputed.node
        if n.op in ("PartitionedCall", "StatefulPartitionedCall")
    ]
    per_body = sorted(calls.count(name) for name in bodies)
    assert per_body == [1, 1, 2, 2, 3, 3]
    assert len(calls) == sum(per_body)


KEEP = 0.6  # keep probability of the random block's mask


def _mask(seed):
    draws = tf.random.stateless_uniform((6, 1), seed, dtype=DT)
    return tf.cast(draws < KEEP, DT) / KEEP


def _random_block(xs, state):
    """`_block` on inputs whose rows are dropped by a mask drawn from
    ``state["seed"]``; the state advances as a seed generator's does."""
    x, w, a = xs
    seed = state["seed"]
    y = _block([x * _mask(seed), w, a])
    return y, {"seed": seed + tf.constant([0, 1], seed.dtype)}


def test_a_block_with_random_draws_recomputes_the_same_draws():
    # Oracle: the plain block with the mask of the same seed, fixed;
    # explicit Hessians. A recomputation drawing another mask would miss.
    x, y, w, a = _problem(2)
    seed = tf.constant([7, 3], tf.int64)
    block = Recomputed(_random_block, name="random")
    after = {}

    def loss_of(recomputed):
        def f(w, a):
            if recomputed:
                out, state = block([x, w[0], a[0]], {"seed": seed})
                after["seed"] = state["seed"]
            else:
                out = _block([x * _mask(seed), w[0], a[0]])
            return tf.reduce_mean(tf.square(out - y))

        return f

    w, a = w[:1], a[:1]
    h, d = tf.function(lambda: _explicit(loss_of(False), w, a))()
    v = [tf.constant(np.random.default_rng(9).normal(size=(3, 3)), DT)]
    hv_oracle = tf.linalg.matvec(h, _flat(v))

    @tf.function
    def products():
        hv, dhv = bilevel.amended_product_exact(loss_of(True), w, a, v)
        return hv, dhv, after["seed"]

    hv, dhv, new_seed = products()
    np.testing.assert_allclose(_flat(hv), hv_oracle, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        _flat(dhv), tf.linalg.matvec(d, hv_oracle), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_array_equal(new_seed, [7, 4])
    # The mask matters: it drops rows, and another seed drops others.
    mask = _mask(seed).numpy()
    assert 0 < np.count_nonzero(mask) < mask.size
    assert np.any(_mask(seed + 1).numpy() != mask)
