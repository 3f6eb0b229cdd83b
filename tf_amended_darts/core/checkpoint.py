"""Atomic checkpoints of a Keras model at epoch ends and within epochs.

A checkpoint is one ``.weights.h5`` file named by its position in the run:

* ``ckpt-0003.weights.h5``: the end of epoch 3 (1-based);
* ``ckpt-0004-step-000120.weights.h5``: epoch 4, after its 120th step.

It holds what Keras' ``save_weights`` stores (the model's weights,
trainable and not: architecture parameters, batch-norm statistics; the
variables of the optimisers it tracks: iterations, hence the schedule
position, momentum buffers, moments), the seed-generator states the
models save themselves (``SearchNetwork.save_own_variables``,
``Retrainer.save_own_variables``: Keras weight files skip them), and, in a
``resume`` group added here, the position and the model's metric states
(``model.metrics``: Keras does not save them, and a run resumed in the
middle of an epoch needs them for that epoch's mean loss and accuracy).
The data position is the step in the file name: each epoch's pipeline is
built from ``(seed, epoch)``, so skipping that many batches of a fresh
pipeline gives the batches an uninterrupted run would see next.

Safety:

* **Atomic save.** Written to a temporary file, ``fsync``-ed, renamed into
  place: a ``kill -9`` at any moment leaves the new checkpoint complete or
  only the previous ones. A save that fails (disk full, permissions)
  removes its temporary file and raises `CheckpointSaveError`; the
  previous checkpoints are untouched.
* **Damage.** Every checkpoint carries a SHA-256 digest of its arrays. At
  restore, a file that cannot be opened or read, or whose digest differs
  (a truncated copy, a flipped bit), is renamed ``<name>.damaged`` with a
  one-line warning naming it, and the next older checkpoint is tried;
  nothing readable is deleted. A readable checkpoint that does not fit
  the model (another configuration) is an error (`CheckpointMismatchError`),
  not damage: it is never renamed.
* **Retention.** After a save, only the newest ``keep`` epoch checkpoints
  and the newest ``keep`` step checkpoints after the newest epoch
  checkpoint are kept (step checkpoints older than it are obsolete).
"""

import errno
import hashlib
import json
import os
import re
import sys
from typing import NamedTuple

import h5py
import numpy as np

SUFFIX = ".weights.h5"
PATTERN = re.compile(r"^ckpt-(\d+)(?:-step-(\d+))?\.weights\.h5$")
TMP_PREFIX = ".tmp-"
DAMAGED_SUFFIX = ".damaged"
RESUME_GROUP = "resume"  # position and metric states (not Keras')
DIGEST_ATTR = "tf_amended_darts_sha256"
FORMAT_ATTR = "tf_amended_darts_format"
FORMAT_VERSION = 1
# Errors h5py and Keras raise for unreadable files: OSError (truncated,
# not HDF5), KeyError (a missing object), RuntimeError / ValueError (a
# corrupt object header or dataset).
_READ_ERRORS = (OSError, KeyError, RuntimeError, ValueError)


class Position(NamedTuple):
    """Where a run stands: ``epoch`` epochs done, then ``step`` steps of
    the next epoch (0: at the end of epoch ``epoch``).

    Positions order as the run advances.
    """

    epoch: int = 0
    step: int = 0

    def describe(self):
        """``"the end of epoch 3"`` or ``"epoch 4, step 120"`` (1-based)."""
        if self.step:
            return f"epoch {self.epoch + 1}, step {self.step}"
        if self.epoch:
            return f"the end of epoch {self.epoch}"
        return "the start"


class CheckpointError(RuntimeError):
    """Base of the checkpoint errors (one-line messages)."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written; the previous ones are intact."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint does not fit the model being restored."""


def file_name(position):
    """The file name of the checkpoint at ``position``."""
    epoch, step = position
    if step:
        return f"ckpt-{epoch + 1:04d}-step-{step:06d}{SUFFIX}"
    return f"ckpt-{epoch:04d}{SUFFIX}"


def parse_name(name):
    """The `Position` of a checkpoint file name, or None."""
    match = PATTERN.match(name)
    if not match:
        return None
    epoch, step = int(match.group(1)), int(match.group(2) or 0)
    if match.group(2) is None:
        return Position(epoch, 0)
    if epoch < 1 or step < 1:
        return None
    return Position(epoch - 1, step)


def list_checkpoints(directory):
    """``[(position, path)]`` of the checkpoints in ``directory``, oldest
    first (empty if it does not exist)."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        position = parse_name(name)
        if position is not None:
            found.append((position, os.path.join(directory, name)))
    return sorted(found)


def latest(directory):
    """The path of the newest checkpoint in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def _datasets(handle):
    """``(name, dataset)`` of every dataset of an open h5 file, sorted."""
    found = []
    handle.visititems(
        lambda name, obj: found.append((name, obj))
        if isinstance(obj, h5py.Dataset)
        else None
    )
    return sorted(found, key=lambda item: item[0])


def _digest(handle):
    """SHA-256 over the name, dtype, shape and bytes of every dataset."""
    sha = hashlib.sha256()
    for name, dataset in _datasets(handle):
        value = np.asarray(dataset[()])
        sha.update(
            json.dumps([name, value.dtype.str, value.shape]).encode("utf-8")
        )
        sha.update(np.ascontiguousarray(value).tobytes())
    return sha.hexdigest()


def verify(path):
    """Reads every array of the checkpoint ``path`` and checks its digest.

    Returns:
        None if the file is intact, else a short reason (one line).
    """
    try:
        with h5py.File(path, "r") as handle:
            expected = handle.attrs.get(DIGEST_ATTR)
            actual = _digest(handle)
    except _READ_ERRORS as err:
        return _one_line(f"{type(err).__name__}: {err}")
    if expected is None:
        return None  # written before digests existed; readable
    if isinstance(expected, bytes):
        expected = expected.decode("ascii", "replace")
    if expected != actual:
        return "its arrays do not match its SHA-256 digest"
    return None


def _one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _write_weights(model, path):
    """Keras' writer (a seam: tests make it fail as a full disk would)."""
    model.save_weights(path)


def metric_values(model):
    """The values of ``model.metrics``' variables, per metric.

    Metric variables are synchronised on read: under a multi-worker
    strategy reading them is a collective operation, so every worker must
    call this (and pass the result to `Checkpointer.save`), not the chief
    alone.
    """
    return [
        [np.asarray(v.numpy()) for v in metric.variables]
        for metric in getattr(model, "metrics", [])
    ]


class Checkpointer:
    """Saves and restores ``model`` at run positions in ``directory``.

    Args:
        model: a built Keras model (its ``save_weights`` / ``load_weights``
            and ``metrics``).
        directory: where checkpoints live (created unless ``read_only``).
        keep: how many epoch checkpoints, and how many step checkpoints,
            to keep (>= 1).
        read_only: a non-chief worker: restores without renaming damaged
            files or clearing interrupted saves, never saves.
        log: where warnings go (default ``sys.stderr``).
    """

    def __init__(self, model, directory, keep=2, read_only=False, log=None):
        if keep < 1:
            raise ValueError(f"Expected `keep` >= 1. Received: keep={keep}")
        self.model = model
        self.directory = os.fspath(directory)
        self.keep = keep
        self.read_only = read_only
        self.log = log
        # The restored checkpoint's metric states (`metric_values`).
        self.restored_metrics = None
        if read_only:
            return
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):
            if name.startswith(TMP_PREFIX):  # a save interrupted by a kill
                os.remove(os.path.join(self.directory, name))

    # -- listing ------------------------------------------------------------

    def positions(self):
        """The positions of the checkpoints on disk, oldest first."""
        return [p for p, _ in list_checkpoints(self.directory)]

    def path(self, position):
        """The path of the checkpoint at ``position``."""
        return os.path.join(self.directory, file_name(Position(*position)))

    # -- restoring ----------------------------------------------------------

    def _warn(self, message):
        print(f"warning: {message}", file=self.log or sys.stderr, flush=True)

    def _set_aside(self, path, reason):
        if self.read_only:
            self._warn(f"checkpoint {path} cannot be read ({reason}); trying "
                       "the previous one.")
            return
        target = path + DAMAGED_SUFFIX
        n = 1
        while os.path.exists(target):
            target = f"{path}{DAMAGED_SUFFIX}.{n}"
            n += 1
        os.replace(path, target)
        self._warn(
            f"checkpoint {path} cannot be read ({reason}); renamed to "
            f"{os.path.basename(target)}, resuming from the previous one."
        )

    def restore(self):
        """Loads the newest readable checkpoint.

        Damaged checkpoints on the way are renamed ``*.damaged`` (one
        warning line each). If none is readable the model keeps its
        initial values.

        Returns:
            The `Position` restored (``Position(0, 0)`` if none).

        Raises:
            CheckpointMismatchError: a readable checkpoint does not fit the
                model (another configuration).
        """
        self.restored_metrics = None
        for position, path in reversed(list_checkpoints(self.directory)):
            reason = verify(path)
            if reason is not None:
                self._set_aside(path, reason)
                continue
            self._load(path)
            return position
        return Position(0, 0)

    def _load(self, path):
        try:
            self.model.load_weights(path)
        except _READ_ERRORS as err:
            raise CheckpointMismatchError(
                f"The checkpoint {path} is readable but does not fit this "
                f"model ({_one_line(err, 200)}): it comes from another "
                "configuration. Rerun with the flags of that run, or use a "
                "new --model_dir."
            ) from None
        self.restored_metrics = self._read_metrics(path)

    def _read_metrics(self, path):
        with h5py.File(path, "r") as handle:
            group = handle.get(f"{RESUME_GROUP}/metrics")
            if group is None:
                return None
            values = []
            for i in range(len(group)):
                metric = group[str(i)]
                values.append(
                    [np.asarray(metric[str(j)][()]) for j in range(len(metric))]
                )
            return values

    def restore_metrics(self):
        """Assigns the restored checkpoint's metric states to the model.

        Call it after the training loop resets the metrics at the start of
        the resumed epoch (e.g. from a callback's ``on_epoch_begin``), in
        cross-replica context. The metrics must have their variables by
        then (the models of this package create their trackers in
        ``__init__``; Keras' compiled metrics are built lazily, in the
        first traced step).

        Under a `tf.distribute` strategy Keras' metric variables are
        sync-on-read sums: the saved value is the sum over all replicas
        of all workers, and assigning it in cross-replica context gives
        each replica ``value / num_replicas_in_sync`` (TensorFlow's
        ``values_util.on_read_assign_cross_replica``), whose sum is the
        saved value again: nothing is scaled here.

        Raises:
            CheckpointMismatchError: when the model's metrics differ.
        """
        restored = self.restored_metrics
        if restored is None:
            return
        metrics = list(getattr(self.model, "metrics", []))
        shapes = [[tuple(v.shape) for v in m.variables] for m in metrics]
        stored = [[tuple(np.shape(v)) for v in m] for m in restored]
        if shapes != stored:
            raise CheckpointMismatchError(
                f"The checkpoint's metric states {stored} do not fit this "
                f"model's metrics {shapes}: it comes from another "
                "configuration."
            )
        for metric, values in zip(metrics, restored, strict=True):
            for variable, value in zip(metric.variables, values, strict=True):
                variable.assign(value)

    # -- saving -------------------------------------------------------------

    def save(self, position, metrics=None):
        """Writes the checkpoint at ``position`` atomically; prunes.

        Args:
            position: a `Position`, or ``(epoch, step)``.
            metrics: `metric_values` of the model (default: read here).

        Returns:
            The checkpoint's path.

        Raises:
            CheckpointSaveError: the file could not be written (disk full,
                permissions); the previous checkpoints are intact.
        """
        if self.read_only:
            raise RuntimeError("A read-only Checkpointer does not save.")
        position = Position(*position)
        final = self.path(position)
        tmp = os.path.join(
            self.directory, f"{TMP_PREFIX}{os.path.basename(final)}"
        )
        try:
            _write_weights(self.model, tmp)
            if metrics is None:
                metrics = metric_values(self.model)
            self._add_resume_state(tmp, position, metrics)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except (OSError, RuntimeError) as err:
            if os.path.exists(tmp):
                try:
                    os.remove(tmp)
                except OSError:
                    pass
            previous = [p for p in self.positions() if p != position]
            kept = self.path(previous[-1]) if previous else None
            reason = _one_line(err, 200)
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                reason = f"the disk is full: {reason}"
            raise CheckpointSaveError(
                f"Cannot write the checkpoint {final} ({reason}). "
                + (
                    f"The previous checkpoint {kept} is intact: free space "
                    "and rerun the same command to resume from it."
                    if kept
                    else "No earlier checkpoint exists."
                )
            ) from None
        _fsync_dir(self.directory)
        self._prune()
        return final

    def _add_resume_state(self, path, position, metrics):
        with h5py.File(path, "a") as handle:
            group = handle.require_group(RESUME_GROUP)
            group.attrs["epoch"] = position.epoch
            group.attrs["step"] = position.step
            stored = group.require_group("metrics")
            for i, values in enumerate(metrics):
                metric = stored.require_group(str(i))
                for j, value in enumerate(values):
                    metric.create_dataset(str(j), data=value)
            handle.attrs[FORMAT_ATTR] = FORMAT_VERSION
            handle.attrs[DIGEST_ATTR] = _digest(handle)

    def _prune(self):
        positions = self.positions()
        epochs = [p for p in positions if not p.step]
        newest_epoch = epochs[-1] if epochs else Position(-1, 0)
        steps = [p for p in positions if p.step and p > newest_epoch]
        doomed = epochs[: -self.keep] + steps[: -self.keep]
        doomed += [p for p in positions if p.step and p < newest_epoch]
        for position in doomed:
            try:
                os.remove(self.path(position))
            except FileNotFoundError:
                pass


class EpochCheckpointer(Checkpointer):
    """A `Checkpointer` by epoch number: ``save(epoch)``, ``restore() ->
    epoch`` (the newest epoch checkpoint's epoch; a step checkpoint counts
    as the epoch before it)."""

    def save(self, epoch):
        return super().save(Position(int(epoch), 0))

    def restore(self):
        return super().restore().epoch


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
