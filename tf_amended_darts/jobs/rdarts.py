"""R-DARTS on the search engine: the eigenvalue log, DARTS-ES and DARTS-ADA.

Zela et al., "Understanding and Robustifying Differentiable Architecture
Search", ICLR 2020; automl/RobustDARTS ``src/search/train_search.py``
(``train``, ``train_epochs``) and ``src/utils.py`` (``EVLocalAvg``), as
../shared/baselines.md section 3 records them. Epochs below are 0-based as
in the reference; files under the run directory number epochs from 1
(``genotypes/epoch_{e + 1:03d}.json``, ``checkpoints/ckpt-{e + 1:04d}``).

* **Eigenvalue** (``--hessian_every=N``): at the end of epoch ``e`` with
  ``e % N == 0`` or ``e`` the last, the dominant eigenvalue of the Hessian
  over alpha of the validation loss on the epoch's last validation batch
  (the reference's), plus the architecture weight decay
  (`hessian_eigen.ValidationHessian`), goes into the epoch's logs: the
  ``hessian_eigenvalue`` column of ``metrics.csv`` and a TensorBoard
  scalar.
* **DARTS-ES** (``--early_stop=es``): `EigenvalueEarlyStop` keeps the local
  averages of the eigenvalues (``EVLocalAvg``: the mean of the last
  ``window`` of them, centred ``N * (window // 2)`` epochs back) and stops
  when the newest over the one ``delta`` averages earlier exceeds
  ``factor``, not before ``es_start_epoch``. The search then ends and
  ``genotype.json`` is the genotype of the stop epoch ``s`` (the newest
  average's epoch minus ``N * delta``); ``rdarts_state.json`` records it.
  (The reference ignores the rule on its "final iteration", so its plain
  ES with ``weight_decay == max_weight_decay`` never stops; here ES always
  may.)
* **DARTS-ADA** (``--early_stop=ada``): at a trigger, unless the weight
  decay times ``--ada_mul_factor`` would pass ``--ada_max_weight_decay``,
  the search rolls back to the checkpoint of epoch ``s`` (weights, alphas,
  both optimisers; the eigenvalue history is the ``metrics.csv`` rows up to
  ``s``), multiplies the weight decay and continues to the last epoch;
  again at the next trigger. The genotype at the first trigger is
  ``genotype_es.json`` (ES and ADA from one run, as the reference's
  README). The abandoned rows are kept in ``rdarts/metrics_iteration_K.csv``.

Resuming: ``rdarts_state.json`` (written atomically before anything it
describes) holds the iteration, the weight decay, the triggers and a
pending rollback; a rerun finishes an interrupted rollback, then resumes
the stage from its newest checkpoint as every search does.
"""

import dataclasses
import json
import math
import os
import shutil

import keras
import numpy as np

from tf_amended_darts.core import checkpoint, hessian_eigen
from tf_amended_darts.jobs import search as search_job
from tf_amended_darts.vision import genotype as G

STATE_FILE = "rdarts_state.json"
ARCHIVE_DIR = "rdarts"
EIGENVALUE_KEY = "hessian_eigenvalue"
ES_GENOTYPE = "genotype_es"


# --------------------------------------------------------------------------
# The eigenvalue in the epoch logs.


def last_validation_batch(config, epoch, steps):
    """The validation batch of the epoch's last step (R-DARTS' batch)."""
    pairs, _, _ = search_job._data(config, epoch)
    for _, (x, y) in pairs.skip(steps - 1).take(1):
        return x, y
    raise ValueError(f"Epoch {epoch} has no step {steps}.")


def hessian_epoch(epoch, every, epochs):
    """Whether R-DARTS computes the eigenvalue at the end of ``epoch``."""
    return epoch % every == 0 or epoch == epochs - 1


class HessianEigenvalueLogger(keras.callbacks.Callback):
    """Adds ``hessian_eigenvalue`` to the logs of R-DARTS' epochs.

    Args:
        hessian: a `hessian_eigen.ValidationHessian` of the search.
        batch_fn: ``epoch -> (x_val, y_val)``.
        every: compute at epochs ``e % every == 0`` and the last.
        epochs: the stage's epochs.
    """

    def __init__(self, hessian, batch_fn, every, epochs):
        super().__init__()
        self.hessian = hessian
        self.batch_fn = batch_fn
        self.every = every
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not hessian_epoch(epoch, self.every, self.epochs):
            return
        result = self.hessian(*self.batch_fn(epoch))
        logs[EIGENVALUE_KEY] = float(result.value)


# --------------------------------------------------------------------------
# DARTS-ES: the rule.


class EigenvalueEarlyStop:
    """R-DARTS' ``EVLocalAvg``: local averages and the early-stop rule.

    Args:
        window: eigenvalues per local average (5).
        every: epochs between eigenvalues (``report_freq_hessian``, 2).
        epochs: the search's epochs.
        delta: averages between the two compared (4).
        factor: stop when newest / earlier > factor (1.3).
        start_epoch: no stop epoch before this (10).
    """

    def __init__(self, window, every, epochs, delta, factor, start_epoch):
        self.window = window
        self.every = every
        self.epochs = epochs
        self.delta = delta
        self.factor = factor
        self.start_epoch = start_epoch
        self.values = []
        self.averages = []
        self.average_epochs = {}
        self._first = 0  # start of the sliding window

    @property
    def lag(self):
        """Epochs from the trigger back to the stop epoch."""
        return self.every * (self.window // 2 + self.delta)

    def update(self, epoch, value):
        """Records the eigenvalue of ``epoch`` (reference ``update``)."""
        self.values.append(float(value))
        half = math.ceil(self.window / 2)
        if len(self.values) >= half and epoch < self.epochs - 1:
            if len(self.values) < self.window:
                self.averages.append(float(np.mean(self.values)))
            else:
                last = self._first + self.window
                self.averages.append(
                    float(np.mean(self.values[self._first:last]))
                )
                self._first += 1
            self.average_epochs[epoch] = epoch - self.every * (
                self.window // 2
            )
        elif len(self.values) < half:
            self.average_epochs[epoch] = -1

    def stop_epoch(self, epoch):
        """The stop epoch if the rule fires at ``epoch``, else None."""
        centre = self.average_epochs.get(epoch)
        if centre is None or epoch == self.epochs - 1:
            return None
        stop = centre - self.every * self.delta
        if stop < self.start_epoch or len(self.averages) <= self.delta:
            return None
        current = self.averages[-1]
        previous = self.averages[-1 - self.delta]
        if previous == 0 or not current / previous > self.factor:
            return None
        return stop


class EarlyStopCallback(keras.callbacks.Callback):
    """Feeds the logged eigenvalues to the rule; stops the stage on a fire.

    Runs after `HessianEigenvalueLogger`. On a fire (and when ``armed``) it
    calls ``on_trigger(epoch, stop_epoch)`` (which records it) and sets
    ``model.stop_training``: the stage ends after this epoch's checkpoint.

    Args:
        rule: an `EigenvalueEarlyStop` (holding the history so far).
        on_trigger: ``(epoch, stop_epoch) -> None``.
        armed: whether a fire stops (False: DARTS-ADA's last iteration).
    """

    def __init__(self, rule, on_trigger, armed=True):
        super().__init__()
        self.rule = rule
        self.on_trigger = on_trigger
        self.armed = armed
        self.trigger = None

    def on_epoch_end(self, epoch, logs=None):
        if not logs or EIGENVALUE_KEY not in logs:
            return
        self.rule.update(epoch, logs[EIGENVALUE_KEY])
        stop = self.rule.stop_epoch(epoch)
        if stop is None or not self.armed or self.trigger is not None:
            return
        self.trigger = (epoch, stop)
        self.on_trigger(epoch, stop)
        self.model.stop_training = True


def eigenvalue_history(model_dir, done):
    """``[(epoch, eigenvalue)]`` (0-based) of ``metrics.csv`` rows <= done."""
    import csv

    path = os.path.join(model_dir, "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for row in rows:
        number = int(float(row["epoch"]))
        value = row.get(EIGENVALUE_KEY, "")
        if number <= done and value not in ("", None):
            out.append((number - 1, float(value)))
    return out


# --------------------------------------------------------------------------
# The run: ES and ADA.


@dataclasses.dataclass
class _State:
    weight_decay: float
    iteration: int = 1
    triggers: list = dataclasses.field(default_factory=list)
    stopped: bool = False
    pending_rollback: int = None  # checkpoint number to roll back to

    @classmethod
    def load(cls, model_dir, weight_decay):
        path = os.path.join(model_dir, STATE_FILE)
        if not os.path.exists(path):
            return cls(weight_decay)
        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))

    def save(self, model_dir):
        G.atomic_write(
            os.path.join(model_dir, STATE_FILE),
            json.dumps(dataclasses.asdict(self), indent=1) + "\n",
        )


def _copy_genotype(model_dir, number, name):
    """Copies ``genotypes/epoch_NNN*`` to ``model_dir/name*``."""
    prefix = os.path.join(model_dir, "genotypes", f"epoch_{number:03d}")
    for suffix in (".json", "_normal.png", "_reduce.png"):
        if os.path.exists(prefix + suffix):
            shutil.copyfile(
                prefix + suffix, os.path.join(model_dir, name + suffix)
            )


def _rollback(model_dir, number):
    """Deletes the checkpoints after ``number`` (the rollback target)."""
    directory = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        match = checkpoint.PATTERN.match(name)
        if match and int(match.group(1)) > number:
            os.remove(os.path.join(directory, name))


def _is_final(weight_decay, baselines):
    """DARTS-ADA: no further increase fits under the maximum."""
    raised = weight_decay * baselines.ada_mul_factor
    return raised > baselines.ada_max_weight_decay * (1 + 1e-9)


def stage_callbacks(config, baselines, rule=None, on_trigger=None,
                    armed=True):
    """The callback factory of R-DARTS' eigenvalue (and early stop)."""

    def factory(search, stage_dir, start, steps):
        hessian = hessian_eigen.ValidationHessian(
            search,
            weight_decay=config.arch_weight_decay,
            iterations=baselines.hessian_iterations,
            tolerance=baselines.hessian_tolerance,
            seed=config.seed,
        )
        out = [
            HessianEigenvalueLogger(
                hessian,
                lambda epoch: last_validation_batch(config, epoch, steps),
                baselines.hessian_every,
                config.epochs,
            )
        ]
        if rule is not None:
            for epoch, value in eigenvalue_history(stage_dir, start):
                rule.update(epoch, value)
            out.append(EarlyStopCallback(rule, on_trigger, armed))
        return out

    return factory


def run(config, baselines, strategy, extras):
    """DARTS-ES / DARTS-ADA in ``config.model_dir``; the final genotype."""
    d = config.model_dir
    os.makedirs(d, exist_ok=True)
    state = _State.load(d, config.weight_decay)
    state.save(d)
    if state.pending_rollback is not None:
        _rollback(d, state.pending_rollback)
        state.pending_rollback = None
        state.save(d)
    while not state.stopped:
        rule = EigenvalueEarlyStop(
            baselines.es_window, baselines.hessian_every, config.epochs,
            baselines.es_delta, baselines.es_factor, baselines.es_start_epoch,
        )
        stage_config = dataclasses.replace(
            config,
            weight_decay=state.weight_decay,
            keep_checkpoints=max(config.keep_checkpoints, rule.lag + 2),
        )
        armed = baselines.early_stop == "es" or not _is_final(
            state.weight_decay, baselines
        )

        def on_trigger(epoch, stop, state=state):
            state.triggers.append(
                {"epoch": epoch, "stop_epoch": stop,
                 "weight_decay": state.weight_decay}
            )
            if len(state.triggers) == 1:
                _copy_genotype(d, stop + 1, ES_GENOTYPE)
            if baselines.early_stop == "es":
                state.stopped = True
            else:
                _archive_metrics(d, state.iteration)
                state.pending_rollback = stop + 1
                state.iteration += 1
                state.weight_decay *= baselines.ada_mul_factor
            state.save(d)

        stage_extras = extras.replace(
            callback_factories=[
                stage_callbacks(stage_config, baselines, rule, on_trigger,
                                armed)
            ],
            metadata={"early_stop": baselines.early_stop,
                      "weight_decay": state.weight_decay},
        )
        network, genotype = search_job.run_stage(
            stage_config, d, strategy=strategy, extras=stage_extras
        )
        if state.pending_rollback is not None:  # ADA: roll back, go on
            keras.backend.clear_session()
            _rollback(d, state.pending_rollback)
            state.pending_rollback = None
            state.save(d)
            continue
        if not state.stopped:
            break  # ran to the last epoch
    if state.stopped:  # ES: the stop epoch's genotype is the result
        _copy_genotype(d, state.triggers[0]["stop_epoch"] + 1, "genotype")
    return G.load(os.path.join(d, "genotype.json"))


def _archive_metrics(model_dir, iteration):
    path = os.path.join(model_dir, "metrics.csv")
    if os.path.exists(path):
        os.makedirs(os.path.join(model_dir, ARCHIVE_DIR), exist_ok=True)
        shutil.copyfile(
            path,
            os.path.join(model_dir, ARCHIVE_DIR,
                         f"metrics_iteration_{iteration}.csv"),
        )
