#!/usr/bin/env bash
# Accuracy against upload budget (issue #25): for each budget b, `cema bench` runs
#   cema            the paper's selection, its E_max chosen per batch to meet b (--cema-budget b)
#   random_upload   a uniformly random b of every batch (--random-rate b)
#   uncertain       uncertain_upload, issue #25's rule: random upload's quota b filled with the
#                   most uncertain samples, the edge's own statistics tracked and shared
# on the same streams, and writes OUT/curve.json and OUT/curve.md (mean accuracy and measured
# upload fraction per method and budget), one `cema bench` per budget, its results in OUT/<b>/.
#
# Usage: bench/budget_curve.sh --out DIR [--budgets 0.05,0.1,0.2,0.3] [--resume] [-- BENCH ARGS...]
#   BENCH ARGS go to every `cema bench` (e.g. --severity 5 --corruptions held-out --limit 2000).
#   With --resume, a budget whose results.json exists is kept and an interrupted one continues
#   stream by stream (`cema bench --resume`), so a curve can span several sessions. `cema bench
#   --resume` only reuses records of the same binary: CEMA_BIN=PATH runs a pinned copy (and skips
#   the build), e.g. `cp target/release/cema runs/bin/cema-$(git rev-parse --short HEAD)`.
# A byte budget per device is the same curve: b = bytes / (images × bytes per image).
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "bench/budget_curve.sh: $*" >&2; exit 2; }
out="" budgets=0.05,0.1,0.2,0.3 resume=0
while [ $# -gt 0 ]; do
  case $1 in
    --out) [ $# -ge 2 ] || die "--out needs a DIR"; out=$2; shift 2 ;;
    --budgets) [ $# -ge 2 ] || die "--budgets needs a list"; budgets=$2; shift 2 ;;
    --resume) resume=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -n "$out" ] || die "--out is required"
IFS=, read -ra bs <<<"$budgets"
for b in "${bs[@]}"; do
  awk "BEGIN{exit !($b > 0 && $b <= 1)}" 2>/dev/null || die "--budgets: '$b' is not in (0, 1]"
done
cema=${CEMA_BIN:-target/release/cema}
if [ -z "${CEMA_BIN:-}" ]; then
  cargo build --release -q -p cema-cli || die "cargo build failed"
fi
[ -x "$cema" ] || die "CEMA_BIN: $cema is not an executable"
mkdir -p "$out"
run() { # NAME ARGS...
  local name=$1; shift
  local again=()
  if [ $resume = 1 ]; then
    if [ -f "$out/$name/results.json" ]; then return; fi
    again=(--resume)
  fi
  echo "== $name: cema bench $* $BENCH" >&2
  "$cema" -q bench "$@" "${bench_args[@]}" "${again[@]}" --out "$out/$name"
}
bench_args=("$@")
BENCH="${bench_args[*]:-}"
for b in "${bs[@]}"; do
  run "$b" --methods cema,random_upload,uncertain_upload --cema-budget "$b" --random-rate "$b"
done
python3 - "$out" "$budgets" <<'PY'
import json, sys
out, budgets = sys.argv[1], sys.argv[2].split(",")
rows = {"cema": "cema", "random": "random_upload", "uncertain": "uncertain_upload"}
curve = {"budgets": [float(b) for b in budgets], "methods": {}}
for label, key in rows.items():
    pts = []
    for b in budgets:
        m = json.load(open(f"{out}/{b}/results.json"))["methods"][key]
        pts.append({"budget": float(b), "accuracy": m["avg_accuracy"],
                    "upload_fraction": m["upload_fraction"], "bytes_up": m["bytes_up"]})
    curve["methods"][label] = pts
json.dump(curve, open(f"{out}/curve.json", "w"), indent=2)
names = {"cema": "cema (E_max per batch)", "random": "random upload",
         "uncertain": "uncertain upload (#25)"}
with open(f"{out}/curve.md", "w") as f:
    f.write("| budget | " + " | ".join(names[l] for l in rows) + " |\n")
    f.write("|---:|" + "---:|" * len(rows) + "\n")
    for i, b in enumerate(budgets):
        cells = [f"{100 * curve['methods'][l][i]['accuracy']:.2f} "
                 f"({100 * curve['methods'][l][i]['upload_fraction']:.1f} %)" for l in rows]
        f.write(f"| {100 * float(b):g} % | " + " | ".join(cells) + " |\n")
print(open(f"{out}/curve.md").read())
PY
