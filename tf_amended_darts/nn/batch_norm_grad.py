"""Training-mode batch normalisation with hand-written derivatives of every
order (`normalize_batch`).

The bi-level engine differentiates every batch norm twice (Hessian-vector
and mixed products); TensorFlow's generic derivatives of the mean, variance
and broadcasts made batch norm about 3/4 of the amended step's graph, and
Keras' `BatchNormalization` (through `tf.nn.moments`) gets the second
derivative wrong (design.md, "Second derivatives ... traps"). The
derivatives here are recorded on the active tapes, checked to third order
against float64 autodiff of the plain formula (tests/nn/test_products_bn.py).
"""

import tensorflow as tf

from tf_amended_darts.nn.graph_constants import graph_constant

try:  # Private: records a hand-written derivative on the active tapes.
    from tensorflow.python.eager import record as _tape_record
except ImportError:  # pragma: no cover - layout of a future TF
    _tape_record = None

def _normalize_vjp(normed, scale, g, axes):
    """``s (g - mean g - n mean(g n))``: the VJP of batch normalisation.

    With ``c = x - mean x``, ``s = rsqrt(mean c^2 + eps)`` and ``n = c s``
    per channel, ``dL/dx = s (g - mean g - n mean(g n))`` for ``g = dL/dn``
    (``sum c = 0`` removes the mean's term from ``ds/dx = -s^3 c / M``).
    Also returns the two per-channel means, which its own VJP reuses.
    """
    mean_g = tf.reduce_mean(g, axes)
    mean_gn = tf.reduce_mean(g * normed, axes)
    return (g - mean_g - normed * mean_gn) * scale, mean_g, mean_gn


# Dtypes of TensorFlow's fused batch-norm kernels (FusedBatchNormV3: T in
# half, bfloat16, float; the search casts low precision to float32 first).
FUSED_DTYPES = (tf.float32,)


def _fused_kernels(x, epsilon, count):
    """Batch norm and its VJP by TensorFlow's fused kernels (oneDNN on CPU).

    ``count`` is `_count_per_channel(x)`.

    Returns ``(normed, mean, biased variance, vjp)``; ``vjp(g)`` gives
    ``(G(x, g), mean g, mean(g n))`` from one FusedBatchNormGradV3. The
    kernel's documented variance output is Bessel-corrected; the biased one
    is ``var (M - 1) / M`` (the reserve spaces are backend-specific: the
    variance on CPU, the inverse deviation on GPU).
    """
    channels = x.shape[-1]
    ones = graph_constant((1.0,) * channels, x.dtype)
    zeros = graph_constant((0.0,) * channels, x.dtype)
    empty = graph_constant((), x.dtype)
    normed, mean, unbiased, r1, r2, r3 = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=ones, offset=zeros, mean=empty, variance=empty,
        epsilon=epsilon, exponential_avg_factor=1.0, data_format="NHWC",
        is_training=True,
    )
    if isinstance(count, int):
        bessel = graph_constant((count - 1) / count, x.dtype)
        count = graph_constant(float(count), x.dtype)
    else:
        bessel = (count - 1.0) / count
    variance = unbiased * bessel
    deviation = []  # sqrt(var + eps), made by the first backward pass

    def vjp(g):
        # The kernel reads the input; rebuilding it from the output (two
        # elementwise ops) keeps only the output alive for the backward
        # passes, as the formula does. Keeping `x` costs one more
        # activation per batch norm: S1 amended exact went over 16 GB.
        if not deviation:
            eps = graph_constant(epsilon, x.dtype)
            deviation.append(tf.sqrt(variance + eps))
        x_again = normed * deviation[0] + mean
        gx, sum_gn, sum_g, _, _ = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=g, x=x_again, scale=ones, reserve_space_1=r1,
            reserve_space_2=r2, reserve_space_3=r3, epsilon=epsilon,
            data_format="NHWC", is_training=True,
        )
        return gx, sum_g / count, sum_gn / count

    return normed, mean, variance, vjp


def _count_per_channel(x):
    """``N H W``: a Python int where the shape is known, else a tensor."""
    if x.shape.is_fully_defined():
        return x.shape.num_elements() // x.shape[-1]
    return tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)


def _formula_kernels(x, axes, epsilon):
    """The same four values as `_fused_kernels`, by the formula."""
    mean = tf.reduce_mean(x, axes)
    centred = x - mean
    variance = tf.reduce_mean(tf.square(centred), axes)
    scale = tf.math.rsqrt(variance + graph_constant(epsilon, x.dtype))
    normed = centred * scale

    def vjp(g):
        return _normalize_vjp(normed, scale, g, axes)

    return normed, mean, variance, vjp


def _record(kind, outputs, inputs, backward, forward):
    """Fresh tensors for `outputs`, recorded on the tapes and forward
    accumulators as one op of `inputs` whose VJP is
    ``backward(*output_gradients)`` and whose JVP is
    ``forward(*input_tangents)``.

    The fresh tensors are made with recording stopped: an accumulator keeps
    the first tangent it computes for a tensor, so an identity recorded
    first would hide ``forward``.
    """
    with _tape_record.stop_recording():
        outputs = [tf.identity(t) for t in outputs]
    _tape_record.record_operation(
        kind, outputs, list(inputs), backward, forward
    )
    return outputs


def _unrecorded(fn, *args):
    """``fn(*args)`` with no tape or accumulator recording its ops (the raw
    kernels: every value that leaves `normalize_batch` is recorded with its
    hand-written derivatives instead)."""
    if not _recording():
        return fn(*args)
    with _tape_record.stop_recording():
        return fn(*args)


def _zero_if_none(gradient, like):
    return tf.zeros_like(like) if gradient is None else gradient


def normalize_batch(x, axes, epsilon, fused=None):
    """Training-mode normalisation ``(x - mean) * rsqrt(var + eps)``, with
    hand-written derivatives of every order.

    Returns ``(normed, mean, variance)``, values as the formula computes
    them. Why: the bi-level step differentiates every batch norm twice, and
    TensorFlow's generic derivatives of the mean, variance and broadcasts
    made batch norm ~3/4 of the supernet's amended-step graph (363 nodes
    for the amended product through one batch norm;
    tests/vision/test_graph_size.py has the count now). The derivatives are
    recorded on every active tape and forward accumulator with
    ``record_operation``, as eager ``tf.custom_gradient`` does: nothing is
    registered globally (graph-mode ``tf.custom_gradient`` registers a new
    gradient function per call, which keeps every traced graph alive).

    Recorded ops, each with its VJP written from recorded tensors, so that
    derivatives of any order are exact (``G(x, g)`` is the VJP of the
    normalisation, ``n`` the output, ``s = rsqrt(var + eps)``, ``M`` the
    count per channel):

    * ``n`` of ``x``: ``G(x, g) = s (g - mean g - n mean(g n))``;
    * ``G(x, g)`` of ``(x, g)``: with ``dn_i/dx_j = s (d_ij - 1/M) -
      s n_i n_j / M``, the VJP of ``Phi = <xi, G(x, g)>`` is ``dPhi/dg =
      G(x, xi)`` and ``dPhi/dx = -s^2 n (mean(xi g) - mean xi mean g -
      mean(xi n) mean(g n)) - s (mean(g n) G(x, xi) + mean(xi n) G(x, g))``;
    * only when a third derivative is taken (a tape is still recording
      while the second derivative runs): ``var`` of ``x`` (VJP ``2 z n /
      (s M)``) and ``(mean g, mean(g n))`` of ``(x, g)`` (``d/dg = z_1 / M
      + z_2 n / M``, ``d/dx = z_2 G(x, g) / M``). Nothing is recorded where
      no tape records, so the first- and second-order graphs carry none of
      this.

    Each recorded op also has its JVP, for forward-over-reverse products
    (`tf.autodiff.ForwardAccumulator` around a tape, `bilevel.hvp_forward`):
    the batch norm's Jacobian is symmetric, and so is the x-Jacobian of
    ``G(x, g)`` (a Hessian of ``<g, n(x)>``), so each JVP is its VJP's
    parts applied to the tangents. The raw kernels run with recording
    stopped, so no tape or accumulator differentiates them.

    The values come from TensorFlow's fused kernels (``fused``, default for
    float32: FusedBatchNormV3 / FusedBatchNormGradV3, which oneDNN runs in
    one or two sweeps over the tensor where the formula takes six or seven;
    benchmarks/s1_cpu.md section 6) or from the formula (float64, which
    the kernels lack). Both run through the same recorded ops; the float64
    oracles check them against autodiff of the plain formula and the fused
    kernels against the float64 formula (tests/nn/test_products_bn.py). The
    returned statistics are for the moving averages and carry no
    derivatives (they are computed unrecorded).

    Args:
        x: a 4D NHWC tensor (any rank without ``fused``).
        axes: the reduction axes (N, H, W), a tensor or tuple.
        epsilon: a Python float added to the variance.
        fused: use the fused kernels; None: for float32 4D inputs.
    """
    if fused is None:
        fused = x.dtype in FUSED_DTYPES and x.shape.rank == 4
    epsilon = float(epsilon)
    count = _count_per_channel(x)
    if fused:
        kernels = lambda: _fused_kernels(x, epsilon, count)  # noqa: E731
    else:
        kernels = lambda: _formula_kernels(x, axes, epsilon)  # noqa: E731
    # Unrecorded: the statistics carry no derivatives (they are for the
    # moving averages), the output gets the hand-written ones below.
    normed, mean, variance, vjp_values = _unrecorded(kernels)
    if not _recording():
        return normed, mean, variance  # no tape: nothing to record
    if isinstance(count, int):
        count = graph_constant(float(count), x.dtype)
    eps = graph_constant(epsilon, x.dtype)
    # The recorded output once it exists. A forward accumulator calls a JVP
    # while its op is being recorded, before the recorded tensors exist:
    # JVPs read the unrecorded values (equal, and first order is all they
    # need), VJPs (run later) the recorded ones.
    recorded = {"out": normed}

    def scale():
        """``s``, made only by the second derivative (which needs it);
        recorded (a function of ``x``) under a tape."""
        if not _recording():
            return tf.math.rsqrt(variance + eps)

        def variance_vjp(z):
            return [2.0 * z * recorded["out"] / (s * count)]

        def variance_jvp(x_dot):
            # d var = 2 mean(c x_dot) = 2 mean(n x_dot) / s
            deviation = tf.sqrt(variance + eps)
            return [
                2.0 * tf.reduce_mean(recorded["out"] * x_dot, axes)
                * deviation
            ]

        (var,) = _record(
            "BatchNormVariance", [variance], [x], variance_vjp, variance_jvp
        )
        s = tf.math.rsqrt(var + eps)
        return s

    def vjp(g, means=False):
        """``G(x, g)``, recorded under a tape; with ``means`` also
        ``(mean g, mean(g n))``, recorded alike."""
        gx, mean_g, mean_gn = _unrecorded(vjp_values, g)
        if not _recording():
            return (gx, mean_g, mean_gn) if means else gx
        this = {"gx": gx}  # the recorded G(x, g) once it exists

        def recorded_means():
            def means_vjp(z_g, z_gn):
                z_g = _zero_if_none(z_g, mean_g)
                z_gn = _zero_if_none(z_gn, mean_gn)
                out = recorded["out"]
                return [z_gn * this["gx"] / count, (z_g + z_gn * out) / count]

            def means_jvp(x_dot, g_dot):
                # the transpose of means_vjp
                return [
                    tf.reduce_mean(g_dot, axes),
                    tf.reduce_mean(
                        g_dot * recorded["out"] + x_dot * this["gx"], axes
                    ),
                ]

            if not _recording():
                return mean_g, mean_gn
            return _record(
                "BatchNormVJPMeans", [mean_g, mean_gn], [x, g], means_vjp,
                means_jvp,
            )

        def curvature(xi):
            """``(dPhi/dx, dPhi/dg)`` of ``Phi = <xi, G(x, g)>``."""
            s = scale()
            m_g, m_gn = recorded_means()
            g_xi, m_xi, m_xin = vjp(xi, means=True)
            m_xig = tf.reduce_mean(xi * g, axes)
            coef = s * s * (m_xig - m_xi * m_g - m_xin * m_gn)
            dx = -(recorded["out"] * coef) - s * (
                m_gn * g_xi + m_xin * this["gx"]
            )
            return [dx, g_xi]

        def second(xi):
            # Runs in a backward pass: anything recorded here is for a
            # tape still active, i.e. for a third derivative.
            return curvature(xi)

        def second_jvp(x_dot, g_dot):
            # G(x, g) is the gradient of <g, n(x)>: its x-Jacobian is a
            # Hessian (symmetric), its g-Jacobian the batch norm's
            # (symmetric), so the JVP is the VJP's two parts summed.
            return [curvature(x_dot)[0] + vjp(g_dot)]

        (this["gx"],) = _record(
            "BatchNormVJP", [gx], [x, g], second, second_jvp
        )
        if means:
            return (this["gx"],) + tuple(recorded_means())
        return this["gx"]

    (recorded["out"],) = _record(
        "BatchNormTraining", [normed], [x], lambda g: [vjp(g)],
        # the Jacobian is symmetric: the JVP is the VJP
        lambda x_dot: [vjp(x_dot)],
    )
    return recorded["out"], mean, variance


def _recording():
    """Whether a tape could record the ops being built now."""
    return _tape_record is not None and _tape_record.could_possibly_record()
