"""Drawings (PNG, matplotlib only) and text of recurrent genotypes.

The layout follows the DARTS reference ``rnn/visualize.py``: ``x_t`` and
``h_{t-1}`` feed state 0, each node ``i`` has one labelled edge from its
predecessor, and the averaged states feed ``h_t``. States sit on a line
from left to right; an edge that skips states arcs above the line.
Matplotlib's object API with the Agg canvas: no display, no change to
pyplot's global backend. Files are written atomically. No TensorFlow
import.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tf_amended_darts.core import jsonio

_DPI = 120
_GAP = 1.6  # horizontal distance between states
_INPUT_Y = 1.0  # x_t above, h_{t-1} below state 0's level
_ARC = 0.25  # curvature per skipped state
_COLOURS = {
    "tanh": "#d62728",
    "relu": "#1f77b4",
    "sigmoid": "#2ca02c",
    "identity": "#7f7f7f",
}
_BOX = dict(boxstyle="round,pad=0.3", linewidth=1.5)


def genotype_to_text(genotype) -> str:
    """One line per node: ``node i <- op(state j)``, then the output."""
    lines = [
        f"node {i + 1} <- {op}(state {pred})"
        for i, (op, pred) in enumerate(genotype.recurrent)
    ]
    concat = ", ".join(str(s) for s in genotype.concat)
    lines.append(f"h_t = mean(states {concat})")
    return "\n".join(lines)


def _node(ax, xy, text, colour):
    ax.annotate(
        text, xy, ha="center", va="center", fontsize=9,
        bbox=dict(_BOX, facecolor=colour, edgecolor="black"),
    )


def _edge(ax, start, end, rad=0.0, colour="gray", label=None):
    ax.annotate(
        "", xy=end, xytext=start,
        arrowprops=dict(
            arrowstyle="-|>", color=colour, shrinkA=12, shrinkB=12,
            connectionstyle=f"arc3,rad={rad}", linewidth=1.2,
        ),
    )
    if label:
        mid_x = (start[0] + end[0]) / 2
        lift = -rad * abs(end[0] - start[0]) / 2
        ax.text(mid_x, (start[1] + end[1]) / 2 + lift, label, ha="center",
                va="center", fontsize=7, color=colour,
                bbox=dict(facecolor="white", edgecolor="none", pad=0.5))


def render_png(genotype, title=None) -> bytes:
    """The drawing of a recurrent genotype, as PNG bytes."""
    steps = genotype.steps
    width = _GAP * (steps + 3)
    figure = Figure(figsize=(1.0 + 0.9 * (steps + 3), 4.0),
                    layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    pos = {k: (_GAP * (k + 1), 0.0) for k in range(steps + 1)}
    inputs = {"x_t": (0.0, _INPUT_Y), "h_{t-1}": (0.0, -_INPUT_Y)}
    out = (_GAP * (steps + 2), -2.2)
    for name, xy in inputs.items():
        _node(ax, xy, f"${name}$", "#c1e1c1")
        _edge(ax, xy, pos[0])
    for k, xy in pos.items():
        _node(ax, xy, str(k), "#add8e6")
    for i, (op, pred) in enumerate(genotype.recurrent):
        skipped = i - pred  # states jumped over
        rad = -_ARC * min(skipped, 4) if skipped else 0.0
        _edge(ax, pos[pred], pos[i + 1], rad, _COLOURS.get(op, "black"), op)
    _node(ax, out, "$h_t$ (mean)", "#eee8aa")
    for k in genotype.concat:
        _edge(ax, pos[k], out, 0.0, "#cccccc")
    ax.set_xlim(-0.8, width)
    ax.set_ylim(-3.0, 2.0 + 0.35 * min(steps, 8))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def plot_genotype(genotype, prefix, title=None) -> list[str]:
    """Writes ``<prefix>.png`` atomically; returns ``[path]``."""
    path = f"{prefix}.png"
    jsonio.atomic_write(path, render_png(genotype, title))
    return [path]
