"""Benchmark of one search step per estimator, product mode and batch size.

    python launchers/bench.py                      # small DARTS-like model
    python launchers/bench.py --preset=s1          # S1 supernet: 8 cells,
                                                   # C=16, 32x32, batch 32
    python launchers/bench.py --preset=s1 --batch_sizes=32,64 --steps=2 \
        --warmup=0                                 # the issue's S1 table

Each (batch size, estimator, product mode) runs in its own subprocess, one
after the other, so that its peak memory (max RSS) is its own. The step is
the search's: `engine.BilevelSearch.train_step` in a `tf.function`, fed
from a `tf.data` pipeline. ``--data=digits`` (default) is the search's own
pipeline (`data.search_datasets` on the embedded digits at the preset's
image size: gather, random crop with padding, normalisation, batching,
prefetch), repeated; ``--data=synthetic`` feeds one fixed pair of random
batches (no input pipeline, the old behaviour).

Reported per configuration: the first step (trace + graph instantiation +
one execution), then over ``--steps`` timed steps after ``--warmup`` steps
the median seconds per step (input wait + step), images per second
(training + validation images), the ratio to first_order at the same batch
size, peak RSS, and the share of the step spent waiting for the input
pipeline (the iterator's ``next()``, timed apart from the step; prefetching
overlaps the rest of the pipeline with the step). Prints a Markdown table
and one JSON line per configuration (with the trace time and the RSS after
tracing); each configuration's phases go to stderr as they end.

Memory: a configuration whose RSS passes ``--max_rss_gb`` (default 16) is
stopped by a guard thread and reported as such, rather than left to the
kernel's OOM killer on a shared machine; each configuration runs with
glibc's mmap/trim thresholds at ``--malloc_threshold_kb`` (see
`MALLOC_ENV`).
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = {  # layers, init_channels, image_size, batch_size
    "small": (3, 8, 16, 16),
    "s1": (8, 16, 32, 32),
}
RUNS = (("first_order", "exact"), ("second_order", "exact"),
        ("second_order", "finite_difference"), ("amended", "exact"),
        ("amended", "finite_difference"))
DATA = ("digits", "synthetic")
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
NUM_CLASSES = 10  # digits (and CIFAR-10)
RSS_EXIT = 75  # exit code of a configuration stopped by --max_rss_gb
RSS_POLL_S = 0.2  # seconds between the guard's RSS readings
# glibc mallopt(3): an M_MMAP_THRESHOLD set by the environment disables the
# dynamic threshold, which otherwise rises to the largest block freed (up
# to 32 MiB on 64-bit) and leaves freed activation-sized blocks in the
# heap; measured on the 3-cell supernet (C=16, 32x32, batch 16), amended
# exact: peak RSS 6.0 GB with glibc's default, 5.4 GB at 64 KiB.
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def define_flags(fv=flags.FLAGS):
    flags.DEFINE_enum("preset", "small", list(PRESETS), "Model size.",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", 0, "Override the preset's batch "
                         "(ignored when --batch_sizes is set).",
                         flag_values=fv)
    flags.DEFINE_list("batch_sizes", [], "Batch sizes to run, e.g. 32,64 "
                      "(default: --batch_size, else the preset's).",
                      flag_values=fv)
    flags.DEFINE_integer("steps", 5, "Timed steps.", flag_values=fv)
    flags.DEFINE_integer("warmup", 1, "Untimed steps after the first.",
                         flag_values=fv)
    flags.DEFINE_list("runs", [f"{a}:{h}" for a, h in RUNS],
                      "estimator:hvp pairs.", flag_values=fv)
    flags.DEFINE_enum("data", "digits", list(DATA), "Input: the search's "
                      "tf.data pipeline on digits, or fixed random "
                      "tensors.", flag_values=fv)
    flags.DEFINE_bool("grappler", False, "Keep TensorFlow's graph "
                      "optimiser on (off: faster first step).",
                      flag_values=fv)
    flags.DEFINE_bool("op_tracebacks", False, "Record each graph op's "
                      "Python stack trace, TensorFlow's default (off: "
                      "~11 KB less memory per graph node, as the search "
                      "runs; core/graph_settings.py).", flag_values=fv)
    flags.DEFINE_bool("lean_graph", True, "Free the traced step's graph "
                      "once the runtime holds it (core/lean_function.py), "
                      "as the jobs do; False: keep it, as tf.function "
                      "does.", flag_values=fv)
    flags.DEFINE_bool("recompute_cells", False, "Recompute the cells in "
                      "the estimator's passes (SearchNetwork("
                      "recompute_cells=True), as the search's "
                      "--recompute_cells): less memory, more time.",
                      flag_values=fv)
    flags.DEFINE_float("drop_path_prob", 0.0, "Drop-path probability of "
                       "the search network (the search's --drop_path_prob, "
                       "--consistency), in [0, 1).", flag_values=fv)
    flags.DEFINE_float("max_rss_gb", 16.0, "Stop a configuration whose "
                       "resident memory passes this many GB (0: never), "
                       "before the kernel's OOM killer picks a process on a "
                       "shared machine.", flag_values=fv)
    flags.DEFINE_integer("malloc_threshold_kb", 64, "glibc's mmap and trim "
                         "thresholds (KiB) for each configuration's process "
                         "(0: glibc's dynamic defaults); see MALLOC_ENV.",
                         flag_values=fv)
    flags.DEFINE_bool("jit_compile", False, "Compile the step with XLA "
                      "(tf.function(jit_compile=True)).", flag_values=fv)
    flags.DEFINE_enum("dtype_policy", "float32", list(DTYPE_POLICIES),
                      "Keras dtype policy of the supernet (the bench "
                      "measures any estimator under it; the search refuses "
                      "mixed policies with second-order products).",
                      flag_values=fv)
    flags.DEFINE_integer("epoch_pairs", 0, "If > 0, also report seconds "
                         "per search epoch of this many (train, val) image "
                         "pairs: CIFAR-10's search split is 25000 "
                         "(steps = pairs // batch, the last partial batch "
                         "dropped as the search does).", flag_values=fv)
    flags.DEFINE_integer("require_gpus", 0, "Stop at once, with one line "
                         "naming what TensorFlow sees, unless at least this "
                         "many GPUs are visible (benchmarks/gpu_s1.sh: 1).",
                         flag_values=fv)
    flags.DEFINE_string("single", None, "Internal: run one estimator:hvp "
                        "and print JSON.", flag_values=fv)


def batch_sizes(fv):
    """The batch sizes to run: --batch_sizes, else one from the flags."""
    if fv.batch_sizes:
        sizes = [int(b) for b in fv.batch_sizes]
    else:
        sizes = [fv.batch_size or PRESETS[fv.preset][3]]
    if any(b < 1 for b in sizes):
        raise ValueError(f"Batch sizes must be >= 1. Received: {sizes}")
    return sizes


def peak_rss_mb():
    """This process's peak resident set size (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb():
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_rss_guard(limit_gb, period_s=RSS_POLL_S):
    """Exits this process (code RSS_EXIT) once its RSS passes `limit_gb`.

    A daemon thread polls /proc: a step that cannot fit is stopped by the
    benchmark itself, not by the OOM killer, which may pick another
    developer's process.
    """
    import threading

    def guard():
        while True:
            rss = current_rss_mb()
            if rss > limit_gb * 1024:
                sys.stderr.write(f"RSS {rss:.0f} MB > {limit_gb} GB\n")
                sys.stderr.flush()
                os._exit(RSS_EXIT)
            time.sleep(period_s)

    if limit_gb > 0:
        threading.Thread(target=guard, daemon=True).start()


def make_batches(data, size, batch):
    """An endless iterator of ``((x_t, y_t), (x_v, y_v))`` batches."""
    import numpy as np
    import tensorflow as tf

    if data == "synthetic":
        rng = np.random.default_rng(0)

        def batch_of():
            return (tf.constant(rng.normal(size=(batch, size, size, 3)),
                                tf.float32),
                    tf.constant(rng.integers(0, NUM_CLASSES, batch),
                                tf.int32))

        pair = (batch_of(), batch_of())
        while True:
            yield pair
    from tf_amended_darts.vision import data as data_lib

    pairs, _, _ = data_lib.search_datasets("digits", batch, image_size=size)
    yield from iter(pairs.repeat())


def measure(arch_grad, hvp, layers, channels, size, batch, steps, warmup,
            grappler, data="synthetic", jit_compile=False,
            dtype_policy="float32", op_tracebacks=False, lean_graph=True,
            recompute_cells=False, drop_path_prob=0.0):
    """Times one configuration in this process; returns a dict."""
    import tensorflow as tf

    from tf_amended_darts.core import engine, graph_settings
    from tf_amended_darts.core.lean_function import (
        LeanFunction,
        function_nodes,
    )
    from tf_amended_darts.jobs import precision

    graph_settings.configure(grappler, op_tracebacks)
    net = precision.search_network(dtype_policy, NUM_CLASSES, size,
                                   layers=layers, init_channels=channels,
                                   recompute_cells=recompute_cells,
                                   drop_path_prob=drop_path_prob)
    search = engine.BilevelSearch(net, arch_grad=arch_grad, hvp=hvp)
    search.compile()
    batches = make_batches(data, size, batch)
    if lean_graph:
        step = LeanFunction(search.train_step, jit_compile=jit_compile)
    else:
        step = tf.function(search.train_step, jit_compile=jit_compile)
    rss_built = peak_rss_mb()

    def timed_step():
        t0 = time.perf_counter()
        pair = next(batches)
        t1 = time.perf_counter()
        out = step(pair)
        float(out["loss"])  # wait for the step
        return t1 - t0, time.perf_counter() - t1

    def phase(name):
        sys.stderr.write(f"{name}: {time.perf_counter() - t_start:.1f} s, "
                         f"RSS {current_rss_mb():.0f} MB\n")
        sys.stderr.flush()

    t_start = time.perf_counter()
    phase("built")
    t0 = time.perf_counter()
    first_pair = next(batches)
    if lean_graph:  # trace only; the graph is freed here
        record = step.trace(first_pair)
        nodes, called = record["graph_nodes"], record["function_nodes"]
    else:
        graph = step.get_concrete_function(first_pair).graph
        nodes = len(graph.get_operations())
        called = function_nodes(graph)
        del graph
    trace = time.perf_counter() - t0
    rss_traced = current_rss_mb()
    phase("traced")
    float(step(first_pair)["loss"])  # instantiate, execute
    first = time.perf_counter() - t0
    phase("first step")
    for _ in range(warmup):
        timed_step()
    waits, totals = [], []
    for _ in range(steps):
        wait, run = timed_step()
        waits.append(wait)
        totals.append(wait + run)
    sec = statistics.median(totals)
    gpus = tf.config.list_logical_devices("GPU")
    gpu_peak = (tf.config.experimental.get_memory_info(gpus[0].name)["peak"]
                / 2**20 if gpus else None)  # the allocator's peak, bytes
    return {
        "arch_grad": arch_grad, "hvp": hvp, "batch": batch, "data": data,
        "first_step_s": first, "trace_s": trace, "sec_per_step": sec,
        "images_per_s": 2 * batch / sec,
        "input_s": statistics.median(waits),
        "input_share": sum(waits) / sum(totals),
        "rss_built_mb": rss_built, "rss_traced_mb": rss_traced,
        "peak_rss_mb": peak_rss_mb(), "graph_nodes": nodes,
        "function_nodes": called,
        "gpu_peak_mb": gpu_peak,
        "steps": steps, "warmup": warmup, "jit_compile": jit_compile,
        "op_tracebacks": op_tracebacks, "lean_graph": lean_graph,
        "recompute_cells": recompute_cells, "dtype_policy": dtype_policy,
        "drop_path_prob": drop_path_prob,
        "device": "GPU" if gpus else "CPU",
    }


def table(rows, fv, layers, channels, size):
    """The Markdown report; ratios against first_order at the same batch."""
    base = {r["batch"]: r["sec_per_step"] for r in rows
            if r["arch_grad"] == "first_order" and "sec_per_step" in r}
    gpu = any(r.get("gpu_peak_mb") is not None for r in rows)
    lines = [
        f"preset={fv.preset} (layers={layers}, C={channels}, "
        f"{size}x{size}), data={fv.data}, grappler={fv.grappler}, "
        f"op_tracebacks={fv.op_tracebacks}, lean_graph={fv.lean_graph}, "
        f"recompute_cells={fv.recompute_cells}, "
        f"drop_path_prob={fv.drop_path_prob:g}, "
        f"malloc_threshold_kb={fv.malloc_threshold_kb}, "
        f"jit_compile={fv.jit_compile}, dtype_policy={fv.dtype_policy}, "
        f"device={rows[0].get('device', '?') if rows else '?'}, "
        f"median of {fv.steps} steps after {fv.warmup} warm-up",
        "| batch | estimator | hvp | first step (s) | s/step | images/s | "
        "x first_order | input share | peak RSS (MB) | graph nodes |"
        + (" GPU peak (MB) |" if gpu else "")
        + (f" s/epoch ({fv.epoch_pairs} pairs) |" if fv.epoch_pairs else ""),
        "|---|---|---|---|---|---|---|---|---|---|"
        + ("---|" if gpu else "") + ("---|" if fv.epoch_pairs else ""),
    ]
    for r in rows:
        head = f"| {r['batch']} | {r['arch_grad']} | {r['hvp']} |"
        if "error" in r:
            empty = " |" * (6 + gpu + bool(fv.epoch_pairs))
            lines.append(f"{head} {r['error']} |{empty}")
            continue
        b = base.get(r["batch"])
        ratio = f"{r['sec_per_step'] / b:.2f}" if b else "n/a"
        lines.append(
            f"{head} {r['first_step_s']:.1f} | {r['sec_per_step']:.2f} | "
            f"{r['images_per_s']:.1f} | {ratio} | "
            f"{100 * r['input_share']:.1f}% | {r['peak_rss_mb']:.0f} | "
            f"{_nodes(r)} |"
            + (f" {r['gpu_peak_mb']:.0f} |" if gpu else "")
            + (f" {epoch_seconds(r, fv.epoch_pairs):.0f} |"
               if fv.epoch_pairs else ""))
    return "\n".join(lines)


def _nodes(row):
    """The graph-nodes cell: the step's own nodes, plus those of the
    functions it calls where it calls any (recomputed cells)."""
    nodes = row.get("graph_nodes", "n/a")
    if row.get("function_nodes"):
        return f"{nodes} + {row['function_nodes']}"
    return nodes


def epoch_seconds(row, pairs):
    """Seconds per search epoch of `pairs` image pairs at the row's pace."""
    return row["sec_per_step"] * (pairs // row["batch"])


def run_one(run, batch, fv):
    """One configuration in a subprocess; its JSON row, or an error row."""
    arch_grad, hvp = run.split(":")
    cmd = [sys.executable, os.path.abspath(__file__), f"--single={run}",
           f"--preset={fv.preset}", f"--batch_size={batch}",
           f"--steps={fv.steps}", f"--warmup={fv.warmup}",
           f"--data={fv.data}", f"--grappler={fv.grappler}",
           f"--op_tracebacks={fv.op_tracebacks}",
           f"--lean_graph={fv.lean_graph}",
           f"--recompute_cells={fv.recompute_cells}",
           f"--drop_path_prob={fv.drop_path_prob}",
           f"--max_rss_gb={fv.max_rss_gb}",
           f"--jit_compile={fv.jit_compile}",
           f"--dtype_policy={fv.dtype_policy}"]
    env = dict(os.environ)
    if fv.malloc_threshold_kb:
        for key in MALLOC_ENV:
            env[key] = str(fv.malloc_threshold_kb * 1024)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        # -9: SIGKILL, in practice the kernel's OOM killer.
        if out.returncode == RSS_EXIT:
            why = f"stopped: RSS over {fv.max_rss_gb:g} GB"
        elif out.returncode == -9:
            why = "killed (SIGKILL; out of memory?)"
        else:
            why = f"failed (exit {out.returncode})"
        sys.stderr.write(out.stderr[-2000:])
        return {"arch_grad": arch_grad, "hvp": hvp, "batch": batch,
                "error": why}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv, fv=flags.FLAGS):
    del argv
    from tf_amended_darts.jobs import errors  # light: no TensorFlow

    if fv.require_gpus and not fv.single:
        from tf_amended_darts.core import distribute

        try:
            distribute.require_gpus(fv.require_gpus, "--require_gpus")
        except ValueError as error:
            sys.exit(f"error: {error}")
    layers, channels, size, _ = PRESETS[fv.preset]
    with errors.usage():
        sizes = batch_sizes(fv)
        if not 0.0 <= fv.drop_path_prob < 1.0:
            raise ValueError("--drop_path_prob must be in [0, 1). "
                             f"Received: {fv.drop_path_prob}")
    if fv.single:
        start_rss_guard(fv.max_rss_gb)
        arch_grad, hvp = fv.single.split(":")
        print(json.dumps(measure(arch_grad, hvp, layers, channels, size,
                                 sizes[0], fv.steps, fv.warmup, fv.grappler,
                                 fv.data, fv.jit_compile, fv.dtype_policy,
                                 fv.op_tracebacks, fv.lean_graph,
                                 fv.recompute_cells, fv.drop_path_prob)))
        return
    rows = []
    for batch in sizes:
        for run in fv.runs:
            rows.append(run_one(run, batch, fv))
            print(f"done {run} batch {batch}: {json.dumps(rows[-1])}",
                  file=sys.stderr, flush=True)
    print(table(rows, fv, layers, channels, size))


if __name__ == "__main__":
    from tf_amended_darts.jobs import errors

    define_flags()
    errors.run(main)
