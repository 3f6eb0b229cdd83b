"""Tests of `vision.genotype`: data type and JSON (no TensorFlow)."""

import json
import os

import pytest

from tests.helpers import REPO_ROOT
from tf_amended_darts.vision import genotype as gt
from tf_amended_darts.vision import search_space as ss

PRIMITIVES = ss.DARTS_PRIMITIVES
SHARED_REFERENCE = os.path.join(
    os.path.dirname(REPO_ROOT),
    "shared",
    "reference",
    "published_genotypes.json",
)


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
