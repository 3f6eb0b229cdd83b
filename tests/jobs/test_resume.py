"""kill -9 in the middle of a search, rerun the same command: same result."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO_ROOT
from tf_amended_darts.vision import genotype as G

ROOT = REPO_ROOT
ARGS = [
    "--dataset=digits", "--image_size=8", "--space=s3", "--layers=3",
    "--init_channels=4", "--batch_size=8", "--epochs=3",
    "--steps_per_epoch=3", "--verbose=0", "--arch_lr=0.01",
    "--arch_grad=amended", "--eta=0.5", "--seed=3", "--deterministic",
]


def _command(model_dir):
    return [sys.executable, os.path.join(ROOT, "launchers", "search.py"),
            f"--model_dir={model_dir}"] + ARGS


def _run(model_dir):
    subprocess.run(_command(model_dir), check=True, capture_output=True,
                   timeout=900)


@pytest.mark.slow
def test_killed_search_resumes_to_the_same_genotype(tmp_path):
    straight = tmp_path / "straight"
    _run(straight)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(_command(resumed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = resumed / "checkpoints" / "ckpt-0001.weights.h5"
    deadline = time.time() + 900
    while not first.exists() and time.time() < deadline:
        assert proc.poll() is None, "search ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "genotype.json").exists() or \
        not (resumed / "checkpoints" / "ckpt-0003.weights.h5").exists()
    _run(resumed)

    assert G.load(str(resumed / "genotype.json")) == \
        G.load(str(straight / "genotype.json"))
    a = np.load(straight / "arch_history.npz")
    b = np.load(resumed / "arch_history.npz")
    assert sorted(a.files) == sorted(b.files)
    assert list(b["epoch"]) == [1, 2, 3]
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
