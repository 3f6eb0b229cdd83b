"""The BUILD file is true: current, complete, resolvable and acyclic.

Bazel cannot build offline on these machines (README, "BUILD"), so this
test does what `bazel build` would check first.
"""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import build_file  # noqa: E402


def _targets():
    with open(os.path.join(ROOT, "BUILD")) as f:
        tree = ast.parse(f.read())
    targets = {}
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if not isinstance(call, ast.Call) or not call.func.id.startswith(
                "py_"):
            continue
        kw = {k.arg: k.value for k in call.keywords}
        name = ast.literal_eval(kw["name"])
        srcs = ast.literal_eval(kw["srcs"])
        deps = []
        for d in getattr(kw.get("deps"), "elts", []):
            if isinstance(d, ast.Constant):
                deps.append(d.value)
        targets[name] = (call.func.id, srcs, deps)
    return targets


def test_build_file_is_current():
    assert build_file.main(["--check"]) == 0, (
        "BUILD is stale: run `python tools/build_file.py`")


def test_every_python_file_has_a_target():
    covered = {s for _, srcs, _ in _targets().values() for s in srcs}
    for folder in ("tf_amended_darts", "tests", "launchers", "tools"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
            for f in names:
                if f.endswith(".py") and f not in ("__init__.py",
                                                   "conftest.py"):
                    path = os.path.relpath(os.path.join(dirpath, f), ROOT)
                    assert path in covered, path


def test_sources_exist_and_deps_resolve():
    targets = _targets()
    for name, (kind, srcs, deps) in targets.items():
        for s in srcs:
            assert os.path.exists(os.path.join(ROOT, s)), (name, s)
        for d in deps:
            assert d.startswith(":") and d[1:] in targets, (name, d)
        if kind == "py_test":
            assert all(os.path.basename(s).startswith("test_")
                       and s.startswith("tests/") for s in srcs)


def test_library_graph_is_acyclic():
    targets = _targets()
    state = {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"cycle: {' -> '.join(path)}"
        state[name] = "open"
        for d in targets[name][2]:
            visit(d[1:], path + [d[1:]])
        state[name] = "done"

    for name in targets:
        visit(name, [name])


def test_deps_follow_imports():
    # A module that imports another must depend on it (checked on one edge
    # the code is known to have, independently of the generator).
    _, _, deps = _targets()["core_engine"]
    assert ":core_bilevel" in deps and ":core_optimizers" in deps
