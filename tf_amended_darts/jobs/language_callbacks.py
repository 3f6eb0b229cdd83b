"""Callbacks of the language task's search and training jobs.

* `LearningRateRescale`: the learning rate of each batch is the base rate
  times ``seq_len / bptt`` of that batch (the reference rescales it before
  every step and restores it after), so the virtual step of
  ``second_order`` reads the rescaled rate too, as the reference's does.
* `ResetStates`: zeroes the carried hidden states when an epoch begins
  (the reference's ``train()`` starts from ``init_hidden``).
* `PerplexityEvaluation`: adds ``valid_loss`` / ``valid_ppl`` (inference
  mode over the validation split) and the perplexities of the logged
  losses (``ppl`` of ``loss``, ``val_ppl`` of ``val_loss``) to the epoch's
  logs; put it before `callbacks.NonFiniteGuard`, which then checks them.
* `LanguageArtifacts`: per epoch, ``metrics.csv`` and TensorBoard scalars;
  for a search also the genotype (``genotypes/epoch_NNN.json`` and
  ``.png``, ``genotype.json`` / ``genotype.png``), ``arch_history.npz``
  (softmax weights per epoch), the weights as a heat map image and the
  genotype as text. Rows of epochs after the one a rerun resumes from are
  dropped, so nothing is duplicated.

The NaN guard (`jobs.callbacks`) and the heat map and session-start
helpers (`jobs.summaries`) are the CNN search's, reused.
"""

import csv
import io
import os

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts.core import jsonio
from tf_amended_darts.jobs import summaries
from tf_amended_darts.language import evaluation, space, visualize
from tf_amended_darts.language import genotype as G

METRICS_FILE = "metrics.csv"
ARCH_HISTORY_FILE = "arch_history.npz"
GENOTYPES_DIR = "genotypes"
_EPOCH = "epoch"


class LearningRateRescale(keras.callbacks.Callback):
    """Sets ``lr = base * scale[batch]`` before every training batch.

    Args:
        optimizer: the weight optimiser (a float learning rate).
        base: the base learning rate.
    """

    def __init__(self, optimizer, base):
        super().__init__()
        self.optimizer = optimizer
        self.base = float(base)
        self.scales = []

    def set_scales(self, scales):
        """The scales of the coming epoch's batches, in order."""
        self.scales = [float(s) for s in scales]

    def on_train_batch_begin(self, batch, logs=None):
        scale = self.scales[batch] if batch < len(self.scales) else 1.0
        self.optimizer.learning_rate = self.base * scale

    def on_epoch_end(self, epoch, logs=None):
        self.optimizer.learning_rate = self.base


class ResetStates(keras.callbacks.Callback):
    """Zeroes the model's carried hidden states when an epoch begins."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def on_epoch_begin(self, epoch, logs=None):
        self.network.reset_states()


class PerplexityEvaluation(keras.callbacks.Callback):
    """Adds validation loss and perplexities to each epoch's logs.

    Args:
        evaluate: ``() -> mean loss per token`` on the validation split
            (None: only the perplexities of the logged losses).
    """

    def __init__(self, evaluate=None):
        super().__init__()
        self.evaluate = evaluate

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for loss, ppl in (("loss", "ppl"), ("val_loss", "val_ppl")):
            if loss in logs:
                logs[ppl] = evaluation.perplexity(logs[loss])
        if self.evaluate is not None:
            loss = self.evaluate()
            logs["valid_loss"] = loss
            logs["valid_ppl"] = evaluation.perplexity(loss)


def _scalars(logs):
    out = {}
    for name, value in (logs or {}).items():
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if array.size == 1:
            out[str(name)] = float(array.reshape(()))
    return out


class LanguageArtifacts(keras.callbacks.Callback):
    """Per-epoch metrics, TensorBoard, and a search's genotypes.

    Args:
        model_dir: the run directory.
        network: a `SearchRNNModel` (genotypes and weights are recorded)
            or an `RNNModel` (metrics only).
        tensorboard_dir: where TensorBoard events go (None: none).
        initial_epoch: epochs already done; later rows are dropped.
    """

    def __init__(self, model_dir, network=None, tensorboard_dir=None,
                 initial_epoch=0):
        super().__init__()
        self.model_dir = os.fspath(model_dir)
        self.network = network
        self.search = bool(network is not None and network.arch_variables)
        self.tensorboard_dir = tensorboard_dir
        self._writer = None
        self._columns, self._rows = self._load_metrics()
        self._history = self._load_history()
        self._truncate(int(initial_epoch))
        self._save()

    @property
    def metrics_path(self):
        return os.path.join(self.model_dir, METRICS_FILE)

    @property
    def history_path(self):
        return os.path.join(self.model_dir, ARCH_HISTORY_FILE)

    def _load_metrics(self):
        if not os.path.exists(self.metrics_path):
            return [_EPOCH], []
        with open(self.metrics_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or [_EPOCH]), list(reader)

    def _load_history(self):
        if not self.search or not os.path.exists(self.history_path):
            return {}
        with np.load(self.history_path) as data:
            return {
                int(e): w for e, w in zip(data[_EPOCH], data["weights"],
                                          strict=True)
            }

    def _truncate(self, epoch):
        self._rows = [r for r in self._rows if int(r[_EPOCH]) <= epoch]
        self._history = {e: w for e, w in self._history.items()
                         if e <= epoch}

    def _save(self):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self._columns,
                                restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        os.makedirs(self.model_dir, exist_ok=True)
        jsonio.atomic_write(self.metrics_path, buffer.getvalue())
        if self.search and self._history:
            epochs = sorted(self._history)
            buffer = io.BytesIO()
            np.savez(buffer, epoch=np.asarray(epochs, np.int64),
                     weights=np.stack([self._history[e] for e in epochs]),
                     operators=np.asarray(self.network.operators))
            jsonio.atomic_write(self.history_path, buffer.getvalue())

    @property
    def rows(self):
        return list(self._rows)

    def on_epoch_end(self, epoch, logs=None):
        number = int(epoch) + 1
        scalars = _scalars(logs)
        self._truncate(number - 1)
        row = {_EPOCH: str(number), **{k: repr(v) for k, v in
                                       scalars.items()}}
        for name in row:
            if name not in self._columns:
                self._columns.append(name)
        self._rows.append(row)
        genotype = weights = None
        if self.search:
            weights = self.network.arch_weights()
            self._history[number] = weights
            genotype = self.network.genotype(metadata={_EPOCH: number})
            self._write_genotype(genotype, number)
        self._save()
        if self.tensorboard_dir:
            self._summaries(number, scalars, weights, genotype)

    def _write_genotype(self, genotype, number):
        prefix = os.path.join(self.model_dir, GENOTYPES_DIR,
                              f"epoch_{number:03d}")
        G.save(genotype, prefix + ".json")
        visualize.plot_genotype(genotype, prefix, f"epoch {number}")
        G.save(genotype, os.path.join(self.model_dir, "genotype.json"))
        with open(prefix + ".png", "rb") as handle:
            jsonio.atomic_write(os.path.join(self.model_dir, "genotype.png"),
                                handle.read())

    def _summaries(self, number, scalars, weights, genotype):
        if self._writer is None:
            os.makedirs(self.tensorboard_dir, exist_ok=True)
            self._writer = tf.summary.create_file_writer(self.tensorboard_dir)
            summaries.write_session_start(self._writer, number)
        with self._writer.as_default(step=number):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)
            if weights is not None:
                png = summaries.heatmap_png(
                    weights, self.network.operators,
                    space.edge_labels(self.network.steps),
                    f"softmax(alpha), epoch {number}",
                    ("operator", "predecessor -> node"),
                )
                image = tf.image.decode_png(png, channels=3)
                tf.summary.image("arch/recurrent", image[None],
                                 max_outputs=1)
                tf.summary.histogram("arch_hist/recurrent",
                                     np.ravel(weights).astype(np.float32))
                text = visualize.genotype_to_text(genotype)
                tf.summary.text("genotype", "\n".join(
                    "    " + t for t in text.splitlines()))
        self._writer.flush()

    def on_train_end(self, logs=None):
        self.close()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
