"""Primitive layers with correct first and second derivatives in graph mode.

The bi-level engine differentiates twice through the supernet (Hessian-vector
and mixed second-derivative products by nested `tf.GradientTape`s inside
`tf.function`). Two stock pieces get that wrong on TensorFlow 2.21 / Keras 3.15
(design.md, "Second derivatives in TensorFlow ... traps"):

- `keras.layers.BatchNormalization` computes the batch variance through
  `tf.nn.moments`, which stops the gradient through the mean inside the
  variance: Hessian-vector products come out biased.
- `tf.nn.max_pool2d`'s second derivative (MaxPoolGradGrad) inside
  `tf.function` disagrees with finite differences.

This module holds replacements built from ops whose derivatives of every order
are right, with PyTorch semantics (explicit symmetric padding, PyTorch batch
norm statistics) so that outputs align with the PyTorch DARTS reference
(quark0/darts) at every stride. All layers take NHWC input and compute in the
layer's compute dtype (any float dtype).

Graph size. Tracing costs Python time per graph node, and the bi-level step
traces the supernet forward, backward and double-backward, so every layer is
written to emit few nodes (`tests/test_graph_size.py` pins the counts): raw
`tf` ops, no no-op casts, PyTorch padding folded into the op where TF allows
it (explicit convolution padding, 'SAME' pooling when it coincides), and
constants shared by every layer of the graph being traced (`graph_constant`).
`frozen_statistics()` lets functional passes trace training-mode batch norms
without moving-statistic updates; `synchronized_statistics()` makes them
normalise with the statistics of the global batch under a multi-replica
`tf.distribute` strategy (`cross_replica_sum`, differentiable to any order).
"""

import contextlib
import contextvars
import threading
import weakref

import keras
import numpy as np
import tensorflow as tf

try:  # Private, used only to detect an XLA (jit_compile) trace.
    from tensorflow.python.ops.control_flow_util import (
        GraphOrParentsInXlaContext as _graph_in_xla_context,
    )
except ImportError:  # pragma: no cover - layout of a future TF
    _graph_in_xla_context = None

try:  # Private: records a hand-written derivative on the active tapes.
    from tensorflow.python.eager import record as _tape_record
except ImportError:  # pragma: no cover - layout of a future TF
    _tape_record = None

# torch.nn.BatchNorm2d defaults, used by DARTS (quark0/darts, operations.py).
# PyTorch's momentum weights the new batch statistic; the Keras convention
# (weight of the old moving value) is 1 - 0.1 = 0.9.
PYTORCH_BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d(eps=1e-5); Keras uses 1e-3
PYTORCH_BN_MOMENTUM = 0.1  # torch.nn.BatchNorm2d(momentum=0.1)
BN_MOMENTUM = 1.0 - PYTORCH_BN_MOMENTUM  # Keras convention: 0.9

# torch.nn.Conv2d default init, kaiming_uniform_(a=sqrt(5)): uniform with
# bound 1 / sqrt(fan_in), i.e. VarianceScaling(scale=1/3, fan_in, uniform).
PYTORCH_CONV_INIT_SCALE = 1.0 / 3.0

_NHW = (0, 1, 2)  # batch-norm reduction axes (NHWC)
# Compute dtypes of the Keras mixed-precision policies ("mixed_float16",
# "mixed_bfloat16"), under which `BatchNorm` keeps float32 statistics.
LOW_PRECISION_DTYPES = ("float16", "bfloat16")


def pytorch_conv_initializer():
    """Returns `torch.nn.Conv2d`'s kernel init (uniform, 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=PYTORCH_CONV_INIT_SCALE, mode="fan_in", distribution="uniform"
    )


def check_int(name, value, minimum=1):
    """Raises a ValueError echoing `value` unless it is an int >= minimum."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"Expected `{name}` to be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )


def check_bool(name, value):
    """Raises a ValueError echoing `value` unless it is a bool."""
    if not isinstance(value, bool):
        raise ValueError(
            f"Expected `{name}` to be a bool. Received: {name}={value!r}"
        )


# ---------------------------------------------------------------------------
# Constants shared within a traced graph.
# ---------------------------------------------------------------------------

# graph -> {key: tensor}. Weak keys: the entries die with the graph.
_GRAPH_CONSTANTS = weakref.WeakKeyDictionary()
_GRAPH_CONSTANTS_LOCK = threading.Lock()


def _graph_cached(key, make):
    """`make()` once per graph being built (and thread), shared afterwards.

    Eagerly, `make()` runs on every call. In a graph the tensor is created
    outside any control-dependency scope, so that any op of the graph may
    use it; the thread is part of the key because `tf.distribute` replicas
    build the same graph in their own threads under their own devices.
    """
    if tf.executing_eagerly():
        return make()
    graph = tf.compat.v1.get_default_graph()
    key = (threading.get_ident(),) + key
    with _GRAPH_CONSTANTS_LOCK:
        cache = _GRAPH_CONSTANTS.setdefault(graph, {})
        tensor = cache.get(key)
    if tensor is None:
        with graph.control_dependencies(None):
            tensor = make()
        with _GRAPH_CONSTANTS_LOCK:
            tensor = cache.setdefault(key, tensor)
    return tensor


def graph_constant(value, dtype):
    """A constant shared by every use within the graph being traced.

    Args:
        value: A Python number or a (nested) tuple of numbers (hashable).
        dtype: Its TF dtype.

    Returns:
        A tensor (a fresh eager tensor when executing eagerly).
    """
    dtype = tf.as_dtype(dtype)
    return _graph_cached(
        ("constant", dtype.name, value), lambda: tf.constant(value, dtype)
    )


def _in_xla_context():
    """Whether the graph being built is compiled by XLA (`jit_compile`)."""
    if _graph_in_xla_context is None or tf.executing_eagerly():
        return False
    return _graph_in_xla_context(tf.compat.v1.get_default_graph())


def subsample_hw(x, stride, start=0):
    """`x[:, start::stride, start::stride, :]` (index constants shared).

    Written with `tf.slice` and reshapes where the sizes are known: their
    derivatives are `tf.pad` and reshapes, while a strided slice's
    (``StridedSliceGrad``) is a slow scatter on CPU (measured: 5-8% of a
    3-cell supernet's search step, benchmarks/s1_cpu.md section 6).
    """
    sizes = x.shape[1:3]
    if start:
        x = tf.slice(
            x,
            graph_constant((0, start, start, 0), tf.int32),
            graph_constant((-1, -1, -1, -1), tf.int32),
        )
        sizes = [None if n is None else n - start for n in sizes]
    if stride == 1:
        return x
    if None in sizes or x.shape[-1] is None:
        return tf.strided_slice(
            x,
            graph_constant((0, 0, 0, 0), tf.int32),
            graph_constant((0, 0, 0, 0), tf.int32),
            graph_constant((1, stride, stride, 1), tf.int32),
            end_mask=15,
        )
    # Pad to whole blocks, view as (N, H/s, s, W/s, s, C), keep offset 0.
    out = [-(-n // stride) for n in sizes]
    pads = tuple((0, o * stride - n) for o, n in zip(out, sizes, strict=True))
    x = pad_hw(x, pads)
    channels = x.shape[-1]
    blocks = tf.reshape(
        x,
        graph_constant((-1, out[0], stride, out[1], stride, channels),
                       tf.int32),
    )
    first = tf.slice(
        blocks,
        graph_constant((0,) * 6, tf.int32),
        graph_constant((-1, -1, 1, -1, 1, -1), tf.int32),
    )
    return tf.reshape(
        first, graph_constant((-1, out[0], out[1], channels), tf.int32)
    )


def pad_hw(x, pads, constant=None):
    """Pads height and width by `pads = ((top, bottom), (left, right))`.

    An `int` pads all four sides alike (PyTorch style). `constant` (a
    Python number) fills the padding; zeros by default.
    """
    if isinstance(pads, int):
        pads = ((pads, pads), (pads, pads))
    pads = tuple(tuple(int(p) for p in side) for side in pads)
    if not any(any(side) for side in pads):
        return x
    paddings = graph_constant(((0, 0),) + pads + ((0, 0),), tf.int32)
    if constant is None:
        return tf.pad(x, paddings)
    return tf.pad(
        x, paddings, constant_values=graph_constant(constant, x.dtype)
    )


# ---------------------------------------------------------------------------
# One ReLU per input within a mixed edge.
# ---------------------------------------------------------------------------

_SHARED_RELU = contextvars.ContextVar("shared_relu", default=None)


@contextlib.contextmanager
def shared_relu():
    """Inside, `relu` computes ``relu(x)`` once per input tensor ``x``.

    A mixed edge's convolutions (sep_conv and dil_conv, four in DARTS' S1)
    and factorized reduction each start with a ReLU of the edge's input:
    sharing it saves three activations per edge kept for the backward
    passes, and three ReLU gradients in each of them (the gradients meet
    in one sum instead). Grappler's common-subexpression elimination does
    the same when it runs; the search runs without it by default.
    """
    token = _SHARED_RELU.set({})
    try:
        yield
    finally:
        _SHARED_RELU.reset(token)


def relu(x):
    """``tf.nn.relu(x)``, shared inside `shared_relu()`."""
    cache = _SHARED_RELU.get()
    if cache is None:
        return tf.nn.relu(x)
    hit = cache.get(id(x))
    if hit is None or hit[0] is not x:
        hit = (x, tf.nn.relu(x))
        cache[id(x)] = hit
    return hit[1]


# ---------------------------------------------------------------------------
# Frozen batch-norm statistics.
# ---------------------------------------------------------------------------

_FROZEN = contextvars.ContextVar("frozen_statistics", default=0)
# Graphs traced inside `frozen_statistics()`: threads that build the same
# graph (`tf.distribute.MirroredStrategy` replicas) see the switch as well.
_FROZEN_GRAPHS = weakref.WeakKeyDictionary()
_FROZEN_GRAPHS_LOCK = threading.Lock()


@contextlib.contextmanager
def frozen_statistics():
    """Training-mode `BatchNorm`s inside make no moving-statistic updates.

    They still normalise with the batch statistics (the training-mode
    output is unchanged), but create no variable reads or assignments, so
    a traced forward pass is smaller and leaves the moving statistics (and
    `stateless_call`'s returned non-trainable values) untouched. Meant for
    functional passes whose statistic updates are discarded anyway.

    The switch is read when a layer is called, i.e. when a `tf.function`
    traces: a function traced outside the block keeps its updates when
    called inside it, and vice versa. It holds for the current context
    (thread / task) and, when entered while a graph is being traced, for
    every thread building that graph (`tf.distribute` replicas).

    Yields:
        None.
    """
    token = _FROZEN.set(_FROZEN.get() + 1)
    graph = None
    if not tf.executing_eagerly():
        graph = tf.compat.v1.get_default_graph()
        with _FROZEN_GRAPHS_LOCK:
            _FROZEN_GRAPHS[graph] = _FROZEN_GRAPHS.get(graph, 0) + 1
    try:
        yield
    finally:
        _FROZEN.reset(token)
        if graph is not None:
            with _FROZEN_GRAPHS_LOCK:
                depth = _FROZEN_GRAPHS.pop(graph) - 1
                if depth:
                    _FROZEN_GRAPHS[graph] = depth


def statistics_frozen():
    """Whether `frozen_statistics()` is in force here (see there)."""
    if _FROZEN.get():
        return True
    if not _FROZEN_GRAPHS or tf.executing_eagerly():
        return False
    graph = tf.compat.v1.get_default_graph()
    with _FROZEN_GRAPHS_LOCK:
        while graph is not None:
            if graph in _FROZEN_GRAPHS:
                return True
            graph = getattr(graph, "outer_graph", None)
    return False


# ---------------------------------------------------------------------------
# Cross-replica (synchronized) batch statistics.
# ---------------------------------------------------------------------------

_SYNCHRONIZED = contextvars.ContextVar("synchronized_statistics", default=0)


@contextlib.contextmanager
def synchronized_statistics(enabled=True):
    """Training-mode `BatchNorm`s inside use cross-replica batch statistics.

    Under a `tf.distribute` strategy with more than one replica, a layer
    called in replica context inside this block normalises with the
    statistics of the global batch (all replicas), so that the output, the
    loss and every derivative equal those of one replica on the whole
    batch. Layers built with ``synchronized=True`` or ``False`` ignore it.

    Like `frozen_statistics`, the switch is read when a layer is called
    (when a `tf.function` traces) and holds for the current context only:
    enter it inside the replica function (e.g. a ``train_step`` run by
    ``strategy.run``), which runs in each replica's own thread.

    Args:
        enabled: whether to synchronize (``False`` switches it off inside
            an enclosing block).

    Yields:
        None.
    """
    token = _SYNCHRONIZED.set(1 if enabled else -1)
    try:
        yield
    finally:
        _SYNCHRONIZED.reset(token)


def cross_replica_sum(replica, x):
    """``replica.all_reduce(SUM, x)``, differentiable to any order.

    The gradient of an all-reduce sum is an all-reduce sum of the output
    gradients (as in `tf.distribute.ReplicaContext.all_reduce`). The input
    goes through `tf.stop_gradient` inside the custom gradient: TensorFlow's
    graph-mode ``custom_gradient`` walks the graph back from a function's
    outputs to its inputs (looking for variables), and the reduced values
    depend on every replica's input; without the stop the walk runs
    through the other replicas' whole graphs at every call, which made
    tracing a supernet quadratic in its size.

    Args:
        replica: a `tf.distribute.ReplicaContext`.
        x: a tensor of this replica.

    Returns:
        The sum of ``x`` over the replicas.
    """

    @tf.custom_gradient
    def reduce(value):
        total = replica.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.stop_gradient(value)
        )
        return total, lambda upstream: cross_replica_sum(replica, upstream)

    return reduce(x)


def _sync_replica_context(synchronized):
    """The replica context to all-reduce batch statistics in, or None."""
    if synchronized is None:
        synchronized = _SYNCHRONIZED.get() > 0
    if not synchronized:
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


class ConfigLayer(keras.layers.Layer):
    """A layer whose `get_config` adds the attributes named in `_config_keys`.

    Each name is both a constructor argument and a public attribute; the
    base layer's config (name, dtype, trainable) is chained first.

    Args:
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ()

    def get_config(self):
        config = super().get_config()
        config.update({key: getattr(self, key) for key in self._config_keys})
        return config


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


def _record(kind, outputs, inputs, backward):
    """Fresh tensors for `outputs`, recorded on the tapes as one op of
    `inputs` whose VJP is `backward(*output_gradients)`."""
    outputs = [tf.identity(t) for t in outputs]
    _tape_record.record_operation(kind, outputs, list(inputs), backward)
    return outputs


def _zero_if_none(gradient, like):
    return tf.zeros_like(like) if gradient is None else gradient


def normalize_batch(x, axes, epsilon, fused=None):
    """Training-mode normalisation ``(x - mean) * rsqrt(var + eps)``, with
    hand-written derivatives of every order.

    Returns ``(normed, mean, variance)``, values as the formula computes
    them. Why: the bi-level step differentiates every batch norm twice, and
    TensorFlow's generic derivatives of the mean, variance and broadcasts
    made batch norm ~3/4 of the supernet's amended-step graph (363 nodes
    for the amended product through one batch norm; tests/test_graph_size.py
    has the count now). The derivatives are recorded on every active tape
    with ``record_operation``, as eager ``tf.custom_gradient`` does: nothing
    is registered globally (graph-mode ``tf.custom_gradient`` registers a new
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

    The values come from TensorFlow's fused kernels (``fused``, default for
    float32: FusedBatchNormV3 / FusedBatchNormGradV3, which oneDNN runs in
    one or two sweeps over the tensor where the formula takes six or seven;
    benchmarks/s1_cpu.md section 6) or from the formula (float64, which
    the kernels lack). Both run through the same recorded ops; the float64
    oracles check them against autodiff of the plain formula and the fused
    kernels against the float64 formula (tests/test_products_bn.py). The
    returned statistics are for the moving averages and carry no
    derivatives (`tf.stop_gradient`).

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
        normed, mean, variance, vjp_values = _fused_kernels(
            x, epsilon, count
        )
    else:
        normed, mean, variance, vjp_values = _formula_kernels(
            x, axes, epsilon
        )
    if not _recording():
        return normed, mean, variance  # no tape: nothing to record
    # The statistics are for the moving averages: no derivatives.
    mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
    if isinstance(count, int):
        count = graph_constant(float(count), x.dtype)
    eps = graph_constant(epsilon, x.dtype)

    def scale():
        """``s``, made only by the second derivative (which needs it);
        recorded (a function of ``x``) under a tape."""
        if not _recording():
            return tf.math.rsqrt(variance + eps)

        def variance_vjp(z):
            return [2.0 * z * out / (recorded * count)]

        (var,) = _record("BatchNormVariance", [variance], [x], variance_vjp)
        recorded = tf.math.rsqrt(var + eps)
        return recorded

    def vjp(g, means=False):
        """``G(x, g)``, recorded under a tape; with ``means`` also
        ``(mean g, mean(g n))``, recorded alike."""
        gx, mean_g, mean_gn = vjp_values(g)
        if not _recording():
            return (gx, mean_g, mean_gn) if means else gx

        def recorded_means():
            def means_vjp(z_g, z_gn):
                z_g = _zero_if_none(z_g, mean_g)
                z_gn = _zero_if_none(z_gn, mean_gn)
                return [z_gn * gx_out / count, (z_g + z_gn * out) / count]

            if not _recording():
                return mean_g, mean_gn
            return _record(
                "BatchNormVJPMeans", [mean_g, mean_gn], [x, g], means_vjp
            )

        def second(xi):
            # Runs in a backward pass: anything recorded here is for a
            # tape still active, i.e. for a third derivative.
            s = scale()
            m_g, m_gn = recorded_means()
            g_xi, m_xi, m_xin = vjp(xi, means=True)
            m_xig = tf.reduce_mean(xi * g, axes)
            coef = s * s * (m_xig - m_xi * m_g - m_xin * m_gn)
            dx = -(out * coef) - s * (m_gn * g_xi + m_xin * gx_out)
            return [dx, g_xi]

        (gx_out,) = _record("BatchNormVJP", [gx], [x, g], second)
        return (gx_out,) + tuple(recorded_means()) if means else gx_out

    (out,) = _record("BatchNormTraining", [normed], [x],
                     lambda g: [vjp(g)])
    return out, mean, variance


def _recording():
    """Whether a tape could record the ops being built now."""
    return _tape_record is not None and _tape_record.could_possibly_record()


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class BatchNorm(ConfigLayer):
    """Batch normalisation over N, H, W per channel, with PyTorch semantics.

    Training mode normalises with the biased batch variance computed as
    `mean(square(x - mean))`, the gradient flowing through the mean in both
    places (no `stop_gradient`, unlike `tf.nn.moments`), so that second
    derivatives are exact. Moving statistics follow `torch.nn.BatchNorm2d`:
    `moving = momentum * moving + (1 - momentum) * batch`, with the unbiased
    batch variance (`n / (n - 1)`) for `moving_variance`. The updates are plain
    `variable.assign` calls, so under `model.stateless_call` they come back in
    the returned non-trainable values; every training-mode call updates them,
    except inside `frozen_statistics()`, which makes no update at all.
    Under a `tf.distribute` strategy with several replicas each replica
    normalises with its own batch statistics, unless the layer is
    synchronized (``synchronized=True``, or ``None`` inside
    `synchronized_statistics()`, as the search engine does): then one
    all-reduce (sum) of the per-channel ``[sum(x - c), sum((x - c)^2),
    count]`` gives the statistics of the global batch, ``c`` being the
    moving mean (the same on every replica, constant in the weights; it
    only tempers the cancellation of ``E[d^2] - E[d]^2``). The all-reduce is
    differentiable to any order (its gradient is an all-reduce), so first
    and second derivatives are those of one replica on the global batch.
    The moving statistics take the mean of the replicas' updates
    (`aggregation="mean"`). Inference mode uses the moving statistics.
    Under a mixed-precision policy (``mixed_float16``, ``mixed_bfloat16``)
    the statistics and the normalisation are computed in float32 (the
    variable dtype) and only the output is in the compute dtype.

    Reference: Ioffe & Szegedy, 2015; `torch.nn.BatchNorm2d`. DARTS
    (quark0/darts) uses `affine=False` during search, `True` in re-training.

    Args:
        affine: Whether to learn a per-channel scale `gamma` (init 1) and
            offset `beta` (init 0).
        momentum: Keras-convention momentum, the weight of the old moving
            value (PyTorch momentum 0.1 == 0.9 here).
        epsilon: Added to the variance (PyTorch default 1e-5).
        synchronized: Cross-replica batch statistics under a multi-replica
            strategy: ``True`` always, ``False`` never, ``None`` (default)
            inside `synchronized_statistics()` only.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("affine", "momentum", "epsilon", "synchronized")

    def __init__(
        self,
        affine=True,
        momentum=BN_MOMENTUM,
        epsilon=PYTORCH_BN_EPSILON,
        synchronized=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_bool("affine", affine)
        if synchronized is not None:
            check_bool("synchronized", synchronized)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"Expected `momentum` in [0, 1]. Received: momentum={momentum}"
            )
        if not epsilon > 0.0:
            raise ValueError(
                f"Expected `epsilon` > 0. Received: epsilon={epsilon}"
            )
        self.affine = affine
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.synchronized = synchronized

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "Expected a 4D NHWC input with a known channel count. "
                f"Received: input_shape={input_shape}"
            )
        shape = (input_shape[-1],)
        if self.affine:
            self.gamma = self.add_weight(
                shape=shape, name="gamma", initializer="ones", autocast=False
            )
            self.beta = self.add_weight(
                shape=shape, name="beta", initializer="zeros", autocast=False
            )
        for name, init in (
            ("moving_mean", "zeros"),
            ("moving_variance", "ones"),
        ):
            variable = self.add_weight(
                shape=shape,
                name=name,
                initializer=init,
                trainable=False,
                autocast=False,
                aggregation="mean",
            )
            setattr(self, name, variable)

    def call(self, inputs, training=None):
        output_dtype = self.compute_dtype
        # Mixed precision (compute dtype narrower than the variables'): the
        # statistics and the normalisation run in the variable dtype
        # (float32), as Keras' BatchNormalization does, and only the output
        # is cast back. In float16 the sum of squares overflows above
        # 65504 and its mean loses all but 11 bits.
        dtype = (
            self.dtype_policy.variable_dtype
            if output_dtype in LOW_PRECISION_DTYPES
            else output_dtype
        )
        x = tf.cast(inputs, dtype)
        axes = graph_constant(_NHW, tf.int32)
        if training:
            replica = _sync_replica_context(self.synchronized)
            count = None
            if replica is None and not self.affine:
                # The search's batch norms: hand-written derivatives.
                normed, mean, variance = normalize_batch(
                    x, axes, self.epsilon
                )
                if not statistics_frozen():
                    self._update_moving_statistics(x, mean, variance)
                return tf.cast(normed, output_dtype)
            if replica is None:
                mean = tf.reduce_mean(x, axes)
                centred = x - mean
                variance = tf.reduce_mean(tf.square(centred), axes)
            else:
                mean, variance, count = self._global_moments(x, axes, replica)
                centred = x - mean
            if not statistics_frozen():
                self._update_moving_statistics(x, mean, variance, count)
        else:
            centred = x - tf.cast(self.moving_mean, dtype)
            variance = tf.cast(self.moving_variance, dtype)
        scale = tf.math.rsqrt(variance + graph_constant(self.epsilon, dtype))
        if not self.affine:
            return tf.cast(centred * scale, output_dtype)
        scale = scale * tf.cast(self.gamma, dtype)
        outputs = centred * scale + tf.cast(self.beta, dtype)
        return tf.cast(outputs, output_dtype)

    def _global_moments(self, x, axes, replica):
        """Mean, biased variance and count (per channel) of the global batch.

        One all-reduce of the stacked per-channel ``[sum(d), sum(d^2),
        count]``, ``d = x - c`` with ``c`` the moving mean.
        """
        dtype = x.dtype
        channels = x.shape[-1]
        shift = tf.stop_gradient(tf.cast(self.moving_mean, dtype))
        d = x - shift
        n = 1
        for size in x.shape[:3]:
            n = None if size is None or n is None else n * size
        if n is not None:
            count = graph_constant((float(n),) * channels, dtype)
        else:
            size = tf.cast(tf.size(x, out_type=tf.int64), dtype)
            count = tf.fill([channels], size / float(channels))
        local = tf.stack(
            [tf.reduce_sum(d, axes), tf.reduce_sum(tf.square(d), axes), count]
        )
        sum_d, sum_d2, count = tf.unstack(cross_replica_sum(replica, local))
        count = tf.stop_gradient(count)  # no derivative graph for it
        inverse = tf.math.reciprocal(count)
        mean_d = sum_d * inverse
        variance = sum_d2 * inverse - tf.square(mean_d)
        return shift + mean_d, variance, count

    def _update_moving_statistics(self, x, mean, variance, count=None):
        # moving <- momentum * moving + (1 - momentum) * batch statistic,
        # PyTorch storing the unbiased variance (n / (n - 1), n == 1 guarded).
        # No stop_gradient needed: nothing differentiable reads the result.
        # `count`: the (global) number of values per channel, a tensor, for
        # cross-replica statistics; None: this batch's.
        momentum = self.momentum
        n = 1
        for size in x.shape[:3]:
            n = None if size is None or n is None else n * size
        if count is not None:
            n = None
        for var, value, unbias in (
            (self.moving_mean, mean, False),
            (self.moving_variance, variance, True),
        ):
            dtype = tf.as_dtype(var.dtype)
            value = tf.cast(value, dtype)
            rate = 1.0 - momentum
            if unbias and n is not None:
                rate *= n / max(n - 1, 1)
            elif unbias and count is not None:
                count = tf.cast(count, dtype)
                value = value * (count / tf.maximum(count - 1, 1))
            elif unbias:
                size = tf.cast(tf.size(x, out_type=tf.int64), dtype)
                channels = graph_constant(float(x.shape[-1]), dtype)
                value = value * (size / tf.maximum(size - channels, channels))
            old = tf.cast(var.value, dtype)
            var.assign(
                old * graph_constant(momentum, dtype)
                + value * graph_constant(rate, dtype)
            )

    def compute_output_shape(self, input_shape):
        return input_shape


class _Pool2D(ConfigLayer):
    """Shared arguments and output shape of the two pooling layers."""

    _config_keys = ("pool_size", "strides", "padding")

    def __init__(self, pool_size=3, strides=1, padding=1, **kwargs):
        super().__init__(**kwargs)
        check_int("pool_size", pool_size)
        check_int("strides", strides)
        check_int("padding", padding, minimum=0)
        if padding > pool_size // 2:
            # torch max_pool2d / avg_pool2d: "pad should be at most half of
            # kernel size"; so every window holds a real element.
            raise ValueError(
                f"Expected `padding` <= pool_size // 2 = {pool_size // 2}. "
                f"Received: padding={padding}"
            )
        self.pool_size = pool_size
        self.strides = strides
        self.padding = padding

    def _out_size(self, size):
        return (size + 2 * self.padding - self.pool_size) // self.strides + 1

    def compute_output_shape(self, input_shape):
        out = list(input_shape)
        for axis in (1, 2):
            if out[axis] is not None:
                out[axis] = self._out_size(out[axis])
        return tuple(out)

    def _window(self):
        k, s = self.pool_size, self.strides
        return [1, k, k, 1], [1, s, s, 1]

    def _same_is_pytorch(self, size):
        """Whether TF 'SAME' windows on `size` are PyTorch's windows.

        TF pads `total // 2` before and the rest after, to `ceil(size / s)`
        outputs; PyTorch pads `padding` before, to `_out_size` outputs.
        (The padding never wins a max and never counts in TF's average.)
        """
        k, s, p = self.pool_size, self.strides, self.padding
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        return out == self._out_size(size) and total // 2 == p

    def _tf_padding(self, x, same_allowed):
        """The TF pooling padding giving PyTorch's windows on `x`.

        Returns:
            `("SAME", None)`, or `("VALID", pads)` with the explicit padding
            `((top, bottom), (left, right))` to apply first (None: none);
            `padding` before, and after only as much as the last window
            needs.
        """
        k, s, p = self.pool_size, self.strides, self.padding
        if p == 0:
            return "VALID", None
        sizes = (x.shape[1], x.shape[2])
        if None in sizes:
            return "VALID", ((p, p), (p, p))
        if same_allowed and all(self._same_is_pytorch(n) for n in sizes):
            return "SAME", None
        pads = tuple(
            (p, max((self._out_size(n) - 1) * s + k - n - p, 0)) for n in sizes
        )
        return "VALID", pads


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class MaxPool2D(_Pool2D):
    """Max pooling that gathers the window maxima (exact second derivatives).

    Same output as `torch.nn.MaxPool2d(pool_size, strides, padding)`
    (padding never selected, floor mode). `tf.nn.max_pool_with_argmax`
    finds each window's maximum (first in row-major order on ties) and the
    output gathers those elements from the input, so derivatives of every
    order are those of a gather (a scatter-add, then a gather again): exact
    in graph mode, unlike `tf.nn.max_pool2d`, whose second derivative
    (MaxPoolGradGrad) is wrong inside `tf.function` (design.md). Under XLA
    (`jit_compile`), which has no arg-max pooling, the maximum is taken over
    shifted strided slices instead (columns, then rows: same tie order).

    Reference: DARTS `nn.MaxPool2d(3, stride=stride, padding=1)`
    (quark0/darts, operations.py).

    Args:
        pool_size: Window height and width.
        strides: Step of the window in height and width.
        padding: Symmetric padding on each side (at most `pool_size // 2`).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        if _in_xla_context():
            return self._max_of_slices(x)
        padding, pads = self._tf_padding(x, same_allowed=True)
        if pads is not None:
            x = pad_hw(x, pads, constant=x.dtype.min)
        ksize, strides = self._window()
        _, argmax = tf.raw_ops.MaxPoolWithArgmax(
            input=x,
            ksize=ksize,
            strides=strides,
            padding=padding,
            Targmax=tf.int64,
            include_batch_in_index=True,
        )
        flat = tf.reshape(x, graph_constant((-1,), tf.int32))
        return tf.gather(flat, argmax, axis=graph_constant(0, tf.int32))

    def _max_of_slices(self, x):
        k, s = self.pool_size, self.strides
        x = pad_hw(x, self.padding, constant=x.dtype.min)
        for axis in (2, 1):  # first row-major maximum wins ties
            size = x.shape[axis]
            if size is None:
                size = tf.shape(x)[axis]
            span = ((size - k) // s) * s + 1
            outputs = None
            for offset in range(k):
                index = [slice(None)] * 4
                index[axis] = slice(offset, offset + span, s)
                view = x[tuple(index)]
                outputs = view if outputs is None else tf.maximum(outputs, view)
            x = outputs
        return x


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class AvgPool2D(_Pool2D):
    """Average pooling with PyTorch's explicit symmetric zero padding.

    Same output as `torch.nn.AvgPool2d(pool_size, strides, padding,
    count_include_pad=...)` (floor mode): with `count_include_pad=False` each
    window sum is divided by the number of its non-padding elements. One
    `tf.nn.avg_pool2d` ('SAME' where TF's windows are PyTorch's, which
    then also excludes the padding from the divisor; otherwise 'VALID' on
    the zero-padded input, times a constant map `k * k / count`). Average
    pooling is linear, so its derivatives of every order are exact.

    Reference: DARTS `nn.AvgPool2d(3, stride=stride, padding=1,
    count_include_pad=False)` (quark0/darts, operations.py).

    Args:
        pool_size: Window height and width.
        strides: Step of the window in height and width.
        padding: Symmetric zero padding on each side (<= `pool_size // 2`).
        count_include_pad: Whether padding zeros count in the divisor.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = _Pool2D._config_keys + ("count_include_pad",)

    def __init__(
        self,
        pool_size=3,
        strides=1,
        padding=1,
        count_include_pad=False,
        **kwargs,
    ):
        super().__init__(pool_size, strides, padding, **kwargs)
        check_bool("count_include_pad", count_include_pad)
        self.count_include_pad = count_include_pad

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        exclude_pad = not self.count_include_pad and self.padding > 0
        padding, pads = self._tf_padding(x, same_allowed=exclude_pad)
        ksize, strides = self._window()
        if padding == "SAME":
            return tf.nn.avg_pool2d(x, ksize, strides, "SAME")
        padded = x if pads is None else pad_hw(x, pads)
        outputs = tf.nn.avg_pool2d(padded, ksize, strides, "VALID")
        if not exclude_pad:
            return outputs
        sizes = (x.shape[1], x.shape[2])
        if None in sizes:  # k * k / count from a pooled map of ones
            ones = pad_hw(tf.ones_like(x[:1, :, :, :1]), pads)
            return outputs / tf.nn.avg_pool2d(ones, ksize, strides, "VALID")
        key = ("avg_pool_scale", x.dtype.name, sizes, pads) + (
            self.pool_size,
            self.strides,
        )
        return outputs * _graph_cached(
            key, lambda: tf.constant(self._scale_map(sizes, pads), x.dtype)
        )

    def _scale_map(self, sizes, pads):
        """`k * k / count` per output (count: real elements per window)."""
        k, s = self.pool_size, self.strides
        counts = []
        for size, (before, _) in zip(sizes, pads, strict=True):
            start = np.arange(self._out_size(size)) * s - before
            counts.append(np.minimum(start + k, size) - np.maximum(start, 0))
        scale = float(k * k) / np.outer(counts[0], counts[1])
        return scale[None, :, :, None]


def _depthwise(x, kernel, strides, padding):
    """Undilated depthwise convolution with symmetric zero padding.

    The padding is written the way oneDNN runs fastest: 'SAME' where it
    equals PyTorch's (stride 1, ``2 padding = k - 1``), else `tf.pad` and
    'VALID'. The op's own EXPLICIT padding is correct too, but its
    input and filter gradients fall back to TensorFlow's generic CPU kernels
    (~2x slower, and run three times per conv in the amended step's double
    backward; benchmarks/s1_cpu.md section 6).
    """
    p = padding
    if p and strides == 1 and 2 * p == kernel.shape[0] - 1:
        padding_mode = "SAME"
    else:
        x = pad_hw(x, p)
        padding_mode = "VALID"
    return tf.raw_ops.DepthwiseConv2dNative(
        input=x,
        filter=kernel,
        strides=[1, strides, strides, 1],
        padding=padding_mode,
    )


class _Conv(ConfigLayer):
    """Shared arguments, padding, striding and bias of the convolutions."""

    _config_keys = (
        "kernel_size",
        "strides",
        "padding",
        "dilation",
        "use_bias",
    )

    def __init__(
        self,
        kernel_size,
        strides=1,
        padding=0,
        dilation=1,
        use_bias=False,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("kernel_size", kernel_size)
        check_int("strides", strides)
        check_int("padding", padding, minimum=0)
        check_int("dilation", dilation)
        check_bool("use_bias", use_bias)
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.dilation = dilation
        self.use_bias = use_bias
        if kernel_initializer is None:
            kernel_initializer = self._default_initializer()
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _default_initializer(self):
        return pytorch_conv_initializer()

    def _add_weights(self, kernel_shape, fan_in, channels):
        self.kernel = self.add_weight(
            shape=kernel_shape,
            name="kernel",
            initializer=self.kernel_initializer,
        )
        if self.use_bias:  # torch.nn.Conv2d bias: uniform, 1 / sqrt(fan_in)
            bound = 1.0 / fan_in**0.5
            self.bias = self.add_weight(
                shape=(channels,),
                name="bias",
                initializer=keras.initializers.RandomUniform(-bound, bound),
            )

    def call(self, inputs):
        dtype = self.compute_dtype
        x = tf.cast(inputs, dtype)
        outputs = self._convolve(x, tf.cast(self.kernel, dtype))
        if self.use_bias:
            outputs = outputs + tf.cast(self.bias, dtype)
        return outputs

    def _dilated(self, x, kernel, convolve):
        """Pads, convolves at stride 1 with dilation, subsamples.

        TF's convolutions reject (or, depthwise, silently mis-shape)
        dilation with stride; the strided output is every s-th element of
        the stride-1 output. `convolve(x, kernel)` is the 'VALID' dilated
        convolution.
        """
        outputs = convolve(pad_hw(x, self.padding), kernel)
        if self.strides > 1:
            outputs = subsample_hw(outputs, self.strides)
        return outputs

    def _out_size(self, size):
        if size is None:
            return None
        span = self.dilation * (self.kernel_size - 1)
        return (size + 2 * self.padding - span - 1) // self.strides + 1

    def get_config(self):
        config = super().get_config()
        config["kernel_initializer"] = keras.initializers.serialize(
            self.kernel_initializer
        )
        return config


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class Conv2D(_Conv):
    """2D convolution with PyTorch-style explicit symmetric padding.

    Same output as `torch.nn.Conv2d(c_in, filters, kernel_size, strides,
    padding, dilation, bias=use_bias)` on NHWC data: the input is zero padded
    by `padding` on all four sides (the op's explicit padding), so outputs
    align with PyTorch at stride 2 (TF 'SAME' pads bottom/right only).
    Output size: `(size + 2 * padding - dilation * (kernel_size - 1) - 1)
    // strides + 1`. Kernel shape `(k, k, c_in, filters)`.

    Reference: DARTS `ReLUConvBN`, `FactorizedReduce` (quark0/darts).

    Args:
        filters: Output channels; `None` means as many as the input has
            (resolved in `build`).
        kernel_size: Kernel height and width.
        strides: Step in height and width.
        padding: Symmetric zero padding on each side.
        dilation: Dilation rate in height and width.
        use_bias: Whether to add a bias (DARTS convolutions have none).
        kernel_initializer: Kernel initializer; defaults to PyTorch's
            (uniform with bound `1 / sqrt(fan_in)`).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("filters",) + _Conv._config_keys

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding=0,
        dilation=1,
        use_bias=False,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(
            kernel_size,
            strides=strides,
            padding=padding,
            dilation=dilation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            **kwargs,
        )
        if filters is not None:
            check_int("filters", filters)
        self.filters = filters

    def build(self, input_shape):
        c_in, k = input_shape[-1], self.kernel_size
        if c_in is None:
            raise ValueError(
                f"Expected a known channel count. Received: {input_shape}"
            )
        c_out = c_in if self.filters is None else self.filters
        self._add_weights((k, k, c_in, c_out), c_in * k * k, c_out)

    def _convolve(self, x, kernel):
        p = self.padding
        if self.dilation == 1:  # PyTorch padding inside the op
            padding = [[0, 0], [p, p], [p, p], [0, 0]] if p else "VALID"
            return tf.nn.conv2d(x, kernel, self.strides, padding)

        def convolve(x, kernel):
            # tf.nn.convolution realises dilation by space-to-batch; the raw
            # Conv2D op's input gradient rejects dilation > 1 on CPU.
            return tf.nn.convolution(
                x, kernel, padding="VALID", dilations=self.dilation
            )

        return self._dilated(x, kernel, convolve)

    def compute_output_shape(self, input_shape):
        c_out = input_shape[-1] if self.filters is None else self.filters
        h, w = (self._out_size(s) for s in input_shape[1:3])
        return (input_shape[0], h, w, c_out)


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class DepthwiseConv2D(_Conv):
    """Depthwise 2D convolution (multiplier 1) with PyTorch-style padding.

    Same output as `torch.nn.Conv2d(c, c, kernel_size, strides, padding,
    dilation, groups=c, bias=use_bias)` on NHWC data (explicit symmetric zero
    padding, inside the op). TF's depthwise op has no dilation on CPU: a
    dilated convolution runs undilated on a space-to-batch view (stride 1)
    or on `x[:, ::d, ::d]` (stride == dilation); otherwise it is computed
    at stride 1 by `tf.nn.depthwise_conv2d` and subsampled. Kernel shape
    `(k, k, c, 1)`.

    Reference: DARTS `SepConv`, `DilConv` (quark0/darts, operations.py).

    Args:
        kernel_size: Kernel height and width.
        strides: Step in height and width.
        padding: Symmetric zero padding on each side.
        dilation: Dilation rate in height and width.
        use_bias: Whether to add a bias (DARTS convolutions have none).
        kernel_initializer: Kernel initializer; defaults to PyTorch's
            (uniform with bound `1 / kernel_size`, as fan_in = k * k).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    def _default_initializer(self):
        bound = 1.0 / self.kernel_size  # 1 / sqrt(fan_in), fan_in = k * k
        return keras.initializers.RandomUniform(-bound, bound)

    def build(self, input_shape):
        c_in, k = input_shape[-1], self.kernel_size
        if c_in is None:
            raise ValueError(
                f"Expected a known channel count. Received: {input_shape}"
            )
        self._add_weights((k, k, c_in, 1), k * k, c_in)

    def _convolve(self, x, kernel):
        s, p, d = self.strides, self.padding, self.dilation
        if d == 1:
            return _depthwise(x, kernel, s, p)
        if s == d and p % d == 0:
            # Output (i, j) is the stride-1 output at (d i, d j), which
            # only sees padded pixels (d m, d n): x[:, ::d, ::d] padded by
            # p / d, undilated.
            return _depthwise(subsample_hw(x, d), kernel, 1, p // d)
        sizes = (x.shape[1], x.shape[2])
        if s == 1 and None not in sizes:
            # Space-to-batch by the dilation (zero padding included), an
            # undilated convolution, batch-to-space (cropping the excess).
            extra = [(-(n + 2 * p)) % d for n in sizes]
            block = graph_constant((d, d), tf.int32)
            pads = tuple((p, p + e) for e in extra)
            crops = tuple((0, e) for e in extra)
            x = tf.space_to_batch_nd(x, block, graph_constant(pads, tf.int32))
            outputs = _depthwise(x, kernel, 1, 0)
            return tf.batch_to_space(
                outputs, block, graph_constant(crops, tf.int32)
            )

        def convolve(x, kernel):
            return tf.nn.depthwise_conv2d(
                x, kernel, (1, 1, 1, 1), "VALID", dilations=(d, d)
            )

        return self._dilated(x, kernel, convolve)

    def compute_output_shape(self, input_shape):
        h, w = (self._out_size(s) for s in input_shape[1:3])
        return (input_shape[0], h, w, input_shape[-1])
