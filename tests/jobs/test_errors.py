"""One-line errors and exit statuses of the launchers."""

import io
import json
import os
import subprocess
import sys

import pytest
from absl import app, flags

from tests.helpers import REPO_ROOT
from tf_amended_darts.core import bilevel
from tf_amended_darts.jobs import callbacks, errors, preemption, search_config


def _fv(verbose=False):
    fv = flags.FlagValues()
    errors.define_flags(fv)
    fv(["prog"] + (["--verbose_errors"] if verbose else []))
    return fv


def _outcome(main, fv=None, capsys=None):
    """``(exit status, stderr)`` of ``errors.guard(main)``."""
    with pytest.raises(SystemExit) as info:
        errors.guard(main, fv or _fv())(["prog"])
    return info.value.code, capsys.readouterr().err


def _raise(error):
    def main(argv):
        del argv
        raise error
    return main


def _bad_flag(argv):
    # Raised where the project raises it (the guard tells the project's
    # errors from errors inside libraries by the innermost frame).
    search_config._fail("epochs", "an integer >= 1", 0)


def _bad_state(argv):
    guard = callbacks.NonFiniteGuard(model_dir="runs/x")
    guard.check({"loss": float("nan")}, 2, "step 2")


def test_project_errors_are_one_line_with_their_exit_status(capsys):
    status, err = _outcome(_bad_flag, capsys=capsys)
    assert status == errors.EXIT_USAGE == 2
    assert err == ("error: Invalid --epochs=0. Accepted values: an integer "
                   ">= 1.\n")
    status, err = _outcome(_bad_state, capsys=capsys)
    assert status == errors.EXIT_FAILURE == 1
    assert err.startswith("error: Non-finite training value loss=nan at "
                          "epoch 3, step 2")
    assert err.count("\n") == 1
    status, err = _outcome(_raise(app.UsageError("Unexpected arguments")),
                           capsys=capsys)
    assert (status, err) == (2, "error: Unexpected arguments\n")
    assert errors.one_line(ValueError("a\n  b\tc ")) == "a b c"


def test_usage_turns_config_errors_into_usage_errors(capsys):
    def main(argv):
        with errors.usage():
            bilevel.validate_estimator("amended", -1.0, "exact")

    assert _outcome(main, capsys=capsys)[0] == errors.EXIT_USAGE


def test_preemption_is_one_line_and_exit_75(capsys):
    message = "stopped by SIGTERM at epoch 2, step 3: checkpoint c written"
    status, err = _outcome(_raise(preemption.Preempted(message)),
                           capsys=capsys)
    assert (status, err) == (75, message + "\n")


def test_errors_raised_inside_libraries_keep_their_traceback(capsys):
    def main(argv):
        json.loads("{")  # raised inside the json module: a bug to report

    with pytest.raises(json.JSONDecodeError):
        errors.guard(main, _fv())(["prog"])


def test_verbose_errors_show_the_traceback(capsys, monkeypatch):
    status, err = _outcome(_bad_state, fv=_fv(verbose=True), capsys=capsys)
    assert status == 1
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("error: Non-finite")
    monkeypatch.setenv(errors.VERBOSE_ENV, "1")
    status, err = _outcome(_bad_state, capsys=capsys)
    assert "Traceback" in err


def test_report_stream():
    stream = io.StringIO()
    assert errors.report(KeyboardInterrupt(), _fv(), stream) == 130
    assert stream.getvalue().startswith("error: interrupted")


def _launch(name, args, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop(errors.VERBOSE_ENV, None)
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "launchers", f"{name}.py")]
        + args, cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=300)


def _assert_one_line(result, status, start):
    err = result.stderr
    assert result.returncode == status, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == lines[0]
    assert lines[0].startswith(start), lines[0]


def test_search_launcher_bad_flag_is_one_line(tmp_path):
    result = _launch("search", [f"--model_dir={tmp_path / 'r'}",
                                "--epochs=0"], tmp_path)
    _assert_one_line(result, 2, "error: Invalid --epochs=0.")
    assert not (tmp_path / "r").exists()


# (launcher, arguments, exit status, start of the message)
BAD_FLAGS = [
    ("search", ["--model_dir=r", "--eta=-1"], 2, "error: Expected --eta"),
    ("search", ["--model_dir=r", "--epochs=abc"], 2, "error: flag --epochs"),
    ("search", ["--epochs=3"], 2, "error: flag --model_dir"),
    ("retrain", ["--model_dir=r", "--genotype=NOPE"], 2,
     "error: Invalid --genotype='NOPE'"),
    ("retrain", ["--model_dir=r", "--genotype=DARTS_V2",
                 "--dataset=cifar10", "--data_dir=empty", "--epochs=1"], 1,
     "error: CIFAR-10 not found in --data_dir=empty"),
    ("export", ["--model_dir=nothing", "--export_dir=e"], 1,
     "error: --model_dir=nothing holds no re-training run"),
    ("evaluate", ["--saved_model=x", "--batch_size=0"], 2,
     "error: Invalid --batch_size=0"),
    ("info", ["--genotype=NOPE"], 2, "error: --genotype:"),
    ("toy", ["--eta=-1"], 2, "error: Expected --eta"),
    ("bench", ["--batch_sizes=0"], 2, "error: Batch sizes must be >= 1"),
    ("bench", ["--drop_path_prob=1"], 2,
     "error: --drop_path_prob must be in [0, 1)"),
    ("precision", ["--rows=bad"], 2, "error: Invalid --rows entry 'bad'"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,args,status,start", BAD_FLAGS,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_FLAGS)])
def test_every_launcher_errs_in_one_line(tmp_path, name, args, status,
                                         start):
    _assert_one_line(_launch(name, args, tmp_path), status, start)


@pytest.mark.slow
def test_verbose_errors_flag_on_a_launcher(tmp_path):
    result = _launch("toy", ["--eta=-1", "--verbose_errors"], tmp_path)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: Expected --eta")
