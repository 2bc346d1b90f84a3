# Sourced by run.sh and robustness.sh: setup.sh, a release build, and the shipped models (the edge
# model is retrained if missing, the command in models/README.md). Sets $cema.
. scripts/setup.sh
cargo build --release --locked -p cema-cli
cema=target/release/cema
mkdir -p runs
if [ ! -f models/edge.safetensors ]; then
  echo "models/edge.safetensors missing: training it (the command in models/README.md)"
  $cema train --out models/edge.safetensors --epochs 8 --batch 128 --lr 0.1 --seed 0 --resume --json runs/train-edge.json
fi
[ -f models/foundation.safetensors ] || { echo "models/foundation.safetensors missing: see models/README.md" >&2; exit 2; }
