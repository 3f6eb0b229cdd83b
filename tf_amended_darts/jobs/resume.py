"""Resuming an epoch loop at any step: restore, skip, checkpoint, stop.

`Resumable` is the hook an epoch loop (search stages, re-training) needs
to survive kills, preemption and damaged files::

    run = resume.Resumable(model, checkpoint_dir, steps_per_epoch=steps,
                           keep=config.keep_checkpoints,
                           every_steps=config.checkpoint_every_steps)
    for epoch in range(run.position.epoch, epochs):
        data, epoch_steps = run.epoch_data(epoch, data_of(epoch))
        model.fit(data, steps_per_epoch=epoch_steps, initial_epoch=epoch,
                  epochs=epoch + 1, callbacks=[...] + run.callbacks())
        run.end_epoch(epoch + 1)

* Construction restores the newest readable checkpoint
  (`distribute.restore`; damaged files are set aside there).
* `epoch_data` drops the batches the restored epoch already consumed from
  that epoch's fresh pipeline (built from ``(seed, epoch)``, so the rest
  are the batches an uninterrupted run sees), and returns the number of
  steps left.
* `callbacks` gives the `StepCheckpoint` callback: at the start of the
  resumed epoch it puts back the metric states of the checkpoint (the
  loop has just reset them), so the epoch's logged means equal an
  uninterrupted run's; after every step it writes a step checkpoint every
  ``every_steps`` steps, and on SIGTERM / SIGINT (`preemption`) it writes
  one and raises `preemption.Preempted`.
* `end_epoch` writes the epoch checkpoint (the chief), then stops if a
  signal came during the epoch's last step or its end-of-epoch work.

Within an epoch a step checkpoint is not written after the last step: the
epoch checkpoint follows it at once.
"""

import math
import os

import keras

from tf_amended_darts.core import checkpoint, distribute
from tf_amended_darts.core.checkpoint import Position
from tf_amended_darts.jobs import preemption


def _preemption_for(strategy, directory):
    preemption.reclaim()  # after the strategy: see `preemption.reclaim`
    if not distribute.is_multi_worker(strategy):
        return preemption.LocalPreemption()
    return preemption.cluster_preemption(
        strategy, os.path.join(directory, ".preemption-handler")
    )


def _finite(logs):
    """Whether every numeric value of ``logs`` is finite."""
    for value in (logs or {}).values():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(number):
            return False
    return True


class StepCheckpoint(keras.callbacks.Callback):
    """The per-step half of `Resumable` (put it last among callbacks, so
    that a guard raising on a bad step stops before its checkpoint).

    Args:
        run: the `Resumable`.
    """

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_epoch_begin(self, epoch, logs=None):
        self.run.begin_epoch(int(epoch))

    def on_train_batch_end(self, batch, logs=None):
        self.run.after_step(logs)


class Resumable:
    """Restores a model's run position; checkpoints and stops an epoch loop.

    Args:
        model: a built, compiled Keras model (in its strategy's scope).
        directory: the checkpoint directory.
        steps_per_epoch: steps of a whole epoch.
        keep: epoch checkpoints, and step checkpoints, kept (>= 1).
        every_steps: write a step checkpoint every this many steps of an
            epoch (0: only on a signal).
        strategy: default: the model's.
    """

    def __init__(
        self,
        model,
        directory,
        *,
        steps_per_epoch,
        keep=2,
        every_steps=0,
        strategy=None,
    ):
        if every_steps < 0:
            raise ValueError(
                f"Invalid --checkpoint_every_steps={every_steps}. Accepted "
                "values: an integer >= 0 (0: only on SIGTERM / SIGINT)."
            )
        strategy = strategy or model.distribute_strategy
        self.model = model
        self.chief = distribute.is_chief(strategy)
        self.steps_per_epoch = int(steps_per_epoch)
        self.every_steps = int(every_steps)
        self.position, self.checkpointer = distribute.restore(
            model, directory, keep, strategy
        )
        if self.position.step >= self.steps_per_epoch:
            raise ValueError(
                f"The checkpoint at {self.position.describe()} in "
                f"{directory} lies past the end of an epoch of "
                f"{self.steps_per_epoch} steps: it comes from a run with "
                "other --steps_per_epoch / --batch_size. Rerun with the "
                "flags of that run, or use a new --model_dir."
            )
        self.preemption = _preemption_for(strategy, directory)
        self._epoch = self.position.epoch
        self._step = self.position.step
        self._saved = {}

    # -- the loop's side ----------------------------------------------------

    def epoch_data(self, epoch, dataset):
        """``(dataset, steps)`` of ``epoch``, without the consumed batches.

        Args:
            epoch: the 0-based epoch index.
            dataset: that epoch's fresh `tf.data.Dataset` of batches.
        """
        done = self.position.step if epoch == self.position.epoch else 0
        if not done:
            return dataset, self.steps_per_epoch
        return dataset.skip(done), self.steps_per_epoch - done

    def callbacks(self):
        """``[StepCheckpoint(self)]``: the per-step hook, to pass last."""
        return [StepCheckpoint(self)]

    def end_epoch(self, epoch_number):
        """Writes the checkpoint of the end of epoch ``epoch_number``
        (1-based; the chief), then stops if a signal came.

        Raises:
            preemption.Preempted: after SIGTERM / SIGINT.
            checkpoint.CheckpointSaveError: the save failed.
        """
        position = Position(int(epoch_number), 0)
        self._save(position)
        self._epoch, self._step = position
        self.preemption.check(lambda: self._message(position))

    # -- the callback's side ------------------------------------------------

    def begin_epoch(self, epoch):
        """Called at the start of every epoch (after the metrics reset)."""
        self._epoch = epoch
        self._step = 0
        if epoch == self.position.epoch and self.position.step:
            self._step = self.position.step
            self.checkpointer.restore_metrics()

    def after_step(self, logs=None):
        """Called after every training step, with the step's logs.

        A step whose logs hold a NaN or an infinity writes no checkpoint
        (the last one stays a good one; the loop's own guard reports it).
        """
        self._step += 1
        if self._step >= self.steps_per_epoch:
            return  # the epoch checkpoint comes next (`end_epoch`)
        if not _finite(logs):
            return
        position = Position(self._epoch, self._step)
        if self.every_steps and self._step % self.every_steps == 0:
            self._save(position)
        self.preemption.check(lambda: self._save(position))

    def _save(self, position):
        """Writes ``position``'s checkpoint once (chief); its message.

        Every worker reads the metric states (a collective operation under
        a multi-worker strategy); the chief writes.
        """
        if position not in self._saved:
            metrics = checkpoint.metric_values(self.model)
            if self.chief:
                self.checkpointer.save(position, metrics)
            self._saved = {position: True}
        return self._message(position)

    def _message(self, position):
        path = self.checkpointer.path(position)
        if not self.chief:
            path = f"{path} (by the chief worker)"
        return preemption.stop_message(position, path)

