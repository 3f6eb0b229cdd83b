"""Stability indicators: skip-connections in the normal cell, decidedness."""

import math

import numpy as np
import pytest

from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision import indicators

CONCAT = (2, 3, 4, 5)


def _cell(skips):
    return tuple(
        ("skip_connect" if i < skips else "sep_conv_3x3", i % 2)
        for i in range(8)
    )


def test_skip_connections_normal_shared():
    genotype = G.Genotype(_cell(5), CONCAT, _cell(8), CONCAT)
    assert indicators.skip_connections_normal(genotype) == 5.0


def test_skip_connections_normal_per_cell_is_the_mean():
    cells = (
        G.CellGenotype(_cell(2), CONCAT, False),
        G.CellGenotype(_cell(8), CONCAT, True),
        G.CellGenotype(_cell(6), CONCAT, False),
    )
    genotype = G.Genotype(cells=cells)
    assert indicators.skip_connections_normal(genotype) == 4.0


def test_mean_max_weight():
    undecided = np.full((14, 3), 1 / 3)
    decided = np.tile([0.0, 1.0, 0.0], (14, 1))
    assert indicators.mean_max_weight(
        {"normal": undecided, "reduce": undecided}
    ) == pytest.approx(1 / 3)
    assert indicators.mean_max_weight(
        {"normal": undecided, "reduce": decided, "beta_normal": np.ones(10)}
    ) == pytest.approx(2 / 3)
    assert math.isnan(indicators.mean_max_weight({"beta_x": np.ones(3)}))


def test_stability_stats_keys():
    genotype = G.Genotype(_cell(3), CONCAT, _cell(0), CONCAT)
    weights = {"normal": np.tile([0.2, 0.5, 0.3], (14, 1))}
    assert indicators.stability_stats(weights, genotype) == {
        "skip_connections_normal": 3.0,
        "mean_max_weight": pytest.approx(0.5),
    }
