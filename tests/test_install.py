"""The install layout: one TensorFlow wheel per install, a GPU extra that
resolves, and GPU-count errors on this CPU machine (README, setup.py)."""

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import warnings

import pytest

from tests.helpers import REPO_ROOT
from tf_amended_darts import install_check

TF_WHEELS = ("tensorflow", "tensorflow-cpu")


def _setup_kwargs():
    """The literal keyword arguments of setup() in setup.py (by ast)."""
    with open(os.path.join(REPO_ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    constants = {
        t.id: ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    call = next(
        n.value
        for n in tree.body
        if isinstance(n, ast.Expr)
        and isinstance(n.value, ast.Call)
        and getattr(n.value.func, "id", "") == "setup"
    )
    out = {}
    for kw in call.keywords:
        if kw.arg not in ("install_requires", "extras_require"):
            continue
        source = ast.unparse(kw.value)
        out[kw.arg] = eval(source, {}, constants)  # literals and f-strings
    return out


def _name(requirement):
    """``(distribution, marker)`` of a requirement string."""
    spec, _, marker = requirement.partition(";")
    name = spec.split("==")[0].split("[")[0].strip()
    return name, marker.strip()


def test_no_tensorflow_in_the_base_requirements():
    base = [_name(r)[0] for r in _setup_kwargs()["install_requires"]]
    assert not set(base) & set(TF_WHEELS), base


def test_each_extra_installs_one_tensorflow_wheel_of_one_version():
    extras = _setup_kwargs()["extras_require"]
    cpu = [_name(r) for r in extras["cpu"]]
    gpu = [_name(r) for r in extras["gpu"]]
    # cpu: tensorflow-cpu on x86_64 and tensorflow elsewhere, never both on
    # one machine; gpu: the CUDA build (tensorflow[and-cuda]) only.
    assert cpu == [
        ("tensorflow-cpu", "platform_machine=='x86_64'"),
        ("tensorflow", "platform_machine!='x86_64'"),
    ]
    assert gpu == [("tensorflow", "")]
    assert "[and-cuda]" in extras["gpu"][0]
    versions = {
        r.split(";")[0].split("==")[1] for r in extras["cpu"] + extras["gpu"]
    }
    assert len(versions) == 1, versions
    assert not any(_name(r)[0] in TF_WHEELS for r in extras["test"])


def test_installed_tensorflow_is_the_pinned_version():
    extras = _setup_kwargs()["extras_require"]
    pinned = extras["gpu"][0].split("==")[1]
    found = install_check.installed_tensorflow()
    assert len(found) == 1 and set(found.values()) == {pinned}, found


def _fake_version(installed):
    def version(name):
        if name in installed:
            return installed[name]
        raise importlib.metadata.PackageNotFoundError(name)

    return version


def test_install_check_without_tensorflow_names_both_extras():
    with pytest.raises(ImportError, match=r'\.\[cpu\].*\.\[gpu\]'):
        install_check.check(_fake_version({}), find_spec=lambda name: None)
    # A TensorFlow installed otherwise (a source build) is accepted.
    install_check.check(_fake_version({}), find_spec=lambda name: object())


def test_install_check_warns_on_both_wheels():
    both = _fake_version({"tensorflow": "2.21.0", "tensorflow-cpu": "2.21.0"})
    with pytest.warns(UserWarning, match="Both TensorFlow wheels"):
        install_check.check(both)
    one = _fake_version({"tensorflow-cpu": "2.21.0"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        install_check.check(one)


def test_gpu_count_error_on_a_cpu_machine():
    from tf_amended_darts.core import distribute

    with pytest.raises(ValueError, match=r"--num_gpus=2: 0 GPU.*\.\[gpu\]"):
        distribute.make_strategy("mirrored", num_gpus=2)
    with pytest.raises(ValueError, match=r"--num_gpus=1: 0 GPU"):
        distribute.make_strategy("default", num_gpus=1)


def test_gpu_benchmark_script_stops_without_a_gpu(tmp_path):
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_s1.sh", str(tmp_path), "60"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: Invalid --require_gpus=1: 0 GPU")
    assert ".[gpu]" in lines[-1]
    # Nothing was benchmarked.
    assert not list(tmp_path.glob("fp32*.md"))


@pytest.mark.slow
def test_gpu_extra_resolves(tmp_path):
    # Resolves `.[gpu]` against the package index without installing.
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run",
         "--ignore-installed", "--quiet", "--report", str(report),
         "-e", ".[gpu]"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert names.get("tensorflow") == "2.21.0"
    assert "tensorflow-cpu" not in names
    assert any(n.startswith("nvidia-cudnn") for n in names)
