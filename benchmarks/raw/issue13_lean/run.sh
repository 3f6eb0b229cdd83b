#!/bin/sh
# Issue 13, lean graph (core/lean_function.py): S1 batch 32, alone on the machine.
cd "$(dirname "$0")/../../.." && date -u > benchmarks/raw/issue13_lean/s1_b32.date
exec python launchers/bench.py --preset=s1 --grappler=False --steps=3 --warmup=1 \
  --data=digits --max_rss_gb=20 --batch_sizes=32 \
  --runs=first_order:exact,second_order:exact,amended:exact "$@"
