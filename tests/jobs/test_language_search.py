"""The recurrent search end to end: launcher, run directory, resume after
kill -9, NaN guard."""

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
from tests.language.test_corpus_and_data import write_ptb
from tf_amended_darts.jobs import callbacks, language_config, search_config
from tf_amended_darts.language import genotype as G

pytestmark = pytest.mark.usefixtures("restore_global_tf_state")

TINY = [
    "--task=ptb", "--dataset=pydoc", "--vocab_size=300", "--emsize=8",
    "--nhid=8", "--batch_size=4", "--bptt=6", "--epochs=2",
    "--steps_per_epoch=3", "--eval_batch_size=2", "--eval_steps=2",
    "--verbose=0", "--arch_grad=first_order",
]


def _flags(args):
    fv = flags.FlagValues()
    search_config.define_flags(fv)
    language_config.define_search_flags(fv)
    fv(["search"] + args)
    return fv


def _run(args):
    from launchers import search as launcher

    return launcher.run_search(_flags(args))


def test_search_writes_a_recurrent_genotype_and_its_artifacts(tmp_path):
    d = tmp_path / "run"
    genotype = _run(TINY + [f"--model_dir={d}"])
    data = json.loads((d / "genotype.json").read_text())
    assert data["kind"] == "recurrent"
    assert G.load(str(d / "genotype.json")) == genotype
    assert genotype.steps == 8 and data["metadata"]["arch_grad"] == (
        "first_order")
    for name in ("config.json", "flags.txt", "genotype.png",
                 "arch_history.npz", "metrics.csv",
                 "genotypes/epoch_001.json", "genotypes/epoch_002.png"):
        assert (d / name).exists(), name
    history = np.load(d / "arch_history.npz")
    assert list(history["epoch"]) == [1, 2]
    assert history["weights"].shape == (2, 36, 5)
    assert not np.allclose(history["weights"][0], history["weights"][1])
    header = (d / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("loss", "val_loss", "ppl", "valid_ppl", "g1_norm"):
        assert column in header
    assert os.listdir(d / "tensorboard" / "search")
    assert sorted(os.listdir(d / "checkpoints")) == [
        "ckpt-0001.weights.h5", "ckpt-0002.weights.h5"]


def test_amended_search_on_ptb_files(tmp_path):
    # The PTB reader path and the amended estimator (2-node cell: a
    # shorter trace of the double backward).
    ptb = write_ptb(tmp_path)
    d = tmp_path / "run"
    args = [a for a in TINY if not a.startswith(("--dataset", "--arch"))]
    _run(args + [f"--model_dir={d}", "--dataset=ptb", f"--data_dir={ptb}",
                 "--arch_grad=amended", "--nodes=2", "--epochs=1"])
    genotype = G.load(str(d / "genotype.json"))
    assert genotype.steps == 2
    row = (d / "metrics.csv").read_text().splitlines()[1].split(",")
    header = (d / "metrics.csv").read_text().splitlines()[0].split(",")
    assert float(row[header.index("g2_norm")]) > 0


def test_missing_ptb_fails_at_once_with_one_line(tmp_path):
    from tf_amended_darts.language import corpus

    with pytest.raises(corpus.MissingCorpusError, match="ptb.train.txt"):
        _run([a for a in TINY if not a.startswith("--dataset")] + [
            f"--model_dir={tmp_path / 'run'}", "--dataset=ptb",
            f"--data_dir={tmp_path}"])


def test_nan_stops_before_the_checkpoint(tmp_path):
    d = tmp_path / "run"
    with pytest.raises(callbacks.NonFiniteError):
        _run(TINY + [f"--model_dir={d}", "--weight_lr=1e30",
                     "--grad_clip=0"])
    assert not os.listdir(d / "checkpoints")


def _command(model_dir):
    return [sys.executable, os.path.join(REPO_ROOT, "launchers", "search.py"),
            f"--model_dir={model_dir}", "--seed=3", "--deterministic",
            "--epochs=3", "--arch_grad=amended", "--nodes=3"] + [
        a for a in TINY if not a.startswith(("--epochs", "--arch"))]


@pytest.mark.slow
def test_killed_search_resumes_to_the_same_result(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_command(straight), check=True, capture_output=True,
                   timeout=1200)
    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(_command(resumed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = resumed / "checkpoints" / "ckpt-0001.weights.h5"
    deadline = time.time() + 1200
    while not first.exists() and time.time() < deadline:
        assert proc.poll() is None, "search ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "checkpoints" / "ckpt-0003.weights.h5").exists()
    subprocess.run(_command(resumed), check=True, capture_output=True,
                   timeout=1200)
    assert G.load(str(resumed / "genotype.json")) == G.load(
        str(straight / "genotype.json"))
    a = np.load(straight / "arch_history.npz")
    b = np.load(resumed / "arch_history.npz")
    assert list(b["epoch"]) == [1, 2, 3]
    np.testing.assert_array_equal(a["weights"], b["weights"])
    rows_a = (straight / "metrics.csv").read_text().splitlines()
    rows_b = (resumed / "metrics.csv").read_text().splitlines()
    assert len(rows_b) == 4 and rows_a[0] == rows_b[0]
    # Logged epoch means of a resumed epoch agree to float32 rounding (the
    # genotype and weights above are bit for bit equal).
    last_a = [float(x) for x in rows_a[-1].split(",")]
    last_b = [float(x) for x in rows_b[-1].split(",")]
    np.testing.assert_allclose(last_a, last_b, rtol=1e-5)


def _config(args):
    return language_config.search_from_flags(_flags(args))


def test_run_directory_belongs_to_one_configuration(tmp_path):
    from tf_amended_darts.jobs import language_search, run_dir

    d = tmp_path / "run"
    first = _config(TINY + [f"--model_dir={d}"])
    run_dir.record(str(d), first.to_json())
    (d / "flags.txt").write_text("the first run's flags\n")
    assert language_search.check_run_dir(first) == []
    # logging, graph settings and --epochs upward may change ...
    changed = _config(TINY + [f"--model_dir={d}", "--epochs=5",
                              "--verbose=1", "--op_tracebacks"])
    assert sorted(language_search.check_run_dir(changed)) == [
        ("epochs", 2, 5), ("op_tracebacks", False, True), ("verbose", 0, 1)]
    # ... the model, the estimator or fewer epochs may not: one error
    # naming each, and the launcher writes nothing.
    with pytest.raises(run_dir.ConfigMismatchError,
                       match=r"--emsize 8 -> 16, --epochs 2 -> 1 \(only "
                             r"upward\), --nhid 8 -> 16"):
        _run(TINY + [f"--model_dir={d}", "--nhid=16", "--emsize=16",
                     "--epochs=1"])
    with pytest.raises(run_dir.ConfigMismatchError,
                       match="--arch_grad first_order -> amended"):
        _run([a for a in TINY if not a.startswith("--arch_grad")]
             + [f"--model_dir={d}", "--arch_grad=amended"])
    assert (d / "flags.txt").read_text() == "the first run's flags\n"
    assert json.loads((d / "config.json").read_text())["nhid"] == 8
