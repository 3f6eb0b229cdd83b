"""Gradient-fidelity diagnostics: the true hypergradient and cosines to it.

For a small model, the exact implicit hypergradient at a (near-)optimal
``w`` is ``g1 - D . H^-1 . v`` (../shared/method.md section 1). ``H^-1 v``
comes from conjugate gradients on exact Hessian-vector products, so nothing
of size |w| x |w| is formed. The cosine similarity of each estimator to it
measures how well the estimator points. Away from a minimum ``H`` is
indefinite: `damped_conjugate_gradient` solves ``(H + lambda I) x = v``,
raising ``lambda`` only when CG meets non-positive curvature
(`fidelity.py` reports it beside the residual).
"""

from typing import NamedTuple

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
    x, residual, _, _ = _cg(matvec, b, iterations, tolerance, damping)
    return x, residual


def _cg(matvec, b, iterations, tolerance, damping, stop_on_negative=False):
    """Conjugate gradients on ``M + damping I``.

    Returns:
        ``(x, relative residual, iterations done, curvature)``:
        ``curvature`` is the Rayleigh quotient ``p'(M + damping I)p / p'p``
        of the search direction at which CG stopped because it was not
        positive (``stop_on_negative``), else None.
    """

    def op(x):
        mx = matvec(x)
        return bilevel.axpy(damping, x, mx) if damping else mx

    x = [tf.zeros_like(t) for t in b]
    r = list(b)
    p = list(b)
    rr = bilevel.dot(r, r)
    b_norm = tf.sqrt(rr)
    done = 0
    for done in range(iterations + 1):
        if done == iterations or float(tf.sqrt(rr)) <= tolerance * float(
            b_norm
        ):
            break
        mp = op(p)
        pmp = bilevel.dot(p, mp)
        if stop_on_negative and float(pmp) <= 0.0:
            curvature = float(pmp / bilevel.dot(p, p))
            return x, float(tf.sqrt(rr) / b_norm), done, curvature
        alpha = rr / pmp
        x = bilevel.axpy(alpha, p, x)
        r = bilevel.axpy(-alpha, mp, r)
        rr_new = bilevel.dot(r, r)
        p = bilevel.axpy(rr_new / rr, p, r)
        rr = rr_new
    return x, float(tf.sqrt(rr) / b_norm), done, None


class DampedSolve(NamedTuple):
    """What `damped_conjugate_gradient` found.

    Attributes:
        x: the solution of ``(M + damping I) x = b``.
        residual: ``||b - (M + damping I) x|| / ||b||`` (CG's recurrence).
        damping: the ``lambda`` used in the end.
        iterations: CG iterations of the final solve.
        restarts: solves abandoned on non-positive curvature.
    """

    x: list
    residual: float
    damping: float
    iterations: int
    restarts: int


def damped_conjugate_gradient(
    matvec,
    b,
    iterations=100,
    tolerance=1e-10,
    damping=0.0,
    max_restarts=20,
    min_damping=1e-6,
):
    """Solves ``(M + lambda I) x = b`` for a symmetric, maybe indefinite M.

    Conjugate gradients need a positive-definite operator. Starting from
    ``lambda = damping``, CG runs until it meets a direction ``p`` of
    non-positive curvature; ``lambda`` then becomes twice the magnitude of
    ``M``'s Rayleigh quotient there (``-2 p'Mp / p'p``, at least
    ``min_damping`` and more than before), and CG restarts, so ``lambda``
    only grows "where needed" (Martens 2010, Hessian-free optimisation,
    damps the Gauss-Newton matrix the same way). The Rayleigh quotients are
    at least M's smallest eigenvalue, so ``lambda`` stays within a factor
    of two of ``max(0, -lambda_min(M))`` unless ``damping`` starts higher.

    Args:
        matvec: ``x -> M x`` on lists of tensors.
        b: right-hand side (list of tensors).
        iterations: maximum CG iterations per solve.
        tolerance: stop when ``||r|| <= tolerance * ||b||``.
        damping: the initial (and least) ``lambda``, >= 0.
        max_restarts: how often ``lambda`` may be raised.
        min_damping: the least positive ``lambda`` a raise gives.

    Returns:
        A `DampedSolve`.

    Raises:
        ValueError: for a negative ``damping``, or when CG still meets
            non-positive curvature after ``max_restarts`` raises.
    """
    if not float(damping) >= 0.0:
        raise ValueError(
            f"Expected damping >= 0 (lambda of M + lambda I). Received: "
            f"damping={damping!r}"
        )
    damping = float(damping)
    for restart in range(max_restarts + 1):
        x, residual, done, curvature = _cg(
            matvec, b, iterations, tolerance, damping, stop_on_negative=True
        )
        if curvature is None:
            return DampedSolve(x, residual, damping, done, restart)
        rayleigh = curvature - damping  # p'Mp / p'p
        damping = max(-2.0 * rayleigh, 2.0 * damping, min_damping)
    raise ValueError(
        f"Conjugate gradients met non-positive curvature after "
        f"{max_restarts} raises of the damping (lambda = {damping:g})."
    )


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
