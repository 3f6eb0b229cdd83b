"""Runs an architecture search from a `SearchConfig`: the launcher's library.

Run directory (``--model_dir``)::

    flags.txt, config.json       resolved flags and config
    genotype.json (+ PNGs)       the final genotype (of stage 2 for
                                 --edges=searched)
    checkpoints/                 atomic checkpoints: ckpt-NNNN (end of
                                 epoch N), ckpt-NNNN-step-SSSSSS (epoch
                                 N, step S; core/checkpoint.py)
    config_changes.txt           flags changed on resume (run_dir.py)
    genotypes/, arch_history.npz, metrics.csv, tensorboard/search/
                                 per-epoch artefacts (callbacks.py)
    stopping.json                the stop rule's state (jobs/stopping.py)
    stage1/, stage2/             the same, per stage, for --edges=searched

Resuming: rerunning the same command finds the newest readable checkpoint
(an epoch's end, or a step within an epoch: ``--checkpoint_every_steps``,
SIGTERM / SIGINT) and goes on from there (`resume.Resumable`); a finished
stage is not rerun. Each epoch's data pipeline is built from ``(seed,
epoch)`` and the batches a step checkpoint's epoch already consumed are
skipped, so a resumed run sees the same batches as an uninterrupted one.
The run directory belongs to one configuration (`run_dir`): a rerun with
flags that change the model or the data stops before writing anything.

Search to convergence (``--stop_when_stable=K``, `stopping`): a stage ends
once its derived genotype has not changed for K epochs (``--epochs`` is
the upper bound); the count survives a resume, and ``genotype.json``'s
metadata records ``stable_since_epoch`` and ``epochs_run``. Stability
indicators and the gradient fidelity (``--fidelity_every``) are logged per
epoch by `monitors`.

Distribution (``--strategy``, ``--num_gpus``; `distribute.make_strategy`):
``--batch_size`` is the global batch of each half, split evenly over the
replicas; the model and its optimisers are built in the strategy's scope.
``default`` and ``mirrored`` train with ``fit``; ``multi_worker`` with
`custom_loop.custom_fit` (Keras' ``fit`` fails under it), with one process
per worker (launch: `distribute` module docstring). Every worker computes
the same updates; only the chief writes the run directory, and every
worker resumes from the chief's checkpoints in the shared ``--model_dir``.

Consistency (``--consistency``, or ``--auxiliary`` / ``--drop_path_prob``
/ ``--cutout`` one by one; `search_config`): the supernet gets the auxiliary
head, whose loss (times ``--auxiliary_weight``) is part of both the training
and the validation loss of the bi-level problem, and drop-path on every
candidate operator but identity, ramped linearly from 0 at each stage's
first epoch to ``--drop_path_prob`` (`DropPathSchedule`). Within one
search step every pass of the architecture step (the validation pass and
the estimator's products on the training batch) and the weight step use the
same drop-path masks (the masks are a function of the seed state, which
only the weight step advances): ``H``, ``D`` and ``v`` are derivatives of
one function, and the weights are trained on the sub-network whose
architecture gradient was just taken.
"""

import ctypes
import dataclasses
import json
import os
import shutil
from typing import NamedTuple

import keras
import tensorflow as tf

from tf_amended_darts.core import (
    custom_loop,
    distribute,
    engine,
    graph_settings,
)
from tf_amended_darts.core.optimizers import (
    EpochCosineDecay,
    TorchAdam,
    TorchSGD,
)
from tf_amended_darts.jobs import (
    callbacks,
    monitors,
    precision,
    resume,
    run_dir,
    search_config,
    stopping,
)
from tf_amended_darts.jobs.stage_extras import StageExtras
from tf_amended_darts.nn.drop_path import DropPathSchedule
from tf_amended_darts.nn.recompute import check_replicas
from tf_amended_darts.vision import data
from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision.supernet import SearchNetwork

PAIRS_FILE = "stage1_pairs.json"
# glibc mallopt(3) parameters (malloc.h); the value set for both is
# --malloc_threshold_kb (search_config.MALLOC_THRESHOLD_KB). With glibc's
# dynamic mmap threshold, freed activation-sized blocks stay in the heap;
# at 64 KiB the 3-cell amended exact step peaked at 5.4 GB instead of
# 6.0 GB (benchmarks/s1_cpu.md, section 2), but every large tensor is then
# a fresh mapping whose pages fault in anew: S1 first_order ran 2.3x
# slower per step on the 2-core host (section 16).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


class SearchResult(NamedTuple):
    """What `run_search` returns.

    Attributes:
        genotype: the final `genotype.Genotype`.
        network: the final stage's `SearchNetwork` (trained).
    """

    genotype: G.Genotype
    network: SearchNetwork


def announce(line):
    """Prints a progress line at once (the trace announcements of the
    search step, `BilevelSearch.announce_traces`)."""
    print(line, flush=True)


def _data(config, epoch):
    return data.search_datasets(
        config.dataset,
        config.batch_size,
        config.train_portion,
        data_dir=config.data_dir,
        seed=config.seed,
        cutout=config.cutout,
        image_size=config.image_size or None,
        epoch=epoch,
    )


def _search_network(
    config, space, num_classes, image_size, edges, stage, node_inputs,
    extra_kwargs=None,
):
    """The built `SearchNetwork` of one stage."""
    # The space's per-edge operators (R-DARTS' S1); a baseline's win.
    kwargs = {"edge_operators": space.edge_operators_for(space.layers)}
    kwargs.update(extra_kwargs or {})
    network = SearchNetwork(
        num_classes,
        operators=space.operators,
        layers=space.layers,
        init_channels=space.init_channels,
        edges=edges or config.edges,
        stage=stage,
        node_inputs=node_inputs,
        shared=space.shared_per_cell_type,
        steps=space.steps,
        multiplier=space.multiplier,
        arch_init_scale=config.arch_init_scale,
        seed=config.seed,
        auxiliary=config.auxiliary,
        drop_path_prob=config.drop_path_prob,
        recompute_cells=config.recompute_cells,
        dtype=config.dtype_policy,
        **kwargs,
    )
    try:
        network.build((None, image_size, image_size, 3))
    except (ValueError, ZeroDivisionError) as err:
        if not config.auxiliary:
            raise
        raise ValueError(
            f"Invalid --image_size={config.image_size} ({image_size}x"
            f"{image_size} images of --dataset={config.dataset}) for "
            f"--auxiliary: the auxiliary head (after cell "
            f"{network.aux_index}) needs at least 8x8 features, i.e. 32x32 "
            "images; use --image_size=32 or --noauxiliary. "
            f"({type(err).__name__}: {err})"
        ) from None
    return network


def build_search(
    config,
    num_classes,
    steps_per_epoch,
    image_size,
    edges=None,
    stage=1,
    node_inputs=None,
    extras=None,
):
    """The `BilevelSearch` model of one stage, compiled.

    ``extras``: a baseline's `stage_extras.StageExtras` (network arguments,
    architecture-gradient clip), or None.
    """
    extras = extras or StageExtras()
    # Cells create their layers without `dtype`: they take the global
    # policy, set while the network is made (--dtype_policy).
    with precision.dtype_policy(config.dtype_policy):
        network = _search_network(
            config,
            config.search_space(),
            num_classes,
            image_size,
            edges,
            stage,
            node_inputs,
            extras.network_kwargs,
        )
    search = engine.BilevelSearch(
        network,
        arch_grad=config.arch_grad,
        eta=config.eta,
        hvp=config.hvp,
        aux_weight=config.auxiliary_weight if config.auxiliary else 0.0,
    )
    if config.verbose:  # a second-order step traces for minutes
        search.announce_traces = announce
    schedule = EpochCosineDecay(
        config.weight_lr, config.weight_lr_min, config.epochs, steps_per_epoch
    )
    search.compile(
        weight_optimizer=TorchSGD(
            schedule,
            config.momentum,
            config.weight_decay,
            global_clipnorm=config.grad_clip or None,
        ),
        arch_optimizer=TorchAdam(
            config.arch_lr,
            config.arch_beta1,
            config.arch_beta2,
            coupled_weight_decay=config.arch_weight_decay,
            global_clipnorm=extras.arch_clipnorm or None,
        ),
    )
    return search


def run_stage(
    config,
    stage_dir,
    edges=None,
    stage=1,
    node_inputs=None,
    strategy=None,
    extras=None,
):
    """Searches one stage in ``stage_dir``, resuming.

    A callback that sets ``model.stop_training`` ends the stage after that
    epoch's checkpoint (R-DARTS' early stop).

    Args:
        config: the `SearchConfig`.
        stage_dir: the stage's run directory.
        edges: edge layout (default ``config.edges``).
        stage: 1 or 2 (``searched`` edges).
        node_inputs: stage 2's kept pairs.
        strategy: a `tf.distribute.Strategy` (default: the current one).
        extras: a baseline's `stage_extras.StageExtras`, or None.

    Returns:
        ``(network, genotype)``: the trained `SearchNetwork` and the
        genotype derived from it (written to ``stage_dir`` by the chief).
    """
    strategy = strategy or tf.distribute.get_strategy()
    extras = extras or StageExtras()
    chief = distribute.is_chief(strategy)
    if chief:
        os.makedirs(stage_dir, exist_ok=True)
    _, steps, info = _data(config, 0)
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)
    with strategy.scope():
        search = build_search(
            config,
            info.num_classes,
            steps,
            info.image_size,
            edges,
            stage,
            node_inputs,
            extras,
        )
    network = search.network
    run = resume.Resumable(
        search,
        os.path.join(stage_dir, "checkpoints"),
        steps_per_epoch=steps,
        keep=config.keep_checkpoints,
        every_steps=config.checkpoint_every_steps,
        strategy=strategy,
    )
    start = run.position.epoch
    if run.position != (0, 0):
        print(f"Resuming {stage_dir} after {run.position.describe()}.")
    fit_callbacks = [callbacks.NonFiniteGuard(model_dir=stage_dir)]
    if config.drop_path_prob:
        # Ramped per stage over its epochs, as re-training ramps it.
        fit_callbacks.append(
            DropPathSchedule(config.drop_path_prob, config.epochs)
        )
    # Stop rule and stability indicators (--stop_when_stable,
    # --fidelity_every): logged through the logs, before SearchArtifacts.
    stopper = stopping.for_stage(config.stop_when_stable, stage_dir, start)
    fit_callbacks += monitors.stage_callbacks(
        config, search, stopper, chief, lambda: next(iter(_data(config, 0)[0]))
    )
    # Baseline callbacks (R-DARTS eigenvalue, P-DARTS skip dropout), also
    # before SearchArtifacts: values they add to the logs reach its files.
    fit_callbacks += extras.callbacks(search, stage_dir, start, steps)
    artifacts = None
    if chief:
        artifacts = callbacks.SearchArtifacts(
            network,
            stage_dir,
            tensorboard=config.tensorboard,
            initial_epoch=start,
        )
        fit_callbacks.append(artifacts)
    multi_worker = distribute.is_multi_worker(strategy)
    for epoch in range(start, config.epochs):
        if stopper.should_stop:
            break
        pairs, epoch_steps = run.epoch_data(epoch, _data(config, epoch)[0])
        fit_args = dict(
            initial_epoch=epoch,
            epochs=epoch + 1,
            steps_per_epoch=epoch_steps,
            verbose=config.verbose,
            callbacks=fit_callbacks + run.callbacks(),
        )
        if multi_worker:
            custom_loop.custom_fit(search, pairs, **fit_args)
        else:
            search.fit(pairs, **fit_args)
        run.end_epoch(epoch + 1)
        if search.stop_training:
            break
    genotype = network.genotype(
        metadata={
            "epochs": config.epochs,
            "arch_grad": config.arch_grad,
            "eta": config.eta,
            "space": config.space,
            "edges": config.edges,
            "stage": stage,
            **stopper.metadata(),
            **extras.metadata,
        }
    )
    if chief:
        artifacts.close()
        _write_final(genotype, stage_dir)
    return network, genotype


def _write_final(genotype, directory):
    from tf_amended_darts.vision import visualize

    G.save(genotype, os.path.join(directory, "genotype.json"))
    visualize.plot_genotype(genotype, os.path.join(directory, "genotype"))


def set_up(config):
    """Builds the strategy, then seeds and configures TensorFlow.

    The strategy comes first: ``multi_worker`` must be created before any
    other TensorFlow work of the process.

    Returns:
        The `tf.distribute.Strategy` of ``--strategy``.

    Raises:
        ValueError: naming ``--strategy``, ``--num_gpus`` or
            ``--batch_size`` (not a multiple of the replica count), or
            ``--recompute_cells`` with several replicas.
    """
    strategy = distribute.make_strategy(config.strategy, config.num_gpus)
    distribute.per_replica_batch_size(config.batch_size, strategy)
    check_replicas(config.recompute_cells, strategy.num_replicas_in_sync)
    return_freed_memory(config.malloc_threshold_kb)
    keras.utils.set_random_seed(config.seed)
    graph_settings.configure(
        config.grappler, config.op_tracebacks, config.deterministic
    )
    return strategy


def return_freed_memory(threshold_kb=search_config.MALLOC_THRESHOLD_KB):
    """Makes glibc return freed large blocks to the system (Linux only).

    Sets the mmap and trim thresholds to ``threshold_kb`` KiB, as the
    environment variables ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` would at start-up; 0 leaves glibc's own
    (dynamic) thresholds. A no-op elsewhere.

    Returns:
        True when glibc accepted both settings; False when nothing was set.
    """
    if not threshold_kb:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(
        mallopt(parameter, threshold_kb * 1024) == 1
        for parameter in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)
    )


def run_search(config, strategy, extras=None):
    """Runs the whole search under ``strategy`` (from `set_up`).

    ``extras``: a baseline's `stage_extras.StageExtras` for every stage.

    Returns:
        A `SearchResult`: the final genotype and network.
    """
    chief = distribute.is_chief(strategy)
    changes = check_run_dir(config)
    if chief:
        run_dir.record(config.model_dir, config.to_json(), changes)
    if config.edges != "searched":
        network, genotype = run_stage(
            config, config.model_dir, strategy=strategy, extras=extras
        )
        final_dir = config.model_dir
    else:
        pairs_path = os.path.join(config.model_dir, PAIRS_FILE)
        stage1 = os.path.join(config.model_dir, "stage1")
        if not os.path.exists(pairs_path):
            network, _ = run_stage(
                config, stage1, "searched", 1, strategy=strategy,
                extras=extras,
            )
            # Through JSON, as a resumed run reads them.
            pairs = json.loads(json.dumps(network.stage1_pairs()))
            if chief:
                G.atomic_write(pairs_path, json.dumps(pairs))
        else:
            with open(pairs_path) as f:
                pairs = json.load(f)
        keras.utils.set_random_seed(config.seed + 1)
        stage2 = os.path.join(config.model_dir, "stage2")
        network, genotype = run_stage(
            config,
            stage2,
            "searched",
            2,
            _node_inputs(pairs, config),
            strategy=strategy,
            extras=extras,
        )
        final_dir = stage2
    if not chief:
        return SearchResult(genotype, network)
    genotype = G.load(os.path.join(final_dir, "genotype.json"))
    if final_dir != config.model_dir:
        for name in os.listdir(final_dir):
            if name.startswith("genotype") and "." in name:
                shutil.copyfile(
                    os.path.join(final_dir, name),
                    os.path.join(config.model_dir, name),
                )
    return SearchResult(genotype, network)


def check_run_dir(config):
    """`run_dir.check` of ``config`` against its ``--model_dir``.

    Returns:
        The allowed changes (``--epochs`` upward, logging, ...).

    Raises:
        run_dir.ConfigMismatchError: naming each flag that differs from
            the run already in ``--model_dir``; nothing is written.
    """
    return run_dir.check(
        config.model_dir,
        dataclasses.asdict(config),
        resumable=search_config.RESUMABLE,
        upward=search_config.UPWARD,
        defaults=dataclasses.asdict(search_config.SearchConfig("_")),
    )


def run(config):
    """Runs the whole search; returns the final `genotype.Genotype`."""
    return run_search(config, set_up(config)).genotype


def _node_inputs(pairs, config):
    """Stage-1 pairs as the stage-2 network's ``node_inputs``."""
    pairs = {k: [list(p) for p in v] for k, v in pairs.items()}
    if config.search_space().shared_per_cell_type:
        return pairs
    return [pairs[f"cell_{i}"] for i in range(len(pairs))]
