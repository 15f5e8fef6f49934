#!/usr/bin/env bash
# CPU side by side (run by hand, not in CI): `metricunet bench train` with one process per case
# (each its own peak RSS), then `bench/pytorch_reference.py` with the same cases, steps and
# threads, one after the other on an otherwise idle machine; then `bench infer`.
#
#   bench/side_by_side.sh [OUT_DIR] [PYTHON]
#
# OUT_DIR (default bench/results) gets candle_cpu.json, pytorch_cpu.json and
# candle_infer_cpu.json; PYTHON (default python3) must have torch installed. The release
# binary is built first. Set STEPS / WARMUP / BATCHES / VARIANTS to change the cases.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
py=${2:-python3}
steps=${STEPS:-3}
warmup=${WARMUP:-1}
batches=${BATCHES:-1,8,30}
variants=${VARIANTS:-unet,hcp}
mkdir -p "$out"
cargo build --release -p metricunet
bin=target/release/metricunet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for v in ${variants//,/ }; do
  for b in ${batches//,/ }; do
    echo "candle: paper $v, batch $b"
    "$bin" bench train --models paper --batches "$b" --variants "$v" --steps "$steps" \
      --warmup "$warmup" --json "$tmp/candle_${v}_$b.json" | grep '^| paper'
  done
done
"$py" - "$tmp" "$out/candle_cpu.json" "$(date -u +%Y-%m-%dT%H:%MZ)" <<'EOF'
import glob, json, os, sys
tmp, dest, when = sys.argv[1:4]
parts = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(tmp, "candle_*.json")))]
merged = dict(parts[0])
merged["note"] = f"one process per case (fresh peak RSS), {when}; side by side with pytorch_cpu.json"
merged["results"] = sorted((r for p in parts for r in p["results"]),
                           key=lambda r: (r["label"], r["batch"]))
with open(dest + ".tmp", "w") as f:
    json.dump(merged, f, indent=2)
os.replace(dest + ".tmp", dest)
EOF

echo "PyTorch: the same cases"
"$py" bench/pytorch_reference.py --threads 2 --batches "$batches" --variants "$variants" \
  --steps "$steps" --warmup "$warmup" --json "$out/pytorch_cpu.json" | grep '^|'

echo "candle: whole-case inference"
"$bin" bench infer --json "$out/candle_infer_cpu.json" | grep -E 'whole case|alone|peak'

"$py" - "$out/candle_cpu.json" "$out/pytorch_cpu.json" <<'EOF'
import json, sys
c, t = (json.load(open(p))["results"] for p in sys.argv[1:3])
torch = {(r["label"], r["batch"]): r for r in t}
print("| case | batch | candle step (s) | PyTorch step (s) | ratio | candle / PyTorch peak RSS (MB) |")
print("|---|---|---|---|---|---|")
for r in c:
    p = torch.get((r["label"], r["batch"]))
    if p:
        print(f"| {r['label']} | {r['batch']} | {r['step_s']:.3f} | {p['step_s']:.3f} | "
              f"{r['step_s'] / p['step_s']:.2f}x | {r['peak_rss_mb']:.0f} / {p['peak_rss_mb']:.0f} |")
EOF
