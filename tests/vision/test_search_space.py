"""Tests of `vision.search_space` (no TensorFlow)."""

import dataclasses
import math

import pytest

from tf_amended_darts.vision import search_space as ss


def test_primitives_in_darts_reference_order():
    assert ss.DARTS_PRIMITIVES == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
    )


@pytest.mark.parametrize(
    "name, layers, channels, operators, shared",
    [
        ("s1", 8, 16, ss.DARTS_PRIMITIVES, True),
        ("s2", 20, 36, ("skip_connect", "sep_conv_3x3"), False),
        ("s3", 8, 16, ("sep_conv_3x3", "skip_connect", "none"), True),
    ],
)
def test_named_spaces_match_method_section_5(
    name, layers, channels, operators, shared
):
    space = ss.get_space(name)
    assert space == ss.SPACES[name]
    assert space.name == name
    assert space.layers == layers
    assert space.init_channels == channels
    assert space.operators == operators
    assert space.shared_per_cell_type is shared
    assert (space.steps, space.multiplier) == (4, 4)
    assert space.concat == (2, 3, 4, 5)
    assert space.num_arch_sets == (2 if shared else layers)


def test_get_space_is_case_insensitive_and_overrides():
    space = ss.get_space(
        "S1", layers=5, init_channels=8, operators=["none", "skip_connect"]
    )
    assert (space.layers, space.init_channels) == (5, 8)
    assert space.operators == ("none", "skip_connect")
    assert ss.SPACES["s1"].layers == 8  # the named space is unchanged


def test_get_space_unknown_name_lists_accepted():
    with pytest.raises(ValueError, match=r"name.*s1.*s2.*s3"):
        ss.get_space("s9")


def test_get_space_unknown_override_lists_accepted():
    with pytest.raises(ValueError, match=r"overrides.*layers"):
        ss.get_space("s1", shared_per_cell_type=False)


def test_get_space_overrides_the_number_of_nodes():
    space = ss.get_space("s2", steps=3, multiplier=3)
    assert (space.steps, space.multiplier, space.layers) == (3, 3, 20)
    with pytest.raises(ValueError, match="multiplier"):
        ss.get_space("s1", steps=2, multiplier=3)


_BASE = dict(name="x", operators=("skip_connect",), layers=3, init_channels=4)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"name": ""}, "name"),
        ({"operators": ()}, "operators"),
        ({"operators": "skip_connect"}, "operators"),
        ({"operators": ("conv_7x7",)}, "operators"),
        ({"operators": ("skip_connect", "skip_connect")}, "operators"),
        ({"operators": ("none",)}, "operators"),
        ({"layers": 0}, "layers"),
        ({"layers": 2.0}, "layers"),
        ({"layers": True}, "layers"),
        ({"init_channels": 0}, "init_channels"),
        ({"steps": 0}, "steps"),
        ({"multiplier": 5}, "multiplier"),
        ({"shared_per_cell_type": 1}, "shared_per_cell_type"),
    ],
)
def test_space_validation_names_the_field(change, field):
    with pytest.raises(ValueError, match=rf"`{field}`.*Received"):
        ss.SearchSpace(**{**_BASE, **change})


def test_unknown_operator_message_lists_accepted_names():
    with pytest.raises(ValueError, match="sep_conv_3x3"):
        ss.SearchSpace(**{**_BASE, "operators": ("conv_7x7",)})


def test_space_is_frozen_and_coerces_operator_lists():
    space = ss.SearchSpace(**{**_BASE, "operators": ["skip_connect"]})
    assert space.operators == ("skip_connect",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.layers = 4


@pytest.mark.parametrize(
    "layers, expected",
    [
        (8, [2, 5]),
        (20, [6, 13]),
        (14, [4, 9]),
        (5, [1, 3]),
        (3, [1, 2]),
        (2, [0, 1]),
        (1, [0]),
    ],
)
def test_reduction_indices(layers, expected):
    assert ss.reduction_indices(layers) == expected


@pytest.mark.parametrize(
    "layers, types", [(8, ("normal", "reduce")), (2, ("reduce",))]
)
def test_cell_types_present(layers, types):
    assert ss.cell_types_present(layers) == types


def test_edge_list_pruned_and_searched():
    expected = [[0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert ss.edge_list("pruned") == expected
    assert ss.edge_list("searched") == expected


def test_edge_list_fixed():
    assert ss.edge_list("fixed") == [[0, 1], [2, 0], [3, 0], [4, 0]]
    assert ss.edge_list("fixed", steps=2) == [[0, 1], [2, 0]]


@pytest.mark.parametrize(
    "layout, steps, count",
    [
        ("pruned", 4, 14),
        ("searched", 4, 14),
        ("fixed", 4, 8),
        ("pruned", 2, 5),
        ("fixed", 3, 6),
    ],
)
def test_num_edges(layout, steps, count):
    assert ss.num_edges(layout, steps) == count


def test_unknown_layout_lists_accepted():
    with pytest.raises(ValueError, match=r"`layout`.*pruned.*fixed"):
        ss.edge_list("all")


@pytest.mark.parametrize("j, count", [(0, 1), (1, 3), (2, 6), (3, 10)])
def test_input_pairs(j, count):
    pairs = ss.input_pairs(j)
    assert len(pairs) == count == math.comb(j + 2, 2)
    assert all(0 <= a < b <= j + 1 for a, b in pairs)
    assert len(set(pairs)) == count


def test_input_pairs_order():
    assert ss.input_pairs(1) == [(0, 1), (0, 2), (1, 2)]
    assert ss.num_pairs(4) == 20


def test_s1_size_matches_paper():
    # Paper, section 3.1.2: "1.1 x 10^18 distinct architectures".
    size = ss.space_size(ss.get_space("s1"), "pruned")
    assert isinstance(size, int)
    assert (
        size
        == (
            math.comb(2, 2)
            * math.comb(3, 2)
            * math.comb(4, 2)
            * math.comb(5, 2)
            * 7**8
        )
        ** 2
    )
    assert f"{size:.1e}" == "1.1e+18"


@pytest.mark.parametrize("layout", ["searched", "pruned"])
def test_s2_size_matches_paper(layout):
    # Paper, section 3.1.2: "a total of 1.9 x 10^93 architectures".
    size = ss.space_size(ss.get_space("s2"), layout)
    assert size == (180 * 2**8) ** 20
    assert f"{size:.1e}" == "1.9e+93"


def test_fixed_edge_sizes():
    assert ss.space_size(ss.get_space("s2"), "fixed") == 2 ** (8 * 20)
    assert ss.space_size(ss.get_space("s1"), "fixed") == 7 ** (8 * 2)


def test_s3_size_ignores_none():
    assert ss.space_size(ss.get_space("s3")) == (180 * 2**8) ** 2
