"""Gradient fidelity: each estimator's second-order term against the truth.

The paper's section 2.3 made observable. On one fixed batch pair, at the
current ``(w, a)``, the true second-order term of the hypergradient is
(../shared/method.md section 1)::

    g2 = -D . H^-1 . v        v = grad_w L_val,  H, D from L_train

computed here with ``H^-1 v`` by conjugate gradients on exact
Hessian-vector products (`diagnostics.damped_conjugate_gradient`). A
super-network's ``H`` is not positive definite away from a minimum, so the
solve is of ``(H + lambda I) x = v`` with ``lambda`` raised only where CG
meets non-positive curvature; ``lambda`` and the CG residual are reported
with the cosines, so that a cosine means what it says: the direction of
``-D (H + lambda I)^-1 v`` solved to that residual.

Against it, the second-order terms of the estimators, computed side by side
whatever estimator drives the search (`bilevel.estimate`'s ``g2``):

* ``second_order`` (DARTS): ``-xi D(w) grad_w' L_val(w', a)`` with the
  virtual step ``w'`` (``H^-1`` replaced by ``xi I``, taken at ``w'``);
* ``amended``: ``-eta D H v`` (``H^-1`` replaced by ``eta H``); its cosine
  does not depend on ``eta > 0``.

`GradientFidelity` compiles the products once (``tf.function``) over a
fixed pair of loss functions, so that calling it every few epochs costs the
CG iterations only (about ``iterations`` + 4 double-backward passes).
"""

from typing import NamedTuple

import tensorflow as tf

from tf_amended_darts.core import bilevel, diagnostics, hparams

# The estimators whose second-order terms are compared (the keys of
# `FidelityResult.cosines`).
TERMS = ("second_order", "amended")
# Defaults of the CG solve: at most this many iterations (each one
# Hessian-vector product), to this relative residual.
CG_ITERATIONS = 50
CG_TOLERANCE = 1e-4


class FidelityResult(NamedTuple):
    """The fidelity of the estimators' second-order terms.

    Attributes:
        cosines: ``{"second_order": cos, "amended": cos}``, each the cosine
            between the estimator's term and ``g2``.
        g2: the reference ``-D (H + lambda I)^-1 v``.
        terms: ``{name: the estimator's second-order term}``.
        residual: the CG relative residual of the solve.
        damping: ``lambda``.
        iterations: CG iterations of the final solve.
    """

    cosines: dict
    g2: list
    terms: dict
    residual: float
    damping: float
    iterations: int


def _cosine(xs, ys):
    norm = bilevel.global_norm(xs) * bilevel.global_norm(ys)
    if float(norm) == 0.0:
        return float("nan")
    return float(bilevel.dot(xs, ys) / norm)


class GradientFidelity:
    """Measures the estimators' second-order terms on one batch pair.

    Args:
        train_loss: ``L_train(w, a)`` on the fixed training batch.
        val_loss: ``L_val(w, a)`` on the fixed validation batch.
        eta: the amending coefficient of the amended term (> 0; the
            cosine does not depend on it).
        hvp: products of the estimators' terms: ``exact`` or
            ``finite_difference`` (the reference is always exact).
        iterations: CG iterations at most.
        tolerance: CG relative residual to stop at.
        damping: the least ``lambda`` (>= 0); raised where needed.
        compile: run the products as ``tf.function`` graphs (traced once
            per shape), as the search does.
    """

    def __init__(
        self,
        train_loss,
        val_loss,
        eta=hparams.ETA,
        hvp="exact",
        iterations=CG_ITERATIONS,
        tolerance=CG_TOLERANCE,
        damping=0.0,
        compile=True,
    ):
        bilevel.validate_estimator("amended", eta, hvp)
        if not float(eta) > 0:
            raise ValueError(
                "Expected eta > 0 for the amended term's direction. "
                f"Received: eta={eta!r}"
            )
        if not float(damping) >= 0:
            raise ValueError(
                f"Expected damping >= 0. Received: damping={damping!r}"
            )
        if int(iterations) < 1:
            raise ValueError(
                f"Expected iterations >= 1. Received: iterations={iterations}"
            )
        self.train_loss = train_loss
        self.val_loss = val_loss
        self.eta = float(eta)
        self.hvp = hvp
        self.iterations = int(iterations)
        self.tolerance = float(tolerance)
        self.damping = float(damping)
        wrap = tf.function if compile else (lambda f: f)
        self._hvp = wrap(self._hvp_fn)
        self._mixed = wrap(self._mixed_fn)
        self._val_grad = wrap(self._val_grad_fn)
        self._terms = wrap(self._terms_fn)

    # -- the products (graph functions) -------------------------------------

    def _hvp_fn(self, w, a, x):
        return bilevel.hvp_exact(self.train_loss, w, a, x)

    def _mixed_fn(self, w, a, u):
        return bilevel.mixed_exact(self.train_loss, w, a, u)

    def _val_grad_fn(self, w, a):
        return bilevel.loss_and_grads(self.val_loss, w, a)[1]

    def _terms_fn(self, w, a, lr, momentum, buffers, weight_decay):
        step = bilevel.VirtualStep(
            lr, momentum, buffers if buffers else None, weight_decay
        )
        out = {}
        for name in TERMS:
            out[name] = bilevel.estimate(
                name,
                self.train_loss,
                self.val_loss,
                w,
                a,
                eta=self.eta,
                hvp=self.hvp,
                virtual_step=step,
            ).g2
        return out

    # -- the measurement ------------------------------------------------

    def terms(self, w, a, virtual_step):
        """The estimators' second-order terms ``{name: list of tensors}``."""
        w, a = list(w), list(a)
        dtype = w[0].dtype
        buffers = virtual_step.momentum_buffers
        return self._terms(
            w,
            a,
            bilevel.as_dtype(virtual_step.learning_rate, dtype),
            float(virtual_step.momentum),  # static: a Python branch reads it
            [tf.convert_to_tensor(b) for b in buffers] if buffers else [],
            bilevel.as_dtype(virtual_step.weight_decay, dtype),
        )

    def true_g2(self, w, a):
        """``(g2, damped_solve)``: ``-D (H + lambda I)^-1 v`` by CG."""
        w, a = list(w), list(a)
        v = self._val_grad(w, a)
        solve = diagnostics.damped_conjugate_gradient(
            lambda x: self._hvp(w, a, list(x)),
            list(v),
            iterations=self.iterations,
            tolerance=self.tolerance,
            damping=self.damping,
        )
        dx = self._mixed(w, a, list(solve.x))
        return [-t for t in dx], solve

    def __call__(self, w, a, virtual_step):
        """Measures the fidelity at ``(w, a)``.

        Args:
            w: weight values (list of tensors).
            a: architecture values (list of tensors).
            virtual_step: the `bilevel.VirtualStep` of DARTS' term (the
                weight optimiser's learning rate, momentum buffers and
                weight decay now).

        Returns:
            A `FidelityResult`.
        """
        g2, solve = self.true_g2(w, a)
        terms = {k: list(v) for k, v in self.terms(w, a, virtual_step).items()}
        cosines = {name: _cosine(terms[name], g2) for name in TERMS}
        return FidelityResult(
            cosines, g2, terms, solve.residual, solve.damping, solve.iterations
        )
