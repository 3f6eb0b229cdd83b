"""P-DARTS on the search engine: progressive stages driving the search.

Chen et al., ICCV 2019 (chenxin061/pdarts ``train_search.py``;
../shared/baselines.md section 2). Stage ``s`` (``--progressive_layers``,
``--progressive_ops``) searches a fresh supernet of ``layers[s]`` cells
whose edges mix the operators still switched on (``ops[s]`` per edge; all
of the space's in the first stage) with the ordinary search
(`search.run_stage`: the same estimator, ``--arch_grad``, the same
artefacts and resuming). Between stages the weakest operators of each edge
are switched off by their softmax weights (`progressive.drop_weakest`);
after the last, `progressive.final_genotype` keeps one operator per edge,
two edges per node, and at most ``--max_skip_connects`` skip-connections in
the normal cell. Within a stage: architecture steps from epoch
``--arch_warmup_epochs`` (P-DARTS 10) and dropout on skip-connections at
``--progressive_skip_dropout[s]``, scheduled per epoch
(`progressive.skip_dropout_rate`).

Only the switches pass from one stage to the next, as in the reference
(new weights and alphas, fresh optimisers and schedules);
``--progressive_carry_alpha`` starts each stage's alphas from the previous
stage's logits of the operators kept instead.

Run directory (``--model_dir``)::

    stage1/, stage2/, ...        each a search run directory (checkpoints,
                                 metrics.csv, tensorboard/, genotypes/)
    stage1_switches.json, ...    the switches after each stage, with the
                                 stage's softmax weights and logits: the
                                 resume marker of a finished stage
    genotype.json (+ PNGs)       the final genotype (skip rule applied)
    genotype_unconstrained.json  the same without the skip rule
"""

import dataclasses
import json
import os

import keras
import numpy as np

from tf_amended_darts.jobs import search as search_job
from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision import progressive as P
from tf_amended_darts.vision import search_space as S
from tf_amended_darts.vision import visualize

SWITCHES_FILE = "stage{}_switches.json"
UNCONSTRAINED = "genotype_unconstrained"


class SkipDropoutSchedule(keras.callbacks.Callback):
    """Sets the network's skip-dropout rate at the start of each epoch.

    Args:
        network: the stage's `SearchNetwork` (built with the rate > 0).
        rate: the stage's rate.
        epochs: the stage's epochs.
        warmup: epochs before the architecture steps (``eps_no_arch``).
    """

    def __init__(self, network, rate, epochs, warmup):
        super().__init__()
        self.network = network
        self.rate = rate
        self.epochs = epochs
        self.warmup = warmup

    def on_epoch_begin(self, epoch, logs=None):
        self.network.skip_dropout_prob = P.skip_dropout_rate(
            self.rate, epoch, self.epochs, self.warmup
        )

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["skip_dropout_prob"] = self.network.skip_dropout_prob


def _stage_probs(network):
    """``{key: softmax(alpha)}`` over each edge's active operators."""
    out = {}
    for key, alpha in network.alphas.items():
        a = alpha.numpy().astype(np.float64)
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        out[key] = e / e.sum(axis=-1, keepdims=True)
    return out


def _load(path):
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    return {
        "switches": {k: np.asarray(v, bool)
                     for k, v in data["switches"].items()},
        "logits": {k: np.asarray(v) for k, v in data["logits"].items()},
        "previous": {k: np.asarray(v, bool)
                     for k, v in data["previous"].items()},
    }


def _carry_alpha(previous, kept, logits):
    """Logits of the operators ``kept`` (switches), from the previous
    stage's ``logits`` over its switches ``previous``."""
    out = np.zeros((len(kept), int(kept[0].sum())))
    for e in range(len(kept)):
        columns = np.flatnonzero(previous[e])
        row = [logits[e][list(columns).index(k)]
               for k in np.flatnonzero(kept[e])]
        out[e] = row
    return out


def run(config, baselines, strategy, extras):
    """P-DARTS in ``config.model_dir``; returns the final genotype."""
    d = config.model_dir
    space = config.search_space()
    if config.edges != "pruned" or not space.shared_per_cell_type or (
        space.edge_operators is not None
    ):
        raise ValueError(
            f"Invalid --space={config.space} / --edges={config.edges} for "
            "--progressive_layers: P-DARTS searches a shared space (one "
            "operator list on every edge) with --edges=pruned."
        )
    operators = space.operators
    stages = baselines.stages
    if len(operators) != baselines.progressive_ops[0]:
        raise ValueError(
            f"Invalid --progressive_ops={list(baselines.progressive_ops)}: "
            f"the first stage mixes all {len(operators)} operators of "
            f"--space={config.space} ({', '.join(operators)})."
        )
    switches, carried = None, None
    for s in range(stages):
        path = os.path.join(d, SWITCHES_FILE.format(s + 1))
        if os.path.exists(path):  # stage done: its switches decide
            done = _load(path)
            switches, carried = done["switches"], done
            continue
        stage_config = dataclasses.replace(
            config, layers=baselines.progressive_layers[s]
        )
        keys = S.cell_types_present(stage_config.layers)
        edges = S.num_edges("pruned", stage_config.search_space().steps)
        if switches is None:
            switches = {k: P.initial_switches(operators, edges) for k in keys}
        network_kwargs = {
            "edge_operators": {
                k: P.active_operators(switches[k], operators) for k in keys
            }
        }
        rate = (baselines.progressive_skip_dropout[s]
                if baselines.progressive_skip_dropout else 0.0)
        factories = []
        if rate:
            network_kwargs["skip_dropout_prob"] = rate

            def schedule(search, stage_dir, start, steps, rate=rate):
                return [SkipDropoutSchedule(
                    search.network, rate, config.epochs,
                    baselines.arch_warmup_epochs)]

            factories.append(schedule)
        if baselines.progressive_carry_alpha and carried is not None:

            def carry(search, stage_dir, start, steps, carried=carried,
                      keys=keys):
                if start == 0:
                    for k in keys:
                        search.network.alphas[k].assign(_carry_alpha(
                            carried["previous"][k], carried["switches"][k],
                            carried["logits"][k]))
                return []

            factories.append(carry)
        stage_extras = extras.replace(
            network_kwargs=network_kwargs,
            callback_factories=factories,
            metadata={"pdarts_stage": s + 1},
        )
        keras.utils.set_random_seed(config.seed + s)
        network, _ = search_job.run_stage(
            stage_config, os.path.join(d, f"stage{s + 1}"),
            strategy=strategy, extras=stage_extras,
        )
        probs = _stage_probs(network)
        logits = {k: network.alphas[k].numpy().tolist() for k in keys}
        if s == stages - 1:
            return _finish(d, switches, probs, operators, baselines,
                           stage_config)
        kept = {
            k: P.drop_weakest(switches[k], probs[k],
                              baselines.progressive_ops[s + 1], operators)
            for k in keys
        }
        G.atomic_write(path, json.dumps({
            "operators": list(operators),
            "previous": {k: v.tolist() for k, v in switches.items()},
            "switches": {k: v.tolist() for k, v in kept.items()},
            "probs": {k: v.tolist() for k, v in probs.items()},
            "logits": logits,
        }, indent=1) + "\n")
        carried = _load(path)
        switches = kept
        keras.backend.clear_session()
    raise ValueError("--progressive_layers is empty.")


def _finish(d, switches, probs, operators, baselines, config):
    steps = config.search_space().steps
    metadata = {"method": "p_darts", "stages": baselines.stages,
                "arch_grad": config.arch_grad}
    cap = baselines.max_skip_connects
    for name, limit in ((UNCONSTRAINED, None),
                        ("genotype", None if cap < 0 else cap)):
        genotype = P.final_genotype(
            switches["normal"], probs["normal"], switches["reduce"],
            probs["reduce"], operators, limit, steps,
            metadata={**metadata, "max_skip_connects": limit},
        )
        G.save(genotype, os.path.join(d, f"{name}.json"))
        visualize.plot_genotype(genotype, os.path.join(d, name))
    return genotype
