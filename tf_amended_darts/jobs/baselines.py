"""Runs a search with the baselines' flags: the search launcher's library.

`run` builds the hooks a `baseline_config.BaselineConfig` asks for
(`stage_extras.StageExtras`) and runs the search they belong to:

* PC-DARTS (``--partial_channels``, ``--edge_normalization``), the
  architecture warm-up and gradient clip: hooks of the ordinary search
  (`search.run_search`), composable with any ``--arch_grad``;
* R-DARTS' eigenvalue (``--hessian_every``): a hook of the ordinary
  search; with ``--early_stop=es|ada`` the search runs under `rdarts.run`;
* P-DARTS (``--progressive_layers``): `progressive.run`, the ordinary
  search once per stage.

With none of these flags the search is exactly `search.run`'s. Every run
writes the search's run directory (``config.json``, ``genotype.json``,
``metrics.csv``, ``tensorboard/``, ``checkpoints/``; per stage for P-DARTS)
plus ``baselines.json`` (this config) and resumes the same way.
"""

import dataclasses
import os

from tf_amended_darts.core import engine
from tf_amended_darts.core.distribute import is_chief
from tf_amended_darts.jobs import progressive, rdarts, run_dir, search
from tf_amended_darts.jobs.baseline_config import BaselineConfig
from tf_amended_darts.jobs.stage_extras import StageExtras
from tf_amended_darts.vision import genotype as G

BASELINES_FILE = "baselines.json"


def _warmup(start):
    def factory(search_model, stage_dir, first, steps):
        return [engine.ArchWarmup(start)]

    return factory


def stage_extras(config, baselines):
    """The hooks every stage of this run gets (PC-DARTS, warm-up, clip)."""
    kwargs = {}
    if baselines.partial_channels > 1:
        kwargs["partial_channels"] = baselines.partial_channels
    if baselines.edge_normalization:
        kwargs["edge_normalization"] = True
    factories = ()
    if baselines.arch_warmup_epochs:
        factories = (_warmup(baselines.arch_warmup_epochs),)
    metadata = {}
    for name in ("partial_channels", "edge_normalization",
                 "arch_warmup_epochs"):
        value = getattr(baselines, name)
        if value and value != 1:
            metadata[name] = value
    return StageExtras(
        network_kwargs=kwargs,
        arch_clipnorm=baselines.arch_grad_clip,
        callback_factories=factories,
        metadata=metadata,
    )


def check_run_dir(config, baselines):
    """`search.check_run_dir`, and ``baselines`` against ``baselines.json``.

    Every baseline flag changes the search, so none may change on resume.

    Returns:
        The search's allowed changes (``--epochs`` upward, logging, ...).

    Raises:
        run_dir.ConfigMismatchError: naming each differing flag; nothing
            is written.
    """
    changes = search.check_run_dir(config)
    run_dir.check(
        config.model_dir,
        dataclasses.asdict(baselines),
        ignore=(),
        defaults=dataclasses.asdict(BaselineConfig()),
        name=BASELINES_FILE,
    )
    return changes


def run(config, baselines):
    """Runs the search ``config`` with ``baselines``; the final genotype."""
    changes = check_run_dir(config, baselines)
    strategy = search.set_up(config)
    if is_chief(strategy):
        run_dir.record(config.model_dir, config.to_json(), changes)
        G.atomic_write(os.path.join(config.model_dir, BASELINES_FILE),
                       baselines.to_json())
    extras = stage_extras(config, baselines)
    if baselines.progressive:
        return progressive.run(config, baselines, strategy, extras)
    if baselines.early_stop != "none":
        return rdarts.run(config, baselines, strategy, extras)
    if baselines.hessian_every:
        extras = extras.replace(
            callback_factories=[rdarts.stage_callbacks(config, baselines)]
        )
    return search.run_search(config, strategy, extras).genotype
