"""`--consistency` and its flags in the search launcher (paper 2.4, B.1).

The supernet-level behaviour (auxiliary head, drop-path masks) is tested in
tests/vision/test_consistency.py; here: flag resolution, the flagfiles, and
a run that carries the regularisers into the bi-level engine.
"""

import json

import numpy as np
import pytest

from tests.helpers import (
    REPO_ROOT,
    SEARCH_TINY,
    flags_with,
    search_config_of,
)
from tf_amended_darts.jobs import search, search_config
from tf_amended_darts.vision import genotype as G

ROOT = REPO_ROOT
TINY = flags_with(
    SEARCH_TINY,
    image_size=None,
    epochs=2,
    arch_grad="first_order",
    tensorboard=False,
)
_config = search_config_of


def test_consistency_brings_the_retraining_values(tmp_path):
    c = _config([f"--model_dir={tmp_path}", "--consistency"])
    assert (c.layers, c.init_channels, c.cutout) == (20, 36, 16)
    assert c.auxiliary and c.auxiliary_weight == 0.4
    assert c.drop_path_prob == pytest.approx(0.2)
    space = c.search_space()
    assert (space.layers, space.init_channels) == (20, 36)


def test_without_consistency_nothing_is_added(tmp_path):
    c = _config([f"--model_dir={tmp_path}"])
    assert (c.layers, c.init_channels, c.cutout) == (0, 0, 0)
    assert not c.auxiliary and c.drop_path_prob == 0.0
    assert c.search_space().layers == 8  # S1's own depth


def test_explicit_flags_win_over_consistency(tmp_path):
    c = _config([
        f"--model_dir={tmp_path}", "--consistency", "--noauxiliary",
        "--cutout=0", "--layers=8", "--drop_path_prob=0.1",
    ])
    assert not c.auxiliary and c.cutout == 0 and c.layers == 8
    assert c.drop_path_prob == pytest.approx(0.1)
    assert c.init_channels == 36  # not given: the consistency value


def test_config_built_directly_resolves_the_same_way(tmp_path):
    c = search_config.SearchConfig(model_dir=str(tmp_path), consistency=True)
    assert (c.layers, c.init_channels, c.auxiliary) == (20, 36, True)
    plain = search_config.SearchConfig(model_dir=str(tmp_path))
    assert (plain.layers, plain.cutout, plain.auxiliary) == (0, 0, False)
    recorded = json.loads(c.to_json())
    assert recorded["auxiliary"] is True and recorded["cutout"] == 16


@pytest.mark.parametrize("name,consistent,layers", [
    ("s1_pruned_amended.cfg", True, 8),
    ("s2_fixed_amended.cfg", True, 20),
    ("s2_searched_amended.cfg", True, 20),
    ("s3_amended.cfg", True, 8),
    ("table1_amended.cfg", True, 8),
    ("table1_ablation_no_amending.cfg", True, 8),
    ("table1_ablation_no_consistency.cfg", False, 8),
    ("table1_darts_first_order.cfg", False, 8),
    ("table1_darts_second_order.cfg", False, 8),
])
def test_paper_flagfiles(name, consistent, layers, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    c = _config([f"--flagfile=flags/{name}", f"--model_dir={tmp_path}"])
    assert c.consistency == consistent
    assert c.auxiliary == consistent
    assert c.cutout == (16 if consistent else 0)
    assert c.drop_path_prob == pytest.approx(0.2 if consistent else 0.0)
    assert c.search_space().layers == layers
    if name == "table1_ablation_no_consistency.cfg":
        amended = _config(
            ["--flagfile=flags/table1_amended.cfg", f"--model_dir={tmp_path}"]
        )
        differing = {
            k for k, v in vars(amended).items() if getattr(c, k) != v
        }
        assert differing == {
            "consistency", "auxiliary", "cutout", "drop_path_prob"
        }


@pytest.mark.parametrize("args,match", [
    (["--drop_path_prob=1.0"], "--drop_path_prob.*0, 1"),
    (["--drop_path_prob=-0.1"], "--drop_path_prob"),
    (["--auxiliary_weight=-1"], "--auxiliary_weight"),
    (["--nodes=-1"], "--nodes"),
])
def test_bad_flags_are_named(args, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        _config([f"--model_dir={tmp_path}"] + args)


def test_auxiliary_on_small_images_names_the_flag(tmp_path):
    config = _config(
        TINY + [f"--model_dir={tmp_path}", "--image_size=16", "--auxiliary"]
    )
    with pytest.raises(ValueError, match="--image_size.*--noauxiliary"):
        search.run(config)


def test_consistent_search_trains_with_the_regularisers(tmp_path):
    d = tmp_path / "run"
    config = _config(TINY + [
        f"--model_dir={d}", "--image_size=32", "--consistency",
        "--layers=3", "--init_channels=4",
    ])
    result = search.run_search(config, search.set_up(config))
    net = result.network
    assert net.auxiliary_head is not None and net.drop_path
    # The schedule reached the network: epoch 1 of 2 -> 0.2 * 1 / 2.
    assert net.drop_path_prob == pytest.approx(0.1)
    recorded = json.loads((d / "config.json").read_text())
    assert recorded["cutout"] == 16 and recorded["auxiliary"]
    assert G.load(str(d / "genotype.json")) == result.genotype
    metrics = (d / "metrics.csv").read_text()
    assert "nan" not in metrics.lower()


def test_nodes_override_changes_the_cell(tmp_path):
    d = tmp_path / "run"
    config = _config(TINY + [
        f"--model_dir={d}", "--image_size=8", "--nodes=2", "--epochs=1",
    ])
    space = config.search_space()
    assert (space.steps, space.multiplier) == (2, 2)
    genotype = search.run(config)
    assert len(genotype.normal) == 4 and len(genotype.reduce) == 4
    assert list(genotype.normal_concat) == [2, 3]
    history = np.load(d / "arch_history.npz")
    assert history["normal"].shape[1] == 5  # 2 + 3 edges


def test_recompute_cells_reaches_the_network_with_its_random_draws(
    tmp_path,
):
    # Drop-path (--consistency) and the noise operator (rdarts_s4) draw
    # alike in a recomputed cell (tests/vision/test_recomputed_cells.py);
    # forward-mode products have no recomputed form.
    config = _config(TINY + [f"--model_dir={tmp_path}", "--recompute_cells"])
    assert config.recompute_cells
    for extra in (["--consistency"], ["--space=rdarts_s4"]):
        assert _config(TINY + [f"--model_dir={tmp_path}",
                               "--recompute_cells"] + extra).recompute_cells
    with pytest.raises(ValueError, match="--hvp.*--recompute_cells"):
        _config(TINY + [f"--model_dir={tmp_path}", "--recompute_cells",
                        "--arch_grad=amended", "--hvp=forward"])
    network = search._search_network(
        config, config.search_space(), 10, 8, None, 1, None
    )
    assert network.recompute_cells
