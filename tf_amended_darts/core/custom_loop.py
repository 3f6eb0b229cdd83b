"""The training loop for `tf.distribute.MultiWorkerMirroredStrategy`.

Keras 3's ``fit`` fails under that strategy (keras-team/keras#20585), so
`custom_fit` runs ``strategy.run(model.train_step)`` over the distributed
dataset, with the callbacks, logs and ``initial_epoch`` semantics of
``fit`` that the launchers use; `custom_evaluate` likewise.
"""

import weakref

import keras
import tensorflow as tf

from tf_amended_darts.core import lean_function

# model -> {method name: its traced step}: a search calls `custom_fit` once
# per epoch, and tracing the supernet's bi-level step is the slow part.
_STEP_FUNCTIONS = weakref.WeakKeyDictionary()


def _step_function(model, method):
    steps = _STEP_FUNCTIONS.setdefault(model, {})
    if method not in steps:
        strategy = model.distribute_strategy
        owner = weakref.ref(model)  # the cache must not keep it alive

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

        # Traced once per signature; the graph is freed once the runtime
        # holds the step (lean_function).
        steps[method] = lean_function.LeanFunction(step)
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
