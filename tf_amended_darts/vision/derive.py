"""Genotypes from architecture weights: the DARTS derivation rules.

``pruned`` keeps, per intermediate node, the two strongest input edges and
on each the strongest operator other than ``none`` (reference
``model_search.py``, ``_parse``); ``fixed`` and ``searched`` stage 2 keep
given input pairs and pick their operators; ``searched`` stage 1 picks each
node's input pair from its pair logits (paper eq. 16). Ties and ``none``
are handled as the reference does (see each function). No TensorFlow
import.
"""

from __future__ import annotations

import numpy as np

from tf_amended_darts.nn.validate import invalid
from tf_amended_darts.vision import search_space
from tf_amended_darts.vision.genotype import (
    _FIRST_NODE_STATE,
    _PER_NODE,
    CellGenotype,
    Genotype,
    _is_int,
)


def _operator_indices(operators) -> tuple[tuple[str, ...], list[int]]:
    """The operators, and the indices a derivation may keep (not ``none``)."""
    ops = search_space.check_operators(operators)
    return ops, [k for k, op in enumerate(ops) if op != search_space.NONE_OP]


def _as_matrix(field: str, weights, rows: int, cols: int) -> np.ndarray:
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (rows, cols):
        raise invalid(f"{field}.shape", f"({rows}, {cols})", array.shape)
    if not np.all(np.isfinite(array)):
        raise invalid(field, "finite values", array)
    return array


def _best_operator(row: np.ndarray, keep: list[int]) -> int:
    # DARTS `_parse`: `if k_best is None or W[j][k] > W[j][k_best]`, so a
    # tie keeps the operator that comes first.
    best = None
    for k in keep:
        if best is None or row[k] > row[best]:
            best = k
    return best


def derive_pruned_cell(weights, operators, steps: int = 4) -> tuple:
    """The DARTS rule (reference ``model_search.py``, ``_parse``).

    For each node, its input edges are ranked by strength, the largest
    non-``none`` weight, in decreasing order with a stable sort (on a tie
    the lower input index ranks first); the top two are kept, in that
    order, each with its best non-``none`` operator (on a tie, the one
    earlier in ``operators``). ``none`` is ignored even when it has the
    largest weight.

    Args:
        weights: ``(num_edges('pruned', steps), len(operators))`` softmax
            weights (or logits; only their order matters), rows ordered as
            ``search_space.edge_list('pruned', steps)``.
        operators: the operator names of the columns.
        steps: intermediate nodes per cell.

    Returns:
        ``(operator, input)`` pairs, two per node.

    Raises:
        ValueError: for a bad shape, non-finite weights, or operators that
            are all ``none``.
    """
    ops, keep = _operator_indices(operators)
    inputs = search_space.edge_list("pruned", steps)
    w = _as_matrix("weights", weights, sum(map(len, inputs)), len(ops))
    gene, start = [], 0
    for node_inputs in inputs:
        rows = w[start : start + len(node_inputs)]
        strength = [max(row[k] for k in keep) for row in rows]
        kept = sorted(
            range(len(rows)), key=lambda x: strength[x], reverse=True
        )[:_PER_NODE]
        for x in kept:
            gene.append((ops[_best_operator(rows[x], keep)], node_inputs[x]))
        start += len(node_inputs)
    return tuple(gene)


def _check_inputs(inputs, steps: int) -> list[list[int]]:
    if len(inputs) != steps:
        raise invalid("inputs", f"one input list per node ({steps})", inputs)
    for j, pair in enumerate(inputs):
        last = j + _FIRST_NODE_STATE - 1
        if len(pair) != _PER_NODE or any(
            not _is_int(i) or not 0 <= i <= last for i in pair
        ):
            raise invalid(
                f"inputs[{j}]", f"{_PER_NODE} inputs in 0..{last}", pair
            )
    return [list(pair) for pair in inputs]


def derive_fixed(weights, operators, steps: int = 4, inputs=None) -> tuple:
    """The best non-``none`` operator on each of a cell's fixed edges.

    Ties go to the operator earlier in ``operators``; ``none`` is ignored.

    Args:
        weights: ``(2 * steps, len(operators))`` weights, one row per edge
            in the order of ``inputs``.
        operators: the operator names of the columns.
        steps: intermediate nodes per cell.
        inputs: the two inputs of each node; default
            ``search_space.edge_list('fixed', steps)``. For the ``searched``
            layout's stage 2, pass the pairs from ``derive_pairs``.

    Returns:
        ``(operator, input)`` pairs, two per node, in the order of
        ``inputs``.

    Raises:
        ValueError: for bad inputs or weights, or operators all ``none``.
    """
    ops, keep = _operator_indices(operators)
    if inputs is None:
        inputs = search_space.edge_list("fixed", steps)
    inputs = _check_inputs(inputs, steps)
    w = _as_matrix("weights", weights, _PER_NODE * steps, len(ops))
    flat = [i for pair in inputs for i in pair]
    return tuple(
        (ops[_best_operator(row, keep)], i)
        for row, i in zip(w, flat, strict=True)
    )


def derive_pairs(pair_weights, steps: int = 4) -> list[tuple[int, int]]:
    """Stage 1 of the ``searched`` layout: each node's argmax input pair.

    Args:
        pair_weights: per-node vectors over ``search_space.input_pairs(j)``
            (``C(j + 2, 2)`` entries each), or one flat vector of length
            ``search_space.num_pairs(steps)`` concatenated over nodes.
        steps: intermediate nodes per cell.

    Returns:
        One ``(i1, i2)`` pair per node; on a tie, the earlier pair.

    Raises:
        ValueError: for wrong lengths or non-finite weights.
    """
    sizes = [len(search_space.input_pairs(j)) for j in range(steps)]
    if len(pair_weights) and np.ndim(pair_weights[0]) == 0:  # One vector.
        flat = _as_matrix(
            "pair_weights", np.reshape(pair_weights, (1, -1)), 1, sum(sizes)
        )[0]
        pair_weights = np.split(flat, np.cumsum(sizes)[:-1])
    if len(pair_weights) != steps:
        raise invalid(
            "pair_weights", f"{steps} per-node vectors", pair_weights
        )
    pairs = []
    for j, size in enumerate(sizes):
        row = _as_matrix(
            f"pair_weights[{j}]", np.reshape(pair_weights[j], (1, -1)), 1, size
        )[0]
        pairs.append(search_space.input_pairs(j)[int(np.argmax(row))])
    return pairs


def _derive_cell(weights, operators, layout, steps, inputs) -> tuple:
    search_space.check_layout(layout)
    if layout == "pruned":
        if inputs is not None:
            raise invalid("inputs", "None for the pruned layout", inputs)
        return derive_pruned_cell(weights, operators, steps)
    if layout == "searched" and inputs is None:
        raise invalid(
            "inputs",
            "the stage-1 pairs (derive_pairs) for the searched layout",
            inputs,
        )
    return derive_fixed(weights, operators, steps, inputs)


def _concat(steps: int, multiplier: int) -> tuple[int, ...]:
    return tuple(
        range(_FIRST_NODE_STATE + steps - multiplier, _FIRST_NODE_STATE + steps)
    )


def derive_shared(
    weights_normal,
    weights_reduce,
    operators,
    layout: str = "pruned",
    steps: int = 4,
    multiplier: int = 4,
    inputs_normal=None,
    inputs_reduce=None,
    metadata=None,
) -> Genotype:
    """A shared-form genotype from normal and reduction cell weights.

    Args:
        weights_normal: weights of the normal cell (see ``derive_pruned_cell``
            or ``derive_fixed`` for the row order of each layout).
        weights_reduce: weights of the reduction cell.
        operators: the operator names of the columns.
        layout: one of ``search_space.EDGE_LAYOUTS``; ``searched`` means
            stage 2, with the kept pairs in ``inputs_*``.
        steps: intermediate nodes per cell.
        multiplier: how many last nodes the cell output concatenates.
        inputs_normal: for ``fixed``/``searched``, the nodes' inputs.
        inputs_reduce: likewise for the reduction cell.
        metadata: optional provenance stored in the genotype.

    Returns:
        The ``Genotype``.
    """
    concat = _concat(steps, multiplier)
    return Genotype(
        normal=_derive_cell(
            weights_normal, operators, layout, steps, inputs_normal
        ),
        normal_concat=concat,
        reduce=_derive_cell(
            weights_reduce, operators, layout, steps, inputs_reduce
        ),
        reduce_concat=concat,
        metadata=metadata,
    )


def derive_pruned(
    weights_normal,
    weights_reduce,
    operators,
    steps: int = 4,
    multiplier: int = 4,
) -> Genotype:
    """DARTS ``genotype()``: ``derive_pruned_cell`` on both cell types."""
    return derive_shared(
        weights_normal, weights_reduce, operators, "pruned", steps, multiplier
    )


def derive_per_cell(
    cell_weights,
    operators,
    reduction_cells,
    layout: str = "fixed",
    steps: int = 4,
    multiplier: int = 4,
    cell_inputs=None,
    metadata=None,
) -> Genotype:
    """A per-cell genotype (S2): one cell derived from each weight matrix.

    Args:
        cell_weights: one weight matrix per cell, in network order.
        operators: the operator names of the columns.
        reduction_cells: indices of the reduction cells (usually
            ``search_space.reduction_indices(len(cell_weights))``).
        layout: one of ``search_space.EDGE_LAYOUTS``.
        steps: intermediate nodes per cell.
        multiplier: how many last nodes the cell output concatenates.
        cell_inputs: for ``searched`` (stage 2), each cell's kept pairs;
            for ``fixed``, optional; for ``pruned``, ``None``.
        metadata: optional provenance stored in the genotype.

    Returns:
        The ``Genotype`` with ``cells`` set.
    """
    n = len(cell_weights)
    if cell_inputs is None:
        cell_inputs = [None] * n
    if len(cell_inputs) != n:
        raise invalid(
            "cell_inputs", f"{n} entries (one per cell)", cell_inputs
        )
    reductions = set(reduction_cells)
    if any(not _is_int(i) or not 0 <= i < n for i in reductions):
        raise invalid(
            "reduction_cells", f"cell indices in 0..{n - 1}", reduction_cells
        )
    concat = _concat(steps, multiplier)
    cells = tuple(
        CellGenotype(
            _derive_cell(w, operators, layout, steps, inputs),
            concat,
            i in reductions,
        )
        for i, (w, inputs) in enumerate(
            zip(cell_weights, cell_inputs, strict=True)
        )
    )
    return Genotype(cells=cells, metadata=metadata)
