#!/bin/bash
# Issue 13's time targets on today's host: first_order and amended exact (plain), S1 b32, alone.
OUT=/tmp/today
cd /work/bench_head; export PYTHONPATH=/work/bench_head
label=time_targets_$(git rev-parse --short HEAD)
date -u +%FT%TZ >> $OUT/$label.date
python launchers/bench.py --preset=s1 --grappler=False --steps=2 --warmup=0 \
    --data=digits --max_rss_gb=20 --batch_sizes=32 --runs=first_order:exact,amended:exact \
    --drop_path_prob=0 > $OUT/$label.out 2> $OUT/$label.err
date -u +%FT%TZ >> $OUT/$label.date
echo finished >> $OUT/status
