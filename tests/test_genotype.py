"""Tests of tf_amended_darts.genotype (no TensorFlow)."""

import json
import os

import numpy as np
import pytest

from tf_amended_darts import genotype as gt
from tf_amended_darts import search_space as ss

PRIMITIVES = ss.DARTS_PRIMITIVES
SHARED_REFERENCE = os.path.join(
    os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ),
    "shared",
    "reference",
    "published_genotypes.json",
)


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
    derived = gt.derive_pruned(
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
    assert gt.derive_pruned_cell(weights, operators) == expected
    assert (
        gt.derive_pruned_cell(weights.astype(np.float32), operators) == expected
    )


def test_edge_tie_keeps_earlier_edge():
    # Node 0: both inputs tie; node 1: all three inputs tie.
    weights = np.zeros((14, 8))
    weights[:5, 4] = 1.0  # sep_conv_3x3 everywhere on nodes 0 and 1
    gene = gt.derive_pruned_cell(weights, PRIMITIVES)
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
    gene = gt.derive_pruned_cell(weights, PRIMITIVES)
    assert gene[:2] == (("sep_conv_5x5", 1), ("skip_connect", 0))


def test_operator_tie_keeps_first_operator():
    weights = np.full((14, 8), 0.1)
    weights[0, [6, 2, 4]] = 0.5  # avg_pool_3x3 comes first in order
    gene = gt.derive_pruned_cell(weights, PRIMITIVES)
    assert gene[0] == ("avg_pool_3x3", 0)
    # All-equal row: the first operator other than `none`.
    assert gene[1] == ("max_pool_3x3", 1)


def test_none_with_largest_weight_is_ignored():
    weights = np.full((14, 8), 0.01)
    weights[:, 0] = 0.9  # `none` dominates every edge
    weights[2, 7] = 0.05  # node 1, input 0: dil_conv_5x5
    weights[4, 3] = 0.04  # node 1, input 2: skip_connect
    gene = gt.derive_pruned_cell(weights, PRIMITIVES)
    assert all(op != "none" for op, _ in gene)
    assert gene[2:4] == (("dil_conv_5x5", 0), ("skip_connect", 2))


def test_none_not_first_is_ignored():
    operators = ("sep_conv_3x3", "skip_connect", "none")
    weights = np.tile([0.2, 0.1, 0.7], (14, 1))
    gene = gt.derive_pruned_cell(weights, operators)
    assert {op for op, _ in gene} == {"sep_conv_3x3"}


def test_only_none_operator_is_rejected():
    with pytest.raises(ValueError, match=r"`operators`.*other than 'none'"):
        gt.derive_pruned_cell(np.ones((14, 1)), ("none",))
    with pytest.raises(ValueError, match=r"`operators`"):
        gt.derive_fixed(np.ones((8, 1)), ("none",))


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
        gt.derive_pruned_cell(weights, PRIMITIVES)


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
    gene = gt.derive_fixed(weights, operators)
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
    gene = gt.derive_fixed(weights, ("none", "avg_pool_3x3", "skip_connect"))
    assert {op for op, _ in gene} == {"avg_pool_3x3"}


def test_derive_fixed_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"`inputs\[1\]`"):
        gt.derive_fixed(
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
    assert gt.derive_pairs(per_node) == expected
    assert gt.derive_pairs(np.concatenate(per_node)) == expected
    assert gt.derive_pairs(list(np.concatenate(per_node))) == expected
    # All tied: the first pair of each node.
    assert gt.derive_pairs(np.zeros(20)) == [(0, 1)] * 4


@pytest.mark.parametrize("bad", [np.zeros(19), [np.zeros(1)] * 4])
def test_derive_pairs_rejects_wrong_lengths(bad):
    with pytest.raises(ValueError, match="pair_weights"):
        gt.derive_pairs(bad)


def test_searched_stage_two_uses_kept_pairs():
    operators = ("skip_connect", "sep_conv_3x3")
    pairs = [(0, 1), (1, 2), (0, 3), (2, 4)]
    weights = np.tile([0.2, 0.8], (8, 1))
    genotype = gt.derive_shared(
        weights,
        weights,
        operators,
        "searched",
        inputs_normal=pairs,
        inputs_reduce=pairs,
    )
    assert [i for _, i in genotype.normal] == [0, 1, 1, 2, 0, 3, 2, 4]
    with pytest.raises(ValueError, match="`inputs`"):
        gt.derive_shared(weights, weights, operators, "searched")


def test_derive_per_cell_for_s2():
    space = ss.get_space("s2")
    rng = np.random.default_rng(1)
    weights = [rng.uniform(size=(8, 2)) for _ in range(space.layers)]
    reductions = ss.reduction_indices(space.layers)
    genotype = gt.derive_per_cell(
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


def test_cell_genotypes_expands_shared_form():
    genotype = gt.load_published("DARTS_V2")
    cells = genotype.cell_genotypes(8)
    assert [c.reduction for c in cells] == [
        False,
        False,
        True,
        False,
        False,
        True,
        False,
        False,
    ]
    assert cells[2].edges == genotype.reduce
    assert cells[0].edges == genotype.normal


# --------------------------------------------------------------------------
# Published genotypes and JSON.


def test_published_names():
    names = gt.published_names()
    assert names == (
        "DARTS_V1",
        "DARTS_V2",
        "PC_DARTS_CIFAR",
        "PC_DARTS_IMAGENET",
        "P_DARTS",
    )


def test_package_copy_equals_shared_reference():
    if not os.path.isfile(SHARED_REFERENCE):
        pytest.skip("no shared/reference in this checkout")
    package_copy = os.path.join(os.path.dirname(gt.__file__), gt.PUBLISHED_FILE)
    with open(package_copy) as a, open(SHARED_REFERENCE) as b:
        assert json.load(a) == json.load(b)


def test_darts_v2_content():
    genotype = gt.load("DARTS_V2")
    assert genotype.normal[:2] == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1))
    assert genotype.normal[-1] == ("dil_conv_3x3", 2)
    assert genotype.reduce_concat == (2, 3, 4, 5)


def test_recurrent_and_unknown_names_rejected():
    with pytest.raises(ValueError, match=r"`name`.*DARTS_V2"):
        gt.load_published("DARTS_RNN_V2")
    with pytest.raises(ValueError, match=r"`path_or_name`.*DARTS_V2"):
        gt.load("NO_SUCH_GENOTYPE")
    with pytest.raises(FileNotFoundError):
        gt.load("/nonexistent/genotype.json")


@pytest.mark.parametrize("name", gt.published_names())
def test_json_round_trip(name, tmp_path):
    genotype = gt.load_published(name)
    text = gt.to_json(genotype)
    data = json.loads(text)
    assert data["format"] == "tf_amended_darts.genotype"
    assert data["version"] == 1
    assert gt.from_json(text) == genotype
    path = tmp_path / f"{name}.json"
    gt.save(genotype, path)
    assert gt.load(path) == genotype
    assert gt.load(str(path)) == genotype


def test_metadata_round_trip():
    genotype = gt.Genotype(
        **{
            f: getattr(gt.load_published("DARTS_V1"), f)
            for f in ("normal", "normal_concat", "reduce", "reduce_concat")
        },
        metadata={"space": "s1", "epoch": 49, "seed": [1, 2]},
    )
    assert gt.from_json(gt.to_json(genotype)) == genotype
    with pytest.raises(ValueError, match="`metadata`"):
        gt.Genotype(
            genotype.normal,
            (2, 3, 4, 5),
            genotype.reduce,
            (2, 3, 4, 5),
            metadata={"x": object()},
        )


def _valid():
    return json.loads(gt.to_json(gt.load_published("DARTS_V2")))


def _per_cell():
    edges = [["skip_connect", 0], ["sep_conv_3x3", 1]] * 4
    data = {
        "format": gt.GENOTYPE_FORMAT,
        "version": 1,
        "cells": [
            {"edges": edges, "concat": [2, 3, 4, 5], "reduction": r}
            for r in (False, True)
        ],
    }
    return json.loads(json.dumps(data))  # no shared sub-lists


def _set(data, path, value):
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    "make, path, value, pattern",
    [
        (_valid, ["extra"], 1, r"Unknown.*extra.*`genotype`.*normal"),
        (_valid, ["format"], "darts", r"`format`.*tf_amended_darts.genotype"),
        (_valid, ["format"], _DELETE, r"Missing field `format`"),
        (_valid, ["version"], 2, r"`version`.*\(1,\)"),
        (_valid, ["version"], "1", r"`version`"),
        (_valid, ["version"], _DELETE, r"Missing field `version`"),
        (
            _valid,
            ["normal", 3, 0],
            "conv_7x7",
            r"`normal\[3\]\[0\]`.*sep_conv_3x3.*conv_7x7",
        ),
        (_valid, ["reduce", 0, 0], 3, r"`reduce\[0\]\[0\]`"),
        (_valid, ["normal", 1, 1], 2, r"`normal\[1\]\[1\]`.*0\.\.1"),
        (_valid, ["normal", 7, 1], 6, r"`normal\[7\]\[1\]`.*0\.\.4"),
        (_valid, ["normal", 7, 1], -1, r"`normal\[7\]\[1\]`"),
        (_valid, ["normal", 7, 1], 1.0, r"`normal\[7\]\[1\]`"),
        (_valid, ["normal", 7, 1], True, r"`normal\[7\]\[1\]`"),
        (_valid, ["normal", 7], ["skip_connect"], r"`normal\[7\]`.*pair"),
        (_valid, ["normal", 7], _DELETE, r"`normal`.*2 \[operator"),
        (_valid, ["reduce"], [], r"`reduce`.*2 \[operator"),
        (_valid, ["reduce"], "x", r"`reduce`"),
        (_valid, ["reduce"], _DELETE, r"Missing field `reduce`"),
        (_valid, ["normal_concat"], [2, 3, 6], r"`normal_concat`.*2\.\.5"),
        (_valid, ["normal_concat"], [2, 2], r"`normal_concat`.*distinct"),
        (_valid, ["reduce_concat"], [], r"`reduce_concat`"),
        (_valid, ["reduce_concat"], _DELETE, r"`reduce_concat`"),
        (_valid, ["cells"], [], r"`cells`"),
        (_valid, ["metadata"], [1], r"`metadata`"),
        (_per_cell, ["cells", 1, "extra"], 1, r"extra.*`cells\[1\]`"),
        (_per_cell, ["cells", 1, "reduction"], 1, r"`cells\[1\].reduction`"),
        (
            _per_cell,
            ["cells", 0, "concat"],
            _DELETE,
            r"Missing field `cells\[0\].concat`",
        ),
        (
            _per_cell,
            ["cells", 0, "edges", 2, 1],
            9,
            r"`cells\[0\].edges\[2\]\[1\]`",
        ),
        (_per_cell, ["normal"], [], r"`cells`.*normal"),
    ],
)
def test_from_json_rejects_and_names_the_field(make, path, value, pattern):
    text = json.dumps(_set(make(), path, value))
    with pytest.raises(ValueError, match=pattern):
        gt.from_json(text)


def test_per_cell_json_is_valid():
    genotype = gt.from_json(json.dumps(_per_cell()))
    assert [c.reduction for c in genotype.cells] == [False, True]
    assert genotype.normal == ()


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null", '{"format": 1,}'])
def test_malformed_json_rejected(text):
    with pytest.raises(ValueError, match="genotype|Malformed"):
        gt.from_json(text)


def test_duplicate_keys_rejected():
    text = gt.to_json(gt.load_published("DARTS_V2")).replace(
        '"version": 1,', '"version": 1, "version": 1,'
    )
    with pytest.raises(ValueError, match="repeated keys.*version"):
        gt.from_json(text)


def test_custom_operator_list():
    text = json.dumps(_per_cell())
    operators = ("skip_connect", "sep_conv_3x3")
    assert gt.from_json(text, operators).cells[0].edges[0] == (
        "skip_connect",
        0,
    )
    with pytest.raises(ValueError, match=r"\('skip_connect', 'none'\)"):
        gt.from_json(text, ("skip_connect", "none"))


def test_published_layout_needs_header_in_files(tmp_path):
    with open(
        SHARED_REFERENCE
        if os.path.isfile(SHARED_REFERENCE)
        else os.path.join(os.path.dirname(gt.__file__), gt.PUBLISHED_FILE)
    ) as handle:
        entry = json.load(handle)["DARTS_V1"]
    with pytest.raises(ValueError, match="`format`"):
        gt.from_json(json.dumps(entry))
    assert gt.from_dict(entry, require_header=False) == (
        gt.load_published("DARTS_V1")
    )


def test_constructor_validates_structure():
    with pytest.raises(ValueError, match=r"`normal\[1\]\[1\]`"):
        gt.Genotype(
            (("skip_connect", 0), ("skip_connect", 3)),
            (2,),
            (("skip_connect", 0), ("skip_connect", 1)),
            (2,),
        )
    with pytest.raises(ValueError, match="`normal`"):
        gt.Genotype(
            cells=(
                gt.CellGenotype(
                    (("skip_connect", 0), ("skip_connect", 1)), (2,), False
                ),
            ),
            normal=(("skip_connect", 0), ("skip_connect", 1)),
        )
    with pytest.raises(ValueError, match="`cells`"):
        gt.Genotype(cells=())


# --------------------------------------------------------------------------
# Atomic writes.


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "genotype.json"
    gt.save(gt.load_published("DARTS_V1"), path)
    before = path.read_text()
    assert os.listdir(path.parent) == ["genotype.json"]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(gt.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        gt.save(gt.load_published("DARTS_V2"), path)
    assert path.read_text() == before  # the old content survives
    assert os.listdir(path.parent) == ["genotype.json"]  # temp removed


def test_save_overwrites(tmp_path):
    path = tmp_path / "g.json"
    gt.save(gt.load_published("DARTS_V1"), path)
    gt.save(gt.load_published("P_DARTS"), path)
    assert gt.load(path) == gt.load_published("P_DARTS")
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
