"""The README's commands work: the main job and the quick start's chain
(search -> info -> re-train -> export -> evaluate, and the toy problem),
run as written at the smallest size, and CI runs the README's test command.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

# Appended to each launcher's command to make it as small as it gets; the
# rest of the command is the README's, unchanged.
SMALLEST = {
    "search.py": ["--epochs=1", "--steps_per_epoch=1"],
    "retrain.py": ["--epochs=1", "--steps_per_epoch=1"],
    "toy.py": ["--steps=5"],
}


def _readme():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        return f.read()


def _commands(block):
    """Shell commands of an indented README block (continuations joined,
    comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", block)
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def _block_after(readme, marker):
    start = readme.index(marker)
    lines = readme[start:].splitlines()[1:]
    block, started = [], False
    for line in lines:
        if line.startswith("    "):
            block.append(line[4:])
            started = True
        elif started and line.strip():
            break
        elif started:
            block.append("")
    return "\n".join(block)


def readme_chain():
    """The main job's launcher command, then the quick start's commands."""
    readme = _readme()
    main = _commands(_block_after(readme, "**Run the main job**"))
    assert len(main) == 1 and " && " in main[0], main
    install, search = main[0].split(" && ")
    assert install.startswith("pip install -e ")
    chain = [search] + _commands(_block_after(readme, "## Quick start"))
    return chain


def test_ci_runs_the_readme_test_command():
    readme = _readme()
    (command,) = _commands(_block_after(readme, "**Run the tests**"))
    install, test = command.split(" && ")
    with open(os.path.join(REPO_ROOT, ".ci", "run")) as f:
        ci = [line.strip() for line in f if line.strip()]
    pip_args = shlex.split(install)[2:]  # after "pip install"
    assert any(
        line.startswith("python -m pip install")
        and shlex.split(line)[-2:] == pip_args
        for line in ci
    ), ci
    assert ci[-1] == test


def test_readme_chain_is_what_this_test_runs():
    chain = readme_chain()
    launchers = [shlex.split(c)[1] for c in chain if c.startswith("python ")]
    assert launchers == [
        "launchers/search.py",
        "launchers/toy.py",
        "launchers/info.py",
        "launchers/retrain.py",
        "launchers/export.py",
        "launchers/evaluate.py",
    ]
    assert chain[-1].startswith("tensorboard --logdir")


def test_readme_quick_start_chain(tmp_path):
    # Run from the repository root (flagfiles are relative to it), writing
    # under tmp_path instead of runs/.
    runs = str(tmp_path / "runs")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    for command in readme_chain():
        args = shlex.split(command.replace("runs/", runs + "/"))
        if args[0] == "tensorboard":
            import tensorboard  # noqa: F401  (installed: the logs are read)

            assert os.listdir(runs)
            continue
        assert args[0] == "python", command
        args[0] = sys.executable
        args += SMALLEST.get(os.path.basename(args[1]), [])
        proc = subprocess.run(
            args,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
    for path in (
        "quickstart/genotype.json",
        "quickstart/genotype_normal.png",
        "toy/trajectory.csv",
        "retrain/final.weights.h5",
        "export/saved_model.pb",
    ):
        assert os.path.exists(os.path.join(runs, path)), path


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
