#!/usr/bin/env bash
# Learning-rate selection on the four held-out corruptions (SPEC §4: never on the 15 test
# corruptions). Every gradient method gets the same budget: three learning rates (the paper's
# value, ×4 and ×16), severity 5, the first $LIMIT images of each held-out stream.
# Prints one line per method and rate, then the chosen rate per method; writes $OUT/tuning.json.
#   bench/tune_lr.sh [LIMIT] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${1:-1000}
OUT=${2:-runs/tune}
CEMA=${CEMA:-target/release/cema}
mkdir -p "$OUT"
run() { # method flag lr
  local dir="$OUT/$1-$3"
  "$CEMA" -q bench --methods "$1" --corruptions held-out --severity 5 --limit "$LIMIT" \
    "$2" "$3" --out "$dir" >/dev/null
  python3 -c "import json,sys; d=json.load(open('$dir/results.json')); print('$1', '$3', d['methods']['$1']['avg_accuracy'])"
}
{
  for lr in 0.00025 0.001 0.004; do run tent --tent-lr $lr; done
  for lr in 0.00025 0.001 0.004; do run eata --eata-lr $lr; done
  for lr in 0.0025 0.01 0.04; do run cema --cema-student-lr $lr; done
} | tee "$OUT/sweep.txt"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
best = {}
for line in open(f"{out}/sweep.txt"):
    m, lr, acc = line.split()
    if m not in best or float(acc) > best[m][1]:
        best[m] = (float(lr), float(acc))
json.dump({m: {"lr": v[0], "held_out_accuracy": v[1]} for m, v in best.items()},
          open(f"{out}/tuning.json", "w"), indent=2)
for m, (lr, acc) in best.items():
    print(f"chosen {m} lr={lr} (held-out mean {acc:.4f})")
PY
