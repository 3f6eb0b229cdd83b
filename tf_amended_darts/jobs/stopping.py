"""Search to convergence: stop once the derived genotype stops changing.

The paper's protocol (section 3.1: "the search process continues till the
architecture does not change for sufficiently long") as a rule: with
patience ``K`` (``--stop_when_stable=K``), a search (each stage, for the
``searched`` layout) ends after the first epoch ``e`` whose genotype has not
changed for ``K`` epochs, i.e. is the genotype that first appeared at epoch
``e - K`` (and stayed since). ``--epochs`` stays the upper bound.

`StableGenotypeStop` is fed the genotype after every epoch and keeps one
fingerprint per epoch (the genotype without its metadata), so its state is
a list that resuming truncates to the checkpoint's epoch: it is saved with
the run (``stopping.json``) before the epoch's checkpoint, and a run
resumed after epoch ``n`` reads the first ``n`` entries, whatever was
written after the checkpoint. `StabilityMonitor` is the Keras callback that
feeds it during ``fit`` and adds ``genotype_stable_since`` (the epoch at
which the current genotype first appeared) and ``genotype_unchanged_epochs``
to the epoch's logs, so that `callbacks.SearchArtifacts`, later in the
callback list, writes them to ``metrics.csv`` and TensorBoard.
"""

from __future__ import annotations

import hashlib
import json
import os

import keras

from tf_amended_darts.nn.validate import check_int
from tf_amended_darts.vision import genotype as G

STATE_FILE = "stopping.json"
STATE_FORMAT = "tf_amended_darts.stopping"
STATE_VERSION = 1
# Logged per epoch (metrics.csv, TensorBoard).
STABLE_SINCE = "genotype_stable_since"
UNCHANGED = "genotype_unchanged_epochs"


def fingerprint(genotype) -> str:
    """A digest of a genotype's cells (its metadata excluded)."""
    data = G.to_dict(genotype)
    data.pop("metadata", None)
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class StableGenotypeStop:
    """Counts the epochs a derived genotype has stayed the same.

    Args:
        patience: ``K``; 0 never stops (the state is still kept, so the
            epoch the final genotype appeared is known).
        path: the JSON file holding the state (None: in memory only).

    Attributes:
        fingerprints: one `fingerprint` per epoch done, epoch 1 first.
    """

    def __init__(self, patience=0, path=None):
        check_int("stop_when_stable", patience, 0)
        self.patience = int(patience)
        self.path = None if path is None else os.fspath(path)
        self.fingerprints = []
        if self.path and os.path.exists(self.path):
            self.fingerprints = self._read(self.path)

    @staticmethod
    def _read(path):
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if (
            not isinstance(data, dict)
            or data.get("format") != STATE_FORMAT
            or data.get("version") != STATE_VERSION
            or not isinstance(data.get("fingerprints"), list)
        ):
            raise ValueError(
                f"Invalid stop-rule state {path}: expected a JSON object "
                f'with "format": "{STATE_FORMAT}", "version": '
                f'{STATE_VERSION} and a "fingerprints" list. Move it away '
                "to start counting anew."
            )
        return [str(f) for f in data["fingerprints"]]

    def save(self) -> None:
        """Writes the state to ``path`` atomically (no-op without one)."""
        if not self.path:
            return
        data = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "patience": self.patience,
            "fingerprints": self.fingerprints,
        }
        G.atomic_write(self.path, json.dumps(data, indent=1))

    @property
    def epochs(self) -> int:
        """Epochs recorded."""
        return len(self.fingerprints)

    def truncate(self, epochs: int) -> None:
        """Keeps the entries of epochs ``1..epochs`` (resuming there)."""
        check_int("epochs", epochs, 0)
        if epochs > len(self.fingerprints):
            raise ValueError(
                f"Cannot resume the stop rule after epoch {epochs}: "
                f"{self.path or 'its state'} records {self.epochs} epochs. "
                "It is written before each checkpoint; move it away to "
                "count from the next epoch on."
            )
        del self.fingerprints[epochs:]

    def update(self, epoch: int, genotype) -> bool:
        """Records epoch ``epoch``'s genotype (1-based; redone epochs ok).

        Returns:
            `should_stop` after this epoch.
        """
        check_int("epoch", epoch, 1)
        if epoch - 1 > len(self.fingerprints):
            raise ValueError(
                f"Epoch {epoch} recorded after epoch {self.epochs}: an "
                "epoch is missing from the stop rule's state."
            )
        del self.fingerprints[epoch - 1 :]
        self.fingerprints.append(fingerprint(genotype))
        return self.should_stop

    @property
    def stable_since(self):
        """The 1-based epoch at which the current genotype first appeared
        (and stayed since); None before the first epoch."""
        if not self.fingerprints:
            return None
        last = self.fingerprints[-1]
        epoch = len(self.fingerprints)
        while epoch > 1 and self.fingerprints[epoch - 2] == last:
            epoch -= 1
        return epoch

    @property
    def unchanged_epochs(self) -> int:
        """Epochs since the current genotype appeared (0 on a change)."""
        if not self.fingerprints:
            return 0
        return self.epochs - self.stable_since

    @property
    def should_stop(self) -> bool:
        """Whether the genotype has not changed for ``patience`` epochs."""
        return bool(self.patience) and self.unchanged_epochs >= self.patience

    def metadata(self) -> dict:
        """What ``genotype.json`` records of the stop rule."""
        return {
            "stable_since_epoch": self.stable_since,
            "epochs_run": self.epochs,
            "stop_when_stable": self.patience,
            "stopped_when_stable": self.should_stop,
        }


class StabilityMonitor(keras.callbacks.Callback):
    """Feeds a `StableGenotypeStop` at every epoch end and logs its count.

    Place it before `callbacks.SearchArtifacts`: it adds `STABLE_SINCE`
    and `UNCHANGED` to the epoch's ``logs`` (Keras hands the same dict to
    every callback of the list), and it saves the state, which must reach
    the disk before the epoch's checkpoint.

    Args:
        network: the `supernet.SearchNetwork` (``genotype()``).
        stopper: the `StableGenotypeStop`.
        save: whether this process writes the state (the chief).
    """

    def __init__(self, network, stopper, save=True):
        super().__init__()
        self.network = network
        self.stopper = stopper
        self.save = bool(save)

    def on_epoch_end(self, epoch, logs=None):
        self.stopper.update(int(epoch) + 1, self.network.genotype())
        if self.save:
            self.stopper.save()
        if logs is not None:
            logs[STABLE_SINCE] = float(self.stopper.stable_since)
            logs[UNCHANGED] = float(self.stopper.unchanged_epochs)


def for_stage(patience, stage_dir, start, genotypes_dir=None):
    """The stop rule of a stage resumed after epoch ``start``.

    Reads ``stage_dir/stopping.json`` and keeps its first ``start``
    entries. Epochs it lacks (a run directory from before the rule, or a
    state file lost) are read from the per-epoch genotypes that
    `callbacks.SearchArtifacts` writes (``genotypes/epoch_NNN.json``).

    Raises:
        ValueError: when an epoch is in neither.
    """
    stopper = StableGenotypeStop(patience, os.path.join(stage_dir, STATE_FILE))
    genotypes_dir = genotypes_dir or os.path.join(stage_dir, "genotypes")
    for epoch in range(stopper.epochs + 1, start + 1):
        path = os.path.join(genotypes_dir, f"epoch_{epoch:03d}.json")
        if not os.path.exists(path):
            raise ValueError(
                f"Cannot resume the stop rule (--stop_when_stable) after "
                f"epoch {start}: neither {stopper.path} nor {path} records "
                f"epoch {epoch}."
            )
        stopper.update(epoch, G.load(path))
    stopper.truncate(start)
    return stopper
