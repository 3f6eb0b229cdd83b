"""Searches a recurrent cell (``--task=ptb``): the launcher's library.

The DARTS recurrent search (``rnn/train_search.py``) on the project's
bi-level engine, unchanged: `engine.BilevelSearch` wraps a
`models.SearchRNNModel`, every estimator (``--arch_grad``, ``--hvp``) runs
as on the CNN, and a step is the architecture step on a validation batch
(Adam on ``alpha``) then the weight step on a training batch (SGD, global
norm clip 0.25, coupled weight decay, learning rate ``20 * seq_len /
bptt``). The loss is the mean token NLL plus the temporal activation
regulariser on the training stream (`evaluation.language_loss`): ``L_val``
is the validation batch's NLL, ``L_train`` what the weight step minimises
(DARTS' ``architect.py`` leaves the regulariser out of its copy of
``L_train``; here ``H`` and ``D`` are the derivatives of the objective the
weights follow). ``second_order``'s virtual step clips its gradient at
``--grad_clip``, as DARTS' recurrent architect does.

Run directory (``--model_dir``)::

    flags.txt, config.json       resolved flags and config
    genotype.json, genotype.png  the latest genotype ("kind": "recurrent")
    genotypes/epoch_NNN.{json,png}
    arch_history.npz             softmax weights per epoch
    metrics.csv                  per epoch: loss, val_loss, ppl, val_ppl,
                                 valid_loss, valid_ppl (inference mode),
                                 g1/g2/arch_grad norms, lr
    checkpoints/                 one atomic checkpoint per epoch
    tensorboard/search/          scalars, alpha heat maps, genotype text

Resuming: rerunning the same command restores the newest checkpoint
(weights, alphas, both optimisers, moving statistics, mask counter) and
goes on with the next epoch; each epoch's batches come from ``(seed,
epoch)``, so a resumed run repeats an uninterrupted one (with
``--deterministic``, exactly). A NaN or Inf stops the run before the
epoch's checkpoint (`callbacks.NonFiniteGuard`). The run directory belongs
to one configuration (`run_dir`): a rerun whose flags change the model or
the data stops with one line naming them, before anything is written;
logging, checkpoint retention, the data's location and the graph settings
may change (`language_config.RESUMABLE`), ``--epochs`` only upward.
"""

import dataclasses
import os

import keras

from tf_amended_darts.core import checkpoint, engine, graph_settings
from tf_amended_darts.core.optimizers import TorchAdam, TorchSGD
from tf_amended_darts.jobs import callbacks as cnn_callbacks
from tf_amended_darts.jobs import language_callbacks as LC
from tf_amended_darts.jobs import language_config, run_dir
from tf_amended_darts.jobs import search as cnn_search
from tf_amended_darts.language import (
    corpus,
    data,
    evaluation,
    models,
    visualize,
)
from tf_amended_darts.language import genotype as G

TENSORBOARD_DIR = os.path.join("tensorboard", "search")


def set_up(config):
    """Seeds, graph settings (`graph_settings.configure`); one device."""
    cnn_search.return_freed_memory(config.malloc_threshold_kb)
    keras.utils.set_random_seed(config.seed)
    graph_settings.configure(
        config.grappler, config.op_tracebacks, config.deterministic
    )


def build_search(config, vocab_size):
    """The compiled `BilevelSearch` over a built `SearchRNNModel`."""
    network = models.SearchRNNModel(
        vocab_size,
        config.emsize,
        config.nhid,
        steps=config.nodes,
        arch_init_scale=config.arch_init_scale,
        dropout=config.dropout,
        dropouth=config.dropouth,
        dropoutx=config.dropoutx,
        dropouti=config.dropouti,
        dropoute=config.dropoute,
        tar_beta=config.tar_beta,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    network.build()
    search = engine.BilevelSearch(
        network,
        arch_grad=config.arch_grad,
        eta=config.eta,
        hvp=config.hvp,
        loss=evaluation.language_loss,
        classification=False,
        virtual_step_clip_norm=config.grad_clip or None,
    )
    if config.verbose:  # a second-order step traces for minutes
        search.announce_traces = cnn_search.announce
    search.compile(
        weight_optimizer=TorchSGD(
            config.weight_lr,
            config.momentum,
            config.weight_decay,
            global_clipnorm=config.grad_clip or None,
        ),
        arch_optimizer=TorchAdam(
            config.arch_lr,
            config.arch_beta1,
            config.arch_beta2,
            coupled_weight_decay=config.arch_weight_decay,
        ),
    )
    return search


def load_corpus(config):
    """The corpus of ``--dataset`` (PTB files or the offline corpus)."""
    return corpus.load(config.dataset, config.data_dir, config.vocab_size)


def check_run_dir(config):
    """`run_dir.check` of ``config`` against its ``--model_dir``; writes
    nothing.

    Returns:
        The allowed changes (``--epochs`` upward, logging, ...).

    Raises:
        run_dir.ConfigMismatchError: naming each flag that differs from
            the run already in ``--model_dir``.
    """
    return run_dir.check(
        config.model_dir,
        dataclasses.asdict(config),
        resumable=language_config.RESUMABLE,
        upward=language_config.UPWARD,
    )


def run(config):
    """Runs (or resumes) the search; returns the final `RecurrentGenotype`.

    Raises:
        corpus.MissingCorpusError: PTB files absent (one-line message).
        run_dir.ConfigMismatchError: ``--model_dir`` holds a run of other
            flags (nothing is written).
    """
    changes = check_run_dir(config)
    set_up(config)
    text = load_corpus(config)
    run_dir.record(config.model_dir, config.to_json(), changes)
    if changes:
        print(run_dir.describe_changes(changes))
    train = data.batchify(text.train, config.batch_size)
    valid = data.batchify(text.valid, config.batch_size)
    search = build_search(config, text.vocab_size)
    network = search.network
    checkpointer = checkpoint.EpochCheckpointer(
        search, os.path.join(config.model_dir, "checkpoints"),
        config.keep_checkpoints,
    )
    start = checkpointer.restore()
    if start:
        print(f"Resuming {config.model_dir} after epoch {start}.")
    eval_step = evaluation.make_eval_step(network)
    rescale = LC.LearningRateRescale(search.weight_optimizer,
                                     config.weight_lr)
    artifacts = LC.LanguageArtifacts(
        config.model_dir, network,
        os.path.join(config.model_dir, TENSORBOARD_DIR)
        if config.tensorboard else None,
        initial_epoch=start,
    )
    fit_callbacks = [
        LC.ResetStates(network),
        rescale,
        LC.PerplexityEvaluation(
            lambda: evaluation.evaluate(
                network, text.valid, config.eval_batch_size, config.bptt,
                config.eval_steps, eval_step,
            )
        ),
        cnn_callbacks.NonFiniteGuard(model_dir=config.model_dir),
        artifacts,
    ]
    for epoch in range(start, config.epochs):
        epoch_data = data.search_epoch(
            train, valid, config.bptt, config.seed, epoch,
            config.steps_per_epoch,
        )
        rescale.set_scales(epoch_data.lr_scales)
        search.fit(
            epoch_data.dataset,
            initial_epoch=epoch,
            epochs=epoch + 1,
            steps_per_epoch=epoch_data.steps,
            verbose=config.verbose,
            callbacks=fit_callbacks,
        )
        checkpointer.save(epoch + 1)
    artifacts.close()
    genotype = network.genotype(metadata={
        "epochs": config.epochs,
        "arch_grad": config.arch_grad,
        "eta": config.eta,
        "hvp": config.hvp,
        "dataset": config.dataset,
        "consistency": config.consistency,
    })
    G.save(genotype, os.path.join(config.model_dir, "genotype.json"))
    visualize.plot_genotype(
        genotype, os.path.join(config.model_dir, "genotype"),
        f"{config.arch_grad}, {config.epochs} epochs",
    )
    return genotype
