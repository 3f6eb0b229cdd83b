"""Random search with keras-tuner: sample genotypes, train, keep the best.

The DARTS paper's random-search baseline (../shared/baselines.md section
4; `random_search_config`). keras-tuner's `RandomSearchOracle` samples the
genotypes and owns the search's state:

* the space is one ``Choice`` per node and cell type (or per cell, for
  per-cell spaces) for the node's input pair (``C(j + 2, 2)`` pairs of
  distinct inputs) and one per input for its operator (an index into the
  edge's operators other than ``none``), so uniform values are uniform
  genotypes, and keras-tuner's duplicate check (by the values' hash) never
  trains one genotype twice;
* each trial trains the re-training network of its genotype
  (`retrainer.build_network`, `retrainer.build_retrainer`: the re-training
  recipe) for ``--epochs`` on the search-train half and scores it on the
  search-validation half, un-augmented (``val_accuracy``, the objective);
* resuming is keras-tuner's: the oracle's state (its seed state, the trials
  done, the one running) is saved at every trial's start and end (written
  atomically here), and a rerun puts an interrupted trial back to the front
  of the queue with the same id and genotype; inside a trial, an epoch
  checkpoint resumes its training. So after ``kill -9`` and a rerun no
  trial is lost or repeated, and the genotypes are those of an
  uninterrupted run (tests/jobs/test_random_search.py).

Run directory (``--model_dir``)::

    config.json, flags.txt        the config and the launcher's flags
    genotype.json (+ PNGs)        the best trial's genotype
    metrics.csv                   one row per finished trial
    tensorboard/random_search/    val_accuracy and best-so-far per trial
    tuner/                        keras-tuner: oracle.json, tuner0.json and
      trial_NN/                   per trial: trial.json (keras-tuner),
                                  genotype.json, checkpoints/, result.json
"""

import csv
import io
import json
import math
import os
import shutil

import keras
import keras_tuner
import tensorflow as tf

from tf_amended_darts.core import checkpoint, graph_settings
from tf_amended_darts.jobs import retrain_config, summaries
from tf_amended_darts.jobs.retrainer import build_network, build_retrainer
from tf_amended_darts.nn.drop_path import DropPathSchedule
from tf_amended_darts.vision import data, visualize
from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision import search_space as S

OBJECTIVE = "val_accuracy"
TUNER_DIR = "tuner"
TENSORBOARD_DIR = os.path.join("tensorboard", "random_search")
METRIC_COLUMNS = ("trial", "val_accuracy", "val_loss", "params", "genotype")


# --------------------------------------------------------------------------
# The space: keras-tuner hyperparameters <-> genotypes.


def _cell_keys(space, layers):
    if space.shared_per_cell_type:
        return list(S.cell_types_present(layers))
    return [f"cell_{i}" for i in range(layers)]


def _edge_choices(space, key):
    """Per edge (pruned order), its operators other than ``none``."""
    steps = space.steps
    count = S.num_edges("pruned", steps)
    if space.edge_operators is not None:
        lists = space.edge_operators[key]
    else:
        lists = [space.operators] * count
    return [[op for op in ops if op != S.NONE_OP] for ops in lists]


def hyperparameters(space, layers):
    """The keras-tuner space of ``space``'s discrete cells."""
    hp = keras_tuner.HyperParameters()
    for key in _cell_keys(space, layers):
        choices = _edge_choices(space, key)
        for j in range(space.steps):
            hp.Choice(f"{key}/node{j}/pair",
                      list(range(len(S.input_pairs(j)))))
            width = len(choices[0])
            for n in range(S.INPUTS_PER_NODE):
                hp.Choice(f"{key}/node{j}/op{n}", list(range(width)))
    return hp


def genotype_from_values(values, space, layers, metadata=None):
    """The `Genotype` keras-tuner's ``values`` stand for."""
    cells = {}
    for key in _cell_keys(space, layers):
        choices = _edge_choices(space, key)
        gene, offset = [], 0
        for j in range(space.steps):
            pair = S.input_pairs(j)[values[f"{key}/node{j}/pair"]]
            for n, i in enumerate(pair):
                ops = choices[offset + i]
                gene.append((ops[values[f"{key}/node{j}/op{n}"]], i))
            offset += j + S.NUM_CELL_INPUTS
        cells[key] = tuple(gene)
    concat = space.concat
    if space.shared_per_cell_type:
        return G.Genotype(normal=cells["normal"], normal_concat=concat,
                          reduce=cells["reduce"], reduce_concat=concat,
                          metadata=metadata)
    reductions = set(S.reduction_indices(layers))
    return G.Genotype(cells=tuple(
        G.CellGenotype(cells[f"cell_{i}"], concat, i in reductions)
        for i in range(layers)), metadata=metadata)


# --------------------------------------------------------------------------
# keras-tuner with atomic state files.


def _atomic_json(path, state):
    G.atomic_write(path, json.dumps(state))


class GenotypeOracle(keras_tuner.oracles.RandomSearchOracle):
    """keras-tuner's random-search oracle; its files written atomically
    (keras-tuner writes them in place: a kill could tear them)."""

    def save(self):
        _atomic_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        _atomic_json(
            os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"),
            trial.get_state(),
        )


class GenotypeTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Runs each trial: trains its genotype's network, returns its score.

    Args:
        config: the `random_search_config.RandomSearchConfig`.
        oracle: a `GenotypeOracle` over `hyperparameters`.
    """

    def __init__(self, config, oracle):
        self.config = config
        self.space = config.search_space()
        super().__init__(oracle, directory=config.model_dir,
                         project_name=TUNER_DIR)

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        _atomic_json(self._get_tuner_fname(), self.get_state())

    def on_search_begin(self):
        self.save()  # so that a rerun reloads the oracle's state

    def run_trial(self, trial, *args, **kwargs):
        try:
            return train_trial(
                self.config, self.space, trial,
                self.get_trial_dir(trial.trial_id))
        except Exception as err:  # a broken trial stops the search
            raise keras_tuner.errors.FatalError(
                f"Trial {trial.trial_id} failed: {err!r}") from err

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        write_summary(self.config, self.oracle)


# --------------------------------------------------------------------------
# One trial.


def _halves(config, epoch, batch_size):
    """(train half, un-augmented validation half) of ``epoch``."""
    common = dict(
        data_dir=config.data_dir, seed=config.seed,
        image_size=config.image_size or None, epoch=epoch,
    )
    pairs, steps, _ = data.search_datasets(
        config.dataset, batch_size, config.train_portion,
        cutout=config.cutout, **common)
    train = pairs.map(lambda t, v: t)
    held_out, _, _ = data.search_datasets(
        config.dataset, batch_size, config.train_portion,
        augment_val=False, **common)
    return train, held_out.map(lambda t, v: v), steps


def _retrain_config(config, trial_dir):
    return retrain_config.RetrainConfig(
        genotype=os.path.join(trial_dir, "genotype.json"),
        model_dir=trial_dir,
        dataset=config.dataset,
        data_dir=config.data_dir,
        image_size=config.image_size,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        learning_rate_min=config.learning_rate_min,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        grad_clip=config.grad_clip,
        layers=config.layers,
        init_channels=config.init_channels,
        auxiliary=config.auxiliary,
        auxiliary_weight=config.auxiliary_weight,
        drop_path_prob=config.drop_path_prob,
        cutout=config.cutout,
        seed=config.seed,
        verbose=config.verbose,
    )


def train_trial(config, space, trial, trial_dir):
    """Trains ``trial``'s genotype in ``trial_dir`` (resuming); its score."""
    result_path = os.path.join(trial_dir, "result.json")
    if os.path.exists(result_path):  # trained, killed before keras-tuner
        with open(result_path, encoding="utf-8") as handle:  # saved it
            return json.load(handle)["metrics"]
    genotype = genotype_from_values(
        trial.hyperparameters.values, space, config.layers,
        metadata={"random_search_trial": trial.trial_id})
    path = os.path.join(trial_dir, "genotype.json")
    if not os.path.exists(path):
        G.save(genotype, path)
    rc = _retrain_config(config, trial_dir)
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed + int(trial.trial_id))
    _, _, steps = _halves(config, 0, config.batch_size)
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)
    net = build_network(rc, genotype)
    model = build_retrainer(rc, net, steps)
    ckpt = checkpoint.EpochCheckpointer(
        model, os.path.join(trial_dir, "checkpoints"),
        config.keep_checkpoints)
    schedule = DropPathSchedule(config.drop_path_prob, config.epochs)
    for epoch in range(ckpt.restore(), config.epochs):
        train, _, _ = _halves(config, epoch, config.batch_size)
        model.fit(train, initial_epoch=epoch, epochs=epoch + 1,
                  steps_per_epoch=steps, verbose=config.verbose,
                  callbacks=[schedule])
        ckpt.save(epoch + 1)
    _, held_out, _ = _halves(config, 0, config.batch_size)
    logs = model.evaluate(held_out, verbose=0, return_dict=True)
    metrics = {OBJECTIVE: float(logs["top1"]), "val_loss": float(logs["loss"])}
    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"Non-finite trial metrics {metrics}")
    from tf_amended_darts.vision import network

    G.atomic_write(result_path, json.dumps({
        "metrics": metrics, "params": network.count_params(net),
        "genotype": G.to_dict(genotype)}, indent=1) + "\n")
    return metrics


# --------------------------------------------------------------------------
# The run directory.


def _finished(oracle):
    done = [oracle.trials[t] for t in oracle.end_order]
    return [t for t in done
            if t.status == keras_tuner.engine.trial.TrialStatus.COMPLETED]


def write_summary(config, oracle):
    """``metrics.csv``, ``genotype.json`` and TensorBoard from the oracle."""
    d = config.model_dir
    rows, best = [], None
    for trial in _finished(oracle):
        trial_dir = os.path.join(d, TUNER_DIR, f"trial_{trial.trial_id}")
        with open(os.path.join(trial_dir, "result.json"),
                  encoding="utf-8") as handle:
            result = json.load(handle)
        score = result["metrics"][OBJECTIVE]
        rows.append({"trial": trial.trial_id, "val_accuracy": score,
                     "val_loss": result["metrics"]["val_loss"],
                     "params": result["params"],
                     "genotype": os.path.join(trial_dir, "genotype.json")})
        if best is None or score > best[0]:  # ties: the earlier trial
            best = (score, trial_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    G.atomic_write(os.path.join(d, "metrics.csv"), buffer.getvalue())
    if best is None:
        return
    shutil.copyfile(os.path.join(best[1], "genotype.json"),
                    os.path.join(d, "genotype.json"))
    if config.tensorboard:
        _write_tensorboard(d, rows)


def _write_tensorboard(d, rows):
    directory = os.path.join(d, TENSORBOARD_DIR)
    os.makedirs(directory, exist_ok=True)
    writer = tf.summary.create_file_writer(directory)
    number = len(rows)
    summaries.write_session_start(writer, number)
    best = max(r["val_accuracy"] for r in rows)
    with writer.as_default(step=number):
        tf.summary.scalar("val_accuracy", rows[-1]["val_accuracy"])
        tf.summary.scalar("best_val_accuracy", best)
    writer.close()


def run(config):
    """Runs (or resumes) the random search; returns the best genotype."""
    keras.utils.set_random_seed(config.seed)
    graph_settings.configure(
        config.grappler, config.op_tracebacks, config.deterministic
    )
    os.makedirs(config.model_dir, exist_ok=True)
    G.atomic_write(os.path.join(config.model_dir, "config.json"),
                   config.to_json())
    space = config.search_space()
    oracle = GenotypeOracle(
        objective=keras_tuner.Objective(OBJECTIVE, "max"),
        max_trials=config.trials,
        seed=config.seed,
        hyperparameters=hyperparameters(space, config.layers),
        allow_new_entries=False,
        tune_new_entries=False,
    )
    tuner = GenotypeTuner(config, oracle)
    tuner.search()
    write_summary(config, tuner.oracle)
    path = os.path.join(config.model_dir, "genotype.json")
    genotype = G.load(path)
    visualize.plot_genotype(genotype, os.path.join(config.model_dir,
                                                   "genotype"))
    return genotype
