#!/usr/bin/env bash
# The GPU benchmark of the issue, as one prepared script: the S1 supernet
# (8 cells, C = 16, 32x32) at batch 96 per estimator, with and without XLA
# and mixed precision, reporting seconds per step and per CIFAR-10 search
# epoch (25,000 image pairs: 260 steps of 96).
#
#   bash benchmarks/gpu_s1.sh [OUT_DIR] [DEADLINE_S]
#
# Configurations run one per process (launchers/bench.py), in the order of
# CONFIGS, most important first; one is skipped once less than its
# expected time is left before DEADLINE_S (default 540 s, to fit a short
# device lease). Each configuration's table goes to OUT_DIR (default
# ${OUT:-benchmarks/raw/gpu}) as it finishes, with nvidia-smi's view.
set -u
out_dir="${1:-${OUT:-benchmarks/raw/gpu}}"
deadline_s="${2:-540}"
mkdir -p "$out_dir"
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  > "$out_dir/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$out_dir/gpu.txt"
python -c "import tensorflow as tf; print(tf.__version__, \
  tf.config.list_physical_devices('GPU'))" >> "$out_dir/gpu.txt" 2>&1
# A CPU-only TensorFlow (pip install -e ".[cpu]") sees no GPU: stop here
# with one line instead of silently benchmarking the CPU.
TF_CPP_MIN_LOG_LEVEL=3 python launchers/bench.py --require_gpus=1 --runs= \
  --batch_sizes=1 \
  2> "$out_dir/require_gpus.err" > /dev/null || {
  grep "^error:" "$out_dir/require_gpus.err" >&2
  exit 1
}

# name | runs | extra flags | expected seconds (trace + first step + steps)
# Settings as the search launcher's defaults (flags/base_search.cfg):
# Grappler off, exact products. Every row reports the GPU allocator's peak
# (bench.py's "GPU peak (MB)"), so the batch-64 row answers issue 13's
# "amended exact at batch 64 within 16 GB" for a 16 GB card directly.
CONFIGS=(
  "fp32|first_order:exact,amended:exact,amended:finite_difference||240"
  "fp32_b64_memory|amended:exact,second_order:exact|--batch_sizes=64|150"
  # Recomputed cells (--recompute_cells): less than half the memory of the
  # second-order products on the CPU at 1.6x the time; on a GPU the time
  # price and the batch it makes room for are the questions.
  "fp32_recompute|amended:exact,second_order:exact|--recompute_cells|200"
  "fp32_recompute_b192|amended:exact|--recompute_cells --batch_sizes=192|200"
  "bf16|first_order:exact,amended:exact|--dtype_policy=mixed_bfloat16|180"
  "fp32_xla|first_order:exact|--jit_compile=True|120"
  "bf16_xla|first_order:exact|--dtype_policy=mixed_bfloat16 --jit_compile=True|120"
  # On the CPU Grappler no longer pays (benchmarks/s1_cpu.md, section 6);
  # on a GPU its layout optimiser (NHWC -> NCHW for cuDNN) may: one row.
  "fp32_grappler|first_order:exact,amended:exact|--grappler=True|240"
  "fp32_second_order|second_order:exact,second_order:finite_difference||180"
  # XLA compiling the amended double-backward graph took over 12 minutes
  # and 11 GB on the 2-core CPU even for the 3-cell preset: last.
  "fp32_xla_amended|amended:exact|--jit_compile=True|300"
)
for config in "${CONFIGS[@]}"; do
  IFS='|' read -r name runs extra expected <<< "$config"
  left=$(( deadline_s - ($(date +%s) - start) ))
  if (( left < expected )); then
    echo "skipped $name: ${left}s left, needs ~${expected}s" \
      | tee -a "$out_dir/skipped.txt"
    continue
  fi
  # shellcheck disable=SC2086
  timeout "$left" python launchers/bench.py --preset=s1 --batch_sizes=96 \
    --runs="$runs" --steps=3 --warmup=1 --data=synthetic \
    --epoch_pairs=25000 --grappler=False --max_rss_gb=0 $extra \
    > "$out_dir/$name.md" 2> "$out_dir/$name.err"
  echo "$name: exit $? after $(( $(date +%s) - start ))s" \
    | tee -a "$out_dir/progress.txt"
done
cat "$out_dir"/*.md
