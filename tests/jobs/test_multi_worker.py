"""Two worker processes on 127.0.0.1 search together (multi_worker).

Each worker is a fresh Python with its own ``TF_CONFIG`` (free loopback
ports), runs a tiny search through `search.run_search` with
``--strategy=multi_worker`` (the custom loop over ``strategy.run``) and
dumps its architecture variables; both must end with the same values, and
only the chief writes the run directory. Re-training with two workers (the
launcher's custom loop and evaluation) gives both the same result. The slow
test also runs the search in one process (default strategy) and finds the
same values: the two workers' replicas together see the global batch a
single process sees (measured: 8e-7 apart after two amended steps).
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, RETRAIN_TINY, SEARCH_TINY, flags_with

ROOT = REPO_ROOT
TIMEOUT_S = 420
TINY = list(SEARCH_TINY)
WORKER = """
import json, os, sys
import numpy as np
from absl import flags
from tf_amended_darts.core import distribute
from tf_amended_darts.jobs import search, search_config

fv = flags.FlagValues()
search_config.define_flags(fv)
fv(["search"] + json.loads(sys.argv[1]))
config = search_config.from_flags(fv)
strategy = search.set_up(config)
result = search.run_search(config, strategy)
arch = {
    f"arch_{i}": v.numpy()
    for i, v in enumerate(result.network.arch_variables)
}
np.savez(
    sys.argv[2],
    chief=distribute.is_chief(strategy),
    replicas=strategy.num_replicas_in_sync,
    **arch,
)
"""


RETRAIN_WORKER = """
import json, sys
from absl import flags
from launchers import retrain as launcher
from tf_amended_darts.jobs import retrain_config

fv = flags.FlagValues()
retrain_config.define_flags(fv)
fv(["retrain"] + json.loads(sys.argv[1]))
result = launcher.main(["retrain"], fv)
with open(sys.argv[2], "w") as f:
    json.dump(result, f)
"""
RETRAIN_MULTI_WORKER = flags_with(
    RETRAIN_TINY, cutout=None, strategy="multi_worker"
)


def _free_ports(n):
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(**extra):
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="2",
        **extra,
    )
    if "TF_CONFIG" not in extra:
        env.pop("TF_CONFIG", None)
    return env


def _start(tmp_path, name, flags, script=WORKER, suffix="npz", **env):
    out = tmp_path / f"{name}.{suffix}"
    with open(tmp_path / f"{name}.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(flags), str(out)],
            cwd=ROOT,
            env=_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, out


def _start_workers(tmp_path, flags, **kwargs):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    started = [
        _start(
            tmp_path,
            f"worker{index}",
            flags,
            TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
            **kwargs,
        )
        for index in range(2)
    ]
    return [p for p, _ in started], [out for _, out in started]


def _search_workers(tmp_path, model_dir, arch_grad):
    flags = TINY + [
        f"--arch_grad={arch_grad}",
        "--strategy=multi_worker",
        f"--model_dir={model_dir}",
    ]
    return _start_workers(tmp_path, flags)


def _wait(procs, tmp_path, names):
    deadline = time.time() + TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"workers still running after {TIMEOUT_S} s")
    finally:
        for proc in procs:  # only the processes this test started
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, proc in zip(names, procs, strict=True):
        log = (tmp_path / f"{name}.log").read_text()
        assert proc.returncode == 0, f"{name}:\n{log[-6000:]}"


def _arch(dump):
    return [dump[k] for k in dump.files if k.startswith("arch_")]


def _check_workers(dumps, model_dir):
    assert [bool(d["chief"]) for d in dumps] == [True, False]
    assert all(int(d["replicas"]) == 2 for d in dumps)
    arrays = [_arch(d) for d in dumps]
    assert len(arrays[0]) == len(arrays[1]) == 2  # normal, reduce
    for a, b in zip(arrays[0], arrays[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # The architecture moved from its initial values, by the same steps.
    assert max(float(np.abs(a).max()) for a in arrays[0]) > 5e-3
    # The chief wrote the run directory, once.
    for name in ("genotype.json", "config.json", "metrics.csv"):
        assert (model_dir / name).exists(), name
    assert os.listdir(model_dir / "checkpoints") == ["ckpt-0001.weights.h5"]


def test_two_workers_end_with_the_same_architecture(tmp_path):
    model_dir = tmp_path / "run"
    procs, outputs = _search_workers(tmp_path, model_dir, "first_order")
    _wait(procs, tmp_path, ["worker0", "worker1"])
    _check_workers([np.load(out) for out in outputs], model_dir)


@pytest.mark.slow
def test_two_workers_search_as_one_process(tmp_path):
    model_dir = tmp_path / "run"
    procs, outputs = _search_workers(tmp_path, model_dir, "amended")
    flags = TINY + ["--arch_grad=amended", f"--model_dir={tmp_path / 'one'}"]
    one, reference = _start(tmp_path, "one", flags)
    _wait(procs + [one], tmp_path, ["worker0", "worker1", "one"])
    dumps = [np.load(out) for out in outputs]
    _check_workers(dumps, model_dir)
    for a, b in zip(_arch(dumps[0]), _arch(np.load(reference)), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_two_workers_retrain_alike(tmp_path):
    model_dir = tmp_path / "retrain"
    flags = RETRAIN_MULTI_WORKER + [f"--model_dir={model_dir}"]
    procs, outputs = _start_workers(
        tmp_path, flags, script=RETRAIN_WORKER, suffix="json"
    )
    _wait(procs, tmp_path, ["worker0", "worker1"])
    results = [json.loads(out.read_text()) for out in outputs]
    # Same weights, and metrics over both workers' halves of the test set.
    assert results[0] == results[1]
    written = json.loads((model_dir / "result.json").read_text())
    assert written == results[0]
    for name in ("final.weights.h5", "metrics.csv", "config.json"):
        assert (model_dir / name).exists(), name
    assert sorted(os.listdir(model_dir / "checkpoints")) == [
        "ckpt-0001.weights.h5",
        "ckpt-0002.weights.h5",
    ]
