"""How accurate the search's products are under a reduced-precision policy.

`product_errors` builds the same small super-network (same weights,
architecture logits and batches) twice, once under a reference dtype
policy and once under the policy being measured, and computes on each the
vectors an architecture step uses (`bilevel`'s notation)::

    g1   = grad_a L_val            v = grad_w L_val
    gw   = grad_w L_train          (the weight step's gradient)
    hv, dhv    = H . v, D . H . v  (`bilevel.amended_product_exact`)
    hv_fd, dhv_fd                  (`bilevel.hvp_finite_difference`,
                                    `bilevel.mixed_finite_difference`)
    amended    = g1 - eta . dhv    (the amended estimate, exact products)
    amended_fd = g1 - eta . dhv_fd

end to end: each precision feeds its own ``v`` and ``H . v`` into the next
product, as a search step would. The error of each vector ``x`` is
``||x - x_ref|| / ||x_ref||`` over all its tensors (in float64). Finite
differences are compared with finite differences of the reference (they are
not second derivatives on a network with kinks: README, "Benchmarks").

The losses are the engine's functional training-mode losses
(`engine.BilevelSearch.functional_loss`: ``stateless_call``, frozen
batch-norm statistics) with the logits cast to float32 before the
cross-entropy, i.e. what a mixed-precision search must do. With
``loss_scale`` S the losses are multiplied by S and every product divided
by S; the vectors fed to the next product are unscaled first (``v``, and
``H . v`` through the ``reduce_mean`` hook of `amended_product_exact`), so
intermediate values carry one factor S, as with a `LossScaleOptimizer`.

`search_policy_check` turns the measured numbers (benchmarks/precision.md)
into the rule a search launcher applies to a ``--dtype_policy`` flag.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts.core import bilevel, engine, hparams
from tf_amended_darts.vision import search_space as S
from tf_amended_darts.vision.supernet import SearchNetwork

POLICIES = ("float64", "float32", "mixed_float16", "mixed_bfloat16")
# The vectors `product_errors` reports, in table order.
PRODUCTS = (
    "g1",
    "v",
    "gw",
    "hv",
    "dhv",
    "amended",
    "hv_fd",
    "dhv_fd",
    "amended_fd",
)
# Estimator settings of the search whose architecture step reads second-
# order products; `first_order` reads g1 only.
SECOND_ORDER_ESTIMATORS = ("second_order", "amended")
# Policies a search may run under: the weight step and first_order's g1
# only (see `search_policy_check` and benchmarks/precision.md).
SEARCH_WEIGHT_STEP_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
# Policies under which the second-order products (H v, D H v, D v) may be
# computed. Measured on 3 cells, C = 8, 16x16, batch 16 (median of two
# seeds, benchmarks/precision.md): exact D H v errs by 7.0e-4 in float32
# (vs float64), 6.5e-2 in mixed_float16 and 1.5e-1 in mixed_bfloat16 (vs
# float32); finite-difference D H v by 6.2e-1 and 1.2 (i.e. 120%); with a
# loss scale of 1024 the float16 exact D H v overflows (NaN).
SEARCH_PRODUCT_POLICIES = ("float32",)


@contextlib.contextmanager
def dtype_policy(policy):
    """Keras' global dtype policy set to ``policy`` inside the block.

    The search network's cells create their layers without a ``dtype``
    argument, so they take the global policy; it is restored on exit.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _float32_logits_loss(y_true, outputs):
    """The engine's cross-entropy on float32 logits (mixed precision)."""
    return engine.sparse_cross_entropy(y_true, tf.cast(outputs, "float32"))


def search_network(policy, num_classes, image_size, **kwargs):
    """A built `SearchNetwork` whose layers all compute under ``policy``.

    Args:
        policy: a Keras dtype policy name (e.g. ``mixed_bfloat16``).
        num_classes: classifier outputs.
        image_size: input height and width (RGB inputs).
        **kwargs: passed to `SearchNetwork`.
    """
    with dtype_policy(policy):
        net = SearchNetwork(num_classes, dtype=policy, **kwargs)
        net.build((None, image_size, image_size, 3))
    return net


def _network(policy, image_size, **shape):
    return search_network(
        policy, 10, image_size, arch_init_scale=hparams.ARCH_INIT_SCALE,
        **shape,
    )


def _batches(batch_size, image_size, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):  # (train, val)
        x = rng.normal(size=(batch_size, image_size, image_size, 3))
        y = rng.integers(0, 10, batch_size)
        out.append((x.astype(np.float64), y.astype(np.int32)))
    return out


def products(
    policy,
    values,
    batches,
    layers=3,
    init_channels=8,
    image_size=16,
    operators=S.DARTS_PRIMITIVES,
    seed=0,
    eta=hparams.ETA,
    loss_scale=1.0,
    graph=False,
    steps=hparams.STEPS,
    multiplier=hparams.MULTIPLIER,
    recompute_cells=False,
):
    """The vectors of `PRODUCTS` under ``policy``, as float64 numpy lists.

    Args:
        policy: a Keras dtype policy name (see `POLICIES`).
        values: the network's weights (``net.get_weights()`` order), or
            None to keep the initialisation of ``seed``.
        batches: ``[(x_train, y_train), (x_val, y_val)]`` numpy arrays.
        layers, init_channels, image_size, operators, seed, steps,
            multiplier: the supernet (`supernet.SearchNetwork`).
        eta: the amending coefficient of the ``amended*`` vectors.
        loss_scale: static loss scale S (see the module docstring).
        graph: compute inside a `tf.function` (as the engine does) rather
            than eagerly. The kernels are the same (Grappler is off by
            default in the launchers); tracing the exact products of the
            eight-operator supernet takes minutes and gigabytes.
        recompute_cells: the network recomputes its cells in the passes
            (`SearchNetwork(recompute_cells=True)`, the search's
            ``--recompute_cells``); its weights are the plain network's.

    Returns:
        ``(vectors, weights)``: ``{name: [np.ndarray]}`` and the network's
        weights as built (to share with another policy).
    """
    net = _network(
        policy,
        image_size,
        layers=layers,
        init_channels=init_channels,
        operators=operators,
        seed=seed,
        steps=steps,
        multiplier=multiplier,
        recompute_cells=recompute_cells,
    )
    if values is not None:
        for variable, value in zip(net.weights, values, strict=True):
            variable.assign(np.asarray(value).astype(variable.dtype))
    weights = net.get_weights()
    search = engine.BilevelSearch(net, loss=_float32_logits_loss)
    search.compile()
    dtype = net.weight_variables[0].dtype  # variables: float32 or float64
    (x_t, y_t), (x_v, y_v) = [
        (tf.constant(x, dtype), tf.constant(y)) for x, y in batches
    ]
    scale = float(loss_scale)
    train = search.functional_loss(x_t, y_t)
    val = search.functional_loss(x_v, y_v)

    def scaled(loss_fn):
        def loss(w, a):
            value = loss_fn(w, a)
            return value * tf.constant(scale, value.dtype)

        return loss

    def unscale(xs):
        return [x / tf.constant(scale, x.dtype) for x in xs]

    w = [tf.convert_to_tensor(v.value) for v in net.weight_variables]
    a = [tf.convert_to_tensor(v.value) for v in net.arch_variables]

    def compute():
        _, v, g1 = bilevel.loss_and_grads(scaled(val), w, a)
        v, g1 = unscale(v), unscale(g1)
        _, gw, _ = bilevel.loss_and_grads(scaled(train), w, a)
        hv, dhv = bilevel.amended_product_exact(
            scaled(train), w, a, v, reduce_mean=unscale
        )
        hv_fd = unscale(bilevel.hvp_finite_difference(scaled(train), w, a, v))
        dhv_fd = unscale(
            bilevel.mixed_finite_difference(scaled(train), w, a, hv_fd)
        )
        return {
            "g1": g1,
            "v": v,
            "gw": unscale(gw),
            "hv": hv,
            "dhv": unscale(dhv),
            "hv_fd": hv_fd,
            "dhv_fd": dhv_fd,
        }

    if graph:  # as a search step runs (slow to trace, see README)
        compute = tf.function(compute, autograph=False)
    out = {
        k: [np.asarray(x, np.float64) for x in vs]
        for k, vs in compute().items()
    }
    out["amended"] = [
        g - eta * d for g, d in zip(out["g1"], out["dhv"], strict=True)
    ]
    out["amended_fd"] = [
        g - eta * d for g, d in zip(out["g1"], out["dhv_fd"], strict=True)
    ]
    return out, weights


def relative_error(xs, refs):
    """``||xs - refs|| / ||refs||`` over lists of arrays (float64)."""
    diff = sum(
        float(np.sum((x - r) ** 2)) for x, r in zip(xs, refs, strict=True)
    )
    norm = sum(float(np.sum(r**2)) for r in refs)
    return float(np.sqrt(diff / norm)) if norm else float("nan")


def product_errors(
    policy,
    reference="float32",
    layers=3,
    init_channels=8,
    image_size=16,
    batch_size=16,
    operators=S.DARTS_PRIMITIVES,
    seed=0,
    eta=hparams.ETA,
    loss_scale=1.0,
    graph=False,
    steps=hparams.STEPS,
    multiplier=hparams.MULTIPLIER,
    batch_seed=None,
    recompute_cells=False,
):
    """Relative errors of the search's products under ``policy``.

    Args:
        policy: the policy measured (e.g. ``mixed_bfloat16``).
        reference: the policy it is compared with (``float32``; or
            ``float64`` to measure float32 itself).
        layers, init_channels, image_size, operators, seed, steps,
            multiplier: the supernet (default: 3 cells, C = 8, 16x16, all
            eight DARTS operators, 4 nodes per cell).
        batch_size: examples in each of the two random batches.
        eta: the amending coefficient (default the paper's 0.1).
        loss_scale: static loss scale of ``policy``'s passes (the
            reference is unscaled).
        graph: trace the products in a `tf.function` (see `products`).
        batch_seed: draw ``policy``'s two batches with this seed instead
            of ``seed`` (same weights): with ``policy == reference`` the
            "error" is then the batch-to-batch variation of each vector,
            the sampling noise a precision error is to be compared with.
        recompute_cells: ``policy``'s network recomputes its cells in the
            passes (the reference's does not): the error of
            ``--recompute_cells`` under ``policy``.

    Returns:
        ``{name: relative error}`` for every name of `PRODUCTS`, plus
        ``{name + "_norm": ||reference vector||}``.

    Sets the global random seed (`keras.utils.set_random_seed(seed)`).
    """
    for name in (policy, reference):
        if name not in POLICIES:
            raise ValueError(
                f"Invalid dtype policy {name!r}. Accepted values: "
                f"{', '.join(POLICIES)}."
            )
    if not loss_scale > 0:
        raise ValueError(
            f"Expected `loss_scale` > 0. Received: loss_scale={loss_scale}"
        )
    # The same initial weights whatever ran before in the process (the
    # Keras initialisers draw from the global seed).
    keras.utils.set_random_seed(seed)
    batches = _batches(batch_size, image_size, seed)
    shape = dict(
        layers=layers,
        init_channels=init_channels,
        image_size=image_size,
        operators=operators,
        seed=seed,
        eta=eta,
        graph=graph,
        steps=steps,
        multiplier=multiplier,
    )
    ref, weights = products(reference, None, batches, **shape)
    if batch_seed is not None:
        batches = _batches(batch_size, image_size, batch_seed)
    got, _ = products(policy, weights, batches, loss_scale=loss_scale,
                      recompute_cells=recompute_cells, **shape)
    errors = {k: relative_error(got[k], ref[k]) for k in PRODUCTS}
    for k in PRODUCTS:
        errors[k + "_norm"] = float(
            np.sqrt(sum(float(np.sum(r**2)) for r in ref[k]))
        )
    return errors


def search_policy_check(policy, arch_grad, hvp="exact"):
    """Raises ValueError for a search setting found inaccurate.

    The decision, from the measured table (benchmarks/precision.md; 3
    cells, C = 8, 16x16, batch 16, all eight operators, two seeds):

    * gradients (``g1``, ``v``, the weight step's ``gw``) err by ~5% under
      ``mixed_float16`` and ~14% under ``mixed_bfloat16``: the error every
      mixed-precision training accepts in its weight step, ten times below
      the batch-to-batch variation of the same vectors (130-160% there).
      So the weight step, and ``first_order`` (whose architecture step
      reads ``g1`` only), may run under either mixed policy.
    * the second-order products lose accuracy: exact ``D . H . v`` errs by
      6.5% (float16) and 15% (bfloat16), a hundred times float32's own
      7e-4; finite-difference ``H . v`` and ``D . H . v`` by 44-62%
      (float16) and 110-120% (bfloat16), i.e. nothing is left of them;
      and float16 with a loss scale of 1024 overflows in the double
      backward pass (NaN), so float16 products would need their own loss
      scaling. ``second_order`` and ``amended`` (either ``--hvp``) are
      therefore refused under a mixed policy: they must run in float32.

    Args:
        policy: the search's ``--dtype_policy``.
        arch_grad: ``--arch_grad``.
        hvp: ``--hvp`` (both modes are refused alike).

    Raises:
        ValueError: naming ``--dtype_policy`` and ``--arch_grad`` and the
            accepted combinations.
    """
    bilevel.validate_estimator(arch_grad, hparams.ETA, hvp)
    if policy not in SEARCH_WEIGHT_STEP_POLICIES:
        raise ValueError(
            f"Invalid --dtype_policy={policy!r}. Accepted values: "
            f"{', '.join(SEARCH_WEIGHT_STEP_POLICIES)}."
        )
    if arch_grad in SECOND_ORDER_ESTIMATORS and (
        policy not in SEARCH_PRODUCT_POLICIES
    ):
        raise ValueError(
            f"Invalid --dtype_policy={policy!r} for --arch_grad={arch_grad}"
            f" (--hvp={hvp}): its second-order products lose accuracy "
            "under mixed precision (benchmarks/precision.md). Accepted "
            f"values: --dtype_policy={' or '.join(SEARCH_PRODUCT_POLICIES)}"
            f" with --arch_grad={' or '.join(SECOND_ORDER_ESTIMATORS)}; "
            f"any of {', '.join(SEARCH_WEIGHT_STEP_POLICIES)} with "
            "--arch_grad=first_order."
        )
