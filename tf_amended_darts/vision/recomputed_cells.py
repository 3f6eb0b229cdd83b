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

It applies where `SearchNetwork` runs in training mode inside
`frozen_statistics()` (the estimator's functional passes); the weight
step, which updates the batch-norm statistics, runs the cells as usual.
Not with drop-path, P-DARTS' skip dropout or R-DARTS' noise operator:
their random draws would differ between a cell's computation and its
recomputation (`check_supported` says so when the network is built).
"""

import keras

from tf_amended_darts.nn.contexts import frozen_statistics
from tf_amended_darts.nn.recompute import Recomputed
from tf_amended_darts.vision.search_space import NOISE_OP


def check_supported(recompute_cells, drop_path_prob, skip_dropout_prob,
                    operators):
    """Raises a ValueError naming the option that excludes recomputation.

    Args:
        recompute_cells: the network's ``recompute_cells``.
        drop_path_prob, skip_dropout_prob: its regularisers' probabilities.
        operators: its candidate operators.
    """
    if not recompute_cells:
        return
    clashes = []
    if drop_path_prob > 0.0:
        clashes.append(f"drop_path_prob={drop_path_prob} (--drop_path_prob, "
                       "--consistency)")
    if skip_dropout_prob > 0.0:
        clashes.append(f"skip_dropout_prob={skip_dropout_prob} "
                       "(--skip_dropout)")
    if NOISE_OP in operators:
        clashes.append(f"the {NOISE_OP!r} operator (--space=rdarts_s4)")
    if clashes:
        raise ValueError(
            "`recompute_cells` (--recompute_cells) recomputes each cell "
            "with the same values, which random draws would break; it "
            "does not combine with " + ", ".join(clashes) + "."
        )


class RecomputedCell:
    """A built `SearchCell`'s training-mode call, recomputed (see module).

    The cell's trainable values (those of the enclosing
    `stateless_call`) become explicit inputs of the recomputed block, and
    its recomputations map them back onto the cell's variables in their
    own `keras.StatelessScope`.

    Args:
        cell: a built `SearchCell`.
        num_pairs: how many pair-probability tensors its calls pass (one
            per node with ``searched`` stage 1's pair logits, else 0).
        edge_scales: whether its calls pass edge scales (PC-DARTS).
    """

    def __init__(self, cell, num_pairs=0, edge_scales=False):
        self.cell = cell
        self.variables = list(cell.trainable_variables)
        self.num_pairs = num_pairs
        self.edge_scales = bool(edge_scales)
        self.block = Recomputed(self._run, name=f"{cell.name}_recomputed")

    def _run(self, xs):
        s0, s1, edge_weights = xs[:3]
        pairs, scales, values = self._split(xs[3:])
        mapping = list(zip(self.variables, values, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            with frozen_statistics():
                return self.cell(
                    (s0, s1),
                    edge_weights,
                    pairs,
                    training=True,
                    edge_scales=scales,
                )

    def _split(self, rest):
        n, has_scales = self.num_pairs, self.edge_scales
        pairs = list(rest[:n]) if n else None
        scales = rest[n] if has_scales else None
        return pairs, scales, list(rest[n + has_scales :])

    def __call__(self, inputs, edge_weights, pair_weights=None,
                 edge_scales=None):
        """``cell(inputs, edge_weights, pair_weights, training=True,
        edge_scales=edge_scales)``, recomputed for its derivatives."""
        pairs = list(pair_weights) if pair_weights is not None else []
        scales = [edge_scales] if edge_scales is not None else []
        values = [
            keras.ops.convert_to_tensor(v.value) for v in self.variables
        ]
        s0, s1 = inputs
        return self.block([s0, s1, edge_weights, *pairs, *scales, *values])
