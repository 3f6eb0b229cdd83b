"""Runs an architecture search from a `SearchConfig`: the launcher's library.

Run directory (``--model_dir``)::

    flags.txt, config.json       resolved flags and config
    genotype.json (+ PNGs)       the final genotype (of stage 2 for
                                 --edges=searched)
    checkpoints/                 one atomic checkpoint per epoch
    genotypes/, arch_history.npz, metrics.csv, tensorboard/search/
                                 per-epoch artefacts (callbacks.py)
    stage1/, stage2/             the same, per stage, for --edges=searched

Resuming: rerunning the same command finds the newest checkpoint and goes on
from the epoch after it; a finished stage is not rerun. Each epoch's data
pipeline is built from ``(seed, epoch)``, so a resumed run sees the same
batches as an uninterrupted one.
"""

import json
import os
import shutil

import keras
import tensorflow as tf

from tf_amended_darts import callbacks, data, engine
from tf_amended_darts import genotype as G
from tf_amended_darts.checkpoint import EpochCheckpointer
from tf_amended_darts.optimizers import EpochCosineDecay, TorchAdam, TorchSGD
from tf_amended_darts.supernet import SearchNetwork

PAIRS_FILE = "stage1_pairs.json"


def _data(config, epoch):
    return data.search_datasets(
        config.dataset, config.batch_size, config.train_portion,
        data_dir=config.data_dir, seed=config.seed, cutout=config.cutout,
        image_size=config.image_size or None, epoch=epoch)


def build_search(config, num_classes, steps_per_epoch, image_size,
                 edges=None, stage=1, node_inputs=None):
    """The `BilevelSearch` model of one stage, compiled."""
    space = config.search_space()
    network = SearchNetwork(
        num_classes, operators=space.operators, layers=space.layers,
        init_channels=space.init_channels, edges=edges or config.edges,
        stage=stage, node_inputs=node_inputs,
        shared=space.shared_per_cell_type, steps=space.steps,
        multiplier=space.multiplier, arch_init_scale=config.arch_init_scale,
        seed=config.seed)
    network.build((None, image_size, image_size, 3))
    search = engine.BilevelSearch(network, arch_grad=config.arch_grad,
                                  eta=config.eta, hvp=config.hvp)
    schedule = EpochCosineDecay(config.weight_lr, config.weight_lr_min,
                                config.epochs, steps_per_epoch)
    search.compile(
        weight_optimizer=TorchSGD(
            schedule, config.momentum, config.weight_decay,
            global_clipnorm=config.grad_clip or None),
        arch_optimizer=TorchAdam(
            config.arch_lr, config.arch_beta1, config.arch_beta2,
            coupled_weight_decay=config.arch_weight_decay))
    return search


def run_stage(config, stage_dir, edges=None, stage=1, node_inputs=None):
    """Searches one stage in ``stage_dir``, resuming; returns the network."""
    os.makedirs(stage_dir, exist_ok=True)
    _, steps, info = _data(config, 0)
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)
    search = build_search(config, info.num_classes, steps, info.image_size,
                          edges, stage, node_inputs)
    network = search.network
    checkpointer = EpochCheckpointer(
        search, os.path.join(stage_dir, "checkpoints"),
        keep=config.keep_checkpoints)
    start = checkpointer.restore()
    if start:
        print(f"Resuming {stage_dir} after epoch {start}.")
    artifacts = callbacks.SearchArtifacts(
        network, stage_dir, tensorboard=config.tensorboard,
        initial_epoch=start)
    guard = callbacks.NonFiniteGuard(model_dir=stage_dir)
    for epoch in range(start, config.epochs):
        pairs, _, _ = _data(config, epoch)
        search.fit(pairs, initial_epoch=epoch, epochs=epoch + 1,
                   steps_per_epoch=steps, verbose=config.verbose,
                   callbacks=[guard, artifacts])
        checkpointer.save(epoch + 1)
    artifacts.close()
    _write_final(network.genotype(metadata={
        "epochs": config.epochs, "arch_grad": config.arch_grad,
        "eta": config.eta, "space": config.space, "edges": config.edges,
        "stage": stage}), stage_dir)
    return network


def _write_final(genotype, directory):
    from tf_amended_darts import visualize

    G.save(genotype, os.path.join(directory, "genotype.json"))
    visualize.plot_genotype(genotype, os.path.join(directory, "genotype"))


def run(config):
    """Runs the whole search; returns the final `genotype.Genotype`."""
    os.makedirs(config.model_dir, exist_ok=True)
    G.atomic_write(os.path.join(config.model_dir, "config.json"),
                   config.to_json())
    keras.utils.set_random_seed(config.seed)
    if not config.grappler:
        tf.config.optimizer.set_experimental_options(
            {"disable_meta_optimizer": True})
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.edges != "searched":
        run_stage(config, config.model_dir)
        final_dir = config.model_dir
    else:
        pairs_path = os.path.join(config.model_dir, PAIRS_FILE)
        stage1 = os.path.join(config.model_dir, "stage1")
        if not os.path.exists(pairs_path):
            network = run_stage(config, stage1, "searched", 1)
            G.atomic_write(pairs_path, json.dumps(network.stage1_pairs()))
        with open(pairs_path) as f:
            pairs = json.load(f)
        keras.utils.set_random_seed(config.seed + 1)
        stage2 = os.path.join(config.model_dir, "stage2")
        run_stage(config, stage2, "searched", 2, _node_inputs(pairs, config))
        final_dir = stage2
    genotype = G.load(os.path.join(final_dir, "genotype.json"))
    if final_dir != config.model_dir:
        for name in os.listdir(final_dir):
            if name.startswith("genotype") and "." in name:
                shutil.copyfile(os.path.join(final_dir, name),
                                os.path.join(config.model_dir, name))
    return genotype


def _node_inputs(pairs, config):
    """Stage-1 pairs as the stage-2 network's ``node_inputs``."""
    pairs = {k: [list(p) for p in v] for k, v in pairs.items()}
    if config.search_space().shared_per_cell_type:
        return pairs
    return [pairs[f"cell_{i}"] for i in range(len(pairs))]
