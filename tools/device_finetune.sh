#!/usr/bin/env bash
# Second stage of the shipped foundation: continue the AugMix+JSD training of stage 1
# (tools/device_train.sh, 11 epochs at lr 0.1) from its checkpoint with a fresh, lower cosine schedule.
set -u
OUT=${OUT:-runs/device}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 tools/train_torch.py --depth 20 --width 32 --augmix --batch 512 --lr 0.04 --epochs 40 \
  --time-budget ${BUDGET:-230} --init "${INIT:-.device/init/foundation-r20w32.safetensors}" \
  --out "$OUT/foundation" > "$OUT/log-foundation.txt" 2>&1
grep -v Warn "$OUT/log-foundation.txt" | tail -n 4
