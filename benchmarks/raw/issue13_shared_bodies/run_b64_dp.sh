#!/bin/bash
# Issue 13: S1 batch 64, amended exact, --recompute_cells, drop-path 0.2, shared bodies; alone.
OUT=/tmp/b64dp
cd /work/bench_head; export PYTHONPATH=/work/bench_head
label=b64_dp0.2_$(git rev-parse --short HEAD)
date -u +%FT%TZ >> $OUT/$label.date
python launchers/bench.py --preset=s1 --grappler=False --steps=2 --warmup=0 \
    --data=digits --max_rss_gb=20 --batch_sizes=64 --runs=amended:exact \
    --recompute_cells --drop_path_prob=0.2 > $OUT/$label.out 2> $OUT/$label.err
date -u +%FT%TZ >> $OUT/$label.date
echo finished >> $OUT/status
