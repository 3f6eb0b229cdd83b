"""PC-DARTS, P-DARTS and R-DARTS' eigenvalue through the search launcher,
on tiny runs: the run directory, the hooks, the stage transitions."""

import csv
import json
import os

import numpy as np
import pytest
from absl import flags

from tf_amended_darts.jobs import baseline_config, search_config
from tf_amended_darts.vision import genotype as G

pytestmark = pytest.mark.usefixtures("restore_global_tf_state")

TINY = [
    "--dataset=digits", "--image_size=8", "--space=s3", "--layers=3",
    "--batch_size=8", "--steps_per_epoch=1", "--verbose=0",
    "--arch_lr=0.01", "--arch_init_scale=0", "--nodes=2",
]


def _flag_values(args):
    fv = flags.FlagValues()
    search_config.define_flags(fv)
    baseline_config.define_flags(fv)
    fv(["search"] + args)
    return fv


def _run(args):
    from launchers import search as launcher

    return launcher.run_search(_flag_values(args))


def _rows(d):
    with open(os.path.join(d, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _scalars(directory, tag):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(directory))
    acc.Reload()
    return [(e.step, float(np.asarray(
        __import__("tensorflow").make_ndarray(e.tensor_proto))))
            for e in acc.Tensors(tag)]


def test_pc_darts_with_warmup_and_the_eigenvalue(tmp_path):
    d = tmp_path / "pc"
    genotype = _run(TINY + [
        f"--model_dir={d}", "--init_channels=8", "--epochs=2",
        "--arch_grad=first_order", "--partial_channels=4",
        "--edge_normalization", "--arch_warmup_epochs=1",
        "--hessian_every=1", "--hessian_iterations=3",
    ])
    assert G.load(str(d / "genotype.json")) == genotype
    assert genotype.metadata["partial_channels"] == 4
    for name in ("config.json", "baselines.json", "flags.txt",
                 "arch_history.npz", "checkpoints/ckpt-0002.weights.h5"):
        assert (d / name).exists(), name
    rows = _rows(d)
    # warm-up: no architecture step in epoch 1, steps in epoch 2
    assert float(rows[0]["arch_grad_norm"]) == 0.0
    assert float(rows[1]["arch_grad_norm"]) > 0.0
    history = np.load(d / "arch_history.npz")
    np.testing.assert_allclose(history["normal"][0], 1 / 3)
    np.testing.assert_allclose(history["edge_norm_normal"][0][:2], 0.5)
    assert not np.allclose(history["normal"][1], 1 / 3)
    assert not np.allclose(history["edge_norm_normal"][1][:2], 0.5)
    # the eigenvalue: metrics.csv column and TensorBoard scalar, per epoch
    values = [float(r["hessian_eigenvalue"]) for r in rows]
    assert all(np.isfinite(values))
    logged = _scalars(d / "tensorboard" / "search", "hessian_eigenvalue")
    assert [s for s, _ in logged] == [1, 2]
    np.testing.assert_allclose([v for _, v in logged], values, rtol=1e-6)
    assert json.loads((d / "baselines.json").read_text())[
        "partial_channels"] == 4


@pytest.mark.slow
def test_pc_darts_composes_with_the_amended_gradient(tmp_path):
    d = tmp_path / "pc_amended"
    _run(TINY + [
        f"--model_dir={d}", "--init_channels=8", "--epochs=2",
        "--arch_grad=amended", "--hvp=exact", "--partial_channels=4",
        "--edge_normalization",
    ])
    rows = _rows(d)
    # the amended term is there: g2 != 0, through partial channels
    assert all(float(r["g2_norm"]) > 0 for r in rows)
    assert (d / "checkpoints" / "ckpt-0002.weights.h5").exists()
    # rerun: resumes, trains no more
    _run(TINY + [
        f"--model_dir={d}", "--init_channels=8", "--epochs=2",
        "--arch_grad=amended", "--hvp=exact", "--partial_channels=4",
        "--edge_normalization",
    ])
    assert len(_rows(d)) == 2


@pytest.mark.slow
def test_rdarts_s4_with_the_amended_gradient_resumes_to_the_same_run(
    tmp_path,
):
    # R-DARTS' S4 (noise, sep_conv_3x3) with the amended gradient and the
    # eigenvalue; then the last epoch is redone from the epoch-1
    # checkpoint: the noise generators' states come back with it, so the
    # architecture history is the uninterrupted one.
    d = tmp_path / "s4"
    args = [a for a in TINY if not a.startswith("--space")] + [
        f"--model_dir={d}", "--space=rdarts_s4", "--init_channels=4",
        "--epochs=2", "--arch_grad=amended", "--hvp=exact",
        "--hessian_every=1", "--seed=3", "--deterministic",
    ]
    _run(args)
    rows = _rows(d)
    assert all(float(r["g2_norm"]) > 0 for r in rows)
    assert all(np.isfinite(float(r["hessian_eigenvalue"])) for r in rows)
    straight = dict(np.load(d / "arch_history.npz"))
    genotype = G.load(str(d / "genotype.json"))
    assert {op for op, _ in genotype.normal + genotype.reduce} <= {
        "noise", "sep_conv_3x3"}
    os.remove(d / "checkpoints" / "ckpt-0002.weights.h5")
    os.remove(d / "genotype.json")
    assert G.load(str(_run(args) and d / "genotype.json")) == genotype
    resumed = np.load(d / "arch_history.npz")
    assert list(resumed["epoch"]) == [1, 2]
    for key, value in straight.items():
        np.testing.assert_array_equal(resumed[key], value)


def test_p_darts_stage_transitions(tmp_path):
    # Two stages (3 then 4 cells of 2 nodes), 4 operators then 3 per edge,
    # no
    # architecture step (warm-up covers the epoch): the switches follow the
    # stage-1 alphas, the stage-2 alphas start from the kept stage-1
    # logits (--progressive_carry_alpha), and the final normal cell has no
    # skip-connection (--max_skip_connects=0).
    d = tmp_path / "pdarts"
    genotype = _run(TINY + [
        f"--model_dir={d}", "--init_channels=4", "--epochs=1",
        "--arch_grad=first_order", "--arch_init_scale=1.0",
        "--operators=sep_conv_3x3,skip_connect,none,max_pool_3x3",
        "--progressive_layers=3,4", "--progressive_ops=4,3",
        "--progressive_skip_dropout=0.2,0.4", "--arch_warmup_epochs=1",
        "--progressive_carry_alpha", "--max_skip_connects=0",
    ])
    switches = json.loads((d / "stage1_switches.json").read_text())
    ops = switches["operators"]
    assert ops == ["sep_conv_3x3", "skip_connect", "none", "max_pool_3x3"]
    for key in ("normal", "reduce"):
        probs = np.asarray(switches["probs"][key])
        kept = np.asarray(switches["switches"][key])
        assert kept.shape == (5, 4) and (kept.sum(axis=1) == 3).all()
        # the dropped operator is each edge's weakest
        np.testing.assert_array_equal(
            np.argmin(probs, axis=1), np.argmin(kept, axis=1))
        # stage 2's supernet mixes the kept operators; its alphas are the
        # carried logits (unchanged: no architecture step)
        logits = np.asarray(switches["logits"][key])
        carried = np.stack([logits[e][kept[e]] for e in range(5)])
        e = np.exp(carried)
        expected = np.zeros((5, 4))
        expected[kept] = (e / e.sum(axis=1, keepdims=True)).ravel()
        history = np.load(d / "stage2" / "arch_history.npz")
        np.testing.assert_allclose(history[key][-1], expected, rtol=1e-5)
    config = json.loads((d / "stage2" / "genotype.json").read_text())
    assert config["metadata"]["pdarts_stage"] == 2
    assert (d / "stage1" / "checkpoints").is_dir()
    stage2_rows = _rows(d / "stage2")
    assert float(stage2_rows[0]["skip_dropout_prob"]) == pytest.approx(0.0)
    assert all(op != "skip_connect" for op, _ in genotype.normal)
    assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)
    assert (d / "genotype_unconstrained.json").exists()
    assert G.load(str(d / "genotype.json")) == genotype


@pytest.mark.parametrize("args,flag", [
    (["--progressive_layers=5,11", "--progressive_ops=8"],
     "progressive_ops"),
    (["--progressive_layers=5", "--progressive_ops=8",
      "--progressive_skip_dropout=1.5"], "progressive_skip_dropout"),
    (["--early_stop=es"], "hessian_every"),
    (["--early_stop=sometimes"], "early_stop"),
    (["--partial_channels=0"], "partial_channels"),
    (["--max_skip_connects=-2"], "max_skip_connects"),
])
def test_bad_baseline_flags_name_the_flag(args, flag):
    with pytest.raises(ValueError, match=f"--{flag}"):
        baseline_config.from_flags(_flag_values(["--model_dir=x"] + args))
