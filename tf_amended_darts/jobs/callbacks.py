"""Search callbacks: per-epoch artifacts and a guard against NaN/Inf.

`SearchArtifacts` records, at the end of every search epoch, what the
search looks like: the derived genotype (JSON and cell drawings), the
softmax architecture weights (``arch_history.npz``), the logged metrics
(``metrics.csv``) and TensorBoard summaries, including the curves of the
paper's Figure 1 (weight of ``none``, share of ``skip_connect`` and number
of parametric operators in the derived normal cell, the signs of the
collapse of DARTS). Every file is rewritten atomically, and a rerun after a
crash drops the rows of the epochs it redoes instead of duplicating them.

`NonFiniteGuard` stops training with a `NonFiniteError` as soon as a logged
value (loss, val_loss, gradient norms, ...) is NaN or infinite, before the
epoch-end checkpoint could save a broken state.

Files under ``model_dir`` (see the module constants):

* ``genotypes/epoch_NNN.json`` and ``genotypes/epoch_NNN_<cell>.png``
  (``_normal``/``_reduce``, or ``_cellNN`` for per-cell spaces);
* ``genotype.json`` and ``genotype_<cell>.png``: the latest epoch;
* ``arch_history.npz``: ``epoch`` (1-based epoch numbers) and one array
  per architecture key stacked over epochs;
* ``metrics.csv``: one row per epoch, ``epoch``, the logs and the Figure 1
  values;
* ``tensorboard/search``: TensorBoard event files.
"""

from __future__ import annotations

import csv
import io
import math
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts.jobs.summaries import (
    format_value,
    heatmap_png,
    scalar_logs,
    scalar_value,
    write_session_start,
)
from tf_amended_darts.vision import genotype as genotype_lib
from tf_amended_darts.vision import visualize
from tf_amended_darts.vision.indicators import (
    edge_labels,
    figure1_stats,
    pair_labels,
)

GENOTYPES_DIR = "genotypes"
LATEST_GENOTYPE = "genotype"  # genotype.json, genotype_normal.png, ...
ARCH_HISTORY_FILE = "arch_history.npz"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = os.path.join("tensorboard", "search")


_EPOCH = "epoch"
_BETA_PREFIX = "beta_"


# --------------------------------------------------------------------------
# Helpers.


# --------------------------------------------------------------------------
# Per-epoch artifacts.


class SearchArtifacts(keras.callbacks.Callback):
    """Writes the genotype, weights history, metrics and TensorBoard logs.

    At the end of every epoch (``n = epoch + 1``), under ``model_dir``:
    ``genotypes/epoch_{n:03d}.json`` and its cell drawings,
    ``genotype.json`` and ``genotype_<cell>.png`` (the latest),
    ``arch_history.npz``, ``metrics.csv`` and, when ``tensorboard``,
    summaries in ``tensorboard/search`` at step ``n``:

    * scalars: every scalar in ``logs`` under its own name (``loss``,
      ``val_loss``, ``accuracy``, ``val_accuracy``, ``lr``, ``g1_norm``,
      ``g2_norm``, ``arch_grad_norm``), and ``figure1/none_weight_avg``,
      ``figure1/skip_share``, ``figure1/parametric_ops_normal``;
    * images ``arch/<key>``: heat maps of the softmax weights of each
      architecture key (``normal``, ``reduce``, ``cell_<i>``, and
      ``beta_<key>`` pair probabilities);
    * histograms ``arch_hist/<key>`` of the same weights;
    * text ``genotype``: ``visualize.genotype_to_text``.

    Resuming: rows of ``arch_history.npz`` and ``metrics.csv`` for epochs
    ``>= n`` are dropped when epoch ``n`` is recorded again, and all rows
    after the resumed epoch when training (re)starts (``on_epoch_begin``
    of its first epoch, or ``initial_epoch`` here), so a rerun after a crash
    does not duplicate rows.

    Args:
        network: a built `supernet.SearchNetwork` (``arch_weights``,
            ``genotype``, ``operators``, ``arch_key``, ``cell_inputs``).
        model_dir: the search's output directory.
        tensorboard: whether to write TensorBoard summaries.
        initial_epoch: if given, the number of epochs already done (the
            ``initial_epoch`` of ``fit``): later rows are dropped now.

    Raises:
        ValueError: for an existing history file that cannot be read; and
            from the first ``on_epoch_begin`` or ``on_epoch_end``, when the
            rows kept come from a network with other weight shapes.
    """

    def __init__(
        self, network, model_dir, tensorboard=True, initial_epoch=None
    ):
        super().__init__()
        self.network = network
        self.model_dir = os.fspath(model_dir)
        self.tensorboard = bool(tensorboard)
        self._writer = None
        self._started = False
        self._history_epochs, self._history = self._load_history()
        self._columns, self._rows = self._load_metrics()
        if initial_epoch is not None:
            self.truncate_after(initial_epoch)

    # -- paths ----------------------------------------------------------------

    @property
    def history_path(self) -> str:
        """``model_dir/arch_history.npz``."""
        return os.path.join(self.model_dir, ARCH_HISTORY_FILE)

    @property
    def metrics_path(self) -> str:
        """``model_dir/metrics.csv``."""
        return os.path.join(self.model_dir, METRICS_FILE)

    @property
    def tensorboard_dir(self) -> str:
        """``model_dir/tensorboard/search``."""
        return os.path.join(self.model_dir, TENSORBOARD_DIR)

    def genotype_prefix(self, epoch_number: int) -> str:
        """``model_dir/genotypes/epoch_NNN`` for a 1-based epoch number."""
        return os.path.join(
            self.model_dir, GENOTYPES_DIR, f"epoch_{epoch_number:03d}"
        )

    # -- state on disk ---------------------------------------------------------

    def _load_history(self):
        path = self.history_path
        if not os.path.exists(path):
            return [], {}
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"Cannot read the architecture history {path}: {error}. "
                "Move it away to start a new history."
            ) from error
        if _EPOCH not in arrays:
            raise ValueError(
                f"Invalid architecture history {path}: no `{_EPOCH}` array."
            )
        epochs = [int(e) for e in arrays.pop(_EPOCH)]
        for key, array in arrays.items():
            if len(array) != len(epochs):
                raise ValueError(
                    f"Invalid architecture history {path}: `{key}` has "
                    f"{len(array)} rows for {len(epochs)} epochs."
                )
        return epochs, {k: list(v) for k, v in arrays.items()}

    def _load_metrics(self):
        path = self.metrics_path
        if not os.path.exists(path):
            return [_EPOCH], []
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [_EPOCH])
            rows = list(reader)
        if _EPOCH not in columns:
            raise ValueError(
                f"Invalid metrics file {path}: no `{_EPOCH}` column."
            )
        return columns, rows

    def _save_history(self) -> None:
        arrays = {_EPOCH: np.asarray(self._history_epochs, dtype=np.int64)}
        for key, rows in self._history.items():
            arrays[key] = np.stack(rows)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        genotype_lib.atomic_write(self.history_path, buffer.getvalue())

    def _save_metrics(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=self._columns, restval="", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(self._rows)
        genotype_lib.atomic_write(self.metrics_path, buffer.getvalue())

    def _truncate(self, epoch: int) -> bool:
        """Drops in-memory rows of epochs ``> epoch``.

        Returns:
            Whether history rows, and whether metrics rows, were dropped.
        """
        keep = [i for i, e in enumerate(self._history_epochs) if e <= epoch]
        changed = len(keep) != len(self._history_epochs)
        if changed:
            self._history_epochs = [self._history_epochs[i] for i in keep]
            self._history = {
                k: [rows[i] for i in keep] for k, rows in self._history.items()
            }
            if not self._history_epochs:
                self._history = {}
        rows = [r for r in self._rows if int(float(r[_EPOCH])) <= epoch]
        metrics_changed = len(rows) != len(self._rows)
        self._rows = rows
        return changed, metrics_changed

    def truncate_after(self, epoch: int) -> None:
        """Keeps the rows of epochs ``1..epoch`` only, on disk too.

        Args:
            epoch: the number of epochs done (``fit``'s ``initial_epoch``
                when resuming); rows with a larger epoch number are dropped
                from ``arch_history.npz`` and ``metrics.csv``.
        """
        history_changed, metrics_changed = self._truncate(int(epoch))
        if history_changed:
            if self._history_epochs:
                self._save_history()
            else:
                os.remove(self.history_path)
        if metrics_changed:
            self._save_metrics()

    @property
    def history(self) -> dict:
        """The recorded history: ``epoch`` and one stacked array per key."""
        out = {_EPOCH: np.asarray(self._history_epochs, dtype=np.int64)}
        out.update({k: np.stack(v) for k, v in self._history.items()})
        return out

    def _check_history(self, weights) -> None:
        if not self._history_epochs:
            return
        old = {k: np.shape(v[0]) for k, v in self._history.items()}
        new = {k: np.shape(v) for k, v in weights.items()}
        if old != new:
            raise ValueError(
                f"{self.history_path} holds architecture weights {old}, but "
                f"this network's are {new}: it comes from another search. "
                "Use a new model directory, or move the file away."
            )

    # -- callback hooks --------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:
            self._started = True
            self.truncate_after(epoch)
            self._check_history(self.network.arch_weights())
            if self.tensorboard:
                self._summary_writer(epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        number = int(epoch) + 1
        weights = {
            k: np.asarray(v) for k, v in self.network.arch_weights().items()
        }
        genotype = self.network.genotype(metadata={_EPOCH: number})
        stats = figure1_stats(weights, genotype, self.network.operators)
        scalars = scalar_logs(logs)

        self._write_genotype(genotype, number)
        self._truncate(number - 1)
        self._check_history(weights)
        self._history_epochs.append(number)
        for key, value in weights.items():
            self._history.setdefault(key, []).append(value)
        self._save_history()

        row = {_EPOCH: number, **scalars, **stats}
        for name in row:
            if name not in self._columns:
                self._columns.append(name)
        self._rows.append({k: format_value(v) for k, v in row.items()})
        self._save_metrics()

        if self.tensorboard:
            self._write_summaries(number, scalars, stats, weights, genotype)

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer (reopened if needed)."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    # -- writers ---------------------------------------------------------------

    def _write_genotype(self, genotype, number: int) -> None:
        prefix = self.genotype_prefix(number)
        genotype_lib.save(genotype, f"{prefix}.json")
        latest = os.path.join(self.model_dir, LATEST_GENOTYPE)
        genotype_lib.save(genotype, f"{latest}.json")
        for path in visualize.plot_genotype(genotype, prefix):
            with open(path, "rb") as handle:
                data = handle.read()
            genotype_lib.atomic_write(latest + path[len(prefix) :], data)

    def _summary_writer(self, step: int):
        if self._writer is None:
            os.makedirs(self.tensorboard_dir, exist_ok=True)
            self._writer = tf.summary.create_file_writer(self.tensorboard_dir)
            write_session_start(self._writer, step)
        return self._writer

    def _row_labels(self, key: str, rows: int) -> list[str]:
        network = self.network
        if key.startswith(_BETA_PREFIX):
            labels = pair_labels(getattr(network, "steps", 4))
        else:
            cell = next(
                (
                    i
                    for i in range(network.num_layers)
                    if network.arch_key(i) == key
                ),
                None,
            )
            labels = (
                edge_labels(network.cell_inputs(cell))
                if cell is not None
                else []
            )
        if len(labels) != rows:
            labels = [f"edge {r}" for r in range(rows)]
        return labels

    def _heatmap(self, key: str, weights, number: int) -> bytes:
        w = np.asarray(weights, dtype=np.float64)
        if key.startswith(_BETA_PREFIX) or w.ndim == 1:
            w = w.reshape(-1, 1)
            columns, axes = ("probability",), ("", "input pair -> node")
        else:
            columns, axes = tuple(self.network.operators), None
        return heatmap_png(
            w,
            columns,
            self._row_labels(key, len(w)),
            f"{key}, epoch {number}",
            axes,
        )

    def _write_summaries(self, number, scalars, stats, weights, genotype):
        writer = self._summary_writer(number)
        with writer.as_default(step=number):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)
            for name, value in stats.items():
                tf.summary.scalar(f"figure1/{name}", value)
            for key, value in weights.items():
                png = self._heatmap(key, value, number)
                image = tf.image.decode_png(png, channels=3)
                tf.summary.image(f"arch/{key}", image[None], max_outputs=1)
                tf.summary.histogram(
                    f"arch_hist/{key}", np.ravel(value).astype(np.float32)
                )
            text = visualize.genotype_to_text(genotype)
            # Indented: a Markdown code block keeps one line per cell.
            tf.summary.text(
                "genotype", "\n".join("    " + t for t in text.splitlines())
            )
        writer.flush()


# --------------------------------------------------------------------------
# NaN / Inf guard.


class NonFiniteError(RuntimeError):
    """A logged training value became NaN or infinite."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training when a logged value is NaN or infinite.

    Checked after every training batch (``loss``, ``val_loss``,
    ``g1_norm``, ``g2_norm``, ``arch_grad_norm``, ...) and at the end of
    every epoch (values added there, e.g. from validation data). Raising
    from a batch ends ``fit`` before the epoch-end checkpoint, so the last
    checkpoint on disk stays a good one; for the epoch-end check to protect
    it too, put this guard before the checkpoint callback in the list.

    Args:
        model_dir: the search's directory, named in the message.
        monitor: names of the values to check; ``None`` checks every
            numeric value in the logs.
    """

    def __init__(self, model_dir=None, monitor=None):
        super().__init__()
        self.model_dir = None if model_dir is None else os.fspath(model_dir)
        self.monitor = None if monitor is None else tuple(monitor)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)

    def on_train_batch_end(self, batch, logs=None):
        self.check(logs, self._epoch, f"step {int(batch) + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self.check(logs, int(epoch), "the end of the epoch")

    def check(self, logs, epoch: int, where: str) -> None:
        """Raises `NonFiniteError` if a monitored value is not finite.

        Args:
            logs: the callback logs.
            epoch: the 0-based epoch index.
            where: the position in the epoch, for the message.
        """
        logs = logs or {}
        names = self.monitor if self.monitor is not None else tuple(logs)
        bad = []
        for name in names:
            if name not in logs:
                continue
            value = scalar_value(logs[name])
            if value is not None and not math.isfinite(value):
                bad.append(f"{name}={value}")
        if not bad:
            return
        place = f"in {self.model_dir}" if self.model_dir else "in the model dir"
        raise NonFiniteError(
            f"Non-finite training value {', '.join(bad)} at epoch "
            f"{epoch + 1}, {where} (1-based). Training was stopped before "
            "this epoch's end-of-epoch checkpoint, so the last good "
            f"checkpoint {place} is intact. To resume, lower the learning "
            "rate or the amending coefficient --eta, and rerun the same "
            "command: the search restarts from that checkpoint."
        )
