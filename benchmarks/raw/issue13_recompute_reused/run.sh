#!/bin/bash
# Issue 13, recomputed cells (reused functions), S1, alone on the machine.
cd /work/bench_tree
OUT=/tmp/rc
export PYTHONPATH=/work/bench_tree
date -u +%FT%TZ > $OUT/b64_amended.date
python launchers/bench.py --preset=s1 --grappler=False --steps=3 --warmup=1 \
    --data=digits --max_rss_gb=20 --batch_sizes=64 --runs=amended:exact \
    --recompute_cells > $OUT/b64_amended.out 2> $OUT/b64_amended.err
date -u +%FT%TZ >> $OUT/b64_amended.date
python launchers/bench.py --preset=s1 --grappler=False --steps=3 --warmup=1 \
    --data=digits --max_rss_gb=20 --batch_sizes=32 --runs=second_order:exact,amended:exact \
    --recompute_cells > $OUT/b32.out 2> $OUT/b32.err
date -u +%FT%TZ >> $OUT/b64_amended.date
