"""Architecture-gradient estimators and the products they need.

Everything here works on *values*: a bi-level problem is two scalar losses,
``train_loss(w, a)`` and ``val_loss(w, a)``, written as functions of lists of
tensors ``w`` (weights) and ``a`` (architecture parameters). The search
engine (`engine.py`) builds these functions from a Keras model with
``stateless_call``; tests build them from closed forms.

Notation (../shared/method.md, sections 1-2)::

    g1 = grad_a L_val(w, a)              v = grad_w L_val(w, a)
    H  = d2 L_train / dw2                D = d2 L_train / (da dw)
    D . u = grad_a < grad_w L_train(w, a), u >   (u held constant)

Estimators (``--arch_grad``):

* ``first_order``:  ``g1``.
* ``second_order``: DARTS' unrolled gradient. With the virtual step
  ``w' = w - xi (mu buf + c grad_w L_train(w, a) + wd w)`` (``c`` the
  optional clip coefficient of `VirtualStep`, a constant) it is the exact
  derivative of ``L_val(w'(a), a)``:
  ``grad_a L_val(w', a) - xi c D(w) . grad_w' L_val(w', a)``. The mixed product
  is taken at ``w`` (where the virtual step's gradient is taken), as the
  reference ``architect.py`` does; method.md's ``D(w')`` is a notational
  slip: the tests check the estimator against autodiff through the unroll.
* ``amended``: ``g1 - eta D . H . v``, all at the current ``w``.

Products (``--hvp``): ``exact`` (nested tapes, one forward pass shared by
``H . v`` and ``D . H v``), ``forward`` (forward-over-reverse: a
`tf.autodiff.ForwardAccumulator` over one forward and backward pass per
product, the second pass held until the first is complete; exact like
``exact``, with no tape of a backward pass kept) or ``finite_difference``
(central differences, ``eps = 0.01 / ||vector||``, evaluated functionally
at ``w +- eps vector``: weights are never perturbed in place, so nothing
drifts; the minus pass waits for the plus pass's gradients, so the two
passes never hold their activations at the same time: S1 amended
finite_difference at batch 32 peaked at 12.6 GB with the passes side by
side, 10.9 GB in order, benchmarks/s1_cpu.md section 7).

Cross-replica reduction: ``reduce_mean`` is applied to ``v`` and ``H . v``
before they feed the next product, so the amended product is independent of
the number of replicas (design.md, last section). It is the identity on one
replica.
"""

import dataclasses
from typing import Callable, NamedTuple, Optional, Sequence

import tensorflow as tf

from tf_amended_darts.core import hparams

ARCH_GRADS = ("first_order", "second_order", "amended")
HVP_MODES = ("exact", "finite_difference", "forward")

LossFn = Callable[[Sequence[tf.Tensor], Sequence[tf.Tensor]], tf.Tensor]
ReduceFn = Callable[[list], list]


# --- list-of-tensor algebra -------------------------------------------------


def dot(xs, ys):
    """Inner product of two lists of tensors."""
    pairs = zip(xs, ys, strict=True)
    return tf.add_n([tf.reduce_sum(x * y) for x, y in pairs])


def global_norm(xs):
    """Euclidean norm of a list of tensors, as one vector."""
    return tf.sqrt(dot(xs, xs))


def axpy(alpha, xs, ys):
    """``alpha * xs + ys`` elementwise over two lists."""
    return [alpha * x + y for x, y in zip(xs, ys, strict=True)]


def scale(alpha, xs):
    return [alpha * x for x in xs]


def as_dtype(value, dtype):
    """A tensor of `dtype`; Python floats are not rounded through float32."""
    if isinstance(value, (tf.Tensor, tf.Variable)) or hasattr(value, "value"):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype)


def _zeros_for_none(grads, like):
    return [
        tf.zeros_like(x) if g is None else g
        for g, x in zip(grads, like, strict=True)
    ]


def _identity(values):
    return list(values)


# --- gradients and products -------------------------------------------------


def loss_and_grads(loss_fn: LossFn, w, a):
    """``(L, grad_w L, grad_a L)`` from one forward and backward pass."""
    with tf.GradientTape() as tape:
        tape.watch(w)
        tape.watch(a)
        loss = loss_fn(w, a)
    gw, ga = tape.gradient(loss, (list(w), list(a)))
    return loss, _zeros_for_none(gw, w), _zeros_for_none(ga, a)


def hvp_exact(loss_fn: LossFn, w, a, v):
    """``H . v`` by double backward (forward-free reuse of one pass)."""
    with tf.GradientTape() as outer:
        outer.watch(w)
        with tf.GradientTape() as inner:
            inner.watch(w)
            loss = loss_fn(w, a)
        gw = _zeros_for_none(inner.gradient(loss, list(w)), w)
    return _zeros_for_none(outer.gradient(gw, list(w), output_gradients=v), w)


def mixed_exact(loss_fn: LossFn, w, a, u):
    """``D . u = grad_a < grad_w L(w, a), u >`` by double backward."""
    with tf.GradientTape() as outer:
        outer.watch(a)
        with tf.GradientTape() as inner:
            inner.watch(w)
            loss = loss_fn(w, a)
        gw = _zeros_for_none(inner.gradient(loss, list(w)), w)
    return _zeros_for_none(outer.gradient(gw, list(a), output_gradients=u), a)


def amended_product_exact(loss_fn: LossFn, w, a, v, reduce_mean=_identity):
    """``(H . v, D . H . v)`` from one forward pass and three backward passes.

    The outer tape records the first backward pass once; both second
    derivatives are read from it. ``H . v`` is reduced across replicas before
    it feeds ``D``.

    Alternatives measured on the 3-cell supernet (C = 16, 32x32, batch 16,
    2 CPUs; peak RSS of one search step; benchmarks/s1_cpu.md), none kept:
    recomputing the forward and backward pass for ``D`` (`hvp_exact` then
    `mixed_exact`, the second behind a control dependency on ``H v``):
    +11% graph nodes and 8.9 GB against 8.2 GB; a barrier that holds every
    ``D`` seed until all of ``H v`` is done: no change (5.57 GB against
    5.36 GB); forward-over-reverse (`tf.autodiff.ForwardAccumulator`):
    fails, as TensorFlow has no second derivative of the max-pool gradient
    (``MaxPoolGradWithArgmax``) that its JVPs need. The step's memory is
    the live set of the double-backward passes (all activations and
    first-backward tensors) plus the graph, ~20 KB per node, which batch
    norm's hand-written derivatives (`normalize_batch`) shrank.
    """
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(w)
        outer.watch(a)
        with tf.GradientTape() as inner:
            inner.watch(w)
            loss = loss_fn(w, a)
        gw = _zeros_for_none(inner.gradient(loss, list(w)), w)
    hv = outer.gradient(gw, list(w), output_gradients=v)
    hv = reduce_mean(_zeros_for_none(hv, w))
    dhv = outer.gradient(gw, list(a), output_gradients=hv)
    del outer
    return hv, _zeros_for_none(dhv, a)


def _accumulated(loss_fn, w, a, tangent, sources):
    """``d/de grad_sources L(w + e tangent, a)`` at ``e = 0``: one forward
    and one backward pass under a forward accumulator."""
    with tf.autodiff.ForwardAccumulator(list(w), list(tangent)) as acc:
        with tf.GradientTape() as tape:
            tape.watch(sources)
            loss = loss_fn(w, a)
        grads = _zeros_for_none(tape.gradient(loss, list(sources)), sources)
    return _zeros_for_none([acc.jvp(g) for g in grads], sources)


def waiting_for(deps):
    """A context whose new ops wait for the tensors `deps` (no-op eagerly).

    One `tf.group` gathers `deps`, so each op that waits gets one control
    edge: a control dependency on the list itself would give every such op
    one edge per tensor of `deps` (one per weight tensor, ~1,400 on S1:
    2.5 GB more memory for the amended exact step, benchmarks/s1_cpu.md
    section 8).
    """
    return tf.control_dependencies([tf.group(*deps)])


def _after(loss_fn: LossFn, deps) -> LossFn:
    """`loss_fn` whose ops wait for `deps` (`waiting_for`): a pass that
    would otherwise start beside the one computing `deps` (the TF executor
    runs independent ops concurrently) holds no activations until then."""

    def loss(w, a):
        with waiting_for(deps):
            return loss_fn(w, a)

    return loss


def hvp_forward(loss_fn: LossFn, w, a, v):
    """``H . v`` forward-over-reverse: the JVP of ``grad_w L`` along ``v``.

    A forward accumulator carries the tangents through the forward pass
    and the backward pass that computes ``grad_w L``; nothing of the
    backward pass is kept for a second backward pass.
    """
    return _accumulated(loss_fn, w, a, v, w)


def mixed_forward(loss_fn: LossFn, w, a, u):
    """``D . u`` forward-over-reverse: the JVP of ``grad_a L`` along ``u``
    (a weight-space direction)."""
    return _accumulated(loss_fn, w, a, u, a)


def _fd_epsilon(vector):
    return hparams.FD_EPSILON_SCALE / global_norm(vector)


def hvp_finite_difference(loss_fn: LossFn, w, a, v):
    """``H . v`` by central differences of ``grad_w`` at ``w +- eps v``.

    ``eps = 0.01 / ||v||`` (DARTS eq. 8; paper appendix A.4), with the
    ``1 / (2 eps)`` scaling. The ``-`` pass starts once the ``+`` pass's
    gradients exist (`_after`).
    """
    eps = tf.cast(_fd_epsilon(v), w[0].dtype)
    _, gw_plus, _ = loss_and_grads(loss_fn, axpy(eps, v, w), a)
    _, gw_minus, _ = loss_and_grads(
        _after(loss_fn, gw_plus), axpy(-eps, v, w), a)
    pairs = zip(gw_plus, gw_minus, strict=True)
    return [(p - m) / (2 * eps) for p, m in pairs]


def mixed_finite_difference(loss_fn: LossFn, w, a, u):
    """``D . u`` by central differences of ``grad_a`` at ``w +- eps u``."""
    eps = tf.cast(_fd_epsilon(u), w[0].dtype)
    _, _, ga_plus = loss_and_grads(loss_fn, axpy(eps, u, w), a)
    _, _, ga_minus = loss_and_grads(
        _after(loss_fn, ga_plus), axpy(-eps, u, w), a)
    pairs = zip(ga_plus, ga_minus, strict=True)
    return [(p - m) / (2 * eps) for p, m in pairs]


# --- estimators -------------------------------------------------------------


@dataclasses.dataclass
class VirtualStep:
    """What DARTS' virtual step ``w' = w - xi (mu buf + c g + wd w)`` reads.

    Attributes:
        learning_rate: ``xi``, the weight optimiser's current learning rate.
        momentum: ``mu`` (PyTorch units).
        momentum_buffers: the optimiser's buffers, one per weight.
        weight_decay: coupled L2 coefficient ``wd``.
        grad_clip_norm: when set, the gradient is clipped to this global
            norm first: ``c = min(1, clip / (||g|| + 1e-6))``, held constant
            (DARTS' recurrent ``architect.py`` clips its virtual step's
            gradient at 0.25 and scales the mixed product by ``c``; the
            CNN's does not clip). None: ``c = 1``.
    """

    learning_rate: tf.Tensor
    momentum: float = 0.0
    momentum_buffers: Optional[list] = None
    weight_decay: float = 0.0
    grad_clip_norm: Optional[float] = None

    def clip_coefficient(self, grad_w):
        """``c`` for the gradient ``grad_w`` (a constant of the step)."""
        dtype = grad_w[0].dtype
        if not self.grad_clip_norm:
            return tf.ones((), dtype)
        norm = tf.stop_gradient(global_norm(grad_w))
        clip = as_dtype(self.grad_clip_norm, dtype)
        return tf.minimum(tf.ones((), dtype), clip / (norm + 1e-6))

    def apply(self, w, grad_w):
        """``w'`` from the weights and ``grad_w L_train(w, a)``."""
        out = []
        if self.grad_clip_norm:
            grad_w = scale(self.clip_coefficient(grad_w), grad_w)
        for i, (x, g) in enumerate(zip(w, grad_w, strict=True)):
            direction = g + as_dtype(self.weight_decay, x.dtype) * x
            if self.momentum_buffers is not None and self.momentum:
                buf = tf.convert_to_tensor(self.momentum_buffers[i])
                direction += as_dtype(self.momentum, x.dtype) * buf
            out.append(x - as_dtype(self.learning_rate, x.dtype) * direction)
        return out


class EstimatorResult(NamedTuple):
    """An architecture gradient and its parts.

    Attributes:
        arch_grads: the estimate, one tensor per architecture parameter.
        g1: the first-order term ``grad_a L_val`` at the point it was taken.
        g2: the second-order term (zeros for ``first_order``).
        val_loss: the validation loss at the current weights (at ``w'`` for
            ``second_order``).
    """

    arch_grads: list
    g1: list
    g2: list
    val_loss: tf.Tensor


def validate_estimator(arch_grad, eta=hparams.ETA, hvp="exact"):
    """Check estimator settings; errors name the flag and accepted values."""
    if arch_grad not in ARCH_GRADS:
        raise ValueError(
            f"Unknown --arch_grad={arch_grad!r}. Accepted values: "
            f"{', '.join(ARCH_GRADS)}."
        )
    if hvp not in HVP_MODES:
        raise ValueError(
            f"Unknown --hvp={hvp!r}. Accepted values: {', '.join(HVP_MODES)}."
        )
    try:
        eta_ok = float(eta) >= 0
    except (TypeError, ValueError):
        eta_ok = False
    if not eta_ok:
        raise ValueError(
            f"Expected --eta to be a number >= 0 (the amending coefficient; "
            f"0 reproduces first_order). Received: eta={eta!r}"
        )


def estimate(
    arch_grad: str,
    train_loss: LossFn,
    val_loss: LossFn,
    w,
    a,
    eta: float = hparams.ETA,
    hvp: str = "exact",
    virtual_step: Optional[VirtualStep] = None,
    reduce_mean: ReduceFn = _identity,
) -> EstimatorResult:
    """The architecture gradient of one search step.

    Args:
        arch_grad: one of `ARCH_GRADS`.
        train_loss: ``L_train(w, a)`` on the step's training batch.
        val_loss: ``L_val(w, a)`` on the step's validation batch.
        w: current weight values (list of tensors).
        a: current architecture values (list of tensors).
        eta: amending coefficient (``amended`` only).
        hvp: one of `HVP_MODES`.
        virtual_step: required for ``second_order``.
        reduce_mean: cross-replica mean of a list of tensors; applied to the
            vectors that feed a product (``v``, ``H . v``). The returned
            gradients are per replica; the caller reduces them.

    Returns:
        An `EstimatorResult`.
    """
    validate_estimator(arch_grad, eta, hvp)
    w, a = list(w), list(a)
    if arch_grad == "second_order":
        if virtual_step is None:
            raise ValueError("--arch_grad=second_order needs a VirtualStep.")
        return _second_order(
            train_loss, val_loss, w, a, hvp, virtual_step, reduce_mean
        )
    loss, v, g1 = loss_and_grads(val_loss, w, a)
    if arch_grad == "first_order":
        zeros = [tf.zeros_like(x) for x in a]
        return EstimatorResult(g1, g1, zeros, loss)
    v = reduce_mean(v)
    # The training pass starts once the validation pass is done: otherwise
    # the executor runs the two side by side, both activations alive.
    train_loss = _after(train_loss, v)
    if hvp == "exact":
        _, dhv = amended_product_exact(train_loss, w, a, v, reduce_mean)
    elif hvp == "forward":
        hv = reduce_mean(hvp_forward(train_loss, w, a, v))
        dhv = mixed_forward(_after(train_loss, hv), w, a, hv)
    else:
        hv = reduce_mean(hvp_finite_difference(train_loss, w, a, v))
        dhv = mixed_finite_difference(train_loss, w, a, hv)
    g2 = scale(-as_dtype(eta, a[0].dtype), dhv)
    total = [x + y for x, y in zip(g1, g2, strict=True)]
    return EstimatorResult(total, g1, g2, loss)


def _second_order(train_loss, val_loss, w, a, hvp, step, reduce_mean):
    xi = as_dtype(step.learning_rate, w[0].dtype)
    if hvp == "exact":
        with tf.GradientTape() as outer:
            outer.watch(a)
            with tf.GradientTape() as inner:
                inner.watch(w)
                loss_t = train_loss(w, a)
            gw = _zeros_for_none(inner.gradient(loss_t, w), w)
        gw_mean = reduce_mean([tf.stop_gradient(g) for g in gw])
        w_virtual = step.apply(w, gw_mean)
        loss, v, g1 = loss_and_grads(val_loss, w_virtual, a)
        v = reduce_mean(v)
        dv = _zeros_for_none(outer.gradient(gw, a, output_gradients=v), a)
    elif hvp == "forward":
        _, gw, _ = loss_and_grads(train_loss, w, a)
        gw_mean = reduce_mean(gw)
        w_virtual = step.apply(w, gw_mean)
        loss, v, g1 = loss_and_grads(val_loss, w_virtual, a)
        v = reduce_mean(v)
        dv = mixed_forward(_after(train_loss, v), w, a, v)
    else:
        _, gw, _ = loss_and_grads(train_loss, w, a)
        gw_mean = reduce_mean(gw)
        w_virtual = step.apply(w, gw_mean)
        loss, v, g1 = loss_and_grads(val_loss, w_virtual, a)
        v = reduce_mean(v)
        dv = mixed_finite_difference(train_loss, w, a, v)
    # d w'/d a = -xi c D (c: the clip coefficient, 1 without clipping).
    g2 = scale(-xi * step.clip_coefficient(gw_mean), dv)
    total = [x + y for x, y in zip(g1, g2, strict=True)]
    return EstimatorResult(total, g1, g2, loss)
