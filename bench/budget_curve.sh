#!/usr/bin/env bash
# Accuracy against upload budget (issue #25): for each budget b, `cema bench` runs
#   cema            the paper's selection, its E_max chosen per batch to meet b (--cema-budget b)
#   random_upload   a uniformly random b of every batch (--random-rate b)
#   uncertain       uncertain_upload, issue #25's rule: random upload's quota b filled with the
#                   most uncertain samples, the edge's own statistics tracked and shared
# on the same streams, one `cema bench` per budget, its results in OUT/<b>/; then
# bench/budget_curve.py writes OUT/curve.json, OUT/curve.md (mean accuracy, measured upload
# fraction and bytes per image, per method and budget) and OUT/curve.svg (accuracy against bytes).
#
# Usage: bench/budget_curve.sh --out DIR [--budgets 0.05,0.1,0.2,0.3] [--resume] [-- BENCH ARGS...]
#   BENCH ARGS go to every `cema bench` (e.g. --severity 5 --corruptions held-out --limit 2000).
#   With --resume, a budget whose results.json exists is kept and an interrupted one continues
#   stream by stream (`cema bench --resume`), so a curve can span several sessions. `cema bench
#   --resume` only reuses records of the same binary: CEMA_BIN=PATH runs a pinned copy (and skips
#   the build), e.g. `cp target/release/cema runs/bin/cema-$(git rev-parse --short HEAD)`.
# A byte budget per device is read off the bytes view (curve.svg): it counts what a method sends
# besides pixels (uncertain_upload's statistics, the session's first norm state).
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
python3 bench/budget_curve.py "$out" "$budgets"
