"""Errors of the search's products under mixed precision: a table.

    python launchers/precision.py                      # 3 cells, C = 8, 16x16
    python launchers/precision.py --seeds=0,1,2 --batch_size=16
    python launchers/precision.py --rows=mixed_bfloat16:float32:1 --graph

Each row ``policy:reference:loss_scale[:option...]`` builds the same
super-network (random batches, the weights of ``--seeds``) under both
policies and prints the relative error ``||x - x_ref|| / ||x_ref||`` of
each vector the search reads (`tf_amended_darts.jobs.precision.PRODUCTS`):
``g1``, ``v``, the weight step's gradient ``gw``, ``H v`` and ``D H v``
(exact and finite-difference) and the amended estimate ``g1 - eta D H v``.
With several seeds a cell is the median and [max] over them.

Options: ``:other_batches`` evaluates ``policy`` on two other batches (same
weights): with ``policy == reference`` it measures the sampling noise of
each vector, the scale a precision error is to be judged against.
``:recompute`` computes ``policy``'s vectors with recomputed cells (the
search's ``--recompute_cells``; the reference's are plain): against a
float64 reference, the option's error next to the plain float32 row's.
benchmarks/precision.md holds a measured table and the decision it led to.
"""

import collections
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from tf_amended_darts.jobs import errors, precision  # noqa: E402
from tf_amended_darts.vision import search_space as S  # noqa: E402

DEFAULT_ROWS = (
    "float32:float64:1",
    "float32:float64:1:recompute",
    "mixed_bfloat16:float32:1",
    "mixed_float16:float32:1",
    "mixed_float16:float32:1024",
    "float32:float32:1:other_batches",
)
OTHER_BATCHES = "other_batches"
# The measured network recomputes its cells (--recompute_cells).
RECOMPUTE = "recompute"
ROW_OPTIONS = (OTHER_BATCHES, RECOMPUTE)
# Seed offset of the other batches of an ``:other_batches`` row.
OTHER_BATCH_SEED_OFFSET = 1000


def define_flags(fv=flags.FLAGS):
    d = dict(flag_values=fv)
    flags.DEFINE_list(
        "rows",
        list(DEFAULT_ROWS),
        "Rows policy:reference:loss_scale; policies among "
        f"{', '.join(precision.POLICIES)}.",
        **d,
    )
    flags.DEFINE_integer("layers", 3, "Cells of the supernet.", **d)
    flags.DEFINE_integer("init_channels", 8, "C of the supernet.", **d)
    flags.DEFINE_integer("image_size", 16, "Image side.", **d)
    flags.DEFINE_integer("batch_size", 16, "Examples per batch.", **d)
    flags.DEFINE_list(
        "operators", list(S.DARTS_PRIMITIVES), "Candidate operators.", **d
    )
    flags.DEFINE_list("seeds", ["0"], "Seeds (weights and batches).", **d)
    flags.DEFINE_bool(
        "graph", False, "Trace the products in a tf.function.", **d
    )


Row = collections.namedtuple(
    "Row", ["policy", "reference", "loss_scale", "other_batches", "recompute"]
)


def parse_row(text):
    """The `Row` of ``policy:reference:loss_scale[:option...]``."""
    parts = text.split(":")
    options = parts[3:]
    if (len(parts) < 3 or any(o not in ROW_OPTIONS for o in options)
            or len(set(options)) != len(options)):
        raise ValueError(
            f"Invalid --rows entry {text!r}. Accepted values: "
            "policy:reference:loss_scale[:option...] with options among "
            f"{', '.join(ROW_OPTIONS)}, e.g. mixed_bfloat16:float32:1 or "
            f"float32:float64:1:{RECOMPUTE}."
        )
    try:
        scale = float(parts[2])
    except ValueError:
        scale = float("nan")
    if not scale > 0:
        raise ValueError(
            f"Invalid --rows entry {text!r}: the loss scale must be a "
            "number > 0."
        )
    return Row(parts[0], parts[1], scale, OTHER_BATCHES in options,
               RECOMPUTE in options)


def table(results):
    """A Markdown table: one row per setting, one column per product."""
    head = ["policy", "reference", "loss scale"] + list(precision.PRODUCTS)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, runs in results:
        policy, reference, scale, other, recompute = Row(*row)
        if other:
            policy += " (other batches)"
        if recompute:
            policy += " (recomputed cells)"
        cells = [policy, reference, f"{scale:g}"]
        for name in precision.PRODUCTS:
            values = [run[name] for run in runs]
            cell = f"{np.median(values):.1e}"
            if len(values) > 1:
                cell += f" [{max(values):.1e}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv, fv=flags.FLAGS):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    with errors.usage():
        rows = [parse_row(r) for r in fv.rows]
    seeds = [int(s) for s in fv.seeds]
    results = []
    for row in rows:
        policy, reference, scale, other, recompute = row
        runs = []
        for seed in seeds:
            began = time.time()
            runs.append(
                precision.product_errors(
                    policy,
                    reference,
                    layers=fv.layers,
                    init_channels=fv.init_channels,
                    image_size=fv.image_size,
                    batch_size=fv.batch_size,
                    operators=tuple(fv.operators),
                    seed=seed,
                    loss_scale=scale,
                    graph=fv.graph,
                    batch_seed=(
                        seed + OTHER_BATCH_SEED_OFFSET if other else None
                    ),
                    recompute_cells=recompute,
                )
            )
            print(
                f"{policy} vs {reference} (S={scale:g}, seed {seed}"
                f"{', other batches' if other else ''}"
                f"{', recomputed cells' if recompute else ''}): "
                f"{time.time() - began:.0f} s",
                flush=True,
            )
        results.append((row, runs))
    norms = {
        name: results[0][1][0][name + "_norm"] for name in precision.PRODUCTS
    }
    print(table(results))
    print(
        "reference norms (first row, first seed): "
        + ", ".join(f"{k} {v:.2e}" for k, v in norms.items())
    )
    return results


if __name__ == "__main__":
    define_flags()
    errors.run(main)
