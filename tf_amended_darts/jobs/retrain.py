"""Re-trains a network from a genotype: the re-training launcher's library.

Follows DARTS ``cnn/train.py`` (CIFAR) and ``cnn/train_imagenet.py``
(ImageNet) with the paper's settings (../shared/method.md section 7):

* loss ``CE(logits) + auxiliary_weight * CE(aux_logits)`` in training mode
  (both with label smoothing ``--label_smoothing``, as the reference's
  ``CrossEntropyLabelSmooth`` on ImageNet); the test loss is plain CE;
* `optimizers.TorchSGD`: PyTorch momentum, coupled weight decay on every
  weight, global-norm gradient clip (``nn.utils.clip_grad_norm_``);
* learning rate constant within an epoch: ``cosine`` is DARTS'
  ``CosineAnnealingLR(optimizer, epochs)`` stepped per epoch
  (`optimizers.EpochCosineDecay`); ``linear`` is the paper's ImageNet
  schedule "lr 0.5 decayed linearly" (`EpochLinearDecay`: from
  ``learning_rate`` at epoch 0 towards ``learning_rate_min`` (0) reached
  after the last epoch);
* drop-path ramped linearly, ``drop_path_prob * epoch / epochs`` at the
  start of each epoch (`DropPathSchedule`);
* every epoch ends with an evaluation on the test split (top-1, top-5).

Run directory (``--model_dir``)::

    flags.txt, config.json     resolved flags (launcher) and config
    genotype.json              the genotype trained
    checkpoints/               atomic checkpoints: ckpt-NNNN (end of epoch
                               N), ckpt-NNNN-step-SSSSSS (epoch N, step S)
    config_changes.txt         flags changed on resume (run_dir.py)
    metrics.csv                per epoch: lr, drop-path, train loss/top-1/
                               top-5, test loss/top-1/top-5
    tensorboard/retrain/       the same scalars, step = epoch number
    final.weights.h5           the trained network's weights (no optimiser)
    result.json                final test errors (percent) and parameters

With ``--seeds=0,1,2`` each seed trains in ``model_dir/seed_<s>/`` (the
layout above) and ``model_dir/summary.json`` holds the mean and sample
standard deviation (``ddof=1``, as ``numpy.std(..., ddof=1)``; ``null``
for one seed) of the test errors over the seeds, as the paper's tables.

Resuming: rerunning the same command loads the newest readable checkpoint
(weights, optimiser state, batch-norm statistics, drop-path seed-generator
states, metric states; at an epoch's end, or within an epoch with
``--checkpoint_every_steps`` or after SIGTERM / SIGINT) and goes on from
there (`resume.Resumable`); each epoch's data pipeline is built from
``(seed, epoch)`` and the batches already consumed are skipped. With
``--deterministic`` a resumed run ends with exactly the weights and
metrics of an uninterrupted one. Rows of ``metrics.csv`` after the
restored epoch are dropped. The run directory belongs to one configuration
(`check_run_dir`): flags that change the model or the data stop the run
before anything is written. Accuracies are fractions; errors in
``result.json`` and ``summary.json`` are percentages.

Distribution (``--strategy``, ``--num_gpus``; `distribute.make_strategy`):
``--batch_size`` is the global batch, split evenly over the replicas; the
network, the `Retrainer` and its optimiser are built in the strategy's
scope. Gradients are the cross-replica mean, clipped as one replica would
(`replicas.apply_mean_gradients`). Batch norm keeps per-replica batch
statistics (as PyTorch's ``DataParallel`` and ``DistributedDataParallel``
do); drop-path masks are drawn per replica. With more than one replica the
last partial training batch of an epoch is dropped (a replica could
otherwise get no example), so an epoch has ``floor(n / batch)`` steps.
``multi_worker`` trains with `custom_loop.custom_fit` and evaluates with
`custom_loop.custom_evaluate` (Keras' ``fit`` fails under it); only the
chief writes the run directory.

Mixed precision (``--dtype_policy``): the policy is passed to the network
(``dtype=``; no process-global Keras setting), so its layers compute in
float16 / bfloat16 while every variable stays float32; batch norm keeps
float32 statistics and the classifiers float32 logits (see `network`), and
the losses are computed in float32. ``mixed_float16`` wraps `TorchSGD` in
a `keras.optimizers.LossScaleOptimizer` (dynamic loss scaling: the loss is
multiplied by the scale before the backward pass; a step with non-finite
gradients is skipped and halves the scale). The wrapper divides the
gradients by the scale before `TorchSGD` clips them by global norm and
adds the coupled decay, so the clip acts on the true gradients, as
PyTorch's ``GradScaler.unscale_`` then ``clip_grad_norm_`` (with several
replicas `replicas.apply_mean_gradients` clips the unscaled
cross-replica mean). The
scale and its step counter are optimiser variables: checkpoints hold them
and a resumed run goes on with them. ``mixed_bfloat16`` needs no scaling
(float32's exponent range). Parameter counts and the genotype do not
depend on the policy.
"""

import csv
import dataclasses
import io
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts.core import custom_loop, distribute, graph_settings
from tf_amended_darts.jobs import resume, retrain_config, run_dir, summaries
from tf_amended_darts.jobs.retrainer import (
    base_optimizer,
    build_network,
    build_retrainer,
)
from tf_amended_darts.nn.drop_path import DropPathSchedule
from tf_amended_darts.vision import data, network
from tf_amended_darts.vision import genotype as G

CONFIG_FILE = "config.json"
GENOTYPE_FILE = "genotype.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = os.path.join("tensorboard", "retrain")
FINAL_WEIGHTS = "final.weights.h5"
RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"
SEED_DIR = "seed_{}"
STD_DDOF = 1  # sample standard deviation over seeds
METRIC_COLUMNS = (
    "epoch",
    "learning_rate",
    "drop_path_prob",
    "train_loss",
    "train_top1",
    "train_top5",
    "test_loss",
    "test_top1",
    "test_top5",
    "seconds",
)
# Keras log key -> metrics.csv column.
_LOG_COLUMNS = {
    "loss": "train_loss",
    "top1": "train_top1",
    "top5": "train_top5",
    "val_loss": "test_loss",
    "val_top1": "test_top1",
    "val_top5": "test_top5",
}


# --------------------------------------------------------------------------
# Loss, schedule and the training model.


# --------------------------------------------------------------------------
# Building from a config.


def steps_per_epoch(config, drop_remainder=False):
    """Training steps per epoch: all batches (last one partial), capped.

    With ``drop_remainder`` the last partial batch does not count.
    """
    info = data.dataset_info(config.dataset, config.image_size or None)
    steps = info.num_train / config.batch_size
    steps = math.floor(steps) if drop_remainder else math.ceil(steps)
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)
    return steps


def train_data(config, epoch, drop_remainder=False):
    """The training batches of ``epoch`` (a fresh, seeded pipeline)."""
    return data.train_dataset(
        config.dataset,
        config.batch_size,
        data_dir=config.data_dir,
        seed=config.seed,
        cutout=config.cutout,
        image_size=config.image_size or None,
        download=config.download,
        manual_dir=config.manual_dir,
        drop_remainder=drop_remainder,
        epoch=epoch,
    )


def eval_data(config, batch_size=None):
    """The un-augmented test split."""
    return data.eval_dataset(
        config.dataset,
        batch_size or config.batch_size,
        data_dir=config.data_dir,
        image_size=config.image_size or None,
        download=config.download,
        manual_dir=config.manual_dir,
    )


def set_up(config):
    """Seeds and graph settings (`graph_settings.configure`)."""
    keras.utils.set_random_seed(config.seed)
    graph_settings.configure(
        config.grappler, config.op_tracebacks, config.deterministic
    )


# --------------------------------------------------------------------------
# Per-epoch artefacts.


class _EpochLog:
    """``metrics.csv`` and the TensorBoard scalars of one run directory.

    ``read_only`` (a non-chief worker): reads the rows, writes nothing.
    """

    def __init__(self, model_dir, tensorboard, start, read_only=False):
        self.path = os.path.join(model_dir, METRICS_FILE)
        self.read_only = read_only
        self.rows = []
        if os.path.exists(self.path):
            with open(self.path, newline="", encoding="utf-8") as f:
                self.rows = list(csv.DictReader(f))
        kept = [r for r in self.rows if int(r["epoch"]) <= start]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._save()
        self.writer = None
        if tensorboard and not read_only:

            directory = os.path.join(model_dir, TENSORBOARD_DIR)
            os.makedirs(directory, exist_ok=True)
            self.writer = tf.summary.create_file_writer(directory)
            # Purges plotted epochs > start of an interrupted run.
            summaries.write_session_start(self.writer, start + 1)

    def _save(self):
        if self.read_only:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, METRIC_COLUMNS, restval="", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(self.rows)
        G.atomic_write(self.path, buffer.getvalue())

    def add(self, row):
        self.rows.append({k: _format(row.get(k, "")) for k in METRIC_COLUMNS})
        self._save()
        if self.writer is not None:
            with self.writer.as_default(step=int(row["epoch"])):
                for key, value in row.items():
                    if key != "epoch":
                        tf.summary.scalar(key, value)
            self.writer.flush()

    def last(self):
        return self.rows[-1] if self.rows else None

    def close(self):
        if self.writer is not None:
            self.writer.close()


class _StopAfterOneEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def _format(value):
    return repr(float(value)) if isinstance(value, float) else str(value)


def _save_final_weights(net, path):
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".tmp-{name}")
    net.save_weights(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json(value):
    return json.dumps(value, indent=1, sort_keys=True) + "\n"


def _write_json(path, value):
    G.atomic_write(path, _json(value))


def _cells(genotype):
    """A genotype's dict without its free-form metadata."""
    return {k: v for k, v in G.to_dict(genotype).items() if k != "metadata"}


def check_run_dir(config, genotype=None):
    """Checks ``config`` against the run in its ``--model_dir``; writes
    nothing.

    The flags are compared with ``config.json`` (`run_dir.check`;
    ``--genotype`` by the cells it names, not by its path), and the
    genotype with the run's ``genotype.json`` (of each seed's directory
    with ``--seeds``).

    Returns:
        The allowed changes (``--epochs`` upward, logging, ...).

    Raises:
        run_dir.ConfigMismatchError: naming what differs.
    """
    genotype = genotype or config.load_genotype()
    changes = run_dir.check(
        config.model_dir,
        config.to_dict(),
        resumable=retrain_config.RESUMABLE,
        upward=retrain_config.UPWARD,
        ignore=("model_dir", "genotype"),
        defaults=retrain_config.DEFAULTS,
    )
    dirs = [config.model_dir]
    if config.seeds:
        dirs = [seed_dir(config.model_dir, s) for s in config.seeds]
    for directory in dirs:
        path = os.path.join(directory, GENOTYPE_FILE)
        if os.path.exists(path) and _cells(G.load(path)) != _cells(genotype):
            raise run_dir.other_genotype(
                config.model_dir, path, config.genotype)
    return changes


# --------------------------------------------------------------------------
# Runs.


def _fit_one_epoch(model, config, epoch, run, test, callbacks, drop):
    """One epoch of training then evaluation; the epoch's logs.

    ``run`` (a `resume.Resumable`) skips the batches a step checkpoint's
    epoch already consumed and adds the per-step checkpoint callback.
    """
    strategy = model.distribute_strategy
    if drop:
        train = train_data(config, epoch, drop_remainder=True)
    else:
        train = train_data(config, epoch)
    train, steps = run.epoch_data(epoch, train)
    callbacks = callbacks + run.callbacks()
    if not distribute.is_multi_worker(strategy):
        # fit to the last epoch, stopped after this one: Keras then shows
        # "Epoch e/epochs" and the callbacks get the true epoch index.
        history = model.fit(
            train,
            validation_data=test,
            initial_epoch=epoch,
            epochs=config.epochs,
            steps_per_epoch=steps,
            verbose=config.verbose,
            callbacks=callbacks + [_StopAfterOneEpoch()],
        )
        return {k: v[-1] for k, v in history.history.items()}
    history = custom_loop.custom_fit(
        model,
        train,
        initial_epoch=epoch,
        epochs=epoch + 1,
        steps_per_epoch=steps,
        verbose=config.verbose,
        callbacks=callbacks,
    )
    logs = {k: v[-1] for k, v in history.history.items()}
    if test is not None:
        evaluated = custom_loop.custom_evaluate(model, test)
        logs.update({f"val_{k}": v for k, v in evaluated.items()})
    return logs


def run_one(config, strategy=None):
    """Trains one seed in ``config.model_dir``, resuming; returns result.

    Args:
        config: the `RetrainConfig`.
        strategy: a `tf.distribute.Strategy` (default: the current one).

    Returns:
        The dict written to ``result.json``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    genotype = config.load_genotype()
    changes = check_run_dir(config, genotype)
    if chief:
        run_dir.record(config.model_dir, _json(config.to_dict()), changes)
        G.save(genotype, os.path.join(config.model_dir, GENOTYPE_FILE))
    set_up(config)
    # More than one replica: no partial batch (a replica could get none).
    drop = strategy.num_replicas_in_sync > 1
    steps = steps_per_epoch(config, drop)
    with strategy.scope():
        net = build_network(config, genotype)
        model = build_retrainer(config, net, steps)
    run = resume.Resumable(
        model,
        os.path.join(config.model_dir, CHECKPOINT_DIR),
        steps_per_epoch=steps,
        keep=config.keep_checkpoints,
        every_steps=config.checkpoint_every_steps,
        strategy=strategy,
    )
    start = run.position.epoch
    if start > config.epochs or (
        start == config.epochs and run.position.step
    ):
        raise ValueError(
            f"Invalid --epochs={config.epochs}: --model_dir="
            f"{config.model_dir} holds a checkpoint of "
            f"{run.position.describe()}. Pass --epochs >= {start + 1}, or "
            "a new --model_dir."
        )
    if run.position != (0, 0):
        print(
            f"Resuming {config.model_dir} after {run.position.describe()}."
        )
    log = _EpochLog(
        config.model_dir, config.tensorboard, start, read_only=not chief
    )
    test = eval_data(config) if start < config.epochs else None
    drop_path = DropPathSchedule(config.drop_path_prob, config.epochs)
    for epoch in range(start, config.epochs):
        began = time.time()
        lr = float(base_optimizer(model.optimizer).current_learning_rate())
        logs = _fit_one_epoch(
            model, config, epoch, run, test, [drop_path], drop
        )
        _check_finite(logs, epoch, config.model_dir)
        row = {
            _LOG_COLUMNS[k]: float(v)
            for k, v in logs.items()
            if k in _LOG_COLUMNS
        }
        row.update(
            epoch=epoch + 1,
            learning_rate=lr,
            drop_path_prob=net.drop_path_prob,
            seconds=time.time() - began,
        )
        log.add(row)
        run.end_epoch(epoch + 1)
    log.close()
    final = log.last()
    if final is None or int(final["epoch"]) != config.epochs:
        final = evaluate_model(model, eval_data(config))
        top1, top5 = final["top1"], final["top5"]
    else:
        top1, top5 = float(final["test_top1"]), float(final["test_top5"])
    result = {
        "dataset": config.dataset,
        "epochs": config.epochs,
        "seed": config.seed,
        "genotype": config.genotype,
        "params": network.count_params(net),
        "params_with_aux": network.count_params(net, include_aux=True),
        "test_top1_accuracy": top1,
        "test_top5_accuracy": top5,
        "test_top1_error": 100.0 * (1.0 - top1),
        "test_top5_error": 100.0 * (1.0 - top5),
    }
    if chief:
        _save_final_weights(net, os.path.join(config.model_dir, FINAL_WEIGHTS))
        _write_json(os.path.join(config.model_dir, RESULT_FILE), result)
    return result


def _check_finite(logs, epoch, model_dir):
    bad = {k: v for k, v in logs.items() if not math.isfinite(float(v))}
    if bad:
        raise FloatingPointError(
            f"Non-finite values {bad} at epoch {epoch + 1}; the last "
            f"checkpoint in {model_dir} is intact. Lower --learning_rate "
            "and rerun to resume."
        )


def evaluate_model(model, dataset):
    """``{"loss", "top1", "top5"}`` of a `Retrainer` on ``dataset``."""
    if distribute.is_multi_worker(model.distribute_strategy):
        return custom_loop.custom_evaluate(model, dataset)
    logs = model.evaluate(dataset, verbose=0, return_dict=True)
    return {k: float(v) for k, v in logs.items()}


def summarize(results):
    """Mean and sample std (ddof 1) of the test errors of several runs.

    Args:
        results: the ``result.json`` dicts of the seeds.

    Returns:
        ``{"seeds", "num_runs", "std_ddof", "params", "test_top1_error":
        {"mean", "std", "values"}, "test_top5_error": {...}}``; ``std`` is
        ``None`` for a single run.
    """
    out = {
        "seeds": [r["seed"] for r in results],
        "num_runs": len(results),
        "std_ddof": STD_DDOF,
        "params": results[0]["params"] if results else None,
    }
    for key in ("test_top1_error", "test_top5_error"):
        values = np.asarray([r[key] for r in results], dtype=np.float64)
        std = None
        if len(values) > STD_DDOF:
            std = float(np.std(values, ddof=STD_DDOF))
        out[key] = {
            "mean": float(values.mean()) if len(values) else None,
            "std": std,
            "values": values.tolist(),
        }
    return out


def load_config(model_dir):
    """The `RetrainConfig` of a single-seed run directory.

    Its ``genotype`` is the run's own ``genotype.json``, so the directory
    can move.

    Raises:
        FileNotFoundError: naming ``--model_dir`` when it holds no run.
        ValueError: naming ``--model_dir`` for a multi-seed directory.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    genotype = os.path.join(model_dir, GENOTYPE_FILE)
    if not (os.path.isfile(path) and os.path.isfile(genotype)):
        raise FileNotFoundError(
            f"--model_dir={model_dir} holds no re-training run (no "
            f"{CONFIG_FILE} and {GENOTYPE_FILE})."
        )
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    if values.get("seeds"):
        seeds = ", ".join(seed_dir(model_dir, s) for s in values["seeds"])
        raise ValueError(
            f"--model_dir={model_dir} holds a multi-seed run; pass one "
            f"seed's directory: {seeds}."
        )
    values["genotype"] = genotype
    return retrain_config.RetrainConfig.from_json(json.dumps(values))


def seed_dir(model_dir, seed):
    """``model_dir/seed_<seed>``."""
    return os.path.join(model_dir, SEED_DIR.format(seed))


def run(config):
    """Re-trains per ``config``: one run, or one per ``--seeds`` seed.

    Returns:
        The ``result.json`` dict of a single run, or the ``summary.json``
        dict of a multi-seed run.
    """
    strategy = distribute.make_strategy(config.strategy, config.num_gpus)
    distribute.per_replica_batch_size(config.batch_size, strategy)
    if not config.seeds:
        return run_one(config, strategy)
    chief = distribute.is_chief(strategy)
    changes = check_run_dir(config)
    if chief:
        run_dir.record(config.model_dir, _json(config.to_dict()), changes)
    results = []
    for seed in config.seeds:
        one = dataclasses.replace(
            config,
            seed=seed,
            seeds=(),
            model_dir=seed_dir(config.model_dir, seed),
        )
        results.append(run_one(one, strategy))
        keras.backend.clear_session()
    summary = summarize(results)
    if chief:
        _write_json(os.path.join(config.model_dir, SUMMARY_FILE), summary)
    return summary
