"""R-DARTS: the early-stop rule (hand-worked against the reference's
EVLocalAvg) and DARTS-ES / DARTS-ADA runs with scripted eigenvalues."""

import csv
import json

import numpy as np
import pytest

from tf_amended_darts.jobs import rdarts
from tf_amended_darts.vision import genotype as G

pytestmark = pytest.mark.usefixtures("restore_global_tf_state")


def _reference_rule():
    # R-DARTS defaults: window 5, every 2 epochs, 50 epochs, delta 4,
    # factor 1.3, es_start_epoch 10
    return rdarts.EigenvalueEarlyStop(5, 2, 50, 4, 1.3, 10)


def test_local_averages_follow_the_reference():
    rule = _reference_rule()
    evs = {e: 1.0 + e for e in range(0, 50, 2)}
    for e in range(0, 14, 2):
        rule.update(e, evs[e])
    # 3 and 4 values: the mean of all; from 5 on, a sliding window of 5
    assert rule.averages[0] == np.mean([1, 3, 5])
    assert rule.averages[1] == np.mean([1, 3, 5, 7])
    assert rule.averages[2] == np.mean([1, 3, 5, 7, 9])
    assert rule.averages[3] == np.mean([3, 5, 7, 9, 11])
    assert rule.average_epochs[0] == -1 and rule.average_epochs[2] == -1
    assert rule.average_epochs[4] == 0 and rule.average_epochs[12] == 8


def test_first_check_at_epoch_22_and_the_stop_epoch_12_earlier():
    rule = _reference_rule()
    for e in range(0, 22, 2):
        rule.update(e, 1.0)
        assert rule.stop_epoch(e) is None
    rule.update(22, 100.0)  # newest average of EVs 14..22 jumps
    # (e - 4) - 2 * 4 = 10 >= es_start_epoch: the rule may fire
    assert rule.stop_epoch(22) == 10
    assert rule.lag == 12


def test_no_fire_below_the_factor_or_at_the_last_epoch():
    rule = _reference_rule()
    for e in range(0, 24, 2):
        rule.update(e, 1.0 + 0.01 * e)  # slow growth
        assert rule.stop_epoch(e) is None
    rule = rdarts.EigenvalueEarlyStop(1, 1, 3, 1, 1.3, 0)
    for e, v in enumerate((1.0, 1.0, 10.0)):
        rule.update(e, v)
    assert rule.stop_epoch(2) is None  # epoch 2 is the last


TINY = [
    "--dataset=digits", "--image_size=8", "--space=s3", "--layers=3",
    "--init_channels=4", "--batch_size=8", "--steps_per_epoch=1",
    "--verbose=0", "--arch_lr=0.01", "--arch_grad=first_order",
    "--weight_decay=3e-4",
]
# window 1, every epoch, delta 1: fires when an EV grows by > 1.3x, and
# stops at the epoch before.
RULE = ["--hessian_every=1", "--es_window=1", "--es_delta=1",
        "--es_start_epoch=0", "--hessian_iterations=2"]


def _run(args):
    from absl import flags

    from launchers import search as launcher
    from tf_amended_darts.jobs import baseline_config, search_config

    fv = flags.FlagValues()
    search_config.define_flags(fv)
    baseline_config.define_flags(fv)
    fv(["search"] + args)
    return launcher.run_search(fv)


@pytest.fixture
def scripted_eigenvalues(monkeypatch):
    """The logger writes ``values[epoch]`` instead of computing it."""
    values = {}

    def on_epoch_end(self, epoch, logs=None):
        if rdarts.hessian_epoch(epoch, self.every, self.epochs):
            logs[rdarts.EIGENVALUE_KEY] = values[epoch]

    monkeypatch.setattr(rdarts.HessianEigenvalueLogger, "on_epoch_end",
                        on_epoch_end)
    return values


def _rows(d):
    with open(d / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_darts_es_stops_and_keeps_the_earlier_genotype(
        tmp_path, scripted_eigenvalues):
    scripted_eigenvalues.update({0: 1.0, 1: 1.0, 2: 5.0, 3: 5.0, 4: 5.0})
    d = tmp_path / "es"
    genotype = _run(TINY + RULE + [f"--model_dir={d}", "--epochs=5",
                                   "--early_stop=es"])
    state = json.loads((d / rdarts.STATE_FILE).read_text())
    assert state["stopped"] and state["triggers"] == [
        {"epoch": 2, "stop_epoch": 1, "weight_decay": 3e-4}]
    # trained to the trigger epoch (3 epochs), then stopped
    assert [r["epoch"] for r in _rows(d)] == ["1", "2", "3"]
    assert [float(r["hessian_eigenvalue"]) for r in _rows(d)] == [1, 1, 5]
    # the result is the genotype after epoch 1 (0-based), file epoch_002
    earlier = G.load(str(d / "genotypes" / "epoch_002.json"))
    assert genotype.normal == earlier.normal
    assert G.load(str(d / "genotype.json")).normal == earlier.normal
    # a rerun does not train again
    again = _run(TINY + RULE + [f"--model_dir={d}", "--epochs=5",
                                "--early_stop=es"])
    assert again.normal == earlier.normal
    assert len(_rows(d)) == 3


@pytest.mark.slow
def test_darts_ada_rolls_back_and_raises_the_weight_decay(
        tmp_path, scripted_eigenvalues):
    scripted_eigenvalues.update({0: 1.0, 1: 1.0, 2: 5.0, 3: 5.0, 4: 5.0})
    d = tmp_path / "ada"
    _run(TINY + RULE + [f"--model_dir={d}", "--epochs=4",
                        "--early_stop=ada"])
    state = json.loads((d / rdarts.STATE_FILE).read_text())
    # 3e-4 -> 3e-3 -> 3e-2 (= the maximum): two triggers at epoch 2, each
    # rolling back to the checkpoint after epoch 1; the last iteration
    # runs to the end
    assert [t["epoch"] for t in state["triggers"]] == [2, 2]
    assert [t["stop_epoch"] for t in state["triggers"]] == [1, 1]
    np.testing.assert_allclose(state["weight_decay"], 3e-2)
    assert state["iteration"] == 3 and not state["stopped"]
    assert [r["epoch"] for r in _rows(d)] == ["1", "2", "3", "4"]
    assert (d / "rdarts" / "metrics_iteration_1.csv").exists()
    assert (d / "rdarts" / "metrics_iteration_2.csv").exists()
    assert (d / "genotype_es.json").exists()
    final = json.loads((d / "genotype.json").read_text())
    np.testing.assert_allclose(final["metadata"]["weight_decay"], 3e-2)
