#!/usr/bin/env bash
# CPU side by side (run by hand, not in CI): candle (`metricunet bench train`) and PyTorch
# (`bench/pytorch_reference.py`) alternately, A B A B ..., one process per case and framework
# (each its own peak RSS), for ROUNDS rounds; then each case's median step and range per
# framework and the median and range of the per-round ratio, so that one noisy run (this kind
# of VM moves 10-30 % between runs) cannot decide a claim. Each round ends with the
# inference pair: candle's `bench infer` (a whole case) and PyTorch's forward of 16 slices.
#
#   bench/side_by_side.sh [OUT_DIR] [PYTHON]
#
# OUT_DIR (default bench/results) gets side_by_side_cpu.json (every round, the CPU model and
# flags, the summary, the inference pairing) and side_by_side_rounds/ (each process's own
# JSON); PYTHON (default python3) must have torch
# installed. The release binary is built first. Set ROUNDS (3) / STEPS (3) / STEPS_B1 (10: the
# steps timed at batch 1, where 3 steps move by 30 %) / WARMUP (1) /
# BATCHES (1,8,30) / VARIANTS (unet,hcp) / THREADS (2) to change the cases, MODEL (paper) to
# quickstart for the main job's stage-2 network (batch 8 only), INFER=no to leave out the
# inference pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
py=${2:-python3}
rounds=${ROUNDS:-3}
steps=${STEPS:-3}
warmup=${WARMUP:-1}
batches=${BATCHES:-1,8,30}
variants=${VARIANTS:-unet,hcp}
threads=${THREADS:-2}
model=${MODEL:-paper}
infer=${INFER:-yes}
case "$model" in
  paper) ;;
  quickstart) batches=8 ;;
  *) echo "MODEL=$model: expected paper or quickstart" >&2; exit 2 ;;
esac
mkdir -p "$out"
"$py" -c 'import torch' || { echo "$py has no torch: pip install torch (CPU build)" >&2; exit 1; }
cargo build --release -p metricunet
bin=target/release/metricunet
tmp=$out/side_by_side_rounds
rm -rf "$tmp" && mkdir -p "$tmp"

# the CPU every number below was measured on
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
cpu_flags=$(grep -o -w -E 'avx2|avx512f|avx512bw|avx512vl|avx512_vnni|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "CPU: $cpu_model, $(nproc) cores visible; flags: $cpu_flags; $threads threads each"

for r in $(seq 1 "$rounds"); do
  for v in ${variants//,/ }; do
    for b in ${batches//,/ }; do
      n=$steps
      [ "$b" = 1 ] && n=${STEPS_B1:-10}
      echo "round $r: $model $v, batch $b ($n steps): candle, then PyTorch"
      RAYON_NUM_THREADS=$threads "$bin" bench train --models "$model" --batches "$b" --variants "$v" \
        --steps "$n" --warmup "$warmup" --json "$tmp/candle_${r}_${v}_$b.json" | grep "^| $model" || true
      "$py" bench/pytorch_reference.py --model "$model" --threads "$threads" --batches "$b" \
        --variants "$v" --steps "$n" --warmup "$warmup" --infer no \
        --json "$tmp/torch_${r}_${v}_$b.json" | grep "^| $model" || true
    done
  done
  [ "$infer" = no ] && continue
  echo "round $r: inference: candle's whole case, then PyTorch's 1 and 16 slices of 128 x 128"
  RAYON_NUM_THREADS=$threads "$bin" bench infer --json "$tmp/infer_candle_$r.json" \
    | grep -E 'whole case|alone|peak' || true
  "$py" bench/pytorch_reference.py --threads "$threads" --steps "$steps" --warmup "$warmup" \
    --infer only --json "$tmp/torch_${r}_infer.json" | grep '^| inference' || true
done

"$py" bench/side_by_side_summary.py "$tmp" "$out/side_by_side_cpu.json" \
  "$cpu_model" "$cpu_flags" "$threads" "$(date -u +%Y-%m-%dT%H:%MZ)"
