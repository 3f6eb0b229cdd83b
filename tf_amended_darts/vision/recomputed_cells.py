"""Search cells recomputed in the estimator's passes (`recompute_cells`).

The architecture step's products (`H v`, `D H v`, `D v`) differentiate the
super-network twice, and a reverse-over-reverse product keeps every
activation and first-backward tensor of the training pass alive until both
of its outer passes are done: ~8-9 GB of the S1 amended exact step at
batch 32 (benchmarks/s1_cpu.md, sections 7-10). A `RecomputedCell` runs a
search cell through `nn.recompute.Recomputed`: the passes keep only each
cell's inputs, output and incoming gradients, and recompute its interior
(once per derivative level) in two functions per cell that every pass
calls. Values are unchanged (the same ops on the same inputs); it costs
time, the recomputations.

Random draws (drop-path, P-DARTS' skip dropout, R-DARTS' noise operator)
come from `keras.random.SeedGenerator`s, whose states enter the recomputed
block as its ``state``: the cell's call and each recomputation draw from
the state the call started with, so they draw the same masks and noise,
and the generators leave the cell where the plain cell leaves them.

It applies where `SearchNetwork` runs in training mode inside
`frozen_statistics()` (the estimator's functional passes); the weight
step, which updates the batch-norm statistics, runs the cells as usual.
"""

import keras
from keras import ops as kops

from tf_amended_darts.nn.contexts import frozen_statistics
from tf_amended_darts.nn.recompute import Recomputed


class RecomputedCell:
    """A built `SearchCell`'s training-mode call, recomputed (see module).

    The cell's trainable values (those of the enclosing
    `stateless_call`) become explicit inputs of the recomputed block, and
    its recomputations map them back onto the cell's variables in their
    own `keras.StatelessScope`; so do the states of the seed generators it
    draws from (the network's drop-path and skip-dropout generators, and
    those of its own layers, the noise operator's), as the block's
    ``state``.

    Args:
        cell: a built `SearchCell`.
        num_pairs: how many pair-probability tensors its calls pass (one
            per node with ``searched`` stage 1's pair logits, else 0).
        edge_scales: whether its calls pass edge scales (PC-DARTS).
        drop_path_seed, skip_seed: the network's drop-path and P-DARTS
            skip-dropout `keras.random.SeedGenerator`s, or None.
    """

    def __init__(self, cell, num_pairs=0, edge_scales=False,
                 drop_path_seed=None, skip_seed=None):
        self.cell = cell
        self.variables = list(cell.trainable_variables)
        self.num_pairs = num_pairs
        self.edge_scales = bool(edge_scales)
        self.drop_path_seed = drop_path_seed
        self.skip_seed = skip_seed
        weights = {id(v) for v in cell.weights}
        own = [v for v in cell.variables if id(v) not in weights]
        self.seed_states = [
            g.state for g in (drop_path_seed, skip_seed) if g is not None
        ] + own
        self.block = Recomputed(self._run, name=f"{cell.name}_recomputed")

    def _run(self, xs, state):
        s0, s1, edge_weights = xs[:3]
        pairs, scales, values = self._split(xs[3:])
        seeds = state["seeds"]
        mapping = list(zip(self.variables, values, strict=True))
        mapping += list(zip(self.seed_states, seeds, strict=True))
        drop_prob = state.get("drop_prob")
        skip_prob = state.get("skip_prob")
        with keras.StatelessScope(state_mapping=mapping) as scope:
            with frozen_statistics():
                y = self.cell(
                    (s0, s1),
                    edge_weights,
                    pairs,
                    training=True,
                    edge_scales=scales,
                    drop_prob=drop_prob,
                    seed=self.drop_path_seed if drop_prob is not None else None,
                    skip_drop_prob=skip_prob,
                    skip_seed=self.skip_seed if skip_prob is not None else None,
                )
            after = [
                _current(scope, v, s)
                for v, s in zip(self.seed_states, seeds, strict=True)
            ]
        return y, dict(state, seeds=after)

    def _split(self, rest):
        n, has_scales = self.num_pairs, self.edge_scales
        pairs = list(rest[:n]) if n else None
        scales = rest[n] if has_scales else None
        return pairs, scales, list(rest[n + has_scales :])

    def __call__(self, inputs, edge_weights, pair_weights=None,
                 edge_scales=None, drop_prob=None, skip_drop_prob=None):
        """``cell(inputs, edge_weights, pair_weights, training=True,
        edge_scales=..., drop_prob=..., seed=drop_path_seed,
        skip_drop_prob=..., skip_seed=skip_seed)``, recomputed for its
        derivatives; the seed generators advance as in the plain call."""
        pairs = list(pair_weights) if pair_weights is not None else []
        scales = [edge_scales] if edge_scales is not None else []
        values = [kops.convert_to_tensor(v.value) for v in self.variables]
        state = {"seeds": [kops.convert_to_tensor(v.value)
                           for v in self.seed_states]}
        if drop_prob is not None:
            state["drop_prob"] = drop_prob
        if skip_drop_prob is not None:
            state["skip_prob"] = skip_drop_prob
        s0, s1 = inputs
        y, after = self.block(
            [s0, s1, edge_weights, *pairs, *scales, *values], state
        )
        for v, value in zip(self.seed_states, after["seeds"], strict=True):
            v.assign(value)
        return y


def _current(scope, variable, initial):
    """The value ``variable`` has in ``scope`` (``initial`` if unassigned)."""
    value = scope.get_current_value(variable)
    return initial if value is None else value
