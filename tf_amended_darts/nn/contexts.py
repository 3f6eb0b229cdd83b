"""Context switches that change how the layers inside them run.

* `shared_relu()`: a mixed edge computes ``relu(x)`` once for all its
  candidates;
* `frozen_statistics()`: training-mode batch norms make no moving-statistic
  updates (functional passes whose updates are discarded anyway);
* `synchronized_statistics()`: training-mode batch norms normalise with the
  statistics of the global batch under a multi-replica `tf.distribute`
  strategy (`cross_replica_sum`, differentiable to any order).

Each switch is read when a layer is called, i.e. when a `tf.function`
traces.
"""

import contextlib
import contextvars
import threading
import weakref

import tensorflow as tf

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


def sync_replica_context(synchronized):
    """The replica context to all-reduce batch statistics in, or None."""
    if synchronized is None:
        synchronized = _SYNCHRONIZED.get() > 0
    if not synchronized:
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context
