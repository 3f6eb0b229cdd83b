"""Benchmark of one recurrent search step per estimator (--task=ptb).

    python launchers/bench_ptb.py                  # paper's search: batch
                                                   # 256 x bptt 35, 300
                                                   # units, 10,000 words
    python launchers/bench_ptb.py --batch_size=64 --runs=amended:exact

Each estimator:hvp runs in its own process (peak memory of its own); see
tf_amended_darts/jobs/language_bench.py for what is measured. Prints a
Markdown table and one JSON line per configuration.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RUNS = ("first_order:exact", "second_order:exact",
        "second_order:finite_difference", "amended:exact",
        "amended:finite_difference")


def define_flags(fv=flags.FLAGS):
    d = dict(flag_values=fv)
    flags.DEFINE_integer("batch_size", 256, "Batch (paper search: 256).", **d)
    flags.DEFINE_integer("bptt", 35, "Steps per sequence (35).", **d)
    flags.DEFINE_integer("nhid", 300, "Embedding = hidden width (300).", **d)
    flags.DEFINE_integer("vocab_size", 10000, "Vocabulary (10,000).", **d)
    flags.DEFINE_integer("steps", 3, "Timed steps.", **d)
    flags.DEFINE_integer("warmup", 1, "Untimed steps after the first.", **d)
    flags.DEFINE_list("runs", list(RUNS), "estimator:hvp pairs.", **d)
    flags.DEFINE_bool("grappler", False, "Keep Grappler on.", **d)
    flags.DEFINE_float("max_rss_gb", 6.0, "Stop a configuration above this "
                       "resident memory (shared machine).", **d)
    flags.DEFINE_string("single", None, "Internal: one estimator:hvp in "
                        "this process.", **d)


def main(argv, fv=flags.FLAGS):
    del argv
    from tf_amended_darts.jobs import language_bench as B

    sizes = dict(batch=fv.batch_size, bptt=fv.bptt, nhid=fv.nhid,
                 vocab=fv.vocab_size, steps=fv.steps, warmup=fv.warmup,
                 grappler=fv.grappler)
    if fv.single:
        B.start_rss_guard(fv.max_rss_gb)
        print(json.dumps(B.measure(*fv.single.split(":"), **sizes)))
        return
    rows = []
    for run in fv.runs:
        args = [sys.executable, os.path.abspath(__file__), f"--single={run}"]
        args += [f"--{k}={fv[k].value}" for k in (
            "batch_size", "bptt", "nhid", "vocab_size", "steps", "warmup",
            "grappler", "max_rss_gb")]
        done = subprocess.run(args, capture_output=True, text=True)
        lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
        row = json.loads(lines[-1]) if lines else {
            "arch_grad": run.split(":")[0], "hvp": run.split(":")[1],
            "error": f"RSS above {fv.max_rss_gb} GB"
            if done.returncode == B.RSS_EXIT else done.stderr[-300:]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("| estimator | hvp | first step (s) | s/step | tokens/s | peak RSS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['arch_grad']} | {r['hvp']} | {r['error']} |||||")
            continue
        print(f"| {r['arch_grad']} | {r['hvp']} | {r['first_step_s']} | "
              f"{r['s_per_step']} | {r['tokens_per_s']} | "
              f"{r['peak_rss_gb']} GB |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
