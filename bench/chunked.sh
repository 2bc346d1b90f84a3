#!/usr/bin/env bash
# A long episodic `cema bench` in resumable chunks of five corruptions: each chunk writes its own
# results (OUT/chunk-N), a chunk already done is skipped on a rerun, and the chunks are merged into
# OUT/results.json at the end (bench/merge_results.py). For the full severity-5 benchmark, which
# takes hours on two cores and should survive an interrupted session. Kept for the commands in
# RESULTS.md that used it; `cema bench --resume` now does the same for one results folder.
# Usage: bench/chunked.sh OUT [cema bench options other than --corruptions/--out/--protocol]
# e.g.   bench/chunked.sh runs/full-s5-cema --methods cema,random_upload --severity 5
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1; shift
cema=${CEMA_BIN:-target/release/cema}
chunks=(
  gaussian_noise,shot_noise,impulse_noise,defocus_blur,glass_blur
  motion_blur,zoom_blur,snow,frost,fog
  brightness,contrast,elastic_transform,pixelate,jpeg_compression
)
mkdir -p "$out"
parts=()
for i in "${!chunks[@]}"; do
  dir=$out/chunk-$i
  parts+=("$dir/results.json")
  if [ -f "$dir/results.json" ]; then echo "chunk $i: done before"; continue; fi
  echo "chunk $i: ${chunks[$i]}"
  $cema -q bench --protocol episodic --corruptions "${chunks[$i]}" --out "$dir" "$@" | tee "$dir.txt"
done
python3 bench/merge_results.py "$out/results.json" "${parts[@]}"
$cema -q plot --results "$out/results.json" --out "$out"
