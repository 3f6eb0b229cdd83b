"""Process-wide settings of how TensorFlow builds and runs a job's graphs.

One place for what the search, the language search, re-training and the
benchmarks set before their first `tf.function` is traced:

* ``grappler``: TensorFlow's graph optimiser (meta optimiser). Off by
  default in every job: on the S1 supernet it adds minutes to the first
  step and no speed to later ones (benchmarks/s1_cpu.md, section 6).
* ``op_tracebacks``: whether every graph op records the Python stack that
  created it. TensorFlow does by default, and keeps a copy of each stack
  in the function's runtime: on the S1 search step that cost 1.1 GB of
  the first-order step's 3.7 GB at batch 2 and more for the second-order
  steps, ~11 KB per graph node (benchmarks/s1_cpu.md, section 7). Off by
  default here; on, an error raised while the graph runs names the Python
  line that created the failing op ("defined at ..."), which is worth the
  memory while debugging.
* ``deterministic``: `tf.config.experimental.enable_op_determinism`.

The stack traces are switched off through TensorFlow's private
``ops._create_c_op(..., extract_traceback=...)`` (TF 2.15-2.21 have it);
where a TensorFlow version lacks it, `set_op_tracebacks` leaves TensorFlow
as it is and says so with a warning instead of failing the job.
"""

import functools
import inspect
import warnings

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

# The help of every job's --op_tracebacks flag.
OP_TRACEBACKS_HELP = (
    "Record each graph op's Python stack trace (TensorFlow's default): an "
    "error raised while a graph runs then names the line that created the "
    "failing op. Off by default: the traces cost ~11 KB of memory per "
    "graph node (1.1 GB of the S1 first-order search step; README, "
    "Benchmarks)."
)

# TensorFlow's own op constructor, before any change of ours.
_CREATE_C_OP = tf_ops._create_c_op


def _supports_switch():
    try:
        params = inspect.signature(_CREATE_C_OP).parameters
    except (TypeError, ValueError):
        return False
    return "extract_traceback" in params


def set_op_tracebacks(enabled: bool) -> bool:
    """Whether graph ops created from now on record their Python stack.

    Returns whether the setting took effect (False, with a warning, where
    this TensorFlow has no switch for it; then ops record stacks as usual).
    """
    if enabled:
        tf_ops._create_c_op = _CREATE_C_OP
        return True
    if not _supports_switch():
        warnings.warn(
            "--op_tracebacks=False has no effect on TensorFlow "
            f"{tf.__version__}: its op constructor has no extract_traceback "
            "argument; graph ops keep their Python stack traces.",
            stacklevel=2,
        )
        return False
    tf_ops._create_c_op = functools.partial(
        _CREATE_C_OP, extract_traceback=False
    )
    return True


def op_tracebacks_enabled() -> bool:
    """Whether graph ops currently record their Python stack."""
    return tf_ops._create_c_op is _CREATE_C_OP


def configure(grappler=False, op_tracebacks=False, deterministic=False):
    """Applies the three settings of the module docstring."""
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": not grappler}
    )
    set_op_tracebacks(op_tracebacks)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
