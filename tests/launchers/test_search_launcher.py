"""The search launcher end to end on tiny configurations."""

import json
import os

import numpy as np
import pytest
from absl import flags

from tests.helpers import REPO_ROOT
from tf_amended_darts.jobs import baseline_config, search_config
from tf_amended_darts.vision import genotype as G

TINY = [
    "--dataset=digits", "--image_size=8", "--space=s3", "--layers=3",
    "--init_channels=4", "--batch_size=8", "--epochs=2",
    "--steps_per_epoch=2", "--verbose=0", "--arch_lr=0.01",
]


def _flag_values(args):
    fv = flags.FlagValues()
    search_config.define_flags(fv)
    baseline_config.define_flags(fv)
    fv(["search"] + args)
    return fv


def _run(args):
    from launchers import search as launcher

    fv = _flag_values(args)
    return launcher.run_search(fv)


def test_search_writes_the_run_directory(tmp_path, capsys):
    d = tmp_path / "run"
    genotype = _run(TINY + [f"--model_dir={d}", "--arch_grad=amended",
                            "--verbose=2"])
    # The minutes of tracing before the first step are announced.
    out = capsys.readouterr().out
    assert "Tracing the search step (trace 1)..." in out
    assert "Traced the search step: " in out
    assert G.load(str(d / "genotype.json")) == genotype
    for name in ("config.json", "flags.txt", "genotype_normal.png",
                 "genotype_reduce.png", "arch_history.npz", "metrics.csv",
                 "genotypes/epoch_001.json", "genotypes/epoch_002.json"):
        assert (d / name).exists(), name
    history = np.load(d / "arch_history.npz")
    assert list(history["epoch"]) == [1, 2]
    assert history["normal"].shape == (2, 14, 3)
    assert os.listdir(d / "tensorboard" / "search")
    ckpts = sorted(os.listdir(d / "checkpoints"))
    assert ckpts == ["ckpt-0001.weights.h5", "ckpt-0002.weights.h5"]
    config = json.loads((d / "config.json").read_text())
    assert config["arch_grad"] == "amended" and config["space"] == "s3"
    flags_txt = (d / "flags.txt").read_text()
    assert "--arch_grad=amended" in flags_txt


def test_rerun_of_a_finished_search_resumes_and_trains_no_more(tmp_path):
    d = tmp_path / "run"
    first = _run(TINY + [f"--model_dir={d}", "--arch_grad=first_order",
                         "--epochs=1"])
    mtime = (d / "checkpoints" / "ckpt-0001.weights.h5").stat().st_mtime
    again = _run(TINY + [f"--model_dir={d}", "--arch_grad=first_order",
                         "--epochs=1"])
    assert first == again
    assert (d / "checkpoints" / "ckpt-0001.weights.h5").stat().st_mtime \
        == mtime


@pytest.mark.slow  # tracing the fidelity's products: minutes on 2 cores
def test_stop_when_stable_and_indicator_columns(tmp_path):
    import csv

    from tf_amended_darts.jobs import stopping

    d = tmp_path / "run"
    args = TINY + [f"--model_dir={d}", "--arch_grad=first_order",
                   "--epochs=4", "--stop_when_stable=1",
                   "--fidelity_every=2", "--fidelity_cg_iterations=3",
                   "--notensorboard"]
    genotype = _run(args)
    meta = genotype.metadata
    with open(d / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert meta["epochs_run"] == len(rows) <= 4
    if meta["stopped_when_stable"]:  # stopped exactly 1 epoch after
        assert meta["epochs_run"] == meta["stable_since_epoch"] + 1
    else:
        assert meta["epochs_run"] == 4
    last = rows[-1]
    assert float(last["genotype_stable_since"]) == meta["stable_since_epoch"]
    for row in rows:
        assert 0 <= float(row["skip_connections_normal"]) <= 8
        assert 1 / 3 <= float(row["mean_max_weight"]) <= 1
        keys = ("fidelity_cosine_second_order", "fidelity_cosine_amended",
                "cg_residual", "cg_damping")
        if int(row["epoch"]) % 2:
            assert all(row[k] == "" for k in keys)
        else:
            assert -1 <= float(row["fidelity_cosine_amended"]) <= 1
            assert float(row["cg_residual"]) >= 0
    state = json.loads((d / stopping.STATE_FILE).read_text())
    assert len(state["fingerprints"]) == meta["epochs_run"]
    # Rerun: resumes, trains no more, same stop decision.
    again = _run(args)
    assert again == genotype and again.metadata == meta


def test_searched_edges_run_both_stages(tmp_path):
    d = tmp_path / "run"
    genotype = _run(TINY + [f"--model_dir={d}", "--edges=searched",
                            "--arch_grad=first_order", "--epochs=1"])
    pairs = json.loads((d / "stage1_pairs.json").read_text())
    assert set(pairs) == {"normal", "reduce"}
    assert G.load(str(d / "stage1" / "genotype.json"))
    assert G.load(str(d / "stage2" / "genotype.json")) == genotype
    # Stage 2 searched exactly the kept pairs.
    for j, pair in enumerate(pairs["normal"]):
        assert sorted(i for _, i in genotype.normal[2 * j:2 * j + 2]) \
            == sorted(pair)


@pytest.mark.slow  # two amended searches: ~2 minutes on 2 cores
@pytest.mark.parametrize("options", [[], ["--drop_path_prob=0.3"]],
                         ids=["plain", "drop_path"])
def test_recomputed_cells_search_as_the_plain_cells(tmp_path, options):
    # The launcher end to end with --recompute_cells: the same search
    # (architecture after every epoch, genotype) as without it, up to
    # float32 rounding (tests/vision/test_recomputed_cells.py holds the
    # float64 comparison of a step); with drop-path, its masks are drawn
    # alike in the recomputations.
    runs = {}
    for name, extra in (("plain", []), ("recomputed", ["--recompute_cells"])):
        d = tmp_path / name
        genotype = _run(TINY + [f"--model_dir={d}", "--arch_grad=amended"]
                        + options + extra)
        config = json.loads((d / "config.json").read_text())
        assert config["recompute_cells"] == bool(extra)
        runs[name] = (genotype, np.load(d / "arch_history.npz"))
    (plain, plain_history), (recomputed, history) = runs.values()
    assert recomputed == plain
    for key in ("normal", "reduce"):
        assert history[key].shape == plain_history[key].shape
        np.testing.assert_allclose(history[key], plain_history[key],
                                   rtol=1e-4, atol=1e-6)
    # The architecture moved: the comparison is not of two initialisations.
    assert np.abs(plain_history["normal"][-1]
                  - plain_history["normal"][0]).max() > 0


@pytest.mark.parametrize("args,match", [
    (["--arch_grad=third"], "--arch_grad"),
    (["--eta=-1"], "--eta"),
    (["--space=s9"], "--space.*s1, s2, s3"),
    (["--edges=all"], "--edges.*pruned, fixed, searched"),
    (["--dataset=mnist"], "--dataset.*digits, cifar10, imagenet"),
    (["--train_portion=1.5"], "--train_portion"),
    (["--layers=2"], "--layers"),
    (["--init_channels=5"], "--init_channels"),
    (["--operators=conv_9x9"], "--operators"),
    (["--batch_size=0"], "--batch_size"),
    (["--stop_when_stable=-1"], "--stop_when_stable"),
    (["--fidelity_every=-2"], "--fidelity_every"),
    (["--fidelity_cg_iterations=0"], "--fidelity_cg_iterations"),
    (["--fidelity_damping=-1"], "--fidelity_damping"),
])
def test_bad_flags_are_named(tmp_path, args, match):
    fv = _flag_values(TINY + [f"--model_dir={tmp_path}"] + args)
    with pytest.raises(ValueError, match=match):
        search_config.from_flags(fv)


def test_missing_cifar10_fails_fast_with_instructions(tmp_path):
    from tf_amended_darts.jobs import search
    from tf_amended_darts.vision import data

    config = search_config.from_flags(_flag_values(
        [f"--model_dir={tmp_path / 'run'}", "--dataset=cifar10",
         f"--data_dir={tmp_path / 'empty'}"]))
    with pytest.raises(data.DatasetNotFoundError, match="--data_dir"):
        search.run(config)


def test_cifar10_search_through_tfds_mock(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=64):
        genotype = _run([
            "--dataset=cifar10", "--space=s3", "--layers=3",
            "--init_channels=4", "--batch_size=8", "--epochs=1",
            "--steps_per_epoch=1", "--verbose=0", "--arch_grad=first_order",
            f"--model_dir={tmp_path / 'run'}"])
    assert len(genotype.normal) == 8


SEARCH_FLAGFILES = sorted(
    f for f in os.listdir(os.path.join(REPO_ROOT,
                                       "flags"))
    if f.endswith(".cfg")
    and not f.startswith(("retrain", "base", "random_search", "study",
                          "ptb")))


@pytest.mark.parametrize("name", SEARCH_FLAGFILES)
def test_every_search_flagfile_is_a_valid_config(name, tmp_path,
                                                 monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    fv = _flag_values([f"--flagfile=flags/{name}",
                       f"--model_dir={tmp_path}"])
    config = search_config.from_flags(fv)
    space = config.search_space()
    if name.startswith("s2"):
        assert (space.layers, space.init_channels) == (20, 36)
        assert not space.shared_per_cell_type
    if name == "table1_ablation_no_amending.cfg":
        assert config.eta == 0 and config.epochs == 200


def test_divergence_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    from tf_amended_darts.jobs import callbacks, search

    d = tmp_path / "run"
    base = TINY + [f"--model_dir={d}", "--arch_grad=first_order"]
    _run(base + ["--epochs=1"])
    ckpt = d / "checkpoints" / "ckpt-0001.weights.h5"
    before = ckpt.read_bytes()
    # run_dir.check refuses to resume a run directory with another learning
    # rate; the stage itself (below the check) resumes from the checkpoint.
    diverging = search_config.from_flags(_flag_values(
        base + ["--epochs=2", "--weight_lr=1e30", "--grad_clip=0"]
    ))
    with pytest.raises(callbacks.NonFiniteError, match="loss"):
        search.run_stage(diverging, str(d), strategy=search.set_up(diverging))
    assert ckpt.read_bytes() == before
    assert not (d / "checkpoints" / "ckpt-0002.weights.h5").exists()


def test_glibc_returns_freed_memory():
    import platform

    from tf_amended_darts.jobs import search

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert search.return_freed_memory()


class _FakeLibc:
    """Records mallopt(3) calls instead of changing this process' heap."""

    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append((parameter, value))
        return 1


def test_malloc_threshold_flag_sets_both_thresholds_or_none(
    tmp_path, monkeypatch
):
    from tf_amended_darts.jobs import search

    libc = _FakeLibc()
    monkeypatch.setattr(search.ctypes, "CDLL", lambda name: libc)
    # The flag reaches glibc through set_up, in KiB; 0 sets nothing.
    for args, expected in (
        ([], [(search.M_MMAP_THRESHOLD, 64 * 1024),
              (search.M_TRIM_THRESHOLD, 64 * 1024)]),
        (["--malloc_threshold_kb=1024"],
         [(search.M_MMAP_THRESHOLD, 1024 * 1024),
          (search.M_TRIM_THRESHOLD, 1024 * 1024)]),
        (["--malloc_threshold_kb=0"], []),
    ):
        libc.calls.clear()
        fv = _flag_values(TINY + [f"--model_dir={tmp_path}"] + args)
        search.set_up(search_config.from_flags(fv))
        assert libc.calls == expected, args
    assert search.return_freed_memory(0) is False
    with pytest.raises(ValueError, match="--malloc_threshold_kb=-1"):
        search_config.from_flags(_flag_values(
            TINY + [f"--model_dir={tmp_path}", "--malloc_threshold_kb=-1"]))
