#!/bin/bash
# Issue 13: --recompute_cells with drop-path, S1, alone on the machine.
cd /work/bench_tree
OUT=/tmp/dp
export PYTHONPATH=/work/bench_tree
for dp in 0.2 0; do
  date -u +%FT%TZ >> $OUT/b32_dp$dp.date
  python launchers/bench.py --preset=s1 --grappler=False --steps=2 --warmup=0 \
      --data=digits --max_rss_gb=20 --batch_sizes=32 --runs=amended:exact \
      --recompute_cells --drop_path_prob=$dp > $OUT/b32_dp$dp.out 2> $OUT/b32_dp$dp.err
  date -u +%FT%TZ >> $OUT/b32_dp$dp.date
done
