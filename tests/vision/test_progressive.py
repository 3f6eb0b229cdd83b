"""P-DARTS switches and final rule against hand-worked cases."""

import numpy as np
import pytest

from tf_amended_darts.vision import progressive as P
from tf_amended_darts.vision import search_space as S

OPS = S.DARTS_PRIMITIVES  # none, max, avg, skip, sep3, sep5, dil3, dil5


def test_drop_weakest_switches_off_the_lowest_weights():
    switches = P.initial_switches(OPS, 2)
    probs = np.array([
        [0.30, 0.05, 0.10, 0.20, 0.15, 0.08, 0.07, 0.05],
        [0.125] * 8,  # all tied: the first ones are dropped
    ])
    out = P.drop_weakest(switches, probs, 5, OPS)
    # row 0: the three lowest are max (0.05), dil5 (0.05), dil3 (0.07)
    assert P.active_operators(out, OPS)[0] == [
        "none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
        "sep_conv_5x5"]
    assert P.active_operators(out, OPS)[1] == list(OPS[3:])
    # none is ranked like any other operator before the last stage
    assert out[0, 0]


def test_columns_are_the_active_operators_of_each_edge():
    switches = np.zeros((1, 8), bool)
    switches[0, [0, 3, 6]] = True  # none, skip, dil3
    out = P.drop_weakest(switches, [[0.5, 0.2, 0.3]], 2, OPS)
    assert P.active_operators(out, OPS) == [["none", "dil_conv_3x3"]]


def test_last_stage_drops_none_first():
    switches = np.zeros((1, 8), bool)
    switches[0, [0, 3, 6]] = True
    # none is the strongest, yet dropped; then the lowest of the rest
    out = P.drop_weakest(switches, [[0.6, 0.15, 0.25]], 1, OPS, last=True)
    assert P.active_operators(out, OPS) == [["dil_conv_3x3"]]


def _stage3(rows):
    """Switches of 3 active operators per edge and their weights.

    rows: per edge, ``{operator: weight}`` of three operators.
    """
    switches = np.zeros((14, 8), bool)
    probs = np.zeros((14, 3))
    for e, row in enumerate(rows):
        names = sorted(row, key=OPS.index)
        switches[e, [OPS.index(n) for n in names]] = True
        probs[e] = [row[n] for n in names]
    return switches, probs


def _rows(strong):
    """14 edges; ``strong`` maps edge -> (operator, weight) of its best."""
    rows = []
    for e in range(14):
        op, weight = strong.get(e, ("sep_conv_3x3", 0.4))
        rest = [n for n in ("sep_conv_3x3", "dil_conv_3x3", "none")
                if n != op][:2]
        rows.append({op: weight, rest[0]: (1 - weight) / 2,
                     rest[1]: (1 - weight) / 2})
    return rows


def test_final_genotype_ranks_edges_without_none():
    # Node 1 (edges 2, 3, 4): edge 4's largest weight is none's (0.9),
    # which does not count: edges 3 (0.7) and 2 (0.4) are kept.
    rows = _rows({3: ("skip_connect", 0.7)})
    rows[4] = {"none": 0.9, "sep_conv_3x3": 0.06, "dil_conv_3x3": 0.04}
    sw, pr = _stage3(rows)
    g = P.final_genotype(sw, pr, sw, pr, OPS)
    # node 0 keeps edges 0, 1; edge order as parse_network
    assert g.normal[:2] == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1))
    assert g.normal[2:4] == (("sep_conv_3x3", 0), ("skip_connect", 1))


def test_skip_constraint_removes_the_weakest_skips_in_the_normal_cell():
    # Skips win edges 0 (0.6), 1 (0.5), 3 (0.7) and 5 (0.45).
    rows = _rows({0: ("skip_connect", 0.6), 1: ("skip_connect", 0.5),
                  3: ("skip_connect", 0.7), 5: ("skip_connect", 0.45)})
    sw, pr = _stage3(rows)
    free = P.final_genotype(sw, pr, sw, pr, OPS)
    assert sum(op == "skip_connect" for op, _ in free.normal) == 4
    two = P.final_genotype(sw, pr, sw, pr, OPS, max_skip_connects=2)
    normal = dict(((e, op) for e, (op, _) in enumerate(two.normal)))
    assert sum(op == "skip_connect" for op in normal.values()) == 2
    # the two weakest skips went (edge 5: 0.45, then edge 1: 0.5); edge 1
    # takes its next operator (sep and dil tie at 0.25: the first is
    # dropped, as get_min_k does)
    assert two.normal[0] == ("skip_connect", 0)
    assert two.normal[1] == ("dil_conv_3x3", 1)
    assert ("skip_connect", 1) in two.normal[2:4]  # edge 3
    # the reduction cell is not constrained
    assert sum(op == "skip_connect" for op, _ in two.reduce) == 4


def test_skip_dropout_schedule_matches_the_reference_formula():
    r, epochs, warmup = 0.4, 25, 10
    rates = [P.skip_dropout_rate(r, e, epochs, warmup) for e in range(25)]
    np.testing.assert_allclose(rates[0], 0.96 * r)
    np.testing.assert_allclose(rates[9], 0.6 * r)
    np.testing.assert_allclose(rates[10], r)  # jumps back at the warm-up
    np.testing.assert_allclose(rates[24], r * np.exp(-0.2 * 14))


def test_probs_must_match_the_switches():
    with pytest.raises(ValueError, match="probs"):
        P.drop_weakest(P.initial_switches(OPS, 2), np.ones((2, 3)), 1, OPS)
