"""Tests of `vision.visualize` (matplotlib Agg, no TensorFlow)."""

import os

import numpy as np
import pytest

from tf_amended_darts.vision import derive, visualize
from tf_amended_darts.vision import genotype as gt

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # PNG specification, section 5.2


def assert_png(path):
    with open(path, "rb") as handle:
        data = handle.read()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000


@pytest.mark.parametrize("name", ["DARTS_V2", "PC_DARTS_IMAGENET"])
def test_plot_genotype_shared(name, tmp_path):
    paths = visualize.plot_genotype(gt.load_published(name), tmp_path / name)
    assert paths == [
        str(tmp_path / f"{name}_normal.png"),
        str(tmp_path / f"{name}_reduce.png"),
    ]
    for path in paths:
        assert_png(path)
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(p) for p in paths
    )  # no temp files left


def test_plot_genotype_per_cell(tmp_path):
    weights = [np.tile([0.3, 0.7], (8, 1))] * 3
    genotype = derive.derive_per_cell(
        weights, ("skip_connect", "sep_conv_3x3"), [1, 2]
    )
    paths = visualize.plot_genotype(genotype, tmp_path / "s2")
    assert [os.path.basename(p) for p in paths] == [
        "s2_cell00.png",
        "s2_cell01.png",
        "s2_cell02.png",
    ]
    for path in paths:
        assert_png(path)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_plot_cell_any_steps(steps, tmp_path):
    edges = [("skip_connect", 0), ("sep_conv_3x3", 1)]
    for j in range(1, steps):
        edges += [("dil_conv_5x5", j + 1), ("max_pool_3x3", 0)]
    concat = list(range(2, steps + 2))
    path = tmp_path / "sub" / "cell.png"
    assert visualize.plot_cell(edges, concat, path, "t") == str(path)
    assert_png(path)


def test_plot_cell_rejects_bad_cell(tmp_path):
    with pytest.raises(ValueError, match=r"`edges\[1\]\[1\]`"):
        visualize.plot_cell(
            [("skip_connect", 0), ("skip_connect", 4)], [2], tmp_path / "x.png"
        )
    assert not os.listdir(tmp_path)


def test_does_not_use_pyplot():
    # The object API with the Agg canvas leaves pyplot's global state alone.
    with open(visualize.__file__) as handle:
        assert "import matplotlib.pyplot" not in handle.read()


def test_genotype_to_text_shared():
    text = visualize.genotype_to_text(gt.load_published("DARTS_V2"))
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        "normal: 0 = sep_conv_3x3(c_{k-2}) + sep_conv_3x3(c_{k-1}); "
    )
    assert "3 = skip_connect(c_{k-2}) + dil_conv_3x3(0)" in lines[0]
    assert lines[0].endswith("c_{k} = concat(0, 1, 2, 3)")
    assert lines[1].startswith("reduce: 0 = max_pool_3x3(c_{k-2})")


def test_genotype_to_text_per_cell():
    weights = [np.tile([0.3, 0.7], (8, 1))] * 3
    genotype = derive.derive_per_cell(
        weights, ("skip_connect", "sep_conv_3x3"), [1, 2]
    )
    lines = visualize.genotype_to_text(genotype).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "cell 0 (normal)",
        "cell 1 (reduce)",
        "cell 2 (reduce)",
    ]
    assert "1 = sep_conv_3x3(0) + sep_conv_3x3(c_{k-2})" in lines[0]
