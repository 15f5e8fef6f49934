#!/usr/bin/env bash
# The GPU checks of the CUDA issue (17) in one script, for a lent GPU machine (no crates
# registry there: the CUDA binary is built elsewhere with ../shared/cuda/build_cuda.sh and
# carried, xz-compressed, e.g. as carry/metricunet-cudnn.xz).
#
#   bench/device_check.sh OUT_DIR BINARY [PART] [EXTRA_LIB_DIR]
#
# BINARY: a `--features cudnn` build (cuDNN forward and backward, the CUDA BatchNorm kernels,
# the batch-wide transposed convolution; each new path off unless its switch is set). A BINARY
# ending in .xz is unpacked first. PART: a (the default: correctness, profile, A/B, PyTorch;
# about 7 minutes), b (nsys, inference, the runner end to end; about 5 minutes) or all.
# EXTRA_LIB_DIR: shared libraries the binary links that the GPU machine may lack (fontconfig,
# freetype, png: the report's text rendering); searched after the system's.
#
# Part a, in order of importance, each step with its own time limit:
#  1. parity of one training step, CUDA f32 against the CPU's f32 and f64 steps: candle's paths
#     (as before), then all new paths on (NEW below); if that fails, each new path alone;
#  2. a profile of the paper network's step (batch 30, MetricUNet-HCP): candle's paths, then NEW;
#  3. bench train A/B, paper network batches 8 and 30, unet and hcp: candle's paths, NEW, NEW +
#     TF32, NEW + bf16 (GPU memory: the pool's high-water marks, used / held);
#  4. parity in TF32 (tolerance 1e-2) and bf16 (5e-2);
#  5. bench/pytorch_reference.py on the same GPU: defaults (TF32 convolutions), strict f32,
#     autocast bf16 (peak memory allocated / reserved).
# Part b:
#  6. Nsight Systems, where installed: the kernel list of 5 steps, candle's paths and NEW;
#  7. bench infer (a 512 x 512 x 150 phantom CT through both stages), candle's paths and NEW;
#  8. the runner end to end (tests/fixtures/tiny.yaml), then the README's main job
#     (experiments/quickstart.yaml) with NEW, timed.
# GPU memory is sampled by nvidia-smi every 100 ms into OUT_DIR/gpumem.csv; each phase's start
# time is printed, so the peak of a phase can be read off.
set -u
OUT=${1:?OUT_DIR}
BIN=${2:?BINARY}
PART=${3:-a}
EXTRA=${4:-}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
unpack() {
  case "$1" in
    *.xz) local to="/tmp/$(basename "$1" .xz)"
          [ -x "$to" ] || { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$to"; chmod +x "$to"; }
          echo "$to" ;;
    *) echo "$1" ;;
  esac
}
BIN=$(unpack "$BIN")
LIBS=$(python3 -c "import nvidia,os,glob; print(':'.join(glob.glob(os.path.join(list(nvidia.__path__)[0],'**','lib'),recursive=True)))")
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}${EXTRA:+:$(cd "$EXTRA" && pwd)}"
# the new CUDA paths, all on
NEW="METRICUNET_CUDNN_CONV=1 METRICUNET_CUDA_BN=1 METRICUNET_CUDA_CONVT_GEMM=1 METRICUNET_CUDA_POOL_KEEP=1"
phase() { echo; echo "=== $(date +%H:%M:%S.%N) $*"; }
# `with ENV... -- timeout S command...`: the command with those variables set
with() { local vars=(); while [ "$1" != "--" ]; do vars+=("$1"); shift; done; shift; env "${vars[@]}" "$@"; }

ldd "$BIN" | grep -i "not found"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())"
nproc
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 100 >> "$OUT/gpumem.csv" &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT

if [ "$PART" = a ] || [ "$PART" = all ]; then
  phase "1. parity, candle's paths (f32)"
  timeout 60 "$BIN" bench parity --device cuda --batch 4 --variants unet,hcp
  phase "1. parity, all new paths ($NEW)"
  if ! with $NEW -- timeout 60 "$BIN" bench parity --device cuda --batch 4 --variants unet,hcp; then
    for v in $NEW; do
      phase "1. parity, $v alone"
      with "$v" -- timeout 40 "$BIN" bench parity --device cuda --batch 4 --variants unet,hcp
    done
  fi
  phase "2. profile, candle's paths (paper hcp, batch 30)"
  timeout 60 "$BIN" bench train --device cuda --models paper --batches 30 --variants hcp \
    --steps 10 --warmup 3 --profile --json "$OUT/profile_candle.json"
  phase "2. profile, new paths"
  with $NEW -- timeout 60 "$BIN" bench train --device cuda --models paper --batches 30 \
    --variants hcp --steps 10 --warmup 3 --profile --json "$OUT/profile_new.json"
  phase "3. bench train, candle's paths"
  timeout 60 "$BIN" bench train --device cuda --models paper,quickstart --batches 8,30 \
    --variants unet,hcp --steps 10 --warmup 3 --json "$OUT/train_candle.json"
  phase "3. bench train, new paths (f32)"
  with $NEW -- timeout 60 "$BIN" bench train --device cuda --models paper,quickstart \
    --batches 8,30 --variants unet,hcp --steps 10 --warmup 3 --json "$OUT/train_new.json"
  phase "3. bench train, new paths, TF32"
  with $NEW -- timeout 45 "$BIN" bench train --device cuda --models paper --batches 8,30 \
    --variants unet,hcp --steps 10 --warmup 3 --precision tf32 --json "$OUT/train_new_tf32.json"
  phase "3. bench train, new paths, bf16"
  with $NEW -- timeout 45 "$BIN" bench train --device cuda --models paper --batches 8,30 \
    --variants unet,hcp --steps 10 --warmup 3 --precision bf16 --json "$OUT/train_new_bf16.json"
  phase "4. parity, new paths, TF32 (tolerance 1e-2) and bf16 (5e-2)"
  with $NEW -- timeout 40 "$BIN" bench parity --device cuda --batch 4 --variants unet,hcp \
    --precision tf32 --tolerance 1e-2
  with $NEW -- timeout 40 "$BIN" bench parity --device cuda --batch 4 --variants unet,hcp \
    --precision bf16 --tolerance 5e-2
  for mode in "default --tf32 default" "strict_f32 --tf32 off" "autocast_bf16 --amp bf16"; do
    set -- $mode
    name=$1; shift
    phase "5. pytorch reference ($name)"
    PYTHONUNBUFFERED=1 timeout 60 python3 bench/pytorch_reference.py --device cuda \
      --threads "$(nproc)" --batches 8,30 --variants unet,hcp --steps 10 --warmup 3 \
      --infer no "$@" --json "$OUT/pytorch_$name.json"
  done
fi

if [ "$PART" = b ] || [ "$PART" = all ]; then
  if command -v nsys >/dev/null; then
    for paths in candle new; do
      phase "6. nsys, $paths paths (paper hcp, batch 30, 5 steps)"
      vars=(METRICUNET_NONE=1); [ "$paths" = new ] && vars=($NEW)
      with "${vars[@]}" -- timeout 90 nsys profile -o "$OUT/nsys_$paths" --force-overwrite true \
        --stats=true "$BIN" bench train --device cuda --models paper --batches 30 --variants hcp \
        --steps 5 --warmup 1 2>&1 | grep -A25 "cuda_gpu_kern_sum" | head -30
    done
  else
    phase "6. no nsys on this machine: the profiles of step 2 stand in"
  fi
  phase "7. bench infer, candle's paths, then new paths"
  timeout 60 "$BIN" bench infer --device cuda
  with $NEW -- timeout 60 "$BIN" bench infer --device cuda
  phase "8. runner on cuda (tests/fixtures/tiny.yaml), new paths"
  with $NEW -- timeout 60 "$BIN" run tests/fixtures/tiny.yaml --device cuda --root /tmp/cuda-run \
    --report-dir /tmp/cuda-run/report && ls /tmp/cuda-run/report
  phase "8. README main job on cuda (experiments/quickstart.yaml), new paths"
  start=$(date +%s.%N)
  with $NEW -- timeout 200 "$BIN" run experiments/quickstart.yaml --device cuda --root /tmp/qs \
    --report-dir /tmp/qs/report && cp /tmp/qs/report/summary.md "$OUT/quickstart_cuda_summary.md"
  echo "main job wall time: $(python3 -c "import sys,time; print(round(time.time()-float(sys.argv[1]),1))" "$start") s"
fi
phase "end"
