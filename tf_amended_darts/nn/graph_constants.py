"""Constants shared by every op of the graph being traced.

Tracing costs Python time per graph node, and the bi-level step traces the
supernet forward, backward and double-backward, so every layer takes its
constants (paddings, shapes, scalars) from `graph_constant`, one node per
graph instead of one per use.
"""

import threading

import tensorflow as tf

try:  # Private, used only to detect an XLA (jit_compile) trace.
    from tensorflow.python.ops.control_flow_util import (
        GraphOrParentsInXlaContext as _graph_in_xla_context,
    )
except ImportError:  # pragma: no cover - layout of a future TF
    _graph_in_xla_context = None


# The cache ({key: tensor}) is an attribute of its graph, so that it dies
# with the graph. (A module-level `weakref.WeakKeyDictionary` keyed by the
# graph never let go: its values, tensors of the graph, hold the graph.)
_CACHE_ATTRIBUTE = "_tf_amended_darts_constants"
_GRAPH_CONSTANTS_LOCK = threading.Lock()


def graph_cached(key, make):
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
        cache = getattr(graph, _CACHE_ATTRIBUTE, None)
        if cache is None:
            cache = {}
            setattr(graph, _CACHE_ATTRIBUTE, cache)
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
    return graph_cached(
        ("constant", dtype.name, value), lambda: tf.constant(value, dtype)
    )


def in_xla_context():
    """Whether the graph being built is compiled by XLA (`jit_compile`)."""
    if _graph_in_xla_context is None or tf.executing_eagerly():
        return False
    return _graph_in_xla_context(tf.compat.v1.get_default_graph())
