"""Alternatives to `bilevel.amended_product_exact`, measured and not kept
(benchmarks/s1_cpu.md). Same values; see memory_probe.py."""

import tensorflow as tf

from tf_amended_darts.core.bilevel import (
    _after,
    _identity,
    _zeros_for_none,
    hvp_exact,
    mixed_exact,
)


def current_ctrl(loss_fn, w, a, v, reduce_mean=_identity):
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(w)
        outer.watch(a)
        with tf.GradientTape() as inner:
            inner.watch(w)
            with tf.control_dependencies(v):
                loss = loss_fn(w, a)
        gw = _zeros_for_none(inner.gradient(loss, list(w)), w)
    hv = outer.gradient(gw, list(w), output_gradients=v)
    hv = reduce_mean(_zeros_for_none(hv, w))
    dhv = outer.gradient(gw, list(a), output_gradients=hv)
    del outer
    return hv, _zeros_for_none(dhv, a)


def _ctrl_loss(loss_fn, deps):
    def f(w, a):
        with tf.control_dependencies(deps):
            return loss_fn(w, a)

    return f


def split(loss_fn, w, a, v, reduce_mean=_identity):
    hv = hvp_exact(_ctrl_loss(loss_fn, v), w, a, v)
    hv = reduce_mean(hv)
    dhv = mixed_exact(_ctrl_loss(loss_fn, hv), w, a, hv)
    return hv, dhv


def _hvp_fwd(loss_fn, w, a, v):
    with tf.autodiff.ForwardAccumulator(w, v) as acc:
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = loss_fn(w, a)
        gw = _zeros_for_none(tape.gradient(loss, list(w)), w)
    return _zeros_for_none([acc.jvp(g) for g in gw], w)


def _mixed_fwd(loss_fn, w, a, u):
    with tf.autodiff.ForwardAccumulator(w, u) as acc:
        with tf.GradientTape() as tape:
            tape.watch(a)
            loss = loss_fn(w, a)
        ga = _zeros_for_none(tape.gradient(loss, list(a)), a)
    return _zeros_for_none([acc.jvp(g) for g in ga], a)


def fwd(loss_fn, w, a, v, reduce_mean=_identity):
    hv = reduce_mean(_hvp_fwd(_ctrl_loss(loss_fn, v), w, a, v))
    dhv = _mixed_fwd(_ctrl_loss(loss_fn, hv), w, a, hv)
    return hv, dhv


def fwd_rev(loss_fn, w, a, v, reduce_mean=_identity):
    hv = reduce_mean(_hvp_fwd(_ctrl_loss(loss_fn, v), w, a, v))
    dhv = mixed_exact(_ctrl_loss(loss_fn, hv), w, a, hv)
    return hv, dhv


def barrier(loss_fn, w, a, v, reduce_mean=_identity):
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(w)
        outer.watch(a)
        with tf.GradientTape() as inner:
            inner.watch(w)
            loss = loss_fn(w, a)
        gw = _zeros_for_none(inner.gradient(loss, list(w)), w)
    hv = outer.gradient(gw, list(w), output_gradients=v)
    hv = reduce_mean(_zeros_for_none(hv, w))
    with tf.control_dependencies(hv):
        seeds = [tf.identity(h) for h in hv]
    dhv = outer.gradient(gw, list(a), output_gradients=seeds)
    del outer
    return hv, _zeros_for_none(dhv, a)


def forward(loss_fn, w, a, v, reduce_mean=_identity):
    """Forward-over-reverse for both products, the second pass held until
    ``H v`` is complete (control dependencies on its inputs)."""
    from tf_amended_darts.core.bilevel import hvp_forward, mixed_forward

    hv = reduce_mean(hvp_forward(_ctrl_loss(loss_fn, v), w, a, v))
    dhv = mixed_forward(_ctrl_loss(loss_fn, hv), w, a, hv)
    return hv, dhv


def forward_free(loss_fn, w, a, v, reduce_mean=_identity):
    """Forward-over-reverse for both products, no control dependencies."""
    from tf_amended_darts.core.bilevel import hvp_forward, mixed_forward

    hv = reduce_mean(hvp_forward(loss_fn, w, a, v))
    dhv = mixed_forward(loss_fn, w, a, hv)
    return hv, dhv


def _rof(loss_fn, w, a, tangent, sources):
    """``grad_sources <grad_w L, tangent>`` reverse-over-forward: the
    directional derivative of L along `tangent` by a forward accumulator
    over one forward pass, then one reverse pass over that."""
    with tf.GradientTape() as tape:
        tape.watch(sources)
        with tf.autodiff.ForwardAccumulator(list(w), list(tangent)) as acc:
            loss = loss_fn(w, a)
        directional = acc.jvp(loss)
    return _zeros_for_none(tape.gradient(directional, list(sources)), sources)


def reverse_over_forward(loss_fn, w, a, v, reduce_mean=_identity):
    hv = reduce_mean(_rof(_after(loss_fn, v), w, a, v, w))
    dhv = _rof(_after(loss_fn, hv), w, a, hv, a)
    return hv, dhv
