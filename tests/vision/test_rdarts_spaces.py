"""R-DARTS' spaces under their own names, and per-edge operator subsets."""

import numpy as np
import pytest

from tf_amended_darts.vision import search_space as S
from tf_amended_darts.vision.supernet import SearchNetwork


def test_rdarts_spaces_match_the_reference_lists():
    s1 = S.get_space("rdarts_s1")
    assert s1.layers == 8 and s1.init_channels == 16
    normal = s1.edge_operators["normal"]
    assert len(normal) == 14 and all(len(ops) == 2 for ops in normal)
    # spot checks against automl/RobustDARTS src/spaces.py primitives_1
    assert normal[0] == ("skip_connect", "dil_conv_3x3")
    assert normal[5] == ("max_pool_3x3", "skip_connect")
    assert normal[13] == ("dil_conv_3x3", "dil_conv_5x5")
    assert s1.edge_operators["reduce"][6] == ("max_pool_3x3", "sep_conv_3x3")
    assert S.get_space("rdarts_s2").operators == ("skip_connect",
                                                  "sep_conv_3x3")
    # R-DARTS' column order for S3, not the project's S3 order
    assert S.get_space("rdarts_s3").operators == ("none", "skip_connect",
                                                  "sep_conv_3x3")
    assert S.get_space("s3").operators == ("sep_conv_3x3", "skip_connect",
                                           "none")


def test_edge_operators_must_fit_the_cell():
    with pytest.raises(ValueError, match="edge_operators"):
        S.get_space("rdarts_s1", steps=3, multiplier=3)
    with pytest.raises(ValueError, match="edge_operators"):
        S.SearchSpace("x", ("skip_connect",), 8, 16,
                      edge_operators={"normal": [("skip_connect",)] * 14,
                                      "reduce": [("sep_conv_3x3",)] * 14})


def test_supernet_with_per_edge_operators():
    space = S.get_space("rdarts_s1", layers=3)
    net = SearchNetwork(10, operators=space.operators, layers=3,
                        init_channels=4,
                        edge_operators=space.edge_operators_for(3))
    net.build((None, 8, 8, 3))
    assert [tuple(v.shape) for v in net.arch_variables] == [(14, 2),
                                                            (14, 2)]
    alpha = np.zeros((14, 2))
    alpha[:, 1] = 3.0  # the second operator of every edge wins
    net.alphas["normal"].assign(alpha)
    w = net.arch_weights()["normal"]
    assert w.shape == (14, len(space.operators))
    for e, ops in enumerate(space.edge_operators["normal"]):
        row = dict(zip(space.operators, w[e], strict=True))
        assert row[ops[1]] > row[ops[0]] > 0
        assert sum(v > 0 for v in row.values()) == 2
    genotype = net.genotype()
    offsets = [0, 2, 5, 9]
    for n, (op, i) in enumerate(genotype.normal):
        assert op == space.edge_operators["normal"][offsets[n // 2] + i][1]


def test_wrong_edge_operators_are_refused():
    with pytest.raises(ValueError, match="edge_operators"):
        SearchNetwork(10, layers=3, init_channels=4,
                      edge_operators={"normal": [["skip_connect"]] * 14})
