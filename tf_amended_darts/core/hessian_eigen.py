"""The dominant eigenvalue of the architecture Hessian (R-DARTS' indicator).

Zela et al., "Understanding and Robustifying Differentiable Architecture
Search", ICLR 2020 (automl/RobustDARTS, ``src/search/analyze.py`` and
``train_search.py``; ../shared/baselines.md section 3): the largest
eigenvalue of the Hessian of the validation loss with respect to the
architecture parameters, on one validation batch, with the network in
training mode (batch statistics; drop-path on if set). The reference
differentiates the gradient *plus* ``arch_weight_decay * alpha``, so its
``H`` includes ``+ arch_weight_decay * I``; so does this one.

The reference builds the whole Hessian (one double-backward row per
architecture parameter) and takes ``max(numpy.linalg.eigvals(H))``, the
largest *algebraic* eigenvalue. Here it comes from power iteration on exact
Hessian-vector products (double backward through the same functional
network the estimators use): a few dozen products instead of one per
parameter. Power iteration finds the eigenvalue of largest magnitude; when
that one is negative, a second iteration on ``H - lambda_1 I`` (whose
eigenvalues are all >= 0) finds the largest algebraic eigenvalue, as the
reference reports it. tests/core/test_hessian_eigen.py checks both against
``numpy.linalg.eigvalsh`` of explicitly built Hessians.

Works on values, as `bilevel` does: ``loss_fn(a)`` is a scalar function of
a list of tensors.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tf_amended_darts.core import bilevel

# Power-iteration defaults: stop when the eigen-residual ||H v - q v|| is at
# most this fraction of |q| (q the Rayleigh quotient, whose relative error
# is then about its square), or after this many products.
POWER_TOLERANCE = 1e-3
POWER_ITERATIONS = 100


class EigenResult(NamedTuple):
    """A dominant eigenvalue estimate.

    Attributes:
        value: the largest algebraic eigenvalue (float).
        vector: its unit eigenvector estimate (list of arrays).
        products: Hessian-vector products spent.
        converged: whether the tolerance was met (else the iteration cap).
    """

    value: float
    vector: list
    products: int
    converged: bool


def regularized_loss(loss_fn, weight_decay):
    """``a -> loss_fn(a) + weight_decay / 2 * ||a||^2``.

    Its Hessian is the loss's plus ``weight_decay * I``: R-DARTS adds
    ``arch_weight_decay * alpha`` to the gradient it differentiates.
    """

    def fn(a):
        loss = loss_fn(a)
        if not weight_decay:
            return loss
        half = tf.constant(0.5 * weight_decay, loss.dtype)
        return loss + half * bilevel.dot(a, a)

    return fn


def hessian_vector_product(loss_fn, a, v):
    """``H v`` of ``loss_fn`` at ``a`` by double backward."""
    a = [tf.convert_to_tensor(x) for x in a]
    with tf.GradientTape() as outer:
        outer.watch(a)
        with tf.GradientTape() as inner:
            inner.watch(a)
            loss = loss_fn(a)
        grads = inner.gradient(loss, a)
        grads = [tf.zeros_like(x) if g is None else g
                 for g, x in zip(grads, a, strict=True)]
    hv = outer.gradient(grads, a, output_gradients=list(v))
    return [tf.zeros_like(x) if h is None else h
            for h, x in zip(hv, a, strict=True)]


def _normalized(v):
    norm = float(np.sqrt(sum(float(np.vdot(x, x)) for x in v)))
    if norm == 0.0:
        raise ValueError("Power iteration reached a zero vector.")
    return [x / norm for x in v]


def _dot(x, y):
    return sum(float(np.vdot(a, b)) for a, b in zip(x, y, strict=True))


def power_iteration(
    matvec, start, iterations=POWER_ITERATIONS, tolerance=POWER_TOLERANCE
):
    """The eigenvalue of largest magnitude of a symmetric operator.

    Args:
        matvec: ``list of arrays -> list of arrays`` (``H v``).
        start: a non-zero starting vector (list of arrays).
        iterations: most products.
        tolerance: stop when the residual ``||H v - q v||`` is at most
            ``tolerance * |q|``, ``q = v . H v`` the Rayleigh quotient of
            the unit vector ``v``. (A test on the change of ``q`` alone
            stops falsely when two eigenvalues of opposite signs share the
            largest magnitude: ``q`` then stalls between them.)

    Returns:
        An `EigenResult` (``value`` is the Rayleigh quotient, of either
        sign).
    """
    v = _normalized([np.asarray(x, np.float64) for x in start])
    value = None
    for step in range(1, iterations + 1):
        hv = [np.asarray(x, np.float64) for x in matvec(v)]
        value = _dot(v, hv)
        residual = np.sqrt(
            sum(float(np.vdot(h - value * x, h - value * x))
                for h, x in zip(hv, v, strict=True))
        )
        if residual <= tolerance * abs(value):
            return EigenResult(value, v, step, True)
        v = _normalized(hv)
    return EigenResult(value, v, iterations, False)


def largest_eigenvalue(
    matvec, start, iterations=POWER_ITERATIONS, tolerance=POWER_TOLERANCE
):
    """The largest algebraic eigenvalue of a symmetric operator.

    Power iteration gives ``lambda_1``, of largest magnitude. If it is >= 0
    it is the largest eigenvalue. Otherwise every eigenvalue lies in
    ``[lambda_1, -lambda_1]``, ``H - lambda_1 I`` is positive semi-definite
    and its dominant eigenvalue is ``lambda_max - lambda_1``.

    Args:
        matvec: ``H v`` on lists of arrays.
        start: a non-zero starting vector.
        iterations: most products per power iteration.
        tolerance: relative tolerance of each power iteration.

    Returns:
        An `EigenResult`; ``products`` counts both iterations.
    """
    first = power_iteration(matvec, start, iterations, tolerance)
    if first.value >= 0:
        return first
    shift = first.value

    def shifted(v):
        return [h - shift * x for h, x in zip(matvec(v), v, strict=True)]

    second = power_iteration(shifted, start, iterations, tolerance)
    return EigenResult(
        second.value + shift,
        second.vector,
        first.products + second.products,
        first.converged and second.converged,
    )


def dominant_arch_eigenvalue(
    loss_fn,
    a,
    weight_decay=0.0,
    iterations=POWER_ITERATIONS,
    tolerance=POWER_TOLERANCE,
    seed=0,
):
    """The largest eigenvalue of ``d2 (loss_fn + wd/2 ||a||^2) / da2``.

    Args:
        loss_fn: ``a -> scalar`` (e.g. the validation loss at fixed
            weights).
        a: the architecture values (list of tensors).
        weight_decay: R-DARTS' ``arch_weight_decay`` term (adds ``wd I``).
        iterations: most products per power iteration.
        tolerance: relative tolerance of the Rayleigh quotient.
        seed: seed of the random starting vector.

    Returns:
        An `EigenResult`.
    """
    a = [tf.convert_to_tensor(x) for x in a]
    fn = regularized_loss(loss_fn, weight_decay)

    @tf.function
    def product(v):
        return hessian_vector_product(fn, a, v)

    return _largest(product, a, iterations, tolerance, seed)


def _largest(product, like, iterations, tolerance, seed):
    dtypes = [x.dtype for x in like]

    def matvec(v):
        v = [tf.constant(x, d) for x, d in zip(v, dtypes, strict=True)]
        return [x.numpy() for x in product(v)]

    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(tuple(x.shape)) for x in like]
    return largest_eigenvalue(matvec, start, iterations, tolerance)


class ValidationHessian:
    """R-DARTS' eigenvalue of a `engine.BilevelSearch` at its current values.

    ``H`` is the Hessian over ``search.arch_variables`` of the search loss
    (auxiliary term included when the search has one) on a validation
    batch, evaluated as the architecture step evaluates it
    (``functional_loss``: training mode, batch statistics, moving
    statistics untouched, the drop-path masks of the current seed state),
    plus ``weight_decay * I``. The product is one `tf.function`, traced
    once per batch shape and reused across epochs (it reads the current
    variable values).

    Args:
        search: the `engine.BilevelSearch` (compiled).
        weight_decay: the architecture optimiser's coupled weight decay.
        iterations: most Hessian-vector products per power iteration.
        tolerance: relative tolerance of the Rayleigh quotient.
        seed: seed of the starting vector.
    """

    def __init__(
        self,
        search,
        weight_decay=0.0,
        iterations=POWER_ITERATIONS,
        tolerance=POWER_TOLERANCE,
        seed=0,
    ):
        self.search = search
        self.weight_decay = float(weight_decay)
        self.iterations = iterations
        self.tolerance = tolerance
        self.seed = seed
        self._product = tf.function(self._hessian_product)

    def _hessian_product(self, x, y, v):
        search = self.search
        w = [var.value for var in search.weight_variables]
        a = [var.value for var in search.arch_variables]
        loss = search.functional_loss(x, y)
        fn = regularized_loss(lambda arch: loss(w, arch), self.weight_decay)
        return hessian_vector_product(fn, a, v)

    def __call__(self, x, y):
        """The `EigenResult` on the validation batch ``(x, y)``."""
        x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        like = [var.value for var in self.search.arch_variables]
        return _largest(
            lambda v: self._product(x, y, v),
            like,
            self.iterations,
            self.tolerance,
            self.seed,
        )
