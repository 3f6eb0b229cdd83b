"""Cell plots (PNG, matplotlib only) and compact text of genotypes.

The plots use matplotlib's object API with the Agg canvas, so they neither
need a display nor change pyplot's global backend. Files are written
atomically (``genotype.atomic_write``). No TensorFlow import.
"""

from __future__ import annotations

import io
import math
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tf_amended_darts.vision import genotype as genotype_lib
from tf_amended_darts.vision import search_space

# Layout of the drawing, in data units (the axes keep an equal aspect).
_COLUMN_X = 3.2  # x of the first intermediate node
_SLANT = 0.6  # x shift of each further intermediate node
_NODE_GAP = 1.3  # vertical distance between intermediate nodes
_OUTPUT_GAP = 2.0  # from the last intermediate node to the output
_INPUT_Y = 1.3  # c_{k-2} above, c_{k-1} below
_ARC = 0.2  # curvature of node-to-node edges, per node skipped
_MARGIN = 0.6
_INCHES_PER_UNIT = 1.0
# Label positions along an edge (0: source, 1: target): edges from the
# inputs cross mid-way, so their labels sit nearer the source.
_LABEL_AT_INPUT_EDGE = 0.3
_LABEL_AT_NODE_EDGE = 0.5  # label position along an edge (0: source, 1: target)
_SHRINK_POINTS = 14  # keeps arrow heads outside the node boxes
_DPI = 120

# One colour per operator family (others fall back to black).
_OP_COLOURS = {
    "none": "#bbbbbb",
    "max_pool_3x3": "#1f77b4",
    "avg_pool_3x3": "#17becf",
    "skip_connect": "#2ca02c",
    "sep_conv_3x3": "#d62728",
    "sep_conv_5x5": "#ff7f0e",
    "dil_conv_3x3": "#9467bd",
    "dil_conv_5x5": "#8c564b",
}


def state_name(state: int) -> str:
    """Display name of a cell state: ``c_{k-2}``, ``c_{k-1}``, or a node."""
    if state == 0:
        return "c_{k-2}"
    if state == 1:
        return "c_{k-1}"
    return str(state - search_space.NUM_CELL_INPUTS)


def _positions(steps: int) -> dict:
    # Inputs on the left, intermediate nodes in a slanted column (node 0 on
    # top), the output on the right, as in the DARTS paper's figures.
    half = (steps - 1) / 2
    pos = {0: (0.0, _INPUT_Y), 1: (0.0, -_INPUT_Y)}
    for j in range(steps):
        pos[j + search_space.NUM_CELL_INPUTS] = (
            _COLUMN_X + _SLANT * j,
            _NODE_GAP * (half - j),
        )
    pos["out"] = (_COLUMN_X + _SLANT * steps + _OUTPUT_GAP, 0.0)
    return pos


def _render_png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _draw_edge(ax, start, end, rad, colour, label=None, t=0.5):
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops={
            "arrowstyle": "-|>",
            "color": colour,
            "lw": 1.2,
            "connectionstyle": f"arc3,rad={rad}",
            "shrinkA": _SHRINK_POINTS,
            "shrinkB": _SHRINK_POINTS,
        },
    )
    if label is not None:
        # A point of matplotlib's arc3 quadratic Bezier (equal aspect); the
        # label is turned along the tangent there.
        dx, dy = end[0] - start[0], end[1] - start[1]
        cx = (start[0] + end[0]) / 2 + rad * dy
        cy = (start[1] + end[1]) / 2 - rad * dx
        x = (1 - t) ** 2 * start[0] + 2 * t * (1 - t) * cx + t**2 * end[0]
        y = (1 - t) ** 2 * start[1] + 2 * t * (1 - t) * cy + t**2 * end[1]
        tx = (1 - t) * (cx - start[0]) + t * (end[0] - cx)
        ty = (1 - t) * (cy - start[1]) + t * (end[1] - cy)
        angle = math.degrees(math.atan2(ty, tx))
        if angle > 90:
            angle -= 180
        elif angle < -90:
            angle += 180
        ax.text(
            x,
            y,
            label,
            fontsize=7,
            color=colour,
            ha="center",
            va="center",
            rotation=angle,
            rotation_mode="anchor",
            bbox={
                "boxstyle": "round,pad=0.15",
                "fc": "white",
                "ec": "none",
                "alpha": 0.85,
            },
        )


def cell_figure(cell_edges, concat, title=None) -> Figure:
    """A matplotlib ``Figure`` drawing one cell as a DAG.

    Args:
        cell_edges: ``(operator, input)`` pairs, two per intermediate node.
        concat: node states concatenated into the output ``c_{k}``.
        title: optional figure title.

    Returns:
        The figure (not attached to pyplot).
    """
    cell = genotype_lib.CellGenotype(tuple(cell_edges), tuple(concat), False)
    pos = _positions(cell.steps)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    width = max(xs) - min(xs) + 2 * _MARGIN
    height = max(ys) - min(ys) + 2 * _MARGIN
    figure = Figure(
        figsize=(
            _INCHES_PER_UNIT * width,
            _INCHES_PER_UNIT * height + (0.4 if title else 0),
        )
    )
    ax = figure.add_axes((0.02, 0.02, 0.96, 0.86 if title else 0.96))
    ax.set_aspect("equal")
    ax.axis("off")
    for e, (op, source) in enumerate(cell.edges):
        target = e // search_space.INPUTS_PER_NODE + (
            search_space.NUM_CELL_INPUTS
        )
        from_node = source >= search_space.NUM_CELL_INPUTS
        _draw_edge(
            ax,
            pos[source],
            pos[target],
            -_ARC * (target - source) if from_node else 0.0,
            _OP_COLOURS.get(op, "black"),
            op,
            _LABEL_AT_NODE_EDGE if from_node else _LABEL_AT_INPUT_EDGE,
        )
    for state in cell.concat:
        _draw_edge(ax, pos[state], pos["out"], 0.0, "#888888")
    boxes = {"c_{k}": pos["out"]}
    boxes.update({state_name(s): pos[s] for s in pos if s != "out"})
    for name, (x, y) in boxes.items():
        is_input = name.startswith("c_")
        ax.text(
            x,
            y,
            f"${name}$" if is_input else name,
            ha="center",
            va="center",
            fontsize=9,
            bbox={
                "boxstyle": "round,pad=0.35",
                "fc": "#e8f0ff" if is_input else "#fff4d6",
                "ec": "#444",
            },
        )
    ax.set_xlim(min(xs) - _MARGIN, max(xs) + _MARGIN)
    ax.set_ylim(min(ys) - _MARGIN, max(ys) + _MARGIN)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def plot_cell(cell_edges, concat, path, title=None) -> str:
    """Draws one cell as a DAG and writes it as a PNG, atomically.

    Args:
        cell_edges: ``(operator, input)`` pairs, two per intermediate node.
        concat: node states concatenated into the output ``c_{k}``.
        path: destination ``.png`` file.
        title: optional figure title.

    Returns:
        The path written.
    """
    genotype_lib.atomic_write(
        path, _render_png(cell_figure(cell_edges, concat, title))
    )
    return os.fspath(path)


def plot_genotype(genotype, path_prefix) -> list[str]:
    """Writes one PNG per cell of a genotype.

    Shared genotypes give ``<prefix>_normal.png`` and
    ``<prefix>_reduce.png``; per-cell genotypes give
    ``<prefix>_cell<NN>.png`` for each cell.

    Args:
        genotype: a ``genotype.Genotype``.
        path_prefix: path and file-name prefix.

    Returns:
        The paths written.
    """
    prefix = os.fspath(path_prefix)
    if genotype.cells is None:
        return [
            plot_cell(
                genotype.normal,
                genotype.normal_concat,
                f"{prefix}_normal.png",
                "normal cell",
            ),
            plot_cell(
                genotype.reduce,
                genotype.reduce_concat,
                f"{prefix}_reduce.png",
                "reduction cell",
            ),
        ]
    width = max(2, len(str(len(genotype.cells) - 1)))
    return [
        plot_cell(
            cell.edges,
            cell.concat,
            f"{prefix}_cell{i:0{width}d}.png",
            f"cell {i} ({'reduction' if cell.reduction else 'normal'})",
        )
        for i, cell in enumerate(genotype.cells)
    ]


def _cell_text(edges, concat) -> str:
    nodes = []
    for j in range(len(edges) // search_space.INPUTS_PER_NODE):
        pair = edges[
            search_space.INPUTS_PER_NODE * j : search_space.INPUTS_PER_NODE
            * (j + 1)
        ]
        terms = " + ".join(f"{op}({state_name(i)})" for op, i in pair)
        nodes.append(f"{j} = {terms}")
    out = ", ".join(state_name(s) for s in concat)
    return "; ".join(nodes) + f"; c_{{k}} = concat({out})"


def genotype_to_text(genotype) -> str:
    """A compact human-readable text of a genotype, one line per cell.

    Example line: ``normal: 0 = sep_conv_3x3(c_{k-1}) +
    sep_conv_3x3(c_{k-2}); ...; c_{k} = concat(0, 1, 2, 3)``.

    Args:
        genotype: a ``genotype.Genotype``.

    Returns:
        The text (for logs and TensorBoard text summaries).
    """
    if genotype.cells is None:
        return "\n".join(
            [
                "normal: "
                + _cell_text(genotype.normal, genotype.normal_concat),
                "reduce: "
                + _cell_text(genotype.reduce, genotype.reduce_concat),
            ]
        )
    return "\n".join(
        f"cell {i} ({'reduce' if cell.reduction else 'normal'}): "
        + _cell_text(cell.edges, cell.concat)
        for i, cell in enumerate(genotype.cells)
    )
