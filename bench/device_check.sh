#!/usr/bin/env bash
# The GPU checks of issue 7 in one script, for a lent GPU machine (no crates registry there:
# the CUDA binaries are built elsewhere with ../shared/cuda/build_cuda.sh and carried).
#
#   bench/device_check.sh OUT_DIR BINARY [BINARY_CUDNN] [EXTRA_LIB_DIR]
#
# A BINARY ending in .xz is unpacked first (a CUDA build is ~80 MB stripped, ~12 MB as xz).
# EXTRA_LIB_DIR: shared libraries the binary links that the GPU machine may lack (fontconfig,
# freetype, png, brotli, expat: the report's text rendering); searched after the system's.
#
# In order of importance (each step has its own time limit):
# 1. `bench parity`: one training step on CUDA against the CPU in f32 and f64 (tolerance 1e-3);
# 2. `bench train` on CUDA (paper network batch 1 / 8 / 30, quickstart network; UNet and
#    MetricUNet-HCP), also with TF32 matrix products (METRICUNET_TF32=1);
# 3. bench/pytorch_reference.py on the same GPU (eager mode, same network, loss, SGD, shapes),
#    with PyTorch's defaults (TF32 in cuDNN convolutions) and in strict f32;
# 4. the parity and train checks with the cuDNN build, when given;
# 5. `bench infer` on CUDA (a 512 x 512 x 150 phantom CT through both stages);
# 6. the runner end to end on CUDA: tests/fixtures/tiny.yaml, then the README's main job
#    (experiments/quickstart.yaml);
# 7. A/B: candle's own convolution backward (METRICUNET_CANDLE_CONV=1).
# GPU memory is sampled by nvidia-smi every 100 ms into OUT_DIR/gpumem.csv; each phase's start
# time is printed, so the peak of a phase can be read off.
set -u
OUT=${1:?OUT_DIR}
BIN=${2:?BINARY}
BIN_CUDNN=${3:-}
EXTRA=${4:-}
mkdir -p "$OUT"
unpack() {
  case "$1" in
    *.xz) local to="/tmp/$(basename "$1" .xz)"
          python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$to"
          chmod +x "$to"; echo "$to" ;;
    *) echo "$1" ;;
  esac
}
BIN=$(unpack "$BIN")
[ -n "$BIN_CUDNN" ] && BIN_CUDNN=$(unpack "$BIN_CUDNN")
LIBS=$(python3 -c "import nvidia,os,glob; print(':'.join(glob.glob(os.path.join(list(nvidia.__path__)[0],'**','lib'),recursive=True)))")
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}${EXTRA:+:$(cd "$EXTRA" && pwd)}"
ldd "$BIN" | grep -i "not found"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())"
nproc
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 100 > "$OUT/gpumem.csv" &
SMI=$!
phase() { echo; echo "=== $(date +%H:%M:%S.%N) $*"; }

phase "parity (cuda)"
timeout 120 "$BIN" bench parity --device cuda --batch 4 --variants unet,random,hcp
phase "bench train (cuda)"
timeout 120 "$BIN" bench train --device cuda --models paper,quickstart --batches 1,8,30 \
  --variants unet,hcp --steps 10 --warmup 3 --json "$OUT/candle_cuda.json"
phase "bench train and parity (cuda, METRICUNET_TF32=1)"
METRICUNET_TF32=1 timeout 60 "$BIN" bench train --device cuda --models paper --batches 8,30 \
  --variants unet,hcp --steps 10 --warmup 3 --json "$OUT/candle_cuda_tf32.json"
METRICUNET_TF32=1 timeout 60 "$BIN" bench parity --device cuda --batch 4 --variants unet
phase "pytorch reference (cuda, PyTorch defaults: TF32 in cuDNN convolutions)"
PYTHONUNBUFFERED=1 timeout 150 python3 bench/pytorch_reference.py --device cuda --threads "$(nproc)" \
  --batches 1,8,30 --variants unet,hcp --steps 10 --warmup 3 --json "$OUT/pytorch_cuda.json"
phase "pytorch reference (cuda, strict f32)"
PYTHONUNBUFFERED=1 timeout 100 python3 bench/pytorch_reference.py --device cuda --threads "$(nproc)" \
  --tf32 off --batches 8,30 --variants unet,hcp --steps 10 --warmup 3 --json "$OUT/pytorch_cuda_f32.json"
if [ -n "$BIN_CUDNN" ]; then
  phase "parity and bench train (cudnn)"
  timeout 60 "$BIN_CUDNN" bench parity --device cuda --batch 4 --variants unet
  timeout 90 "$BIN_CUDNN" bench train --device cuda --models paper --batches 1,8,30 \
    --variants unet,hcp --steps 10 --warmup 3 --json "$OUT/candle_cudnn.json"
fi
phase "bench infer (cuda)"
timeout 90 "$BIN" bench infer --device cuda
phase "runner on cuda (tests/fixtures/tiny.yaml)"
timeout 60 "$BIN" run tests/fixtures/tiny.yaml --device cuda --root /tmp/cuda-run \
  --report-dir /tmp/cuda-run/report && ls /tmp/cuda-run/report /tmp/cuda-run/report/figures
phase "README main job on cuda (experiments/quickstart.yaml)"
timeout 200 "$BIN" run experiments/quickstart.yaml --device cuda --root /tmp/qs \
  --report-dir /tmp/qs/report && cp /tmp/qs/report/summary.md "$OUT/quickstart_cuda_summary.md"
phase "parity and bench train (cuda, candle's conv backward)"
METRICUNET_CANDLE_CONV=1 timeout 45 "$BIN" bench parity --device cuda --batch 4 --variants unet
METRICUNET_CANDLE_CONV=1 timeout 60 "$BIN" bench train --device cuda --models paper \
  --batches 8,30 --variants unet --steps 10 --warmup 3
phase "end"
kill "$SMI" 2>/dev/null
true
