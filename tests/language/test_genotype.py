"""Recurrent genotypes: JSON, validation, published cells, derivation."""

import json

import numpy as np
import pytest

from tf_amended_darts.language import genotype as G
from tf_amended_darts.language import space
from tf_amended_darts.vision import genotype as vision_genotype

# [darts] rnn/genotypes.py, transcribed by hand (the oracle of the JSON).
DARTS_V1 = [("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4),
            ("identity", 1), ("relu", 5), ("relu", 1)]
DARTS_V2 = [("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1),
            ("tanh", 2), ("sigmoid", 5), ("tanh", 3), ("relu", 5)]


def test_published_genotypes_are_the_reference_ones():
    assert set(G.published_names()) == {"DARTS_V1", "DARTS_V2", "ENAS"}
    assert list(G.load("DARTS_V1").recurrent) == DARTS_V1
    v2 = G.load("DARTS_V2")
    assert list(v2.recurrent) == DARTS_V2
    assert v2.concat == tuple(range(1, 9)) and v2.steps == 8
    enas = G.load("ENAS")
    assert enas.steps == 11 and enas.concat == (2, 5, 6, 9, 10, 11)


def test_json_round_trip_has_the_recurrent_kind(tmp_path):
    g = G.RecurrentGenotype(tuple(DARTS_V2), metadata={"epochs": 3})
    path = tmp_path / "g.json"
    G.save(g, path)
    data = json.loads(path.read_text())
    assert data["kind"] == "recurrent"
    assert data["format"] == "tf_amended_darts.genotype"
    assert data["version"] == 1
    assert G.load(str(path)) == g
    assert G.load(str(path)).metadata == {"epochs": 3}


@pytest.mark.parametrize("change,match", [
    (dict(kind="convolutional"), "kind"),
    (dict(version=2), "version"),
    (dict(extra=1), "Unknown field"),
    (dict(recurrent=[["conv", 0]]), r"recurrent\[0\]\[0\]"),
    (dict(recurrent=[["none", 0]]), r"recurrent\[0\]\[0\]"),
    (dict(recurrent=[["tanh", 0], ["relu", 2]]),
     r"recurrent\[1\]\[1\].*0\.\.1"),
    (dict(concat=[0, 1]), "concat"),
    (dict(concat=[1, 1]), "concat"),
])
def test_invalid_fields_are_named(change, match):
    data = G.to_dict(G.RecurrentGenotype((("tanh", 0), ("relu", 1))))
    data.update(change)
    with pytest.raises(ValueError, match=match):
        G.from_json(json.dumps(data))


def test_the_two_tasks_refuse_each_others_genotypes():
    rnn = G.to_json(G.load("DARTS_V2"))
    with pytest.raises(ValueError, match="recurrent"):
        vision_genotype.from_json(rnn)
    cnn = vision_genotype.to_json(vision_genotype.load("DARTS_V2"))
    with pytest.raises(ValueError, match="convolutional"):
        G.from_json(cnn)


def test_unknown_name_lists_the_published_ones():
    with pytest.raises(ValueError, match="DARTS_V2"):
        G.load("DARTS_V3")
    with pytest.raises(FileNotFoundError):
        G.load("missing/genotype.json")


def _reference_parse(probs):
    """rnn/model_search.py `_parse`, transcribed (the derivation oracle)."""
    none = space.PRIMITIVES.index("none")
    gene, start = [], 0
    for i in range(space.STEPS):
        end = start + i + 1
        W = probs[start:end].copy()
        j = sorted(range(i + 1), key=lambda x: -max(
            W[x][k] for k in range(len(W[x])) if k != none))[0]
        k_best = None
        for k in range(len(W[j])):
            if k != none and (k_best is None or W[j][k] > W[j][k_best]):
                k_best = k
        gene.append((space.PRIMITIVES[k_best], j))
        start = end
    return gene


@pytest.mark.parametrize("seed", range(5))
def test_derivation_follows_the_reference_parse(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(36, 5))
    if seed == 4:  # ties: equal rows and columns
        logits = np.round(logits)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    g = G.from_weights(probs)
    assert list(g.recurrent) == _reference_parse(probs)
    assert g.concat == tuple(range(1, 9))


def test_derivation_ignores_none_and_rejects_bad_shapes():
    w = np.full((3, 5), 0.1)
    w[:, 0] = 0.9  # `none` strongest everywhere
    w[2, 3] = 0.5  # node 1: predecessor 1 (row 2) through sigmoid
    assert space.derive(w) == [("tanh", 0), ("sigmoid", 1)]
    with pytest.raises(ValueError, match="rows"):
        space.derive(np.ones((4, 5)))
    with pytest.raises(ValueError, match="columns"):
        space.derive(np.ones((3, 4)))
    assert space.edge_labels(2) == ["0->1", "0->2", "1->2"]
