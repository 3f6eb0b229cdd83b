#!/bin/bash
# Issue 13: recomputed cells sharing bodies (a712f5c) against dc1956b, S1, alone.
OUT=/tmp/shared_bodies
run() {  # tree label extra-flags
  cd $1; export PYTHONPATH=$1
  date -u +%FT%TZ >> $OUT/$2.date
  python launchers/bench.py --preset=s1 --grappler=False --steps=2 --warmup=0 \
      --data=digits --max_rss_gb=20 --batch_sizes=32 --runs=amended:exact \
      --recompute_cells $3 > $OUT/$2.out 2> $OUT/$2.err
  date -u +%FT%TZ >> $OUT/$2.date
}
run /work/bench_after after_a712f5c --drop_path_prob=0
run /work/bench_before before_dc1956b --drop_path_prob=0
run /work/bench_after after_a712f5c_dp0.2 --drop_path_prob=0.2
echo finished >> $OUT/status
