"""Gradient-fidelity diagnostics: the true hypergradient and cosines to it.

For a small model, the exact implicit hypergradient at a (near-)optimal
``w`` is ``g1 - D . H^-1 . v`` (../shared/method.md section 1). ``H^-1 v``
comes from conjugate gradients on exact Hessian-vector products, so nothing
of size |w| x |w| is formed. The cosine similarity of each estimator to it
measures how well the estimator points.
"""

import tensorflow as tf

from tf_amended_darts.core import bilevel


def conjugate_gradient(matvec, b, iterations=100, tolerance=1e-10, damping=0.0):
    """Solves ``(M + damping I) x = b`` for a symmetric positive-definite M.

    Args:
        matvec: ``x -> M x`` on lists of tensors.
        b: right-hand side (list of tensors).
        iterations: maximum iterations.
        tolerance: stop when ``||r|| <= tolerance * ||b||``.
        damping: Tikhonov damping added to M.

    Returns:
        ``(x, residual_norm / ||b||)``.
    """

    def op(x):
        mx = matvec(x)
        return bilevel.axpy(damping, x, mx) if damping else mx

    x = [tf.zeros_like(t) for t in b]
    r = list(b)
    p = list(b)
    rr = bilevel.dot(r, r)
    b_norm = tf.sqrt(rr)
    for _ in range(iterations):
        if float(tf.sqrt(rr)) <= tolerance * float(b_norm):
            break
        mp = op(p)
        alpha = rr / bilevel.dot(p, mp)
        x = bilevel.axpy(alpha, p, x)
        r = bilevel.axpy(-alpha, mp, r)
        rr_new = bilevel.dot(r, r)
        p = bilevel.axpy(rr_new / rr, p, r)
        rr = rr_new
    return x, float(tf.sqrt(rr) / b_norm)


def true_hypergradient(
    train_loss, val_loss, w, a, iterations=100, tolerance=1e-10, damping=0.0
):
    """``g1 - D . H^-1 . v`` with ``H^-1 v`` by conjugate gradients.

    Meaningful where ``w`` minimises ``L_train`` (H positive definite).

    Returns:
        ``(hypergradient, g1, g2, cg_relative_residual)``.
    """
    w, a = list(w), list(a)
    _, v, g1 = bilevel.loss_and_grads(val_loss, w, a)
    solve, residual = conjugate_gradient(
        lambda x: bilevel.hvp_exact(train_loss, w, a, x),
        v,
        iterations=iterations,
        tolerance=tolerance,
        damping=damping,
    )
    g2 = bilevel.scale(
        tf.constant(-1.0, w[0].dtype),
        bilevel.mixed_exact(train_loss, w, a, solve),
    )
    return [x + y for x, y in zip(g1, g2, strict=True)], g1, g2, residual


def cosine_similarity(xs, ys):
    """Cosine of the angle between two lists of tensors (as vectors)."""
    denom = bilevel.global_norm(xs) * bilevel.global_norm(ys)
    return float(bilevel.dot(xs, ys) / denom)


def estimator_fidelity(
    train_loss,
    val_loss,
    w,
    a,
    eta=0.1,
    virtual_step=None,
    hvp="exact",
    **cg_kwargs,
):
    """Cosine similarity of each estimator to the true hypergradient.

    Returns:
        dict: estimator name -> cosine, plus ``"g2_alignment"``, the cosine
        between the amended term ``g2'`` and the true ``g2`` (the paper's
        appendix A.3 claims it is non-negative; measured, not assumed).
    """
    truth, _, g2_true, _ = true_hypergradient(
        train_loss, val_loss, w, a, **cg_kwargs
    )
    out = {}
    for name in bilevel.ARCH_GRADS:
        if name == "second_order" and virtual_step is None:
            continue
        res = bilevel.estimate(
            name,
            train_loss,
            val_loss,
            w,
            a,
            eta=eta,
            hvp=hvp,
            virtual_step=virtual_step,
        )
        out[name] = cosine_similarity(res.arch_grads, truth)
        if name == "amended":
            out["g2_alignment"] = cosine_similarity(res.g2, g2_true)
    return out
