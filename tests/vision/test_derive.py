"""Tests of `vision.derive`: the DARTS derivation rules."""

import numpy as np
import pytest

from tf_amended_darts.vision import derive
from tf_amended_darts.vision import genotype as gt
from tf_amended_darts.vision import search_space as ss

PRIMITIVES = ss.DARTS_PRIMITIVES


def reference_parse(weights, primitives, steps=4):
    """The DARTS reference `_parse` (model_search.py), transliterated."""
    gene = []
    n = 2
    start = 0
    none = primitives.index("none") if "none" in primitives else -1
    for i in range(steps):
        end = start + n
        W = weights[start:end].copy()  # noqa: N806 (reference spelling)
        edges = sorted(
            range(i + 2),
            key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none),
        )[:2]
        for j in edges:
            k_best = None
            for k in range(len(W[j])):
                if k != none:
                    if k_best is None or W[j][k] > W[j][k_best]:
                        k_best = k
            gene.append((primitives[k_best], j))
        start = end
        n += 1
    return gene


def weights_selecting(edges, operators, steps=4):
    """Pruned-layout weights whose DARTS derivation gives `edges`.

    `none` gets the largest weight everywhere, to check it is ignored.
    """
    rng = np.random.default_rng(0)
    rows = []
    for j in range(steps):
        (op_a, in_a), (op_b, in_b) = edges[2 * j : 2 * j + 2]
        for i in range(j + 2):
            row = rng.uniform(0.0, 0.1, len(operators))
            if i == in_a:
                row[operators.index(op_a)] = 0.9
            elif i == in_b:
                row[operators.index(op_b)] = 0.8
            if "none" in operators:
                row[operators.index("none")] = 5.0
            rows.append(row)
    logits = np.log(np.array(rows))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------
# Derivation.


@pytest.mark.parametrize("name", gt.published_names())
def test_derive_pruned_reproduces_published(name):
    published = gt.load_published(name)
    derived = derive.derive_pruned(
        weights_selecting(published.normal, PRIMITIVES),
        weights_selecting(published.reduce, PRIMITIVES),
        PRIMITIVES,
    )
    assert derived == published


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(
    "operators",
    [
        PRIMITIVES,
        ("sep_conv_3x3", "skip_connect", "none"),
        ("skip_connect", "sep_conv_3x3"),
    ],
)
def test_derive_pruned_matches_reference_parse_with_ties(seed, operators):
    # Small integers make edge ties and operator ties frequent.
    rng = np.random.default_rng(seed)
    weights = rng.integers(0, 3, size=(14, len(operators))).astype(float)
    expected = tuple(reference_parse(weights, list(operators)))
    assert derive.derive_pruned_cell(weights, operators) == expected
    assert (
        derive.derive_pruned_cell(weights.astype(np.float32), operators)
        == expected
    )


def test_edge_tie_keeps_earlier_edge():
    # Node 0: both inputs tie; node 1: all three inputs tie.
    weights = np.zeros((14, 8))
    weights[:5, 4] = 1.0  # sep_conv_3x3 everywhere on nodes 0 and 1
    gene = derive.derive_pruned_cell(weights, PRIMITIVES)
    assert gene[:4] == (
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
    )


def test_kept_edges_are_ordered_by_strength():
    weights = np.zeros((14, 8))
    weights[0, 3] = 0.5  # c_{k-2}: skip_connect, weaker
    weights[1, 5] = 0.7  # c_{k-1}: sep_conv_5x5, stronger
    gene = derive.derive_pruned_cell(weights, PRIMITIVES)
    assert gene[:2] == (("sep_conv_5x5", 1), ("skip_connect", 0))


def test_operator_tie_keeps_first_operator():
    weights = np.full((14, 8), 0.1)
    weights[0, [6, 2, 4]] = 0.5  # avg_pool_3x3 comes first in order
    gene = derive.derive_pruned_cell(weights, PRIMITIVES)
    assert gene[0] == ("avg_pool_3x3", 0)
    # All-equal row: the first operator other than `none`.
    assert gene[1] == ("max_pool_3x3", 1)


def test_none_with_largest_weight_is_ignored():
    weights = np.full((14, 8), 0.01)
    weights[:, 0] = 0.9  # `none` dominates every edge
    weights[2, 7] = 0.05  # node 1, input 0: dil_conv_5x5
    weights[4, 3] = 0.04  # node 1, input 2: skip_connect
    gene = derive.derive_pruned_cell(weights, PRIMITIVES)
    assert all(op != "none" for op, _ in gene)
    assert gene[2:4] == (("dil_conv_5x5", 0), ("skip_connect", 2))


def test_none_not_first_is_ignored():
    operators = ("sep_conv_3x3", "skip_connect", "none")
    weights = np.tile([0.2, 0.1, 0.7], (14, 1))
    gene = derive.derive_pruned_cell(weights, operators)
    assert {op for op, _ in gene} == {"sep_conv_3x3"}


def test_only_none_operator_is_rejected():
    with pytest.raises(ValueError, match=r"`operators`.*other than 'none'"):
        derive.derive_pruned_cell(np.ones((14, 1)), ("none",))
    with pytest.raises(ValueError, match=r"`operators`"):
        derive.derive_fixed(np.ones((8, 1)), ("none",))


@pytest.mark.parametrize(
    "weights, field",
    [
        (np.ones((13, 8)), "weights.shape"),
        (np.ones((14, 7)), "weights.shape"),
        (np.full((14, 8), np.nan), "weights"),
    ],
)
def test_bad_weights_are_rejected(weights, field):
    with pytest.raises(ValueError, match=rf"`{field}`"):
        derive.derive_pruned_cell(weights, PRIMITIVES)


def test_derive_fixed_default_edges():
    operators = ("skip_connect", "sep_conv_3x3")
    weights = np.array(
        [
            [0.6, 0.4],
            [0.3, 0.7],
            [0.5, 0.5],
            [0.1, 0.9],
            [0.8, 0.2],
            [0.4, 0.6],
            [0.5, 0.5],
            [0.2, 0.8],
        ]
    )
    gene = derive.derive_fixed(weights, operators)
    assert gene == (
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("skip_connect", 2),
        ("sep_conv_3x3", 0),
        ("skip_connect", 3),
        ("sep_conv_3x3", 0),
        ("skip_connect", 4),
        ("sep_conv_3x3", 0),
    )
    flat = [i for pair in ss.edge_list("fixed") for i in pair]
    assert [i for _, i in gene] == flat


def test_derive_fixed_ignores_none():
    weights = np.tile([0.9, 0.05, 0.05], (8, 1))
    operators = ("none", "avg_pool_3x3", "skip_connect")
    gene = derive.derive_fixed(weights, operators)
    assert {op for op, _ in gene} == {"avg_pool_3x3"}


def test_derive_fixed_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"`inputs\[1\]`"):
        derive.derive_fixed(
            np.ones((8, 2)),
            ("skip_connect", "sep_conv_3x3"),
            inputs=[[0, 1], [0, 5], [0, 1], [0, 1]],
        )


def test_derive_pairs_flat_and_per_node():
    per_node = [
        np.array([1.0]),
        np.array([0.1, 0.2, 0.7]),
        np.array([0.3, 0.3, 0.1, 0.1, 0.1, 0.1]),
        np.zeros(10),
    ]
    per_node[3][7] = 1.0
    expected = [(0, 1), (1, 2), (0, 1), ss.input_pairs(3)[7]]
    assert derive.derive_pairs(per_node) == expected
    assert derive.derive_pairs(np.concatenate(per_node)) == expected
    assert derive.derive_pairs(list(np.concatenate(per_node))) == expected
    # All tied: the first pair of each node.
    assert derive.derive_pairs(np.zeros(20)) == [(0, 1)] * 4


@pytest.mark.parametrize("bad", [np.zeros(19), [np.zeros(1)] * 4])
def test_derive_pairs_rejects_wrong_lengths(bad):
    with pytest.raises(ValueError, match="pair_weights"):
        derive.derive_pairs(bad)


def test_searched_stage_two_uses_kept_pairs():
    operators = ("skip_connect", "sep_conv_3x3")
    pairs = [(0, 1), (1, 2), (0, 3), (2, 4)]
    weights = np.tile([0.2, 0.8], (8, 1))
    genotype = derive.derive_shared(
        weights,
        weights,
        operators,
        "searched",
        inputs_normal=pairs,
        inputs_reduce=pairs,
    )
    assert [i for _, i in genotype.normal] == [0, 1, 1, 2, 0, 3, 2, 4]
    with pytest.raises(ValueError, match="`inputs`"):
        derive.derive_shared(weights, weights, operators, "searched")


def test_derive_per_cell_for_s2():
    space = ss.get_space("s2")
    rng = np.random.default_rng(1)
    weights = [rng.uniform(size=(8, 2)) for _ in range(space.layers)]
    reductions = ss.reduction_indices(space.layers)
    genotype = derive.derive_per_cell(
        weights, space.operators, reductions, metadata={"space": "s2"}
    )
    assert genotype.is_per_cell and len(genotype.cells) == 20
    for i, cell in enumerate(genotype.cells):
        assert cell.reduction == (i in (6, 13))
        best = [space.operators[k] for k in np.argmax(weights[i], axis=1)]
        assert [op for op, _ in cell.edges] == best
    assert genotype.cell_genotypes(20) == genotype.cells
    with pytest.raises(ValueError, match="`layers`"):
        genotype.cell_genotypes(8)
    text = gt.to_json(genotype)
    assert gt.from_json(text) == genotype
