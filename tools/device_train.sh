#!/usr/bin/env bash
# Trains the foundation candidates (and a PyTorch reference edge) on a GPU machine in one go.
# Run from the repo root with the Fashion-MNIST .gz files in $CEMA_FASHION_MNIST_DIR; results go to $OUT.
set -u
OUT=${OUT:-runs/device}; mkdir -p "$OUT"
B=${BUDGET:-330}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 tools/train_torch.py --depth 20 --width 32 --augmix --batch 256 --lr 0.1 --epochs 80 --time-budget $B \
  --out "$OUT/foundation-r20w32" > "$OUT/log-r20w32.txt" 2>&1 &
python3 tools/train_torch.py --depth 20 --width 48 --augmix --batch 256 --lr 0.1 --epochs 60 --time-budget $B \
  --out "$OUT/foundation-r20w48" > "$OUT/log-r20w48.txt" 2>&1 &
# The PyTorch reference edge (--plain, resnet8 w16, 38 epochs: 93.84% clean) came from an earlier run of
# this script; the shipped edge is trained by `cema train`.
wait
tail -n 3 "$OUT"/log-*.txt
