#!/usr/bin/env bash
# Issue 13's before/after S1 table, as one script for a quiet machine.
#
#   bash benchmarks/s1_issue13.sh [OUT_DIR] [BEFORE_REF]
#
# S1 (8 cells, C = 16, 32x32), Grappler off, the search's digits pipeline,
# median of 3 steps after 1 warm-up, one configuration per subprocess
# (launchers/bench.py). "before" is BEFORE_REF (default: where this branch
# left main, 99ff8eb), exported with `git archive` to a temporary tree;
# "after" is this checkout. Rows:
#   before, batch 32: first_order, second_order exact, amended exact
#   after,  batch 32: the same, plus second_order and amended with
#                     --hvp=forward (forward-over-reverse products)
#   after,  batch 64: amended forward, amended exact, second_order forward
#                     (under the issue's 16 GB bound: --max_rss_gb=16 stops
#                     a row that goes over, and the table says so)
# Graph nodes: `after` rows from bench.py's JSON (graph_nodes), `before`
# rows from benchmarks/probe/step_nodes.py run in the before tree.
# Everything lands in OUT_DIR (default benchmarks/raw/issue13): the tables
# (*.md), stderr with one JSON row per configuration (*.err), the node
# counts (*nodes.jsonl), the machine's load before each part (load.txt)
# and summary.md, the issue's table before/after.
#
# Run it ALONE: timings are only comparable on a quiet machine (load
# average < 0.5, no other python processes); load.txt records what was
# running. Expected duration on the 2-core, 24 GB machine: ~50-60 minutes
# (before ~15 min, after batch 32 ~20 min, batch 64 ~20 min). Peak RSS of
# a row is bounded by --max_rss_gb (20 GB at batch 32: amended exact
# peaked at 18.2 GB before this issue).
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
out_dir="$(mkdir -p "${1:-$here/benchmarks/raw/issue13}" && cd "${1:-$here/benchmarks/raw/issue13}" && pwd)"
before_ref="${2:-99ff8eb}"
cd "$here" || exit 1
before_tree="$(mktemp -d /tmp/s1_issue13_before.XXXXXX)"
git archive "$before_ref" | tar -x -C "$before_tree" || exit 1
common=(--preset=s1 --grappler=False --steps=3 --warmup=1 --data=digits)

load() {
  { echo "== $1 $(date -u +%FT%TZ)"; uptime
    ps -eo pid,pcpu,rss,args --sort=-pcpu | grep -i "[p]ython" | head -5
  } >> "$out_dir/load.txt"
}

nodes() {  # nodes TREE OUTFILE RUN...
  local tree="$1" file="$2"; shift 2
  for run in "$@"; do
    (cd "$tree" && python "$here/benchmarks/probe/step_nodes.py" \
      "${run%%:*}" "${run##*:}" 2>/dev/null | tail -1) >> "$file"
  done
}

start=$(date +%s)
load "before b32"
(cd "$before_tree" && python launchers/bench.py "${common[@]}" \
  --batch_sizes=32 --max_rss_gb=20 \
  --runs=first_order:exact,second_order:exact,amended:exact) \
  > "$out_dir/before_b32.md" 2> "$out_dir/before_b32.err"
nodes "$before_tree" "$out_dir/before_nodes.jsonl" \
  first_order:exact second_order:exact amended:exact
echo "before done after $(( $(date +%s) - start )) s"

load "after b32"
python launchers/bench.py "${common[@]}" --batch_sizes=32 --max_rss_gb=20 \
  --runs=first_order:exact,second_order:exact,second_order:forward,amended:exact,amended:forward \
  > "$out_dir/after_b32.md" 2> "$out_dir/after_b32.err"
echo "after b32 done after $(( $(date +%s) - start )) s"

load "after b64"
python launchers/bench.py "${common[@]}" --batch_sizes=64 --max_rss_gb=16 \
  --runs=amended:forward,amended:exact,second_order:forward \
  > "$out_dir/after_b64.md" 2> "$out_dir/after_b64.err"
echo "after b64 done after $(( $(date +%s) - start )) s"

python "$here/benchmarks/probe/issue13_summary.py" "$out_dir" \
  > "$out_dir/summary.md"
rm -rf "$before_tree"
cat "$out_dir"/*.md
