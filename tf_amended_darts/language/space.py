"""The DARTS recurrent search space and its derivation rule.

A recurrent cell has ``steps`` intermediate nodes (8 in DARTS). State 0 is
the cell's first state, made from the input ``x_t`` and the previous hidden
state; node ``i`` (state ``i + 1``) takes ONE earlier state ``j`` in
``0..i`` through one operator of `PRIMITIVES`, in DARTS' highway form::

    (c, h) = s_j W_i;   s_{i+1} = s_j + sigmoid(c) * (op(h) - s_j)

The cell's output is the mean of the intermediate states ``1..steps``.

In search, node ``i`` is the softmax-weighted sum over all ``i + 1``
predecessors and all operators (``none`` contributes zero but keeps its
share of the softmax): the architecture is one logit per (predecessor,
operator) pair, ``sum(1..steps) = 36`` rows of 5 for DARTS.

This module has no TensorFlow import.

Reference: DARTS ``rnn/genotypes.py`` (PRIMITIVES, STEPS, CONCAT) and
``rnn/model_search.py`` (``DARTSCellSearch.cell``, ``genotype._parse``).
"""

from __future__ import annotations

from tf_amended_darts.nn.validate import invalid

# [darts] rnn/genotypes.py PRIMITIVES, in this order (the weight columns).
PRIMITIVES = ("none", "tanh", "relu", "sigmoid", "identity")
NONE = "none"
STEPS = 8  # [darts] rnn/genotypes.py STEPS
CONCAT = 8  # [darts] rnn/genotypes.py CONCAT: the last 8 states averaged


def num_edges(steps: int = STEPS) -> int:
    """Rows of the architecture logits: ``1 + 2 + ... + steps``."""
    return steps * (steps + 1) // 2


def edge_offsets(steps: int = STEPS) -> list[int]:
    """First row of each node's predecessors in the logits."""
    return [i * (i + 1) // 2 for i in range(steps)]


def edge_labels(steps: int = STEPS) -> list[str]:
    """One label per logit row, ``"j->i"`` (state j feeds state i)."""
    return [f"{j}->{i + 1}" for i in range(steps) for j in range(i + 1)]


def check_steps(steps) -> int:
    """Validates a node count (an integer >= 1)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise invalid("steps", "an integer >= 1", steps)
    return steps


def derive(weights, operators=PRIMITIVES):
    """The DARTS rule: per node, its strongest predecessor and operator.

    For node ``i`` the predecessor ``j`` with the largest non-``none``
    weight is kept (ties: the earliest ``j``, as the reference's stable
    sort), and on it the strongest non-``none`` operator (ties: the first
    in operator order).

    Args:
        weights: softmax weights, ``num_edges(steps)`` rows (nested lists
            or an array) of ``len(operators)`` columns.
        operators: the column names; must contain an operator other than
            ``none``.

    Returns:
        ``[(operator, predecessor), ...]``, one entry per node.

    Raises:
        ValueError: for a row count that is no triangular number or a
            wrong column count.
    """
    rows = [list(map(float, row)) for row in weights]
    operators = tuple(operators)
    steps = 0
    while num_edges(steps) < len(rows):
        steps += 1
    if steps < 1 or num_edges(steps) != len(rows):
        raise invalid(
            "weights", "1 + 2 + ... + steps rows (36 for 8 nodes)", len(rows)
        )
    if any(len(row) != len(operators) for row in rows):
        raise invalid(
            "weights", f"{len(operators)} columns ({operators})", weights
        )
    keep = [k for k, name in enumerate(operators) if name != NONE]
    if not keep:
        raise invalid("operators", "an operator other than 'none'", operators)
    gene = []
    for i, start in enumerate(edge_offsets(steps)):
        block = rows[start : start + i + 1]
        best = max(range(i + 1), key=lambda j: (max(block[j][k] for k in keep),
                                                -j))
        k_best = keep[0]
        for k in keep:
            if block[best][k] > block[best][k_best]:
                k_best = k
        gene.append((operators[k_best], best))
    return gene
