#!/usr/bin/env bash
# Every GPU check and benchmark in one command; tables and JSON go to OUT_DIR (default gpu-results/).
#
#   bash benchmarks/gpu.sh [OUT_DIR]
#
# 1. gpu_equivalence.py: population on CUDA (graphs, device-side streams) vs the sequential loop on CPU, float64.
# 2. population.py --device cuda: the population step against the per-model loop, P up to 4096, H 128 and 512,
#    with the fraction of the sgemm peak measured in the same run (targets: >= 500x the loop at P = 64,
#    >= 70% of the fp32 peak at P = 4096, H = 512).
# 3. One study end to end (explicit-vs-implicit --quick) on cuda and on cpu: wall time of each.
# Exit code: 2 without CUDA; otherwise that of the first failing step (set -e).
set -euo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" || {
  echo "gpu.sh: no CUDA device visible to torch" >&2; exit 2; }
{ nvidia-smi || true; python -c "import torch; print(torch.__version__, torch.version.cuda)"; } > "$out/device.txt" 2>&1

echo "== equivalence (float64, graphs) =="
python "$here/gpu_equivalence.py" | tee "$out/equivalence.txt"

echo "== population step =="
python "$here/population.py" --device cuda --sizes 1 64 1024 4096 --widths 128 512 \
  --json "$out/population.json" | tee "$out/population.txt"

echo "== a study end to end =="
for device in cuda cpu; do
  start=$SECONDS
  implicitreg run explicit-vs-implicit --quick --device "$device" --out "$out/study-$device" > "$out/study-$device.log" 2>&1
  echo "$device: $((SECONDS - start)) s wall (training time per family in $out/study-$device/summary.json)" \
    | tee -a "$out/study.txt"
done
echo "results in $out/"
