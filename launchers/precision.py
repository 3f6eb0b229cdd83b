"""Errors of the search's products under mixed precision: a table.

    python launchers/precision.py                      # 3 cells, C = 8, 16x16
    python launchers/precision.py --seeds=0,1,2 --batch_size=16
    python launchers/precision.py --rows=mixed_bfloat16:float32:1 --graph

Each row ``policy:reference:loss_scale[:batches]`` builds the same super-network
(random batches, the weights of ``--seeds``) under both policies and prints
the relative error ``||x - x_ref|| / ||x_ref||`` of each vector the search
reads (`tf_amended_darts.jobs.precision.PRODUCTS`): ``g1``, ``v``, the weight
step's gradient ``gw``, ``H v`` and ``D H v`` (exact and finite-difference)
and the amended estimate ``g1 - eta D H v``. With several seeds a cell is
the median and [max] over them. A row ending in ``:other_batches``
evaluates ``policy`` on two other batches (same weights): with ``policy ==
reference`` it measures the sampling noise of each vector, the scale a
precision error is to be judged against. benchmarks/precision.md holds a
measured table and the decision it led to.
"""

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
    "mixed_bfloat16:float32:1",
    "mixed_float16:float32:1",
    "mixed_float16:float32:1024",
    "float32:float32:1:other_batches",
)
OTHER_BATCHES = "other_batches"
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


def parse_row(text):
    """``(policy, reference, loss_scale, other_batches)`` of a row."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[3:] not in ([], [OTHER_BATCHES]):
        raise ValueError(
            f"Invalid --rows entry {text!r}. Accepted values: "
            "policy:reference:loss_scale[:other_batches], e.g. "
            "mixed_bfloat16:float32:1."
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
    return parts[0], parts[1], scale, len(parts) == 4


def table(results):
    """A Markdown table: one row per setting, one column per product."""
    head = ["policy", "reference", "loss scale"] + list(precision.PRODUCTS)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (policy, reference, scale, other), runs in results:
        if other:
            policy += " (other batches)"
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
        policy, reference, scale, other = row
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
                )
            )
            print(
                f"{policy} vs {reference} (S={scale:g}, seed {seed}"
                f"{', other batches' if other else ''}): "
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
