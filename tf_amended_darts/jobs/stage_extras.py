"""What a baseline adds to one search stage (`search.run_stage`'s hooks).

The search job builds the supernet, the bi-level model and the callbacks of
a stage; a baseline (../shared/baselines.md) changes only:

* arguments of the supernet (`supernet.SearchNetwork`): PC-DARTS' partial
  channels and edge normalisation, P-DARTS' per-edge operators and skip
  dropout;
* a global-norm clip of the architecture gradient (P-DARTS: 5);
* callbacks, run before `callbacks.SearchArtifacts` so that values they
  put in the epoch's logs (R-DARTS' ``hessian_eigenvalue``) reach
  ``metrics.csv`` and TensorBoard: the architecture warm-up
  (`engine.ArchWarmup`), P-DARTS' skip-dropout schedule, R-DARTS' eigenvalue
  and early stop;
* provenance added to the genotype's metadata.

No TensorFlow import: the hooks are data and callables.
"""

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class StageExtras:
    """A baseline's additions to one search stage.

    Attributes:
        network_kwargs: extra `SearchNetwork` arguments.
        arch_clipnorm: global-norm clip of the architecture gradient (0:
            none).
        callback_factories: callables ``(search, stage_dir, start, steps)
            -> list of callbacks``, with the stage's `BilevelSearch`, its
            directory, the epoch it resumes after and its steps per epoch.
        metadata: entries added to the genotype's metadata.
    """

    network_kwargs: dict = dataclasses.field(default_factory=dict)
    arch_clipnorm: float = 0.0
    callback_factories: tuple = ()
    metadata: dict = dataclasses.field(default_factory=dict)

    def callbacks(self, search, stage_dir, start, steps) -> list:
        """The stage's extra callbacks, in factory order."""
        out = []
        for factory in self.callback_factories:
            out.extend(factory(search, stage_dir, start, steps))
        return out

    def replace(self, **changes) -> "StageExtras":
        """A copy with some fields changed (``network_kwargs`` merged)."""
        if "network_kwargs" in changes:
            changes["network_kwargs"] = {
                **self.network_kwargs,
                **changes["network_kwargs"],
            }
        if "callback_factories" in changes:
            changes["callback_factories"] = self.callback_factories + tuple(
                changes["callback_factories"]
            )
        if "metadata" in changes:
            changes["metadata"] = {**self.metadata, **changes["metadata"]}
        return dataclasses.replace(self, **changes)


CallbackFactory = Callable[..., list]
