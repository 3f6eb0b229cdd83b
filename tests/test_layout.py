"""The package's layout keeps its rules (README "Layout", design.md).

* Arrows point one way: launchers -> jobs -> vision, language -> core, nn.
  ``vision`` and ``language`` never import each other, ``core`` imports no
  domain, ``nn`` imports nothing of the package but ``nn``.
* No module grows past `MAX_MODULE_LINES`.
* The TensorFlow-free modules stay free of TensorFlow.
* Tests mirror the package: every test folder names a package folder.
"""

import ast
import os

import pytest

from tests.helpers import REPO_ROOT

PACKAGE = "tf_amended_darts"
PACKAGE_DIR = os.path.join(REPO_ROOT, PACKAGE)
# The agreed size (issue 11: "no module over about 600 lines").
MAX_MODULE_LINES = 650
# Which subpackages each subpackage may import (itself included).
ALLOWED = {
    "nn": {"nn"},
    "core": {"core", "nn"},
    "vision": {"vision", "core", "nn"},
    "language": {"language", "core", "nn"},
    "jobs": {"jobs", "vision", "language", "core", "nn"},
}
# Top-level modules of the package (outside the subpackages), with what
# they may import.
TOP_LEVEL = {"install_check": set()}
# Modules that must not import TensorFlow (design.md: "no TensorFlow
# import"): pure data and rules, usable without a TensorFlow install.
TENSORFLOW_FREE = (
    "nn/validate.py",
    "vision/search_space.py",
    "vision/genotype.py",
    "vision/derive.py",
    "install_check.py",
)
# Test folders that mirror something other than a package folder.
TEST_FOLDERS_ELSEWHERE = {"launchers": os.path.join(REPO_ROOT, "launchers")}


def _modules():
    """``(path relative to the package, absolute path)`` of every module."""
    out = []
    for dirpath, _, names in os.walk(PACKAGE_DIR):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                out.append((os.path.relpath(path, PACKAGE_DIR), path))
    return sorted(out)


def _imported_modules(path):
    """Dotted names of the package's modules and packages ``path`` imports,
    including imports inside functions."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def _subpackage(dotted):
    """The first component under the package (``core`` of
    ``tf_amended_darts.core.engine``), or None for the package itself."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def import_violations(modules):
    """``(module, imported)`` pairs that break the arrow rules."""
    bad = []
    for rel, path in modules:
        parts = rel.split(os.sep)
        if len(parts) == 1:
            own = parts[0][:-3]
            if own == "__init__.py"[:-3]:
                continue
            allowed = TOP_LEVEL.get(own)
            if allowed is None:
                bad.append((rel, "a top-level module outside the subpackages"))
                continue
        else:
            allowed = ALLOWED.get(parts[0])
            if allowed is None:
                bad.append((rel, f"an unknown subpackage {parts[0]!r}"))
                continue
        for dotted in _imported_modules(path):
            sub = _subpackage(dotted)
            if sub is None or sub in TOP_LEVEL or sub in allowed:
                continue
            bad.append((rel, dotted))
    return bad


def test_imports_follow_the_arrows():
    assert import_violations(_modules()) == []


def test_the_rule_check_catches_a_wrong_arrow(tmp_path):
    # The check itself can fail: core importing vision, vision importing
    # language, and nn importing core are all caught.
    for sub, line in (
        ("core", "from tf_amended_darts.vision import genotype"),
        ("vision", "from tf_amended_darts.language import corpus"),
        ("nn", "import tf_amended_darts.core.engine"),
    ):
        folder = tmp_path / sub
        folder.mkdir()
        (folder / "bad.py").write_text(f"def f():\n    {line}\n")
    modules = [
        (os.path.join(sub, "bad.py"), str(tmp_path / sub / "bad.py"))
        for sub in ("core", "vision", "nn")
    ]
    assert {rel.split(os.sep)[0] for rel, _ in import_violations(modules)} == {
        "core", "vision", "nn"
    }


@pytest.mark.parametrize("rel,path", _modules(), ids=lambda x: str(x))
def test_module_size(rel, path):
    with open(path) as f:
        lines = sum(1 for _ in f)
    assert lines <= MAX_MODULE_LINES, (
        f"{rel} has {lines} lines (agreed bound {MAX_MODULE_LINES}): split "
        "it by idea"
    )


@pytest.mark.parametrize("rel", TENSORFLOW_FREE)
def test_tensorflow_free_modules(rel):
    with open(os.path.join(PACKAGE_DIR, rel)) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"tensorflow", "keras"}, rel
    # Their package imports are TensorFlow-free too.
    for dotted in _imported_modules(os.path.join(PACKAGE_DIR, rel)):
        target = dotted.replace(".", os.sep)[len(PACKAGE) + 1:] + ".py"
        if os.path.exists(os.path.join(PACKAGE_DIR, target)):
            assert target in TENSORFLOW_FREE, (rel, dotted)


def test_tests_mirror_the_package():
    tests = os.path.join(REPO_ROOT, "tests")
    for name in sorted(os.listdir(tests)):
        path = os.path.join(tests, name)
        if not os.path.isdir(path) or name.startswith(("_", ".")):
            continue
        mirrored = TEST_FOLDERS_ELSEWHERE.get(
            name, os.path.join(PACKAGE_DIR, name)
        )
        assert os.path.isdir(mirrored), f"tests/{name} mirrors nothing"
    for sub in ALLOWED:
        if os.path.isdir(os.path.join(PACKAGE_DIR, sub)):
            assert os.path.isdir(os.path.join(tests, sub)), (
                f"{PACKAGE}/{sub} has no tests/{sub}"
            )

