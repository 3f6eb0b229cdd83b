"""Indicators of a CNN search's state, read from its architecture weights
and derived genotype: the curves of the paper's Figure 1 (weight of
``none``, share of ``skip_connect`` and number of parametric operators in
the derived normal cell, the signs of the collapse of DARTS), the
stability indicators of a search run to convergence (the number of
skip-connections in the derived normal cell, and how decided the
architecture is: the mean of the largest operator weight per edge), and
the labels of the weight matrices' rows.
"""

from __future__ import annotations

import numpy as np

from tf_amended_darts.vision import search_space, visualize

SKIP_OP = "skip_connect"
# Operators with weights in the DARTS space (separable, dilated convs).
PARAMETRIC_PREFIXES = ("sep_conv", "dil_conv")
FIGURE1_KEYS = ("none_weight_avg", "skip_share", "parametric_ops_normal")
# Stability indicators (metrics.csv columns, TensorBoard scalars).
SKIP_KEY = "skip_connections_normal"
DECIDED_KEY = "mean_max_weight"


def edge_labels(node_inputs) -> list[str]:
    """Row labels of a cell's architecture weights.

    Args:
        node_inputs: for each intermediate node, its input states (state
            0 is ``c_{k-2}``, 1 is ``c_{k-1}``, ``2 + i`` is node ``i``), as
            ``search_space.edge_list`` or ``SearchNetwork.cell_inputs``
            give them.

    Returns:
        One label per edge, in row order, e.g. ``"c_{k-2}->0"`` or
        ``"1->3"`` (from node 1 to node 3).
    """
    return [
        f"{visualize.state_name(i)}->{j}"
        for j, inputs in enumerate(node_inputs)
        for i in inputs
    ]


def pair_labels(steps: int) -> list[str]:
    """Labels of the stage-1 pair probabilities of the ``searched`` layout.

    Args:
        steps: intermediate nodes per cell.

    Returns:
        One label per pair, in the order of ``search_space.input_pairs``,
        e.g. ``"c_{k-2}+c_{k-1}->0"``.
    """
    return [
        f"{visualize.state_name(a)}+{visualize.state_name(b)}->{j}"
        for j in range(steps)
        for a, b in search_space.input_pairs(j)
    ]


def _is_parametric(op: str) -> bool:
    return op.startswith(PARAMETRIC_PREFIXES)


def _normal_cells(genotype) -> list[tuple[str, tuple]]:
    """``(arch key, derived edges)`` of each normal cell of a genotype."""
    if genotype.cells is None:
        return [("normal", genotype.normal)]
    return [
        (f"cell_{i}", cell.edges)
        for i, cell in enumerate(genotype.cells)
        if not cell.reduction
    ]


def figure1_stats(arch_weights, genotype, operators) -> dict:
    """The quantities of the paper's Figure 1, for the normal cell(s).

    Per-cell genotypes (S2) have several normal cells (keys ``cell_<i>``):
    the ``none`` weight and the ``skip_connect`` share are taken over all
    their edges together, and the parametric count is the mean per normal
    cell (so that it stays on the scale of one cell).

    Args:
        arch_weights: ``{key: softmax weights (edges, operators)}`` as
            ``SearchNetwork.arch_weights`` returns it.
        genotype: the ``genotype.Genotype`` derived from these weights.
        operators: the operator names of the weight columns.

    Returns:
        ``{"none_weight_avg": mean softmax weight of none over the normal
        cells' edges (only when ``none`` is an operator and the weights of
        a normal cell are given), "skip_share": fraction of skip_connect
        among the operators kept in the derived normal cell(s),
        "parametric_ops_normal": number of sep/dil convs in the derived
        normal cell (mean over normal cells)}``, as floats; an empty dict
        when the genotype has no normal cell.

    Raises:
        ValueError: when the weights of a normal cell do not have one
            column per operator.
    """
    operators = tuple(operators)
    cells = _normal_cells(genotype)
    if not cells or not any(edges for _, edges in cells):
        return {}
    stats = {}
    if search_space.NONE_OP in operators:
        column = operators.index(search_space.NONE_OP)
        rows = []
        for key, _ in cells:
            if key not in arch_weights:
                continue
            w = np.asarray(arch_weights[key], dtype=np.float64)
            if w.ndim != 2 or w.shape[1] != len(operators):
                raise ValueError(
                    f"Invalid `arch_weights[{key!r}]`: expected shape "
                    f"(edges, {len(operators)}) (one column per operator "
                    f"of {operators}). Received shape {w.shape}."
                )
            rows.append(w[:, column])
        if rows:
            stats["none_weight_avg"] = float(np.mean(np.concatenate(rows)))
    kept = [op for _, edges in cells for op, _ in edges]
    stats["skip_share"] = sum(op == SKIP_OP for op in kept) / len(kept)
    stats["parametric_ops_normal"] = sum(map(_is_parametric, kept)) / len(cells)
    return {k: float(v) for k, v in stats.items()}


def skip_connections_normal(genotype) -> float:
    """Number of ``skip_connect`` edges in the derived normal cell (the
    mean over normal cells for per-cell genotypes); NaN without one.

    DARTS' collapse is a normal cell of skip-connections (paper, Figure 1;
    R-DARTS, Zela et al. 2020): 8 edges of 8 is the collapsed cell.
    """
    cells = [edges for _, edges in _normal_cells(genotype) if edges]
    if not cells:
        return float("nan")
    skips = sum(op == SKIP_OP for edges in cells for op, _ in edges)
    return skips / len(cells)


def mean_max_weight(arch_weights) -> float:
    """Mean over edges (all operator-weight keys) of the largest softmax
    operator weight: 1/|ops| for an undecided architecture, 1 for a fully
    decided one. The ``beta_`` pair probabilities are left out; NaN
    without operator weights.

    Args:
        arch_weights: ``{key: softmax weights (edges, operators)}``.
    """
    rows = [
        np.asarray(w, dtype=np.float64).max(axis=-1)
        for key, w in arch_weights.items()
        if not key.startswith("beta_") and np.ndim(w) == 2
    ]
    if not rows:
        return float("nan")
    return float(np.mean(np.concatenate(rows)))


def stability_stats(arch_weights, genotype) -> dict:
    """The per-epoch stability indicators of a search (`SKIP_KEY`,
    `DECIDED_KEY`), as floats."""
    return {
        SKIP_KEY: skip_connections_normal(genotype),
        DECIDED_KEY: mean_max_weight(arch_weights),
    }
