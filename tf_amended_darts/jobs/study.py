"""A stability study: a grid of searches, then a report of how each ended.

The paper's central claim (Figure 1, Figure 8, appendix C.1) is that DARTS
collapses to cells of skip-connections when searched long enough, while
the amended gradient keeps the search stable for a moderate ``eta``. A
study runs the grid ``--runs`` (estimators, ``amended:ETA`` for the amended
one at a given eta) x ``--seeds``, each an ordinary resumable search run
directory under ``--study_dir`` (``<estimator>[_eta<ETA>]_seed<S>``), with
the search flags the study's flagfile gives (`search_config`), then writes
``report.md`` and its PNGs beside it (`study_report`).

Each run is a separate ``launchers/search.py`` process (its own TensorFlow
state and memory), seed-major: all estimators of the first seed come
first, so that a study cut short still compares them. Rerunning the same
command skips finished runs, resumes an unfinished one from its last
checkpoint, and regenerates the report; ``--report_only`` rebuilds the
report from what exists. With ``--retrain_epochs=N`` each finished run's
genotype is also re-trained (``launchers/retrain.py``, the same small
network for every run: ``--retrain_layers``, ``--retrain_init_channels``)
and its test accuracy goes into the report.

Files (study directory ``D``)::

    D/study.json                 the study's flags and its invocations
    D/report.md, D/*.png         the report
    D/<run>/run.cfg              the run's flagfile (search flags)
    D/<run>/search.log           the search's output (appended)
    D/<run>/study_run.json       seconds spent, whether it finished
    D/<run>/retrain/             the re-training run (result.json)
    D/<run>/...                  the search's run directory
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time

from absl import flags

from tf_amended_darts.core import bilevel
from tf_amended_darts.jobs import search_config
from tf_amended_darts.vision import genotype as G

STUDY_FILE = "study.json"
RUN_FLAGS = "run.cfg"
RUN_STATE = "study_run.json"
SEARCH_LOG = "search.log"
RETRAIN_DIR = "retrain"
RETRAIN_LOG = "retrain.log"
# Launchers, relative to the repository root.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SEARCH_LAUNCHER = os.path.join(_ROOT, "launchers", "search.py")
RETRAIN_LAUNCHER = os.path.join(_ROOT, "launchers", "retrain.py")
# Flags of the search that the study sets per run.
PER_RUN = ("model_dir", "arch_grad", "eta", "seed")
# The small re-training network shared by all runs of a study.
RETRAIN_LAYERS = 5
RETRAIN_INIT_CHANNELS = 8
RETRAIN_BATCH_SIZE = 64


def define_flags(fv=flags.FLAGS):
    """Defines the study's flags and the search's on ``fv``."""
    search_config.define_flags(fv)
    d = dict(flag_values=fv)
    flags.DEFINE_string("study_dir", None, "The study's directory.", **d)
    flags.DEFINE_list(
        "runs",
        ["first_order", "second_order", "amended:0.1"],
        "Estimators of the grid: first_order, second_order, amended:ETA.",
        **d,
    )
    flags.DEFINE_list("seeds", ["0"], "Seeds of the grid.", **d)
    flags.DEFINE_bool(
        "report_only", False, "Rebuild the report from what exists.", **d
    )
    flags.DEFINE_integer(
        "retrain_epochs",
        0,
        "Re-train each final genotype this many epochs (0: not at all).",
        **d,
    )
    flags.DEFINE_integer(
        "retrain_layers", RETRAIN_LAYERS, "Cells of the re-trained net.", **d
    )
    flags.DEFINE_integer(
        "retrain_init_channels",
        RETRAIN_INIT_CHANNELS,
        "C of the re-trained network.",
        **d,
    )
    flags.DEFINE_integer(
        "retrain_batch_size",
        RETRAIN_BATCH_SIZE,
        "Batch size of the re-training.",
        **d,
    )
    flags.DEFINE_integer(
        "retrain_steps_per_epoch",
        0,
        "Cap on re-training steps per epoch (0: the whole training set).",
        **d,
    )


@dataclasses.dataclass(frozen=True)
class Run:
    """One search of the grid."""

    arch_grad: str
    eta: float
    seed: int

    @property
    def name(self) -> str:
        eta = f"_eta{self.eta:g}" if self.arch_grad == "amended" else ""
        return f"{self.arch_grad}{eta}_seed{self.seed}"

    @property
    def label(self) -> str:
        """The estimator setting, without the seed."""
        if self.arch_grad == "amended":
            return f"amended eta={self.eta:g}"
        return self.arch_grad


def parse_runs(runs, seeds, default_eta):
    """The grid, seed-major.

    Args:
        runs: ``["first_order", "second_order", "amended:0.1", ...]``.
        seeds: seeds (ints or strings).
        default_eta: eta of a bare ``amended``; also passed (unused) to the
            other estimators.

    Raises:
        ValueError: naming ``--runs`` or ``--seeds``.
    """
    parsed = []
    for item in runs:
        name, _, eta = str(item).partition(":")
        if name not in bilevel.ARCH_GRADS or (eta and name != "amended"):
            raise ValueError(
                f"Invalid --runs entry {item!r}. Accepted: first_order, "
                "second_order, amended or amended:ETA (ETA >= 0)."
            )
        try:
            value = float(eta) if eta else float(default_eta)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise ValueError(
                f"Invalid --runs entry {item!r}: ETA must be a number >= 0."
            )
        parsed.append((name, value))
    try:
        seeds = [int(s) for s in seeds]
    except ValueError:
        raise ValueError(
            f"Invalid --seeds={','.join(map(str, seeds))}: integers >= 0."
        ) from None
    if not parsed or not seeds or min(seeds) < 0:
        raise ValueError(
            "The grid is empty or a seed is negative: give --runs and "
            "--seeds (integers >= 0)."
        )
    grid = [Run(n, e, s) for s in seeds for n, e in parsed]
    names = [r.name for r in grid]
    if len(set(names)) != len(names):
        raise ValueError(f"--runs/--seeds repeat a run: {names}.")
    return grid


def search_flag_lines(fv):
    """The search flags given to the study (not `PER_RUN`), as lines."""
    names = set(search_config_flag_names()) - set(PER_RUN)
    return [
        fv[name].serialize()
        for name in sorted(names)
        if fv[name].present and fv[name].value is not None
    ]


def search_config_flag_names():
    """Names of the search launcher's flags."""
    probe = flags.FlagValues()
    search_config.define_flags(probe)
    return list(probe)


def run_flags(lines, run, run_dir):
    """The run's flagfile text."""
    own = [
        f"--model_dir={run_dir}",
        f"--arch_grad={run.arch_grad}",
        f"--eta={run.eta!r}",
        f"--seed={run.seed}",
    ]
    return "\n".join(list(lines) + own) + "\n"


def _read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_json(path, value):
    G.atomic_write(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def _subprocess(command, log_path):
    """Runs ``command`` with output appended to ``log_path``; seconds."""
    start = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(
            f"\n# {datetime.datetime.now().isoformat()} {' '.join(command)}\n"
        )
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    return code, time.monotonic() - start


def run_search(run_dir, flag_text, python=sys.executable):
    """Runs (or resumes) one search; returns its `RUN_STATE` dict.

    Raises:
        RuntimeError: the search failed (its log is named).
    """
    os.makedirs(run_dir, exist_ok=True)
    state_path = os.path.join(run_dir, RUN_STATE)
    state = _read_json(state_path, {"seconds": 0.0, "finished": False})
    if state["finished"]:
        return state
    flag_path = os.path.join(run_dir, RUN_FLAGS)
    G.atomic_write(flag_path, flag_text)
    log = os.path.join(run_dir, SEARCH_LOG)
    code, seconds = _subprocess(
        [python, SEARCH_LAUNCHER, f"--flagfile={flag_path}", "--verbose=2"],
        log,
    )
    state["seconds"] += seconds
    state["finished"] = code == 0
    _write_json(state_path, state)
    if code:
        raise RuntimeError(
            f"The search in {run_dir} failed (exit {code}); see {log}. "
            "Rerun the study command to resume it."
        )
    return state


def retrain(run_dir, fv, python=sys.executable):
    """Re-trains a finished run's genotype briefly; its ``result.json``.

    The network is the same for every run (``--retrain_*`` flags), on the
    study's dataset and image size, without auxiliary head, drop-path or
    Cutout (a brief, comparable training, not the paper's recipe).
    """
    out = os.path.join(run_dir, RETRAIN_DIR)
    result_path = os.path.join(out, "result.json")
    if os.path.exists(result_path):
        return _read_json(result_path)
    os.makedirs(out, exist_ok=True)
    config = _read_json(os.path.join(run_dir, "config.json"))
    command = [
        python,
        RETRAIN_LAUNCHER,
        f"--genotype={os.path.join(run_dir, 'genotype.json')}",
        f"--model_dir={out}",
        f"--dataset={config['dataset']}",
        f"--image_size={config['image_size']}",
        f"--epochs={fv.retrain_epochs}",
        f"--layers={fv.retrain_layers}",
        f"--init_channels={fv.retrain_init_channels}",
        f"--batch_size={fv.retrain_batch_size}",
        f"--steps_per_epoch={fv.retrain_steps_per_epoch}",
        f"--seed={config['seed']}",
        "--noauxiliary",
        "--drop_path_prob=0",
        "--cutout=0",
        "--verbose=2",
    ]
    if config.get("data_dir"):
        command.append(f"--data_dir={config['data_dir']}")
    code, _ = _subprocess(command, os.path.join(run_dir, RETRAIN_LOG))
    if code:
        raise RuntimeError(
            f"Re-training {run_dir} failed (exit {code}); see "
            f"{os.path.join(run_dir, RETRAIN_LOG)}."
        )
    return _read_json(result_path)


def _record_invocation(study_dir, fv, lines, grid):
    path = os.path.join(study_dir, STUDY_FILE)
    record = _read_json(path, {"invocations": []})
    record["search_flags"] = list(lines)
    record["runs"] = [dataclasses.asdict(r) | {"name": r.name} for r in grid]
    record["invocations"].append(
        {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "argv": list(sys.argv),
            "report_only": bool(fv.report_only),
        }
    )
    _write_json(path, record)


def run(fv=flags.FLAGS, python=sys.executable):
    """Runs (resumes) the study the flags describe, then writes the report.

    Returns:
        The path of ``report.md``.
    """
    from tf_amended_darts.jobs import study_report

    if not fv.study_dir:
        raise ValueError("Invalid --study_dir=None. Accepted: a directory.")
    if fv.retrain_epochs < 0:
        raise ValueError(
            f"Invalid --retrain_epochs={fv.retrain_epochs}. Accepted: an "
            "integer >= 0 (0: no re-training)."
        )
    study_dir = os.fspath(fv.study_dir)
    os.makedirs(study_dir, exist_ok=True)
    grid = parse_runs(fv.runs, fv.seeds, fv.eta)
    lines = search_flag_lines(fv)
    _record_invocation(study_dir, fv, lines, grid)
    if not fv.report_only:
        for run_ in grid:
            run_dir = os.path.join(study_dir, run_.name)
            # Validates the run's flags before a process is started.
            text = run_flags(lines, run_, run_dir)
            _check_flags(text)
            run_search(run_dir, text, python)
            if fv.retrain_epochs:
                retrain(run_dir, fv, python)
            study_report.write_report(study_dir)  # after every run
    return study_report.write_report(study_dir)


def _check_flags(text):
    """Parses a run's flagfile text as the search launcher would."""
    probe = flags.FlagValues()
    search_config.define_flags(probe)
    args = [line for line in text.splitlines() if line.strip()]
    probe(["search"] + args)
    search_config.from_flags(probe)
