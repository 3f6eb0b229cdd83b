"""A traced step that keeps what the runtime runs, not the graph it came from.

`tf.function` keeps every traced `FuncGraph` for as long as the function
lives: the Python objects of each op and tensor and the C graph under
them, several KB per node. The runtime needs none of it to run the step,
only the `FunctionDef` registered in the eager context. On the S1 search
steps the graph is the largest single cost after the activations (268k
nodes for the amended exact step; benchmarks/s1_cpu.md, section 9).

`LeanFunction(fn)` traces ``fn`` like ``tf.function(fn)`` and, once the
trace is registered, keeps only a graph-free handle on the runtime
function (a TF `AtomicFunction` with no cached graph) and the captured
inputs (the variables' handles). The graph is freed right away, before
the first step runs, and its memory goes back to the system (glibc's
``malloc_trim``), so that it serves the activations instead.

Two global references would otherwise keep every traced graph alive
however it is held (both found by walking the referrers of a freed step):
`nn.graph_constants` (fixed there) and TensorFlow's gradient registry,
where each graph-mode `tf.custom_gradient` (Keras' optimizer all-reduce
among them) registers a ``CustomGradient-<uid>`` function whose closure
holds the traced tensors. `LeanFunction` removes the entries registered
by its own trace when it drops the graph; nothing can differentiate
through a dropped graph, so nothing needs them again. (A trace running on
another thread at the same moment could lose its entries too; the jobs
trace on one thread: `tf.distribute` replica threads belong to the trace.)

What it gives up, compared with `tf.function`:

* No gradients through a call (the step is the outermost function: it
  computes its own gradients inside).
* A call with inputs of another structure, dtype or shape traces again
  (exact shapes, no ``reduce_retracing``); `trace_count` says how often.
* An error raised while the step runs cannot name the Python line of the
  failing op until TensorFlow rebuilds a graph from the `FunctionDef`
  (it does so by itself when it interpolates the error).

It uses TensorFlow's private ``AtomicFunction`` and ``ConcreteFunction``
internals, as they are in TensorFlow 2.21 (the version setup.py pins;
tests/core/test_lean_function.py fails if they change); where they are
missing, `LeanFunction` says so with a warning and keeps the `tf.function`
and its graph (``lean`` then reads False), so a job still runs, with the
old memory.
"""

import ctypes
import ctypes.util
import functools
import gc
import threading
import time
import warnings

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

try:  # Private: the runtime-function handle of a traced tf.function.
    from tensorflow.python.eager.polymorphic_function import (
        atomic_function as _atomic_function,
    )
except ImportError:  # pragma: no cover - layout of a future TF
    _atomic_function = None

# The prefix of `tf.custom_gradient`'s graph-mode registry entries.
_CUSTOM_GRADIENT_PREFIX = "CustomGradient-"
_TRACE_LOCK = threading.Lock()


def _gradient_registry():
    """TensorFlow's {op type: gradient function} dict, or None."""
    registry = getattr(tf_ops, "_gradient_registry", None)
    entries = getattr(registry, "_registry", None)
    return entries if isinstance(entries, dict) else None


def _custom_gradient_names():
    entries = _gradient_registry()
    if entries is None:
        return set()
    return {k for k in list(entries) if k.startswith(_CUSTOM_GRADIENT_PREFIX)}


def _malloc_trim():
    """Returns the heap's free pages to the system (glibc only); whether
    it could. A freed graph leaves its memory as free chunks amid the
    heap, which the large tensors of a step (above the mmap threshold the
    jobs set, 64 KiB) never reuse; without this the graph's memory stays
    resident through the step's peak."""
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _libc_malloc_trim():
    """glibc's ``malloc_trim``, or None (looked up once: `find_library`
    runs ``ldconfig``)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


def _graph_free(atomic):
    """A handle on ``atomic``'s runtime function (and its children's)
    that holds no graph. The runtime function stays registered as long
    as any handle on it lives (TF counts them by name)."""
    return _atomic_function.AtomicFunction(
        atomic.name,
        atomic._bound_context,
        atomic.function_type,
        [_graph_free(child) for child in atomic.children],
        atomic.call_options,
        cached_graph=None,
    )


def _supported(concrete):
    return (
        _atomic_function is not None
        and hasattr(concrete, "_inference_function")
        and hasattr(concrete, "_captured_inputs")
        and hasattr(_atomic_function.AtomicFunction, "call_with_captures")
    )


def _key(args):
    """What decides whether a call can reuse a trace: the structure of
    the arguments, each tensor's type spec and every other leaf's value."""
    leaves = tf.nest.flatten(args)
    specs = tuple(
        tf.type_spec_from_value(leaf)
        if isinstance(leaf, (tf.Tensor, tf.Variable))
        or hasattr(leaf, "_type_spec")
        else (type(leaf), leaf)
        for leaf in leaves
    )
    structure = repr(tf.nest.map_structure(lambda _: None, args))
    return structure, specs


def function_nodes(graph):
    """Nodes of the functions a traced graph calls (its library, nested
    calls included): a step with recomputed cells keeps their nodes
    there, not in its own graph."""
    total = 0
    for function in getattr(graph, "_functions", {}).values():
        cached = getattr(function, "_cached_graph", None)
        if cached is not None:
            total += len(cached.get_operations())
        else:
            total += len(function.definition.node_def)
    return total


class _Trace:
    """One traced signature: the graph-free runtime function, the
    captured inputs it is called with and what the trace measured."""

    def __init__(self, function, concrete):
        self.graph_nodes = len(concrete.graph.get_operations())
        self.function_nodes = function_nodes(concrete.graph)
        if _supported(concrete):
            self.runtime = _graph_free(concrete._inference_function)
            # Resolved per call, as ConcreteFunction does (deferred
            # captures are callables).
            self.captures = list(concrete._captured_inputs)
            self.concrete = None
        else:  # keep TensorFlow's own objects, graph included
            self.runtime = None
            self.captures = None
            self.concrete = concrete
            self.function = function  # the concrete function's owner

    def __call__(self, args):
        if self.runtime is None:
            return self.concrete(*args)
        captures = tf.nest.flatten(
            [c() if callable(c) else c for c in self.captures],
            expand_composites=True,
        )
        return self.runtime.call_with_captures(args, {}, captures)


class LeanFunction:
    """``tf.function(python_function)`` without its graphs after tracing.

    Args:
        python_function: the step; called with positional arguments only.
        jit_compile: passed to `tf.function`.
        autograph: passed to `tf.function`.
        announce: None, or a callable taking one line of text, called
            before and after each trace (a second-order S1 step traces for
            minutes before its first step: the line after says how many
            graph nodes in how many seconds).
        name: what the announcements call the function.

    Attributes:
        trace_count: how many signatures were traced.
        lean: False where this TensorFlow lacks the internals (then the
            traced graphs are kept, as by `tf.function`).
        last_trace: {"graph_nodes", "function_nodes", "trace_s",
            "custom_gradients_freed"} of the latest trace (the step's own
            nodes, and those of the functions it calls), or None before
            the first.
    """

    def __init__(self, python_function, jit_compile=None, autograph=True,
                 announce=None, name="the step"):
        if not callable(python_function):
            raise TypeError(
                "LeanFunction: python_function must be callable, got "
                f"{python_function!r}"
            )
        self._python_function = python_function
        self._jit_compile = jit_compile
        self._autograph = autograph
        self._announce = announce
        self._name = name
        self._traces = {}
        self.trace_count = 0
        self.lean = True
        self.last_trace = None

    def trace(self, *args):
        """Traces for ``args`` unless a trace for their signature exists;
        returns that trace's record (see ``last_trace``)."""
        return self._trace_for(args).record

    def __call__(self, *args):
        return self._trace_for(args)(args)

    def _trace_for(self, args):
        key = _key(args)
        trace = self._traces.get(key)
        if trace is None:
            trace = self._traces[key] = self._new_trace(args)
        return trace

    def _new_trace(self, args):
        if self._announce is not None:
            self._announce(
                f"Tracing {self._name} (trace {self.trace_count + 1})..."
            )
        t0 = time.perf_counter()
        # A fresh tf.function per signature: dropping it (and the
        # concrete function) is what lets the graph go.
        function = tf.function(
            self._python_function,
            jit_compile=self._jit_compile,
            autograph=self._autograph,
        )
        with _TRACE_LOCK:
            before = _custom_gradient_names()
            concrete = function.get_concrete_function(*args)
            registered = _custom_gradient_names() - before
        trace = _Trace(function, concrete)
        del concrete, function  # the trace holds them only as a fallback
        freed = 0
        if trace.runtime is None:
            if self.lean:
                warnings.warn(
                    "LeanFunction: TensorFlow "
                    f"{tf.__version__} lacks the internals it uses "
                    "(AtomicFunction, ConcreteFunction._inference_function); "
                    "the traced graph is kept, as by tf.function.",
                    stacklevel=3,
                )
            self.lean = False
        else:
            entries = _gradient_registry()
            for name in registered:
                entries.pop(name, None)
            freed = len(registered)
            gc.collect()  # the graph's Python objects hold reference cycles
            _malloc_trim()
        self.trace_count += 1
        trace.record = self.last_trace = {
            "graph_nodes": trace.graph_nodes,
            "function_nodes": trace.function_nodes,
            "trace_s": time.perf_counter() - t0,
            "custom_gradients_freed": freed,
        }
        if self._announce is not None:
            self._announce(
                f"Traced {self._name}: {trace.graph_nodes:,} graph nodes in "
                f"{trace.record['trace_s']:.0f} s; its first call "
                "instantiates and runs it."
            )
        return trace
