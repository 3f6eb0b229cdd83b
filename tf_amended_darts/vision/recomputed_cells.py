"""Search cells recomputed in the estimator's passes (`recompute_cells`).

The architecture step's products (`H v`, `D H v`, `D v`) differentiate the
super-network twice, and a reverse-over-reverse product keeps every
activation and first-backward tensor of the training pass alive until both
of its outer passes are done: ~8-9 GB of the S1 amended exact step at
batch 32 (benchmarks/s1_cpu.md, sections 7-10). A `RecomputedCell` runs a
search cell's nodes (its mixed edges, after the two inputs'
preprocessing) through `nn.recompute.Recomputed`: the passes keep only
their inputs, output and incoming gradients, and recompute the interior
(once per derivative level) in three functions (forward, first and second
level) that every pass calls. Cells whose nodes are alike share them (S1:
the two normal cells of each resolution, 5 bodies for 8 cells), so each
body is traced once, not once per cell. Values are unchanged (the same
ops on the same inputs); it costs time, the recomputations.

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
    """A built `SearchCell`'s training-mode call, its nodes recomputed (see
    module).

    The cell's `SearchCell.preprocess` runs as usual; its `SearchCell.nodes`
    run in a recomputed block whose inputs are the preprocessed states and
    the values of the nodes' trainable variables (those of the enclosing
    `stateless_call`), which its recomputations map back onto the
    variables in their own `keras.StatelessScope`; so do the states of the
    seed generators it draws from (the network's drop-path and
    skip-dropout generators, and those of its edges' layers, the noise
    operator's), as the block's ``state``.

    Cells whose nodes are alike (`body_key`: the same structure and
    variable shapes, e.g. the normal cells of one resolution) share one
    block: ``body`` names an earlier `RecomputedCell` whose traced
    functions this one calls with its own values. The block's body runs the
    first cell's layers, onto which every call maps its caller's variables.

    Args:
        cell: a built `SearchCell`.
        num_pairs: how many pair-probability tensors its calls pass (one
            per node with ``searched`` stage 1's pair logits, else 0).
        edge_scales: whether its calls pass edge scales (PC-DARTS).
        drop_path_seed, skip_seed: the network's drop-path and P-DARTS
            skip-dropout `keras.random.SeedGenerator`s, or None.
        body: a `RecomputedCell` of a cell with the same `body_key` (and
            the same other arguments) whose block to share, or None.
    """

    def __init__(self, cell, num_pairs=0, edge_scales=False,
                 drop_path_seed=None, skip_seed=None, body=None):
        self.cell = cell
        self.variables, own = _node_variables(cell)
        self.num_pairs = num_pairs
        self.edge_scales = bool(edge_scales)
        self.drop_path_seed = drop_path_seed
        self.skip_seed = skip_seed
        self.seed_states = [
            g.state for g in (drop_path_seed, skip_seed) if g is not None
        ] + own
        self.key = self.key_of(cell, num_pairs, edge_scales)
        if body is None:
            self.block = Recomputed(self._run, name=f"{cell.name}_recomputed")
        else:
            if body.key != self.key or (
                (body.drop_path_seed, body.skip_seed)
                != (drop_path_seed, skip_seed)
            ):
                raise ValueError(
                    f"Cell {cell.name!r} cannot share the recomputed body of "
                    f"{body.cell.name!r}: their nodes differ (structure, "
                    "variable shapes or arguments)."
                )
            self.block = body.block

    @staticmethod
    def key_of(cell, num_pairs=0, edge_scales=False):
        """What a `RecomputedCell` of these arguments must share with one
        whose block it shares: the cell's `body_key` and the inputs its
        calls pass."""
        return body_key(cell), num_pairs, bool(edge_scales)

    def _run(self, xs, state):
        p0, p1, edge_weights = xs[:3]
        pairs, scales, values = self._split(xs[3:])
        seeds = state["seeds"]
        mapping = list(zip(self.variables, values, strict=True))
        mapping += list(zip(self.seed_states, seeds, strict=True))
        drop_prob = state.get("drop_prob")
        skip_prob = state.get("skip_prob")
        with keras.StatelessScope(state_mapping=mapping) as scope:
            with frozen_statistics():
                y = self.cell.nodes(
                    [p0, p1],
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
        skip_drop_prob=..., skip_seed=skip_seed)``, its nodes recomputed
        for their derivatives; the seed generators advance as in the plain
        call."""
        p0, p1 = self.cell.preprocess(inputs, training=True)
        pairs = list(pair_weights) if pair_weights is not None else []
        scales = [edge_scales] if edge_scales is not None else []
        values = [kops.convert_to_tensor(v.value) for v in self.variables]
        state = {"seeds": [kops.convert_to_tensor(v.value)
                           for v in self.seed_states]}
        if drop_prob is not None:
            state["drop_prob"] = drop_prob
        if skip_drop_prob is not None:
            state["skip_prob"] = skip_drop_prob
        y, after = self.block(
            [p0, p1, edge_weights, *pairs, *scales, *values], state
        )
        for v, value in zip(self.seed_states, after["seeds"], strict=True):
            v.assign(value)
        return y


def _node_variables(cell):
    """The trainable variables of ``cell``'s edges, and the other
    variables of its edges that are not weights (seed generator states),
    each in the edges' order."""
    trainable = [v for e in cell.edges for v in e.trainable_variables]
    weights = {id(v) for v in cell.weights}
    own = [v for e in cell.edges for v in e.variables if id(v) not in weights]
    return trainable, own


def body_key(cell):
    """What a recomputed block's body depends on besides its inputs'
    values: the cell's configuration but its name and its preprocessing
    (``reduction_prev``), and the shapes and dtypes of its edges'
    variables in order (their names carry Keras' per-model unique
    suffixes, so they differ between alike cells). Cells with equal keys
    are built by the same constructor calls and run the same ops in their
    nodes."""
    config = dict(cell.get_config())
    for field in ("name", "reduction_prev", "trainable"):
        config.pop(field, None)
    trainable, own = _node_variables(cell)
    variables = tuple(
        (tuple(v.shape), str(v.dtype)) for v in trainable + own
    )
    return repr(sorted(config.items())), variables


def _current(scope, variable, initial):
    """The value ``variable`` has in ``scope`` (``initial`` if unassigned)."""
    value = scope.get_current_value(variable)
    return initial if value is None else value
