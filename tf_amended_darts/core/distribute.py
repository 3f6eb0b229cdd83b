"""The only place a `tf.distribute` strategy is built.

Strategies (``--strategy``, `make_strategy`):

* ``default``: no distribution (TensorFlow's default strategy: one device,
  the first GPU if one is visible).
* ``mirrored``: `tf.distribute.MirroredStrategy`, one replica per visible
  GPU (``--num_gpus``: the first N; 0: all of them), or, without GPUs, one
  per logical CPU device (one, unless a test or a user has split the CPU
  with `tf.config.set_logical_device_configuration`).
* ``multi_worker``: `tf.distribute.MultiWorkerMirroredStrategy` over the
  processes that ``TF_CONFIG`` lists, each with all its visible GPUs (or its
  CPU). Keras 3's ``fit`` fails under it (keras-team/keras#20585), so the
  launchers train with `custom_fit`, a loop over ``strategy.run(train_step)``.

Batches: ``--batch_size`` is the GLOBAL batch; each step splits it evenly
over the replicas (`per_replica_batch_size` checks that it divides).

Replica-context helpers (`replicas`) and the multi-worker loop
(`custom_loop`) have modules of their own.

Launching N workers (``--strategy=multi_worker``): start the same command
once per worker, every worker with its own ``TF_CONFIG``, the same flags and
the same ``--model_dir`` on a shared filesystem (non-chief workers read the
checkpoints the chief writes, to resume). For two workers on one machine::

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345",
        "127.0.0.1:12346"]}, "task": {"type": "worker", "index": 0}}' \\
        python launchers/search.py --strategy=multi_worker \\
        --flagfile=flags/quickstart.cfg --model_dir=runs/mw &
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345",
        "127.0.0.1:12346"]}, "task": {"type": "worker", "index": 1}}' \\
        python launchers/search.py --strategy=multi_worker \\
        --flagfile=flags/quickstart.cfg --model_dir=runs/mw

Worker 0 (or the task of type ``chief``, if the cluster has one) is the
chief: only it writes artefacts and checkpoints (`is_chief`). Every worker
must create the strategy before any other TensorFlow operation, and all of
them run the same steps in lockstep: a worker that stops (or fails) makes
the others wait in their next collective operation.
"""

import json
import os

import numpy as np
import tensorflow as tf

from tf_amended_darts.core import checkpoint

STRATEGIES = ("default", "mirrored", "multi_worker")
TF_CONFIG = "TF_CONFIG"
# One strategy per configuration and process: two strategies over the same
# devices would number their collective operations from the same keys, and
# TensorFlow's collective executor would take the second one's for the
# first one's (a shape-mismatch error); a process can hold only one
# multi-worker strategy anyway.
_STRATEGIES = {}


# --------------------------------------------------------------------------
# Building a strategy.


def _check_num_gpus(num_gpus):
    if (
        not isinstance(num_gpus, (int, np.integer))
        or isinstance(num_gpus, bool)
        or num_gpus < 0
    ):
        raise ValueError(
            f"Invalid --num_gpus={num_gpus!r}. Accepted values: an integer "
            ">= 0 (0: all visible GPUs)."
        )


def validate(name, num_gpus=0):
    """Checks ``--strategy`` and ``--num_gpus``; errors name the flag.

    Args:
        name: one of `STRATEGIES`.
        num_gpus: GPUs per worker for ``mirrored`` (0: all visible).

    Raises:
        ValueError: naming the flag and the accepted values.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Invalid --strategy={name!r}. Accepted values: "
            f"{', '.join(STRATEGIES)}."
        )
    _check_num_gpus(num_gpus)
    if name == "default" and num_gpus > 1:
        raise ValueError(
            f"Invalid --num_gpus={num_gpus} for --strategy=default (one "
            "device). Accepted values: 0 or 1; use --strategy=mirrored for "
            "several GPUs."
        )
    if name == "multi_worker" and num_gpus:
        raise ValueError(
            f"Invalid --num_gpus={num_gpus} for --strategy=multi_worker. "
            "Accepted values: 0 (each worker uses all its visible GPUs; "
            "restrict them with CUDA_VISIBLE_DEVICES)."
        )


def parse_tf_config(environ=None):
    """The ``TF_CONFIG`` of this process, checked for multi-worker use.

    Args:
        environ: the environment (default `os.environ`).

    Returns:
        The parsed dict, with ``cluster`` and ``task``.

    Raises:
        ValueError: when ``TF_CONFIG`` is missing or invalid, saying what a
            valid one looks like.
    """
    environ = os.environ if environ is None else environ
    example = (
        'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host0:port", '
        '"host1:port"]}, "task": {"type": "worker", "index": 0}}\''
    )
    text = environ.get(TF_CONFIG)
    if not text:
        raise ValueError(
            "--strategy=multi_worker needs the TF_CONFIG environment "
            f"variable (the cluster and this task), {example}; see "
            "tf_amended_darts/core/distribute.py for launching N workers."
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"Invalid TF_CONFIG (not JSON: {err}); {example}."
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"Invalid TF_CONFIG: no `cluster` dict; {example}.")
    if not isinstance(task, dict) or "type" not in task:
        raise ValueError(
            f"Invalid TF_CONFIG: no `task` with a `type`; {example}."
        )
    kind, index = task["type"], task.get("index", 0)
    members = cluster.get(kind)
    if not isinstance(members, list) or not (
        isinstance(index, int) and 0 <= index < len(members)
    ):
        raise ValueError(
            f"Invalid TF_CONFIG: task {kind!r} index {index!r} is not in "
            f"the cluster {cluster}; {example}."
        )
    return config


def require_gpus(num_gpus, flag="--num_gpus"):
    """The visible logical GPUs, or a ValueError if fewer than asked for.

    The message names the flag, the GPUs TensorFlow sees, and the likely
    cause: a CPU-only TensorFlow build (``pip install -e ".[cpu]"``, the
    default) cannot see any GPU; ``pip install -e ".[gpu]"`` installs the
    CUDA build (setup.py).

    Args:
        num_gpus: how many GPUs the run needs.
        flag: the flag named in the message.

    Returns:
        The list of visible logical GPU devices.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if num_gpus > len(gpus):
        cuda = tf.test.is_built_with_cuda()
        build = (
            "TensorFlow is built with CUDA; check CUDA_VISIBLE_DEVICES and "
            "the driver (nvidia-smi)"
            if cuda
            else 'this TensorFlow is a CPU-only build: install the CUDA '
            'build with pip install -e ".[gpu]"'
        )
        raise ValueError(
            f"Invalid {flag}={num_gpus}: {len(gpus)} GPU(s) visible to "
            f"TensorFlow {tf.__version__} ({build}). Accepted values: 0 to "
            f"{len(gpus)}."
        )
    return gpus


def make_strategy(name="default", num_gpus=0):
    """Builds the `tf.distribute.Strategy` of ``--strategy``.

    Call it before any other TensorFlow work of the process (devices are
    fixed once TensorFlow initialises them; ``multi_worker`` must also come
    before any op runs). A second call with the same arguments returns the
    same strategy.

    Args:
        name: ``default``, ``mirrored`` or ``multi_worker``.
        num_gpus: for ``mirrored``, how many of the visible GPUs to use (0:
            all; CPU devices when there are none); 0 or 1 for ``default``;
            0 for ``multi_worker``.

    Returns:
        The strategy.

    Raises:
        ValueError: naming ``--strategy`` / ``--num_gpus`` for bad values,
            more GPUs than visible, or a missing / invalid ``TF_CONFIG``.
    """
    validate(name, num_gpus)
    if name == "multi_worker":
        # Before anything initialises TensorFlow's devices.
        parse_tf_config()
        if name not in _STRATEGIES:
            _STRATEGIES[name] = tf.distribute.MultiWorkerMirroredStrategy()
        return _STRATEGIES[name]
    if name == "default" and not num_gpus:
        return tf.distribute.get_strategy()
    gpus = require_gpus(num_gpus)
    if name == "default":
        return tf.distribute.get_strategy()
    if gpus:
        devices = [d.name for d in gpus[: num_gpus or len(gpus)]]
    else:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    key = (name, tuple(devices))
    if key not in _STRATEGIES:
        _STRATEGIES[key] = tf.distribute.MirroredStrategy(devices)
    return _STRATEGIES[key]


def is_multi_worker(strategy=None):
    """Whether ``strategy`` (default: the current one) spans processes."""
    strategy = strategy or tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def chief_task(task_type, task_id, cluster):
    """Whether the task ``(task_type, task_id)`` of ``cluster`` is the chief.

    The task of type ``chief``; or worker 0 when ``cluster`` (a dict of
    task type -> addresses) has no chief; a task without type (no
    cluster) is its own chief.
    """
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def is_chief(strategy=None):
    """Whether this process writes the run's files.

    True without a multi-worker strategy; under one, see `chief_task`.

    Args:
        strategy: default: the strategy of the current scope.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    return chief_task(
        resolver.task_type,
        resolver.task_id,
        resolver.cluster_spec().as_dict(),
    )


def per_replica_batch_size(global_batch, strategy=None):
    """``global_batch`` / replicas, checking that it divides.

    Args:
        global_batch: ``--batch_size``, the global batch of a step.
        strategy: default: the strategy of the current scope.

    Raises:
        ValueError: naming ``--batch_size`` and the replica count.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if global_batch < 1 or global_batch % replicas:
        raise ValueError(
            f"Invalid --batch_size={global_batch}: it is the global batch, "
            f"split evenly over {replicas} replicas. Accepted values: a "
            f"positive multiple of {replicas}."
        )
    return global_batch // replicas


def restore(model, directory, keep, strategy=None):
    """Restores ``model`` from its newest epoch checkpoint, if any.

    The chief owns ``directory`` (an `checkpoint.EpochCheckpointer`, which
    also clears interrupted saves); other workers only read the chief's
    newest checkpoint. Under a multi-worker strategy every worker must
    restore the same epoch (a shared ``--model_dir``), or the workers would
    run different numbers of steps and wait for each other forever.

    Args:
        model: the model to restore (built in the strategy's scope).
        directory: the checkpoint directory.
        keep: checkpoints the chief keeps.
        strategy: default: the strategy of the current scope.

    Returns:
        ``(epoch, checkpointer)``: the epoch restored (0 if none) and the
        chief's `EpochCheckpointer` (None on other workers).

    Raises:
        ValueError: when the workers restored different epochs.
    """
    strategy = strategy or tf.distribute.get_strategy()
    checkpointer = None
    if is_chief(strategy):
        checkpointer = checkpoint.EpochCheckpointer(model, directory, keep)
        epoch = checkpointer.restore()
    else:
        epoch = _restore_read_only(model, directory)
    if is_multi_worker(strategy):
        epochs = strategy.gather(
            strategy.run(lambda: tf.constant([epoch], tf.int64)), axis=0
        )
        epochs = sorted({int(e) for e in epochs.numpy()})
        if len(epochs) > 1:
            raise ValueError(
                f"The workers found checkpoints of different epochs {epochs}"
                f" in {directory}: every worker needs the same --model_dir, "
                "on a shared filesystem."
            )
    return epoch, checkpointer


def _restore_read_only(model, directory):
    if not os.path.isdir(directory):
        return 0
    epochs = sorted(
        int(match.group(1))
        for match in map(checkpoint.PATTERN.match, os.listdir(directory))
        if match
    )
    if not epochs:
        return 0
    model.load_weights(
        os.path.join(directory, f"ckpt-{epochs[-1]:04d}.weights.h5")
    )
    return epochs[-1]


# --------------------------------------------------------------------------
# Replica context helpers (call these inside `strategy.run`, i.e. in a
# `train_step`).


# --------------------------------------------------------------------------
# The custom training loop (multi-worker).


