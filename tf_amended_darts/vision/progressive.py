"""P-DARTS' operator switches and final architecture rule, as plain data.

Chen et al., "Progressive Differentiable Architecture Search: Bridging the
Depth Gap between Search and Evaluation", ICCV 2019; chenxin061/pdarts
``train_search.py`` (``main``, ``get_min_k``, ``get_min_k_no_zero``,
``delete_min_sk_prob``, ``keep_1_on``, ``keep_2_branches``,
``parse_network``), as ../shared/baselines.md section 2 records them.

A *switch* matrix (edges x operators, booleans) says which operators each
edge of a cell type still mixes; a stage's alphas have one column per
active operator of the edge, in ``operators`` order (`active_operators`).
After a stage the weakest operators of every edge are switched off
(`drop_weakest`); after the last, `final_genotype` ranks edges, keeps two
per node and optionally caps the number of ``skip_connect`` in the normal
cell. No TensorFlow import.
"""

from __future__ import annotations

import numpy as np

from tf_amended_darts.nn.validate import invalid
from tf_amended_darts.vision import search_space
from tf_amended_darts.vision.genotype import Genotype

SKIP = "skip_connect"
# Repetitions of the skip rule before giving up (each zeroes one weight).
_MAX_SKIP_ROUNDS = 1000


def initial_switches(operators, num_edges: int) -> np.ndarray:
    """All operators on, for ``num_edges`` edges."""
    ops = search_space.check_operators(operators)
    return np.ones((num_edges, len(ops)), dtype=bool)


def active_operators(switches, operators) -> list[list[str]]:
    """Each edge's active operators in ``operators`` order."""
    switches = np.asarray(switches, dtype=bool)
    return [[op for op, on in zip(operators, row, strict=True) if on]
            for row in switches]


def _check_probs(switches, probs):
    switches = np.asarray(switches, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    counts = set(switches.sum(axis=1))
    if len(counts) != 1 or probs.shape != (len(switches), counts.pop()):
        raise invalid(
            "probs",
            "one row per edge and one column per active operator of the "
            f"switches ({switches.sum(axis=1).tolist()} active)",
            probs.shape,
        )
    return switches, probs


def _none_column(row_switches, operators):
    """The column of ``none`` among an edge's active operators, or None."""
    active = [op for op, on in zip(operators, row_switches, strict=True)
              if on]
    if search_space.NONE_OP in active:
        return active.index(search_space.NONE_OP)
    return None


def _lowest(values, count, exclude=()):
    """Indices of the ``count`` smallest values (first on ties)."""
    values = np.array(values, dtype=np.float64)
    for i in exclude:
        values[i] = np.inf
    out = []
    for _ in range(count):
        i = int(np.argmin(values))
        out.append(i)
        values[i] = np.inf
    return out


def _columns_to_drop(row_switches, row_probs, count, operators, no_none):
    """``get_min_k`` (or ``get_min_k_no_zero`` when ``no_none``)."""
    none = _none_column(row_switches, operators) if no_none else None
    if none is None:
        return _lowest(row_probs, count)
    return [none] + _lowest(row_probs, count - 1, exclude=(none,))


def drop_weakest(switches, probs, keep: int, operators, last=False):
    """Switches off all but the ``keep`` strongest operators of each edge.

    Reference ``main``: ``softmax(alpha)`` over each edge's active operators
    ranks them; the lowest are dropped (``get_min_k``: ties drop the first).
    After the last stage (``last``), ``none`` is dropped first when active
    (``get_min_k_no_zero``).

    Args:
        switches: (edges, operators) booleans.
        probs: (edges, active per edge) softmax weights, column ``j`` the
            ``j``-th active operator.
        keep: operators left per edge.
        operators: the operator names of the switch columns.
        last: whether this ends the last stage.

    Returns:
        The new switches (a copy).
    """
    switches, probs = _check_probs(switches, probs)
    active = probs.shape[1]
    if not 1 <= keep < active:
        raise invalid("keep", f"an integer in 1..{active - 1}", keep)
    out = switches.copy()
    for e in range(len(out)):
        columns = np.flatnonzero(switches[e])
        for j in _columns_to_drop(switches[e], probs[e], active - keep,
                                  operators, last):
            out[e, columns[j]] = False
    return out


def _keep_one(switches, probs, operators):
    """``keep_1_on``: each edge's best operator other than ``none``."""
    active = probs.shape[1]
    return drop_weakest(switches, probs, 1, operators, last=True) if (
        active > 1) else switches.copy()


def _node_edges(steps):
    start = 0
    for j in range(steps):
        n = j + search_space.NUM_CELL_INPUTS
        yield start, n
        start += n


def _keep_two_branches(switches, probs, steps):
    """``keep_2_branches``: per node the two edges of largest ``max(probs)``.

    The reference sorts ascending (stable) and keeps the last two: on a tie
    the later edge wins. Node 0 has two edges and keeps both.
    """
    strength = probs.max(axis=1)
    keep = []
    for start, n in _node_edges(steps):
        order = sorted(range(n), key=lambda x: strength[start + x])
        keep += [start + order[-1], start + order[-2]]
    out = switches.copy()
    for e in range(len(out)):
        if e not in keep:
            out[e] = False
    return out


def _parse(switches, operators, steps):
    """``parse_network``: the (operator, input) of each kept edge, in
    edge order."""
    gene = []
    for start, n in _node_edges(steps):
        for e in range(start, start + n):
            for k in np.flatnonzero(switches[e]):
                gene.append((operators[k], e - start))
    return tuple(gene)


def _delete_min_skip(switches, before, probs, skip):
    """``delete_min_sk_prob``: zero the smallest weight among the kept
    skip-connections (columns of ``before``, the last stage's switches)."""
    probs = probs.copy()
    weights = np.ones(len(switches))
    columns = {}
    for e in range(len(switches)):
        if switches[e, skip]:
            columns[e] = int(before[e, :skip].sum())
            weights[e] = probs[e, columns[e]]
    e = int(np.argmin(weights))
    probs[e, columns[e]] = 0.0
    return probs


def _cell(switches, probs, operators, steps, max_skip):
    """The final cell (switches of one op per kept edge) and its probs."""
    probs = probs.copy()
    for e in range(len(switches)):  # `none` never makes an edge strong
        none = _none_column(switches[e], operators)
        if none is not None:
            probs[e, none] = 0.0
    final = _keep_two_branches(_keep_one(switches, probs, operators), probs,
                               steps)
    if max_skip is None or SKIP not in operators:
        return final
    skip = operators.index(SKIP)
    for _ in range(_MAX_SKIP_ROUNDS):
        if final[:, skip].sum() <= max_skip:
            return final
        probs = _delete_min_skip(final, switches, probs, skip)
        final = _keep_two_branches(_keep_one(switches, probs, operators),
                                   probs, steps)
    raise RuntimeError(
        f"The skip rule did not reach {max_skip} skip-connections.")


def final_genotype(
    switches_normal,
    probs_normal,
    switches_reduce,
    probs_reduce,
    operators,
    max_skip_connects=None,
    steps: int = search_space.DEFAULT_STEPS,
    metadata=None,
) -> Genotype:
    """P-DARTS' architecture from the last stage's weights.

    Edge strength is the largest weight of the edge's last-stage operators
    with ``none``'s set to 0; node 0 keeps its two edges, every other node
    its two strongest; each kept edge its strongest operator other than
    ``none``. With ``max_skip_connects = M``, while the normal cell has more
    than M ``skip_connect``, the smallest weight among them is set to 0 and
    operators and edges are chosen again (the reference logs one genotype
    per M; the paper takes M = 2). The reduction cell is not constrained.

    Args:
        switches_normal: (edges, operators) switches of the last stage.
        probs_normal: its softmax weights (edges, active per edge).
        switches_reduce: likewise for the reduction cell.
        probs_reduce: likewise.
        operators: the operator names of the switch columns.
        max_skip_connects: M, or None for no constraint.
        steps: intermediate nodes per cell.
        metadata: optional provenance stored in the genotype.

    Returns:
        The `Genotype` (edges in edge order, as ``parse_network``).
    """
    operators = search_space.check_operators(operators)
    cells = []
    for switches, probs, cap in (
        (switches_normal, probs_normal, max_skip_connects),
        (switches_reduce, probs_reduce, None),
    ):
        switches, probs = _check_probs(switches, probs)
        cells.append(_parse(_cell(switches, probs, operators, steps, cap),
                            operators, steps))
    concat = tuple(range(search_space.NUM_CELL_INPUTS,
                         search_space.NUM_CELL_INPUTS + steps))
    return Genotype(normal=cells[0], normal_concat=concat, reduce=cells[1],
                    reduce_concat=concat, metadata=metadata)


def skip_dropout_rate(rate, epoch, epochs, warmup):
    """P-DARTS' dropout rate on skip-connections at ``epoch`` (0-based).

    Reference ``main``: ``rate * (epochs - epoch - 1) / epochs`` before the
    architecture steps start (``epoch < warmup``, ``eps_no_arch``), then
    ``rate * exp(-0.2 (epoch - warmup))``: back to ``rate`` at ``warmup``,
    decaying afterwards.
    """
    if epoch < warmup:
        return rate * (epochs - epoch - 1) / epochs
    return rate * float(np.exp(-SKIP_DROPOUT_DECAY * (epoch - warmup)))


# P-DARTS train_search.py: `scale_factor = 0.2`.
SKIP_DROPOUT_DECAY = 0.2
