#!/bin/bash
# Issue 13: second_order exact with --recompute_cells on the shared-body code, then first_order plain; S1 b32, alone.
OUT=/tmp/so_rc
T=/work/bench_head
cd $T; export PYTHONPATH=$T
run() {  # label flags...
  label=$1; shift
  date -u +%FT%TZ >> $OUT/$label.date
  python launchers/bench.py --preset=s1 --grappler=False --steps=2 --warmup=0 \
      --data=digits --max_rss_gb=20 --batch_sizes=32 "$@" > $OUT/$label.out 2> $OUT/$label.err
  date -u +%FT%TZ >> $OUT/$label.date
}
run second_order_recompute_893ee9a --runs=second_order:exact --recompute_cells --drop_path_prob=0
run first_order_893ee9a --runs=first_order --drop_path_prob=0
echo finished >> $OUT/status
