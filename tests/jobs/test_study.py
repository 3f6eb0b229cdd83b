"""The stability study: grid, resume, and the report from run directories."""

import json
import os
import sys

import numpy as np
import pytest
from absl import flags

from tests.helpers import REPO_ROOT
from tests.jobs.study_fixtures import fabricate_run
from tf_amended_darts.jobs import study, study_report


def test_report_from_fabricated_runs(tmp_path):
    fabricate_run(tmp_path / "first_order_seed0", "first_order", 0.1, 0, 6,
                  skips=8, retrain_accuracy=0.61)
    fabricate_run(tmp_path / "amended_eta0.1_seed0", "amended", 0.1, 0, 6,
                  skips=1, retrain_accuracy=0.83)
    fabricate_run(tmp_path / "amended_eta0.1_seed1", "amended", 0.1, 1, 3,
                  skips=2, finished=False)
    (tmp_path / "not_a_run").mkdir()
    path = study_report.write_report(str(tmp_path))
    text = open(path).read()
    rows = [line for line in text.splitlines()
            if line.startswith("| ") and "seed" in line]
    assert [r.split(" | ")[0][2:] for r in rows] == [
        "first_order_seed0", "amended_eta0.1_seed0", "amended_eta0.1_seed1"]
    first, amended, running = rows
    assert "N: 8 skip / R: 8 sep3" in first and "| 6 |" in first
    assert "| 0.610 |" in first and "| 0.830 |" in amended
    assert "N: 7 sep3 1 skip" in amended and "| 2 |" in amended
    assert "3/10 (running)" in running
    assert "| 0.250 | 0.500 | 0.001 | 2 |" in first
    assert "2 of 3 run directories finished" in text
    for name in ["fidelity.png"] + [f"curve_{m}.png"
                                    for m in study_report.CURVES]:
        png = tmp_path / name
        assert png.read_bytes().startswith(b"\x89PNG"), name
        assert f"]({name})" in text
    summary = study_report.summarize_run(str(tmp_path / "first_order_seed0"))
    np.testing.assert_allclose(summary["metrics"]["val_accuracy"],
                               [0.51, 0.52, 0.53, 0.54, 0.55, 0.56])


def test_report_of_an_empty_study(tmp_path):
    text = open(study_report.write_report(str(tmp_path))).read()
    assert "0 of 0 run directories finished" in text
    assert not list(tmp_path.glob("*.png"))


def test_parse_runs():
    grid = study.parse_runs(["first_order", "amended:0.01", "amended"],
                            ["0", "1"], 0.1)
    assert [r.name for r in grid] == [
        "first_order_seed0", "amended_eta0.01_seed0", "amended_eta0.1_seed0",
        "first_order_seed1", "amended_eta0.01_seed1", "amended_eta0.1_seed1"]
    assert grid[1].label == "amended eta=0.01"
    for runs, seeds, match in [
        (["third_order"], ["0"], "--runs"),
        (["first_order:0.1"], ["0"], "--runs"),
        (["amended:-1"], ["0"], "ETA"),
        (["amended:x"], ["0"], "ETA"),
        (["first_order"], ["a"], "--seeds"),
        (["first_order"], ["-1"], "negative"),
        (["amended:0.1", "amended:0.10"], ["0"], "repeat"),
    ]:
        with pytest.raises(ValueError, match=match):
            study.parse_runs(runs, seeds, 0.1)


def _flag_values(args):
    fv = flags.FlagValues()
    study.define_flags(fv)
    fv(["study"] + args)
    return fv


def test_study_flagfiles_are_valid(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO_ROOT)
    for name in ("study_cpu.cfg", "study_gpu_cifar10.cfg"):
        fv = _flag_values([f"--flagfile=flags/{name}",
                           f"--study_dir={tmp_path}"])
        grid = study.parse_runs(fv.runs, fv.seeds, fv.eta)
        assert {r.label for r in grid} >= {
            "first_order", "second_order", "amended eta=0.1"}
        lines = study.search_flag_lines(fv)
        assert not any(line.startswith(("--runs", "--seeds", "--study_dir"))
                       for line in lines)
        for run in grid:
            study._check_flags(study.run_flags(lines, run, str(tmp_path)))




def _fake_python(tmp_path, fail_names=()):
    """A 'python' that fabricates a run instead of searching."""
    script = tmp_path / "fake_python.py"
    script.write_text(
        "import json, os, sys\n"
        "sys.path.insert(0, %r)\n"
        "from tests.jobs.study_fixtures import fabricate_run\n"
        "launcher, flagfile = sys.argv[1], sys.argv[2].split('=', 1)[1]\n"
        "args = dict(l[2:].split('=', 1) for l in open(flagfile).read()"
        ".split() if '=' in l)\n"
        "d = args['model_dir']\n"
        "log = os.path.join(os.path.dirname(d), 'calls.txt')\n"
        "open(log, 'a').write(os.path.basename(d) + '\\n')\n"
        "if os.path.basename(d) in %r: sys.exit(3)\n"
        "fabricate_run(d, args['arch_grad'], float(args['eta']),\n"
        "              int(args['seed']), 4, skips=2)\n"
        "os.remove(os.path.join(d, 'study_run.json'))\n"
        % (REPO_ROOT, tuple(fail_names)))
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def test_study_runs_the_grid_resumes_and_reports(tmp_path, monkeypatch):
    study_dir = tmp_path / "study"
    reports = []
    real_report = study_report.write_report
    # The report after each run is tested below, once: PNGs take seconds.
    monkeypatch.setattr(study_report, "write_report", reports.append)
    args = [f"--study_dir={study_dir}", "--runs=first_order,amended:0.5",
            "--seeds=0,1", "--dataset=digits", "--epochs=4"]
    python = _fake_python(tmp_path, fail_names=("amended_eta0.5_seed1",))
    with pytest.raises(RuntimeError, match="amended_eta0.5_seed1.*Rerun"):
        study.run(_flag_values(args), python=python)
    calls = (study_dir / "calls.txt").read_text().split()
    assert calls == ["first_order_seed0", "amended_eta0.5_seed0",
                     "first_order_seed1", "amended_eta0.5_seed1"]
    cfg = (study_dir / "amended_eta0.5_seed0" / study.RUN_FLAGS).read_text()
    assert "--arch_grad=amended" in cfg and "--eta=0.5" in cfg
    assert "--seed=0" in cfg and "--dataset=digits" in cfg
    assert "--runs" not in cfg and "--study_dir" not in cfg
    assert reports == [str(study_dir)] * 3  # after each finished run
    monkeypatch.setattr(study_report, "write_report", real_report)
    # Rerun: only the unfinished run is run again.
    report = study.run(_flag_values(args), python=_fake_python(tmp_path))
    calls = (study_dir / "calls.txt").read_text().split()
    assert calls[4:] == ["amended_eta0.5_seed1"]
    text = open(report).read()
    assert "4 of 4 run directories finished" in text
    record = json.loads((study_dir / "study.json").read_text())
    assert len(record["invocations"]) == 2
    # --report_only runs nothing.
    study.run(_flag_values(args + ["--report_only"]), python="/nonexistent")
    assert len((study_dir / "calls.txt").read_text().split()) == 5


def test_study_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="--retrain_epochs"):
        study.run(_flag_values([f"--study_dir={tmp_path}",
                                "--retrain_epochs=-1"]))
    with pytest.raises(ValueError, match="--study_dir"):
        study.run(_flag_values([]))


@pytest.mark.slow  # real searches and re-training: minutes on 2 cores
def test_tiny_study_end_to_end(tmp_path):
    import subprocess

    from tests.vision.test_data import _fashion_files

    data_dir = tmp_path / "fm"
    _fashion_files(data_dir)
    study_dir = tmp_path / "study"
    subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "launchers", "study.py"),
         f"--study_dir={study_dir}", "--runs=first_order,amended:0.5",
         "--seeds=0", "--dataset=fashion_mnist", f"--data_dir={data_dir}",
         "--image_size=8", "--space=s3", "--layers=3", "--init_channels=4",
         "--batch_size=8", "--epochs=2", "--steps_per_epoch=2",
         "--stop_when_stable=1", "--fidelity_every=2",
         "--fidelity_cg_iterations=3", "--notensorboard",
         "--retrain_epochs=1", "--retrain_layers=3",
         "--retrain_init_channels=4", "--retrain_batch_size=8",
         "--retrain_steps_per_epoch=2"],
        check=True, capture_output=True, timeout=1800)
    text = (study_dir / "report.md").read_text()
    assert "2 of 2 run directories finished" in text
    rows = [summary for summary in study_report.collect(str(study_dir))]
    assert [r["name"] for r in rows] == ["first_order_seed0",
                                         "amended_eta0.5_seed0"]
    for r in rows:
        assert r["finished"] and 0 <= r["test_accuracy"] <= 1
        assert -1 <= r["cos_amended"] <= 1
    assert (study_dir / "fidelity.png").exists()
