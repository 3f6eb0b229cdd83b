"""Kill or preempt a launcher in the middle of epoch 2, rerun: same result.

Every test runs the real launchers in subprocesses, in deterministic mode,
and compares the resumed run with an uninterrupted one bit for bit:
the genotype, the architecture history and every metric of the search
(for each estimator), the final weights, result and metrics of the
re-training.

* ``kill -9`` at a random step of epoch 2, with a step checkpoint after
  every step (``--checkpoint_every_steps=1``): the rerun resumes from the
  newest step checkpoint, skipping the batches that epoch consumed.
* SIGTERM at a random moment after epoch 1, without periodic step
  checkpoints: the launcher finishes the step, writes a step checkpoint,
  prints one line and exits 75; the rerun resumes from there.
* The newest checkpoint truncated: the rerun sets it aside with one
  warning line and resumes from the previous one.

The random step / moment is drawn from `random` and printed (``-s``).
"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tests.helpers import REPO_ROOT
from tf_amended_darts.vision import genotype as G

pytestmark = pytest.mark.slow

TIMEOUT_S = 900
STEPS = 5
EPOCHS = 3
SEARCH = [
    "--dataset=digits", "--image_size=8", "--space=s3", "--layers=3",
    "--init_channels=4", "--batch_size=8", f"--epochs={EPOCHS}",
    f"--steps_per_epoch={STEPS}", "--verbose=0", "--arch_lr=0.01",
    "--seed=3", "--deterministic", "--notensorboard",
]
ESTIMATORS = {
    "first_order": ["--arch_grad=first_order"],
    "second_order": ["--arch_grad=second_order"],
    "amended": ["--arch_grad=amended", "--eta=0.5"],
}
RETRAIN = [
    "--genotype=DARTS_V2", "--dataset=digits", "--image_size=16",
    "--layers=3", "--init_channels=4", "--batch_size=16",
    f"--epochs={EPOCHS}", f"--steps_per_epoch={STEPS}", "--noauxiliary",
    "--cutout=4", "--drop_path_prob=0.2", "--deterministic", "--verbose=0",
    "--notensorboard",
]
STOP_LINE = re.compile(
    # Epoch 3's end would be the end of the run (its checkpoint written):
    # the signal must come before it (a 0-0.5 s delay after epoch 1).
    r"^stopped by SIGTERM at (epoch [23], step [1-4]|the end of epoch 2)"
    r": checkpoint \S+ written; rerun the same command to resume "
    r"\(exit status 75\)\.$"
)


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
                PYTHONPATH=REPO_ROOT)


def _command(launcher, model_dir, args):
    return [sys.executable, os.path.join(REPO_ROOT, "launchers", launcher),
            f"--model_dir={model_dir}"] + args


def _run(launcher, model_dir, args):
    result = subprocess.run(_command(launcher, model_dir, args), env=_env(),
                            capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _start(launcher, model_dir, args):
    return subprocess.Popen(_command(launcher, model_dir, args), env=_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc):
    deadline = time.time() + TIMEOUT_S
    while not os.path.exists(path):
        assert proc.poll() is None, "the run ended before it could be hit"
        assert time.time() < deadline
        time.sleep(0.02)


def _checkpoint(model_dir, epoch, step=0):
    name = (f"ckpt-{epoch:04d}-step-{step:06d}" if step
            else f"ckpt-{epoch:04d}") + ".weights.h5"
    return os.path.join(model_dir, "checkpoints", name)


def _kill_at_random_step(launcher, model_dir, args):
    step = random.randint(1, STEPS - 1)
    print(f"kill -9 after step {step} of epoch 2")
    proc = _start(launcher, model_dir, args + ["--checkpoint_every_steps=1"])
    _wait_for(_checkpoint(model_dir, 2, step), proc)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(_checkpoint(model_dir, EPOCHS))
    _run(launcher, model_dir, args + ["--checkpoint_every_steps=1"])


def _terminate_at_random_moment(launcher, model_dir, args):
    delay = random.uniform(0.0, 0.5)
    print(f"SIGTERM {delay:.2f} s after epoch 1's checkpoint")
    proc = _start(launcher, model_dir, args)
    _wait_for(_checkpoint(model_dir, 1), proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 75, err[-3000:]
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    print(last)
    assert STOP_LINE.match(last), last
    written = last.split("checkpoint ")[1].split(" written")[0]
    assert os.path.exists(written)
    assert not os.path.exists(_checkpoint(model_dir, EPOCHS))
    _run(launcher, model_dir, args)


def _datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _assert_same_arrays(a, b):
    assert sorted(a) == sorted(b) and a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _assert_same_search(resumed, straight):
    assert G.load(os.path.join(resumed, "genotype.json")) == G.load(
        os.path.join(straight, "genotype.json"))
    with np.load(os.path.join(straight, "arch_history.npz")) as a, \
            np.load(os.path.join(resumed, "arch_history.npz")) as b:
        _assert_same_arrays(dict(a), dict(b))
        assert list(b["epoch"]) == list(range(1, EPOCHS + 1))
    with open(os.path.join(straight, "metrics.csv")) as a, \
            open(os.path.join(resumed, "metrics.csv")) as b:
        assert a.read() == b.read()  # every logged mean, bit for bit
    _assert_same_arrays(_datasets(_checkpoint(straight, EPOCHS)),
                        _datasets(_checkpoint(resumed, EPOCHS)))


def _csv_without_seconds(model_dir):
    with open(os.path.join(model_dir, "metrics.csv")) as f:
        rows = [line.split(",") for line in f.read().splitlines()]
    column = rows[0].index("seconds")
    return [row[:column] + row[column + 1:] for row in rows]


def _assert_same_retrain(resumed, straight):
    _assert_same_arrays(
        _datasets(os.path.join(straight, "final.weights.h5")),
        _datasets(os.path.join(resumed, "final.weights.h5")))
    with open(os.path.join(straight, "result.json")) as a, \
            open(os.path.join(resumed, "result.json")) as b:
        assert a.read() == b.read()
    assert _csv_without_seconds(resumed) == _csv_without_seconds(straight)


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """Uninterrupted runs, made once per module: ``key -> model_dir``."""
    cache = {}

    def get(launcher, key, args):
        if key not in cache:
            d = str(tmp_path_factory.mktemp("straight") / key)
            _run(launcher, d, args)
            cache[key] = d
        return cache[key]

    return get


@pytest.mark.parametrize("arch_grad", sorted(ESTIMATORS))
def test_search_killed_or_terminated_in_epoch_2_resumes_exactly(
        arch_grad, tmp_path, straight_runs):
    args = SEARCH + ESTIMATORS[arch_grad]
    straight = straight_runs("search.py", arch_grad, args)
    killed = str(tmp_path / "killed")
    _kill_at_random_step("search.py", killed, args)
    _assert_same_search(killed, straight)
    terminated = str(tmp_path / "terminated")
    _terminate_at_random_moment("search.py", terminated, args)
    _assert_same_search(terminated, straight)


def test_retrain_killed_or_terminated_in_epoch_2_resumes_exactly(
        tmp_path, straight_runs):
    straight = straight_runs("retrain.py", "retrain", RETRAIN)
    killed = str(tmp_path / "killed")
    _kill_at_random_step("retrain.py", killed, RETRAIN)
    _assert_same_retrain(killed, straight)
    terminated = str(tmp_path / "terminated")
    _terminate_at_random_moment("retrain.py", terminated, RETRAIN)
    _assert_same_retrain(terminated, straight)


def test_truncated_newest_checkpoint_resumes_from_the_previous(
        tmp_path, straight_runs):
    args = SEARCH + ESTIMATORS["first_order"]
    straight = straight_runs("search.py", "first_order", args)
    d = str(tmp_path / "copy")
    shutil.copytree(straight, d)
    newest = _checkpoint(d, EPOCHS)
    os.truncate(newest, os.path.getsize(newest) // 2)
    os.remove(os.path.join(d, "genotype.json"))
    result = _run("search.py", d, args)
    warnings = [line for line in result.stderr.splitlines()
                if line.startswith("warning: checkpoint ")]
    assert len(warnings) == 1 and newest in warnings[0]
    assert "truncated" in warnings[0] and ".damaged" in warnings[0]
    assert os.path.exists(newest + ".damaged")
    assert f"after the end of epoch {EPOCHS - 1}" in result.stdout
    _assert_same_search(d, straight)
