"""Trains a recurrent genotype (``--task=ptb``): the evaluation's library.

DARTS ``rnn/train.py``: the `models.RNNModel` of the genotype (embedding =
hidden = 850, tied, the dropouts of AWD-LSTM), truncated back-propagation
through time with the reference's jittered sequence length and the
learning rate rescaled by ``seq_len / bptt``, hidden state carried across
batches, SGD (learning rate 20, no momentum, coupled weight decay 8e-7,
global-norm clip 0.25) switched to averaged SGD when the validation loss
stops improving (NT-ASGD, `asgd`). After every epoch the validation
perplexity is taken (with the averaged weights once averaging is on);
the best weights so far are kept, and at the end they are evaluated on
the test split (batch 1, as the reference).

Run directory (``--model_dir``)::

    flags.txt, config.json     resolved flags and config
    genotype.json, vocab.txt   the genotype trained, the vocabulary
    checkpoints/               one atomic checkpoint per epoch (weights,
                               optimiser with its averages and NT-ASGD
                               switch, mask counter)
    best.weights.h5, best.json the best validation weights so far
    nt_asgd.json               validation loss per epoch and phase
    metrics.csv, tensorboard/train/
    result.json                best validation and test perplexity, params

Resuming: rerunning the same command restores the newest checkpoint and
goes on; rows after it are dropped. The run directory belongs to one
configuration and genotype (`run_dir`, `check_run_dir`): other flags that
change the model or the data, or another cell, stop the run with one line
before anything is written (`language_config.RESUMABLE` may change,
``--epochs`` only upward).
"""

import dataclasses
import json
import os

import keras
import tensorflow as tf

from tf_amended_darts.core import checkpoint
from tf_amended_darts.core.jsonio import atomic_write
from tf_amended_darts.jobs import callbacks as cnn_callbacks
from tf_amended_darts.jobs import language_callbacks as LC
from tf_amended_darts.jobs import language_config, language_search, run_dir
from tf_amended_darts.language import asgd, corpus, data, evaluation, models
from tf_amended_darts.language import genotype as G

TENSORBOARD_DIR = os.path.join("tensorboard", "train")
BEST_WEIGHTS = "best.weights.h5"
BEST_FILE = "best.json"
HISTORY_FILE = "nt_asgd.json"
RESULT_FILE = "result.json"
VOCAB_FILE = "vocab.txt"


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class LanguageTrainer(keras.Model):
    """Trains an `RNNModel` on the training stream (one step per batch).

    Args:
        network: a built `models.RNNModel`.
        **kwargs: passed to `keras.Model`.
    """

    def __init__(self, network, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self._trackers = {n: keras.metrics.Mean(name=n)
                          for n in ("loss", "nll")}

    @property
    def metrics(self):
        return list(self._trackers.values())

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def compile(self, optimizer, **kwargs):
        self.built = True
        optimizer.build(self.network.trainable_variables)
        super().compile(optimizer=optimizer, **kwargs)

    def train_step(self, data_):
        x, y = data_
        variables = self.network.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.network(x, training=True)
            loss = evaluation.language_loss(y, outputs)
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, variables)
        self._trackers["loss"].update_state(loss)
        self._trackers["nll"].update_state(evaluation.token_nll(y, outputs))
        logs = {name: m.result() for name, m in self._trackers.items()}
        logs["lr"] = self.optimizer.current_learning_rate()
        return logs

    def get_config(self):
        config = super().get_config()
        config["network"] = keras.saving.serialize_keras_object(self.network)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(
            config["network"])
        return cls(**config)


def build_network(config, vocab_size, genotype=None, batch_size=None):
    """The built `RNNModel` of a training config."""
    network = models.RNNModel(
        vocab_size, config.emsize, config.nhid,
        genotype or G.load(config.genotype),
        dropout=config.dropout, dropouth=config.dropouth,
        dropoutx=config.dropoutx, dropouti=config.dropouti,
        dropoute=config.dropoute, tar_beta=config.tar_beta,
        batch_size=batch_size or config.batch_size, seed=config.seed,
    )
    network.build()
    return network


class NTASGDCheck(keras.callbacks.Callback):
    """After each epoch's validation: keep the best, maybe switch to ASGD.

    Reads ``valid_loss`` from the logs (`LC.PerplexityEvaluation` before
    it), writes the best weights, appends to ``nt_asgd.json`` and adds
    ``averaging`` and ``best_valid_ppl`` to the logs.
    """

    def __init__(self, model_dir, network, optimizer, nonmono, start):
        super().__init__()
        self.model_dir = model_dir
        self.network = network
        self.optimizer = optimizer
        self.nonmono = nonmono
        path = os.path.join(model_dir, HISTORY_FILE)
        rows = []
        if os.path.exists(path):
            with open(path) as handle:
                rows = json.load(handle)
        self.rows = [r for r in rows if r["epoch"] <= start]
        self.best = min((r["valid_loss"] for r in self.rows),
                        default=float("inf"))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        loss = float(logs["valid_loss"])
        averaging = self.optimizer.is_averaging
        if loss < self.best:
            self.best = loss
            with self.optimizer.swapped_in(self.network.trainable_variables):
                path = os.path.join(self.model_dir, BEST_WEIGHTS)
                tmp = os.path.join(self.model_dir, ".tmp-" + BEST_WEIGHTS)
                self.network.save_weights(tmp)
                os.replace(tmp, path)
            atomic_write(os.path.join(self.model_dir, BEST_FILE),
                         json.dumps({"epoch": epoch + 1, "valid_loss": loss}))
        if not averaging:
            history = [r["valid_loss"] for r in self.rows
                       if r["phase"] == "sgd"]
            if asgd.should_switch(history, loss, self.nonmono):
                print(f"Epoch {epoch + 1}: validation stalled for "
                      f"{self.nonmono} checks, switching to averaged SGD.")
                self.optimizer.switch_on()
        self.rows.append({"epoch": epoch + 1, "valid_loss": loss,
                          "phase": "asgd" if averaging else "sgd"})
        atomic_write(os.path.join(self.model_dir, HISTORY_FILE),
                     json.dumps(self.rows, indent=1))
        logs["averaging"] = float(self.optimizer.is_averaging)
        logs["best_valid_ppl"] = evaluation.perplexity(self.best)


def _evaluate_averaged(network, optimizer, split, config, step):
    with optimizer.swapped_in(network.trainable_variables):
        return evaluation.evaluate(network, split, config.eval_batch_size,
                                   config.bptt, config.eval_steps, step)


def _cell(genotype):
    return genotype.recurrent, genotype.concat


def check_run_dir(config, genotype=None):
    """Checks ``config`` against the run in its ``--model_dir``; writes
    nothing.

    The flags are compared with ``config.json`` (`run_dir.check`;
    ``--genotype`` by the cell it names, not by its name or path, against
    the run's ``genotype.json``).

    Returns:
        The allowed changes (``--epochs`` upward, logging, ...).

    Raises:
        run_dir.ConfigMismatchError: naming what differs.
    """
    genotype = genotype or G.load(config.genotype)
    changes = run_dir.check(
        config.model_dir,
        dataclasses.asdict(config),
        resumable=language_config.RESUMABLE,
        upward=language_config.UPWARD,
        ignore=("model_dir", "genotype"),
    )
    path = os.path.join(config.model_dir, "genotype.json")
    if os.path.exists(path) and _cell(G.load(path)) != _cell(genotype):
        raise run_dir.other_genotype(config.model_dir, path, config.genotype)
    return changes


def run(config):
    """Trains (or resumes); returns the result dict (``result.json``).

    Raises:
        run_dir.ConfigMismatchError: ``--model_dir`` holds a run of other
            flags or another genotype (nothing is written).
    """
    genotype = G.load(config.genotype)
    changes = check_run_dir(config, genotype)
    language_search.set_up(config)
    text = language_search.load_corpus(config)
    d = config.model_dir
    run_dir.record(d, config.to_json(), changes)
    if changes:
        print(run_dir.describe_changes(changes))
    G.save(genotype, os.path.join(d, "genotype.json"))
    atomic_write(os.path.join(d, VOCAB_FILE), "\n".join(text.vocab) + "\n")
    network = build_network(config, text.vocab_size, genotype)
    trainer = LanguageTrainer(network)
    optimizer = asgd.AveragedSGD(
        config.learning_rate, config.weight_decay,
        global_clipnorm=config.grad_clip or None)
    trainer.compile(optimizer)
    checkpointer = checkpoint.EpochCheckpointer(
        trainer, os.path.join(d, "checkpoints"), config.keep_checkpoints)
    start = checkpointer.restore()
    if start:
        print(f"Resuming {d} after epoch {start}.")
    train = data.batchify(text.train, config.batch_size)
    eval_step = evaluation.make_eval_step(network)
    rescale = LC.LearningRateRescale(optimizer, config.learning_rate)
    artifacts = LC.LanguageArtifacts(
        d, None, os.path.join(d, TENSORBOARD_DIR) if config.tensorboard
        else None, initial_epoch=start)
    fit_callbacks = [
        LC.ResetStates(network),
        rescale,
        LC.PerplexityEvaluation(lambda: _evaluate_averaged(
            network, optimizer, text.valid, config, eval_step)),
        cnn_callbacks.NonFiniteGuard(model_dir=d),
        NTASGDCheck(d, network, optimizer, config.nonmono, start),
        artifacts,
    ]
    for epoch in range(start, config.epochs):
        epoch_data = data.train_epoch(
            train, config.bptt, config.seed, epoch, config.max_seq_len_delta,
            config.steps_per_epoch)
        rescale.set_scales(epoch_data.lr_scales)
        trainer.fit(epoch_data.dataset, initial_epoch=epoch,
                    epochs=epoch + 1, steps_per_epoch=epoch_data.steps,
                    verbose=config.verbose, callbacks=fit_callbacks)
        checkpointer.save(epoch + 1)
    artifacts.close()
    return finish(config, network, text, eval_step)


def finish(config, network, text, eval_step=None):
    """Evaluates the best weights on valid and test; writes result.json."""
    d = config.model_dir
    best = os.path.join(d, BEST_WEIGHTS)
    if os.path.exists(best):
        network.load_weights(best)
    eval_step = eval_step or evaluation.make_eval_step(network)
    valid = evaluation.evaluate(network, text.valid, config.eval_batch_size,
                                config.bptt, config.eval_steps, eval_step)
    test = evaluation.evaluate(network, text.test, config.test_batch_size,
                               config.bptt, config.eval_steps)
    result = {
        "genotype": config.genotype,
        "dataset": config.dataset,
        "params": models.count_params(network),
        "valid_loss": valid,
        "valid_ppl": evaluation.perplexity(valid),
        "test_loss": test,
        "test_ppl": evaluation.perplexity(test),
        "eval_steps": config.eval_steps,
    }
    atomic_write(os.path.join(d, RESULT_FILE),
                 json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result


def load_run(model_dir):
    """``(config, network with the best weights, corpus)`` of a run."""
    from tf_amended_darts.jobs import language_config

    with open(os.path.join(model_dir, "config.json")) as handle:
        config = language_config.LanguageTrainConfig.from_json(handle.read())
    text = corpus.load(config.dataset, config.data_dir, config.vocab_size)
    genotype = G.load(os.path.join(model_dir, "genotype.json"))
    network = build_network(config, text.vocab_size, genotype)
    path = os.path.join(model_dir, BEST_WEIGHTS)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No {BEST_WEIGHTS} in {model_dir}: train it first "
            "(python launchers/retrain.py --task=ptb ...).")
    network.load_weights(path)
    return config, network, text


def model_info(genotype, vocab_size, emsize):
    """Parameter count of the evaluation model of a genotype."""
    net = models.RNNModel(vocab_size, emsize, emsize, G.load(genotype))
    net.build()
    return {"genotype": str(genotype), "task": "ptb", "kind": "recurrent",
            "vocab_size": vocab_size, "emsize": emsize, "nhid": emsize,
            "params": models.count_params(net)}
