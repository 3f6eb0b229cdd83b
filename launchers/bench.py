"""Benchmark of one search step per estimator and product mode.

    python launchers/bench.py                      # small DARTS-like model
    python launchers/bench.py --preset=s1          # S1 supernet: 8 cells,
                                                   # C=16, 32x32, batch 32

Each (estimator, product mode) runs in its own subprocess so that its peak
memory (max RSS) is its own. Reported: the first step (trace + graph
compile), then the median seconds per step over --steps timed steps after
--warmup steps, images per second (training + validation images), the
ratio to first_order, and peak RSS. Prints a Markdown table.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = {  # layers, init_channels, image_size, batch_size
    "small": (3, 8, 16, 16),
    "s1": (8, 16, 32, 32),
}
RUNS = (("first_order", "exact"), ("second_order", "exact"),
        ("second_order", "finite_difference"), ("amended", "exact"),
        ("amended", "finite_difference"))


def define_flags(fv=flags.FLAGS):
    flags.DEFINE_enum("preset", "small", list(PRESETS), "Model size.",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 0, "Override the preset's batch.",
                         flag_values=fv)
    flags.DEFINE_integer("steps", 5, "Timed steps.", flag_values=fv)
    flags.DEFINE_integer("warmup", 1, "Untimed steps after the first.",
                         flag_values=fv)
    flags.DEFINE_list("runs", [f"{a}:{h}" for a, h in RUNS],
                      "estimator:hvp pairs.", flag_values=fv)
    flags.DEFINE_bool("grappler", False, "Keep TensorFlow's graph "
                      "optimiser on (off: faster first step).",
                      flag_values=fv)
    flags.DEFINE_string("single", None, "Internal: run one estimator:hvp "
                        "and print JSON.", flag_values=fv)


def measure(arch_grad, hvp, layers, channels, size, batch, steps, warmup,
            grappler):
    """Times one configuration in this process; returns a dict."""
    import numpy as np
    import tensorflow as tf

    from tf_amended_darts import engine
    from tf_amended_darts.supernet import SearchNetwork

    if not grappler:
        tf.config.optimizer.set_experimental_options(
            {"disable_meta_optimizer": True})
    net = SearchNetwork(10, layers=layers, init_channels=channels)
    net.build((None, size, size, 3))
    search = engine.BilevelSearch(net, arch_grad=arch_grad, hvp=hvp)
    search.compile()
    rng = np.random.default_rng(0)

    def batch_of():
        return (tf.constant(rng.normal(size=(batch, size, size, 3)),
                            tf.float32),
                tf.constant(rng.integers(0, 10, batch), tf.int32))

    data = (batch_of(), batch_of())
    step = tf.function(search.train_step)
    t0 = time.perf_counter()
    step(data)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step(data)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = step(data)
        float(out["loss"])
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {
        "arch_grad": arch_grad, "hvp": hvp, "first_step_s": first,
        "sec_per_step": sec, "images_per_s": 2 * batch / sec,
        "peak_rss_mb": resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv, fv=flags.FLAGS):
    del argv
    layers, channels, size, batch = PRESETS[fv.preset]
    batch = fv.batch_size or batch
    if fv.single:
        arch_grad, hvp = fv.single.split(":")
        print(json.dumps(measure(arch_grad, hvp, layers, channels, size,
                                 batch, fv.steps, fv.warmup, fv.grappler)))
        return
    rows = []
    for run in fv.runs:
        cmd = [sys.executable, os.path.abspath(__file__), f"--single={run}",
               f"--preset={fv.preset}", f"--batch_size={batch}",
               f"--steps={fv.steps}", f"--warmup={fv.warmup}",
               f"--grappler={fv.grappler}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done {run}: {json.dumps(rows[-1])}", file=sys.stderr,
              flush=True)
    base = next((r["sec_per_step"] for r in rows
                 if r["arch_grad"] == "first_order"), None)
    print(f"preset={fv.preset} (layers={layers}, C={channels}, "
          f"{size}x{size}, batch={batch}), grappler={fv.grappler}, "
          f"median of {fv.steps} steps")
    print("| estimator | hvp | first step (s) | s/step | images/s | "
          "x first_order | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["sec_per_step"] / base if base else float("nan")
        print(f"| {r['arch_grad']} | {r['hvp']} | {r['first_step_s']:.1f} | "
              f"{r['sec_per_step']:.3f} | {r['images_per_s']:.1f} | "
              f"{ratio:.2f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
