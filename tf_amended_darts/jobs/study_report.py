"""The report of a stability study, built from its run directories alone.

`write_report(study_dir)` reads every run directory of the study (one with
a ``config.json``: `study` names them ``<estimator>[_eta<ETA>]_seed<S>``)
and writes ``report.md`` with one row per run and PNGs beside it:

* ``curve_<metric>.png``: a per-epoch curve of ``metrics.csv`` (the
  Figure-1 curves, ``skip_connections_normal``, ``mean_max_weight``, the
  supernet's validation accuracy) overlaid across runs, one panel per
  estimator setting, one line per seed;
* ``fidelity.png``: the fidelity cosines over epochs (DARTS' and the
  amended second-order term against ``g2 = -D (H + lambda I)^-1 v``), with
  the CG residual and the damping.

Nothing but the files is read, so the report can be rebuilt at any time
(``--report_only``), also while runs are unfinished (their rows say so).
"""

from __future__ import annotations

import collections
import csv
import json
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tf_amended_darts.jobs import monitors
from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision import indicators

REPORT_FILE = "report.md"
FIDELITY_PNG = "fidelity.png"
# The per-epoch curves plotted (metrics.csv columns) and their titles.
CURVES = {
    indicators.SKIP_KEY: "skip-connections in the derived normal cell",
    "skip_share": "share of skip_connect in the derived normal cell",
    "none_weight_avg": "mean softmax weight of none (normal cell)",
    "parametric_ops_normal": "parametric operators in the normal cell",
    indicators.DECIDED_KEY: "mean of the largest operator weight per edge",
    "val_accuracy": "supernet validation accuracy (search)",
}
_DPI = 100


class RunSummary(dict):
    """One row of the report (a dict of named cells)."""


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_metrics(path):
    """``{column: [float or nan per row]}`` of a ``metrics.csv``."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = collections.defaultdict(list)
    for row in rows:
        for key, value in row.items():
            try:
                columns[key].append(float(value) if value != "" else math.nan)
            except (TypeError, ValueError):
                columns[key].append(math.nan)
    return dict(columns)


def _final_dir(run_dir):
    """The directory of the run's last stage (``stage2`` if searched)."""
    stage2 = os.path.join(run_dir, "stage2")
    return stage2 if os.path.isdir(stage2) else run_dir


def _cell_summary(edges):
    counts = collections.Counter(op for op, _ in edges)
    short = {
        "skip_connect": "skip",
        "sep_conv_3x3": "sep3",
        "sep_conv_5x5": "sep5",
        "dil_conv_3x3": "dil3",
        "dil_conv_5x5": "dil5",
        "max_pool_3x3": "max",
        "avg_pool_3x3": "avg",
    }
    return " ".join(
        f"{count} {short.get(op, op)}" for op, count in sorted(counts.items())
    )


def genotype_summary(genotype):
    """``"N: 3 sep3 5 skip / R: ..."`` (per-cell: the normal cells')."""
    if genotype.cells is None:
        return (
            f"N: {_cell_summary(genotype.normal)} / R: "
            f"{_cell_summary(genotype.reduce)}"
        )
    normal = [e for c in genotype.cells if not c.reduction for e in c.edges]
    return f"normal cells: {_cell_summary(normal)}"


def _last(values):
    finite = [v for v in values if not math.isnan(v)]
    return finite[-1] if finite else math.nan


def summarize_run(run_dir):
    """The report row of one run directory, or None if it is not a run."""
    config = _read_json(os.path.join(run_dir, "config.json"))
    if config is None:
        return None
    final = _final_dir(run_dir)
    metrics = read_metrics(os.path.join(final, "metrics.csv"))
    state = _read_json(os.path.join(run_dir, "study_run.json")) or {}
    path = os.path.join(run_dir, "genotype.json")
    genotype = G.load(path) if os.path.exists(path) else None
    meta = (genotype.metadata or {}) if genotype else {}
    retrain = _read_json(os.path.join(run_dir, "retrain", "result.json"))
    epochs = metrics.get("epoch", [])
    row = RunSummary(
        name=os.path.basename(os.path.normpath(run_dir)),
        arch_grad=config["arch_grad"],
        eta=float(config["eta"]),
        seed=int(config["seed"]),
        finished=bool(state.get("finished")),
        epochs=int(epochs[-1]) if epochs else 0,
        max_epochs=int(config["epochs"]),
        stable_since=meta.get("stable_since_epoch"),
        stopped=meta.get("stopped_when_stable"),
        genotype=genotype_summary(genotype) if genotype else "",
        skip=_last(metrics.get(indicators.SKIP_KEY, [])),
        decided=_last(metrics.get(indicators.DECIDED_KEY, [])),
        val_accuracy=_last(metrics.get("val_accuracy", [])),
        cos_second_order=_last(metrics.get(monitors.COSINE_SECOND_ORDER, [])),
        cos_amended=_last(metrics.get(monitors.COSINE_AMENDED, [])),
        cg_residual=_last(metrics.get(monitors.CG_RESIDUAL, [])),
        cg_damping=_last(metrics.get(monitors.CG_DAMPING, [])),
        seconds=float(state.get("seconds", math.nan)),
        test_accuracy=(
            float(retrain["test_top1_accuracy"]) if retrain else math.nan
        ),
        metrics=metrics,
    )
    if row["stable_since"] is None and row["finished"]:
        row["stable_since"] = _stable_since(final)
    row["label"] = (
        f"amended eta={row['eta']:g}"
        if row["arch_grad"] == "amended"
        else row["arch_grad"]
    )
    return row


def _stable_since(stage_dir):
    """From ``genotype_stable_since`` of the last metrics row, if any."""
    metrics = read_metrics(os.path.join(stage_dir, "metrics.csv"))
    value = _last(metrics.get("genotype_stable_since", []))
    return None if math.isnan(value) else int(value)


def collect(study_dir):
    """The rows of every run directory under ``study_dir``, by name."""
    rows = []
    for name in sorted(os.listdir(study_dir)):
        path = os.path.join(study_dir, name)
        if os.path.isdir(path):
            row = summarize_run(path)
            if row is not None:
                rows.append(row)
    order = {"first_order": 0, "second_order": 1, "amended": 2}
    rows.sort(key=lambda r: (order.get(r["arch_grad"], 3), r["eta"], r["seed"]))
    return rows


def _fmt(value, spec=".3f"):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _table(rows):
    head = (
        "| run | epochs | stable since | final genotype | skip (normal) | "
        "decided | supernet val acc | cos DARTS g2 | cos amended g2 | "
        "CG residual | lambda | re-trained test acc | time (min) |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        epochs = f"{r['epochs']}/{r['max_epochs']}"
        if not r["finished"]:
            epochs += " (running)"
        elif r["stopped"]:
            epochs += " (stable)"
        lines.append(
            f"| {r['name']} | {epochs} | {_fmt(r['stable_since'], 'd')} | "
            f"{r['genotype']} | {_fmt(r['skip'], '.0f')} | "
            f"{_fmt(r['decided'])} | {_fmt(r['val_accuracy'])} | "
            f"{_fmt(r['cos_second_order'])} | {_fmt(r['cos_amended'])} | "
            f"{_fmt(r['cg_residual'], '.2g')} | "
            f"{_fmt(r['cg_damping'], '.3g')} | "
            f"{_fmt(r['test_accuracy'])} | {_fmt(r['seconds'] / 60, '.1f')} |"
        )
    return "\n".join(lines)


def _figure(panels):
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    figure = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [
        figure.add_subplot(rows, cols, i + 1) for i in range(panels)
    ]


def plot_curve(rows, metric, title, path):
    """One panel per estimator setting, one line per seed; True if drawn."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    series = [
        r for r in rows if np.isfinite(r["metrics"].get(metric, [np.nan])).any()
    ]
    if not series:
        return False
    figure, axes = _figure(len(labels))
    values = [v for r in series for v in r["metrics"][metric]]
    low, high = np.nanmin(values), np.nanmax(values)
    pad = 0.05 * (high - low or 1.0)
    for ax, label in zip(axes, labels, strict=True):
        for r in series:
            if r["label"] != label:
                continue
            ax.plot(
                r["metrics"]["epoch"],
                r["metrics"][metric],
                label=f"seed {r['seed']}",
            )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(low - pad, high + pad)
        ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=_DPI)
    return True


def plot_fidelity(rows, path):
    """Fidelity cosines, CG residual and damping over epochs."""
    keys = (
        (monitors.COSINE_SECOND_ORDER, "cos(DARTS 2nd-order term, g2)"),
        (monitors.COSINE_AMENDED, "cos(amended term, g2)"),
        (monitors.CG_RESIDUAL, "CG relative residual"),
        (monitors.CG_DAMPING, "damping lambda"),
    )
    if not any(
        np.isfinite(r["metrics"].get(k, [np.nan])).any()
        for r in rows
        for k, _ in keys
    ):
        return False
    figure, axes = _figure(len(keys))
    colors = {}
    for ax, (key, title) in zip(axes, keys, strict=True):
        for r in rows:
            y = np.asarray(r["metrics"].get(key, []), dtype=float)
            x = np.asarray(r["metrics"].get("epoch", []), dtype=float)
            keep = np.isfinite(y)
            if not keep.any():
                continue
            color = colors.setdefault(r["label"], f"C{len(colors)}")
            style = ("-", "--", ":", "-.")[r["seed"] % 4]
            ax.plot(
                x[keep],
                y[keep],
                style,
                color=color,
                marker="o",
                markersize=3,
                label=f"{r['label']} s{r['seed']}",
            )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if key in (monitors.CG_RESIDUAL, monitors.CG_DAMPING):
            ax.set_yscale("log")
    axes[0].legend(fontsize=6)
    figure.savefig(path, dpi=_DPI)
    return True


def write_report(study_dir):
    """Writes ``report.md`` and the PNGs; returns the report's path."""
    rows = collect(study_dir)
    study = _read_json(os.path.join(study_dir, "study.json")) or {}
    lines = ["# Stability study", ""]
    invocations = study.get("invocations", [])
    if invocations:
        first = invocations[0]
        lines += [
            f"Started {first['started']} with `{' '.join(first['argv'])}`; "
            f"{len(invocations)} invocation(s) so far.",
            "",
        ]
    if study.get("search_flags"):
        lines += [
            "Search flags shared by all runs: `"
            + " ".join(study["search_flags"])
            + "`.",
            "",
        ]
    finished = sum(r["finished"] for r in rows)
    lines += [
        f"{finished} of {len(rows)} run directories finished.",
        "",
        "Columns: `epochs` run of the upper bound (`stable`: ended by "
        "`--stop_when_stable`); `stable since`: the epoch at which the "
        "final genotype first appeared; `skip (normal)`: skip-connections "
        "in the derived normal cell; `decided`: mean of the largest "
        "operator weight per edge (1/|ops| undecided, 1 decided); "
        "`supernet val acc`: the search's validation accuracy in the last "
        "epoch; `cos ... g2`: the last measured cosine of each estimator's "
        "second-order term with g2 = -D (H + lambda I)^-1 v, solved by CG "
        "to `CG residual` with damping `lambda`; `re-trained test acc`: "
        "the final genotype re-trained briefly (same network for all).",
        "",
        _table(rows),
        "",
    ]
    plots = []
    for metric, title in CURVES.items():
        name = f"curve_{metric}.png"
        if plot_curve(rows, metric, title, os.path.join(study_dir, name)):
            plots.append((title, name))
    if plot_fidelity(rows, os.path.join(study_dir, FIDELITY_PNG)):
        plots.append(("gradient fidelity", FIDELITY_PNG))
    if plots:
        lines += ["## Plots", ""]
        for title, name in plots:
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    path = os.path.join(study_dir, REPORT_FILE)
    G.atomic_write(path, "\n".join(lines))
    return path
