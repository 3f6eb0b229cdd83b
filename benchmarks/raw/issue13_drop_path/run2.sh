#!/bin/bash
# Issue 13: --recompute_cells with drop-path drawn once per edge (b61ae7c), S1, alone.
cd /work/bench_tree
OUT=/tmp/dp
export PYTHONPATH=/work/bench_tree
date -u +%FT%TZ >> $OUT/b32_dp0.2_per_edge.date
python launchers/bench.py --preset=s1 --grappler=False --steps=2 --warmup=0 \
    --data=digits --max_rss_gb=20 --batch_sizes=32 --runs=amended:exact \
    --recompute_cells --drop_path_prob=0.2 > $OUT/b32_dp0.2_per_edge.out 2> $OUT/b32_dp0.2_per_edge.err
date -u +%FT%TZ >> $OUT/b32_dp0.2_per_edge.date
