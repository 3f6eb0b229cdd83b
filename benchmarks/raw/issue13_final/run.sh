#!/usr/bin/env bash
# The README's S1 table, current code, one session, alone on the machine.
set -u
tree=/work/wt_bench
out=/work/bench_final
cd "$tree"
export PYTHONPATH="$tree"
git rev-parse HEAD > "$out/commit"
date -u +"plain start %FT%TZ" > "$out/dates"
python launchers/bench.py --preset=s1 --grappler=False --steps=2 --warmup=0 \
    --data=digits --max_rss_gb=20 --batch_sizes=32 --drop_path_prob=0 \
    --runs=first_order:exact,second_order:finite_difference,second_order:exact,amended:finite_difference,amended:exact \
    > "$out/plain.out" 2> "$out/plain.err"
date -u +"plain end / recompute start %FT%TZ" >> "$out/dates"
python launchers/bench.py --preset=s1 --grappler=False --steps=2 --warmup=0 \
    --data=digits --max_rss_gb=20 --batch_sizes=32 --drop_path_prob=0 \
    --runs=second_order:exact,amended:exact --recompute_cells \
    > "$out/recompute.out" 2> "$out/recompute.err"
date -u +"recompute end %FT%TZ" >> "$out/dates"
