"""Random search with keras-tuner: the space, a tiny run, kill -9 resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags

from tests.helpers import REPO_ROOT
from tf_amended_darts.jobs import random_search as RS
from tf_amended_darts.jobs import random_search_config
from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision import search_space as S

pytestmark = pytest.mark.usefixtures("restore_global_tf_state")


def _values(space, layers, seed):
    hp = RS.hyperparameters(space, layers)
    return {p.name: p.random_sample(seed + i)
            for i, p in enumerate(hp.space)}


def test_genotype_from_values_by_hand():
    space = S.get_space("s3")  # sep_conv_3x3, skip_connect, none
    values = {}
    for key in ("normal", "reduce"):
        for j in range(4):
            values[f"{key}/node{j}/pair"] = len(S.input_pairs(j)) - 1
            values[f"{key}/node{j}/op0"] = 0
            values[f"{key}/node{j}/op1"] = 1
    g = RS.genotype_from_values(values, space, 8)
    # the last pair of node j is (j, j + 1); operator index 0 = sep, 1 = skip
    assert g.normal == (("sep_conv_3x3", 0), ("skip_connect", 1),
                        ("sep_conv_3x3", 1), ("skip_connect", 2),
                        ("sep_conv_3x3", 2), ("skip_connect", 3),
                        ("sep_conv_3x3", 3), ("skip_connect", 4))
    assert g.reduce == g.normal
    # none is never a choice
    hp = RS.hyperparameters(space, 8)
    assert hp.get("normal/node0/op0") in (0, 1)
    assert [p.values for p in hp.space if p.name == "normal/node0/op0"] == [
        [0, 1]]


def test_samples_are_uniform_distinct_input_genotypes():
    space = S.get_space("s1")
    counts = np.zeros(3)  # node 1's three input pairs
    ops = {}
    for seed in range(0, 3000 * 200, 200):
        values = _values(space, 8, seed)
        g = RS.genotype_from_values(values, space, 8)
        for j in range(4):
            a, b = g.normal[2 * j][1], g.normal[2 * j + 1][1]
            assert a != b and a <= j + 1 and b <= j + 1
        counts[values["normal/node1/pair"]] += 1
        op = g.normal[0][0]
        ops[op] = ops.get(op, 0) + 1
    assert set(ops) == set(S.DARTS_PRIMITIVES) - {"none"}
    # 3000 draws: each frequency within 5 standard deviations of 1/3
    np.testing.assert_allclose(counts / 3000, 1 / 3,
                               atol=5 * np.sqrt(2 / 9 / 3000))


def test_per_edge_operators_of_rdarts_s1():
    space = S.get_space("rdarts_s1")
    for seed in range(20):
        g = RS.genotype_from_values(_values(space, 8, 97 * seed), space, 8)
        offsets = [0, 2, 5, 9]
        for n, (op, i) in enumerate(g.normal):
            edge = offsets[n // 2] + i
            assert op in S.RDARTS_S1_EDGES["normal"][edge]


def test_per_cell_space_samples_every_cell():
    space = S.get_space("s2", layers=5)
    g = RS.genotype_from_values(_values(space, 5, 3), space, 5)
    assert len(g.cells) == 5
    assert [c.reduction for c in g.cells] == [False, True, False, True,
                                              False]


TINY = [
    "--dataset=digits", "--image_size=8", "--space=s3", "--layers=3",
    "--init_channels=4", "--batch_size=8", "--steps_per_epoch=2",
    "--verbose=0",
]


def _run(args):
    from launchers import random_search as launcher

    fv = flags.FlagValues()
    random_search_config.define_flags(fv)
    fv(["random_search"] + args)
    return launcher.run_random_search(fv)


def _metrics(d):
    with open(os.path.join(d, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_random_search_writes_the_run_directory(tmp_path):
    d = tmp_path / "rs"
    genotype = _run(TINY + [f"--model_dir={d}", "--trials=2", "--epochs=1"])
    rows = _metrics(d)
    assert [r["trial"] for r in rows] == ["0", "1"]
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    assert G.load(best["genotype"]) == genotype
    assert G.load(str(d / "genotype.json")) == genotype
    for name in ("config.json", "flags.txt", "genotype_normal.png",
                 "tuner/oracle.json", "tuner/trial_0/result.json",
                 "tuner/trial_1/checkpoints/ckpt-0001.weights.h5"):
        assert (d / name).exists(), name
    assert os.listdir(d / "tensorboard" / "random_search")
    # the two trials are different genotypes
    a, b = (G.load(str(d / f"tuner/trial_{i}/genotype.json"))
            for i in (0, 1))
    assert (a.normal, a.reduce) != (b.normal, b.reduce)
    # a rerun trains nothing more
    _run(TINY + [f"--model_dir={d}", "--trials=2", "--epochs=1"])
    assert len(_metrics(d)) == 2


@pytest.mark.parametrize("flag", ["grappler", "op_tracebacks",
                                  "deterministic"])
def test_graph_settings_flags_reach_tensorflow(tmp_path, monkeypatch, flag):
    # The same three process settings as the search and re-training
    # (`graph_settings.configure`), applied before any trial is traced.
    seen = []

    class Stop(Exception):
        pass

    def configure(grappler=False, op_tracebacks=False, deterministic=False):
        seen.append(dict(grappler=grappler, op_tracebacks=op_tracebacks,
                         deterministic=deterministic))
        raise Stop

    monkeypatch.setattr(RS.graph_settings, "configure", configure)
    with pytest.raises(Stop):
        _run(TINY + [f"--model_dir={tmp_path}", f"--{flag}"])
    expected = dict(grappler=False, op_tracebacks=False, deterministic=False)
    expected[flag] = True
    assert seen == [expected]


def _command(d):
    return [sys.executable, os.path.join(REPO_ROOT, "launchers",
                                         "random_search.py"),
            f"--model_dir={d}", "--trials=3", "--epochs=3"] + TINY


def _oracle(d):
    with open(os.path.join(d, "tuner", "oracle.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_kill_and_rerun_loses_and_repeats_no_trial(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    killed = tmp_path / "killed"
    # kill -9 in the middle of trial 1 (after its first epoch checkpoint)
    marker = killed / "tuner" / "trial_1" / "checkpoints" / (
        "ckpt-0001.weights.h5")
    proc = subprocess.Popen(_command(killed), cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not marker.exists():
        assert proc.poll() is None, "finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = _oracle(killed)
    assert state["end_order"] == ["0"]
    assert list(state["ongoing_trials"].values()) == ["1"]
    subprocess.run(_command(killed), cwd=REPO_ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = _oracle(killed)
    assert state["end_order"] == ["0", "1", "2"]
    assert state["run_times"] == {"0": 1, "1": 1, "2": 1}
    assert sorted(n for n in os.listdir(killed / "tuner")
                  if n.startswith("trial_")) == ["trial_0", "trial_1",
                                                 "trial_2"]
    assert [r["trial"] for r in _metrics(killed)] == ["0", "1", "2"]
    # the same genotypes as an uninterrupted run
    whole = tmp_path / "whole"
    subprocess.run(_command(whole), cwd=REPO_ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for i in range(3):
        a, b = (G.load(str(d / "tuner" / f"trial_{i}" / "genotype.json"))
                for d in (killed, whole))
        assert (a.normal, a.reduce) == (b.normal, b.reduce)
