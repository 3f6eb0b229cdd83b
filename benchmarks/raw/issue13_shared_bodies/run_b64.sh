#!/bin/bash
# Issue 13: batch 64 with shared recomputed bodies (7c33c54), S1, alone.
OUT=/tmp/shared_bodies
cd /work/bench_tree; export PYTHONPATH=/work/bench_tree
date -u +%FT%TZ >> $OUT/b64_7c33c54.date
python launchers/bench.py --preset=s1 --grappler=False --steps=2 --warmup=0 \
    --data=digits --max_rss_gb=20 --batch_sizes=64 --runs=amended:exact \
    --recompute_cells --drop_path_prob=0 > $OUT/b64_7c33c54.out 2> $OUT/b64_7c33c54.err
date -u +%FT%TZ >> $OUT/b64_7c33c54.date
