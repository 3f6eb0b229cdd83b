"""The only place a `tf.distribute` strategy is built, and replica helpers.

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

Gradients (`apply_mean_gradients`): every ``train_step`` here computes a
per-replica loss (a mean over the replica's examples) and its gradients in
replica context. A Keras 3 optimiser's ``apply`` on the TensorFlow backend
all-reduces the gradients it gets with a SUM (``_all_reduce_sum_gradients``
in ``keras/src/backend/tensorflow/optimizer.py``), but it clips them
(``global_clipnorm``, ``clipnorm``, ``clipvalue``) BEFORE that all-reduce,
i.e. per replica. Dividing by the number of replicas thus gives the mean
gradient only without clipping; with clipping the update would depend on
the replica count. `apply_mean_gradients` therefore all-reduces the
gradients itself when the optimiser clips, clips the mean, and hands the
optimiser ``clipped / replicas`` (whose norm is below the threshold, so the
optimiser's own clip leaves it unchanged up to rounding, and whose sum is
the clipped mean).

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
import weakref

import keras
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
    gpus = tf.config.list_logical_devices("GPU")
    if num_gpus > len(gpus):
        raise ValueError(
            f"Invalid --num_gpus={num_gpus}: {len(gpus)} GPU(s) visible. "
            f"Accepted values: 0 to {len(gpus)}."
        )
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


def num_replicas():
    """Replicas in sync of the current replica context (1 outside one)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def cross_replica_mean(values):
    """The cross-replica mean of a list of tensors (replica context).

    The identity with one replica or outside a replica context.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return list(values)
    return list(context.all_reduce(tf.distribute.ReduceOp.MEAN, list(values)))


def _clips(optimizer):
    return any(
        getattr(optimizer, key, None)
        for key in ("global_clipnorm", "clipnorm", "clipvalue")
    )


def _clip(optimizer, grads):
    """Clips as ``optimizer`` would (Keras precedence), on global values."""
    if optimizer.clipnorm:
        return [tf.clip_by_norm(g, optimizer.clipnorm) for g in grads]
    if optimizer.global_clipnorm:
        return tf.clip_by_global_norm(grads, optimizer.global_clipnorm)[0]
    v = optimizer.clipvalue
    return [tf.clip_by_value(g, -v, v) for g in grads]


def apply_mean_gradients(optimizer, grads, variables):
    """Applies the cross-replica mean of per-replica gradients.

    In replica context, with equal per-replica batches: the update equals
    the one-replica update on the global batch, clipping included (see the
    module docstring). With one replica it is ``optimizer.apply``.

    A `keras.optimizers.LossScaleOptimizer` (mixed_float16) gets gradients
    of the scaled loss; its inner optimiser's clip must act on the unscaled
    cross-replica mean, so under several replicas the mean is unscaled,
    clipped and rescaled here. The wrapper then checks finiteness (every
    replica sees the same gradients, so all skip or apply a step together)
    and unscales; the inner optimiser's own per-replica clip leaves the
    already clipped values alone.

    Args:
        optimizer: a Keras optimiser built on ``variables`` (possibly a
            `LossScaleOptimizer`).
        grads: this replica's gradients of its mean loss (of the scaled
            loss for a `LossScaleOptimizer`; ``None``: zeros).
        variables: the variables, in the order of ``grads``.
    """
    variables = list(variables)
    grads = [
        tf.zeros_like(v) if g is None else g
        for g, v in zip(grads, variables, strict=True)
    ]
    replicas = num_replicas()
    if replicas > 1:
        clipper = optimizer
        scale = None
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            clipper = optimizer.inner_optimizer
            scale = tf.convert_to_tensor(optimizer.dynamic_scale)
        if _clips(clipper):
            grads = cross_replica_mean(grads)
            if scale is not None:
                grads = [g / scale for g in grads]
            grads = _clip(clipper, grads)
            if scale is not None:
                grads = [g * scale for g in grads]
        # The optimiser sums over the replicas.
        grads = [g / replicas for g in grads]
    optimizer.apply(grads, variables)


# --------------------------------------------------------------------------
# The custom training loop (multi-worker).


# model -> {method name: its traced step}: a search calls `custom_fit` once
# per epoch, and tracing the supernet's bi-level step is the slow part.
_STEP_FUNCTIONS = weakref.WeakKeyDictionary()


def _step_function(model, method):
    steps = _STEP_FUNCTIONS.setdefault(model, {})
    if method not in steps:
        strategy = model.distribute_strategy
        owner = weakref.ref(model)  # the cache must not keep it alive

        @tf.function
        def step(batch):
            model = owner()
            logs = strategy.run(getattr(model, method), args=(batch,))
            # Non-metric values (e.g. the learning rate): their mean over
            # the replicas, as `fit` logs them. Metrics: read here, in
            # cross-replica context, their (sync-on-read) variables sum
            # over all replicas of all workers: the global values.
            logs = {
                key: strategy.reduce("MEAN", value, axis=None)
                for key, value in logs.items()
            }
            logs.update(model.get_metrics_result())
            return logs

        steps[method] = step
    return steps[method]


def train_function(model):
    """The `tf.function` running one ``model.train_step`` on every replica.

    Args:
        model: a Keras model built in the scope of its strategy.

    Returns:
        ``step(distributed_batch) -> logs``: the model's metrics over all
        replicas (of all workers), and the replica mean of other values.
    """
    return _step_function(model, "train_step")


def test_function(model):
    """Like `train_function`, for ``model.test_step``."""
    return _step_function(model, "test_step")


def _data_sharded(dataset):
    """``dataset`` auto-sharded by elements (DATA) across workers.

    Every worker runs the whole (seeded, hence identical) pipeline and
    keeps its replicas' shares of each global batch, so a step sees the
    global batch a single process would. The default (AUTO) would shard by
    input file where it can, giving each worker other examples.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options)


def custom_fit(
    model,
    dataset,
    *,
    steps_per_epoch,
    epochs=1,
    initial_epoch=0,
    callbacks=None,
    verbose=0,
):
    """``model.fit`` for one finite dataset per epoch, as a custom loop.

    Each step is ``strategy.run(model.train_step, args=(batch,))`` inside a
    `tf.function`, ``strategy`` being the model's (the scope it was built
    in); the dataset is distributed with
    ``strategy.experimental_distribute_dataset`` (its batches are global).
    No Keras private API is patched: this is the loop Keras'
    MultiWorkerMirroredStrategy support lacks (keras-team/keras#20585), and
    it works under any strategy. The logs are the model's metrics over all
    replicas of all workers (`train_function`): every worker sees the same
    values, so callbacks that stop training (e.g. a NaN guard) stop every
    worker at the same step.

    Args:
        model: a compiled Keras model whose ``train_step`` returns a dict of
            logs (e.g. `engine.BilevelSearch`).
        dataset: a `tf.data.Dataset` of global batches, or a callable
            ``epoch -> dataset`` (a fresh pipeline per epoch).
        steps_per_epoch: steps per epoch (the dataset must have them).
        epochs: index of the last epoch + 1, as in ``fit``.
        initial_epoch: the first epoch's index.
        callbacks: Keras callbacks (epoch and batch hooks are called).
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.

    Returns:
        The `keras.callbacks.History`.
    """
    strategy = model.distribute_strategy
    step = train_function(model)
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(
        list(callbacks or []) + [history],
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=epochs,
        steps=steps_per_epoch,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        data = dataset(epoch) if callable(dataset) else dataset
        iterator = iter(
            strategy.experimental_distribute_dataset(_data_sharded(data))
        )
        logs = {}
        for index in range(steps_per_epoch):
            callback_list.on_train_batch_begin(index)
            logs = step(next(iterator))
            callback_list.on_train_batch_end(index, logs)
            if model.stop_training:
                break
        logs = {k: float(v) for k, v in logs.items()}
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return history


def custom_evaluate(model, dataset):
    """``model.evaluate`` as a custom loop over ``strategy.run(test_step)``.

    Runs through the whole (finite) dataset of global batches; a replica
    may get an empty last batch, so ``test_step``'s metrics must weigh
    examples, not batches.

    Args:
        model: a compiled Keras model whose ``test_step`` returns logs.
        dataset: a `tf.data.Dataset` of global batches.

    Returns:
        The final logs, as floats.
    """
    strategy = model.distribute_strategy
    step = test_function(model)
    model.reset_metrics()
    logs = {}
    for batch in strategy.experimental_distribute_dataset(
        _data_sharded(dataset)
    ):
        logs = step(batch)
    return {k: float(v) for k, v in logs.items()}
