#!/bin/bash
# S1, batch 32, amended exact, recomputing the first N cells only; alone on
# the machine, from a detached worktree of the commit under test.
set -x
OUT=$(dirname "$0")
for n in 3 5; do
  date -u > "$OUT/b32_first$n.date"
  python launchers/bench.py --preset=s1 --grappler=False --steps=3 --warmup=1 \
      --data=digits --max_rss_gb=20 --batch_sizes=32 --runs=amended:exact \
      --recompute_cells --recompute_first_cells=$n \
      > "$OUT/b32_first$n.out" 2> "$OUT/b32_first$n.err"
  date -u >> "$OUT/b32_first$n.date"
done
