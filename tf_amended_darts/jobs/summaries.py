"""Helpers that turn logged values into TensorBoard summaries and CSV cells:
heat maps of architecture weights as PNG, scalar extraction, and the
restart marker that keeps a resumed run's curves single.
"""

from __future__ import annotations

import io
import time

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_HEATMAP_DPI = 100


def heatmap_png(
    weights, operators, edge_labels, title=None, axis_labels=None
) -> bytes:
    """A heat map of one cell's softmax weights, as PNG bytes.

    Operators are on the x axis, edges on the y axis, and each cell of the
    map is annotated with its value.

    Args:
        weights: ``(len(edge_labels), len(operators))`` values.
        operators: column labels.
        edge_labels: row labels (see `edge_labels`).
        title: optional title.
        axis_labels: ``(x label, y label)``, default
            ``("operator", "edge")``.

    Returns:
        The PNG file content.

    Raises:
        ValueError: when the shape does not match the labels.
    """
    w = np.asarray(weights, dtype=np.float64)
    rows, cols = len(edge_labels), len(operators)
    if w.shape != (rows, cols):
        raise ValueError(
            f"Invalid `weights`: expected shape ({rows}, {cols}) (edges x "
            f"operators). Received shape {w.shape}."
        )
    figure = Figure(
        figsize=(2.4 + 0.8 * cols, 1.4 + 0.3 * rows), layout="constrained"
    )
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    finite = w[np.isfinite(w)]
    vmax = max(float(finite.max()) if finite.size else 1.0, 1e-12)
    image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
    for r in range(rows):
        for c in range(cols):
            value = w[r, c]
            bright = np.isfinite(value) and value > 0.6 * vmax
            ax.text(
                c,
                r,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if bright else "white",
            )
    ax.set_xticks(range(cols), list(operators), rotation=40, ha="right")
    ax.set_yticks(range(rows), list(edge_labels))
    ax.tick_params(labelsize=7)
    x_label, y_label = axis_labels or ("operator", "edge")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_HEATMAP_DPI)
    return buffer.getvalue()


def scalar_value(value):
    """``value`` as a float when it is a single number, else ``None``."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return float(array.reshape(())) if array.size == 1 else None


def scalar_logs(logs) -> dict:
    out = {}
    for name, value in (logs or {}).items():
        number = scalar_value(value)
        if number is not None:
            out[str(name)] = number
    return out


def format_value(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_session_start(writer, step: int) -> None:
    """Marks a (re)start at ``step`` in the event file.

    TensorBoard discards the events of earlier runs with steps ``>= step``
    when it reads a second ``SessionLog.START``, so the epochs a resumed
    search redoes are not plotted twice. Best effort: skipped if this
    TensorFlow's writer does not expose its resource.
    """
    try:
        from tensorboard.compat.proto import event_pb2
    except ImportError:  # TensorBoard not installed: nothing to purge.
        return
    event = event_pb2.Event(
        step=int(step),
        wall_time=time.time(),
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
    )
    resource = getattr(writer, "_resource", None)
    if resource is None:
        return
    try:
        tf.raw_ops.ImportEvent(writer=resource, event=event.SerializeToString())
    except (tf.errors.OpError, TypeError, ValueError):
        pass
