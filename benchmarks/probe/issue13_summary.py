"""The issue-13 table from benchmarks/s1_issue13.sh's outputs.

    python benchmarks/probe/issue13_summary.py OUT_DIR

Reads the JSON rows bench.py writes to stderr (``done RUN batch B: {...}``)
in OUT_DIR/{before_b32,after_b32,after_b64}.err and the node counts in
OUT_DIR/before_nodes.jsonl; prints one Markdown table: per row the step,
batch, s/step, x first_order (same side, same batch), peak RSS, first step
(trace + first execution) and graph nodes.
"""

import json
import os
import sys


def rows(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            if line.startswith("done ") and ": {" in line:
                out.append(json.loads(line.split(": ", 1)[1]))
    return out


def main(out_dir):
    before_nodes = {}
    path = os.path.join(out_dir, "before_nodes.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip().startswith("{"):
                    r = json.loads(line)
                    before_nodes[r["arch_grad"], r["hvp"]] = r["nodes"]
    print("| side | batch | step | hvp | s/step | x first_order | "
          "peak RSS (GB) | first step (s) | graph nodes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for side, name in (("before", "before_b32"), ("after", "after_b32"),
                       ("after", "after_b64")):
        got = rows(os.path.join(out_dir, name + ".err"))
        base = {r["batch"]: r["sec_per_step"] for r in got
                if r.get("arch_grad") == "first_order"
                and "sec_per_step" in r}
        for r in got:
            key = (r.get("arch_grad"), r.get("hvp"))
            head = f"| {side} | {r.get('batch')} | {key[0]} | {key[1]} |"
            if "sec_per_step" not in r:
                print(f"{head} {r.get('error', 'failed')} | | | | |")
                continue
            b = base.get(r["batch"])
            ratio = f"{r['sec_per_step'] / b:.2f}" if b else "n/a"
            nodes = r.get("graph_nodes", before_nodes.get(key, "?"))
            print(f"{head} {r['sec_per_step']:.2f} | {ratio} | "
                  f"{r['peak_rss_mb'] / 1024:.1f} | "
                  f"{r['first_step_s']:.0f} | {nodes} |")


if __name__ == "__main__":
    main(sys.argv[1])
