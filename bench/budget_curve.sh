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
# Usage: bench/budget_curve.sh --out DIR [--budgets 0.05,0.1,0.2,0.3] [--bytes B,...] [--resume]
#        [-- BENCH ARGS...]
#   BENCH ARGS go to every `cema bench` (e.g. --severity 5 --corruptions held-out --limit 2000).
#   With --resume, a budget whose results.json exists is kept and an interrupted one continues
#   stream by stream (`cema bench --resume`), so a curve can span several sessions. `cema bench
#   --resume` only reuses records of the same binary: CEMA_BIN=PATH runs a pinned copy (and skips
#   the build), e.g. `cp target/release/cema runs/bin/cema-$(git rev-parse --short HEAD)`.
#   --bytes B1,B2,...: byte-budget points instead (or besides, with --budgets): every method
#   within B bytes per image of the stream (`cema bench --byte-budget B`, pixels and shared
#   statistics counted), results in OUT/bytes-<B>/.
# The bytes view (curve.svg) counts what a method sends besides pixels (uncertain_upload's
# statistics, the session's first norm state).
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "bench/budget_curve.sh: $*" >&2; exit 2; }
out="" budgets="" bytes="" resume=0
while [ $# -gt 0 ]; do
  case $1 in
    --out) [ $# -ge 2 ] || die "--out needs a DIR"; out=$2; shift 2 ;;
    --budgets) [ $# -ge 2 ] || die "--budgets needs a list"; budgets=$2; shift 2 ;;
    --bytes) [ $# -ge 2 ] || die "--bytes needs a list"; bytes=$2; shift 2 ;;
    --resume) resume=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -n "$out" ] || die "--out is required"
[ -n "$budgets$bytes" ] || budgets=0.05,0.1,0.2,0.3
bs=() ys=()
[ -z "$budgets" ] || IFS=, read -ra bs <<<"$budgets"
[ -z "$bytes" ] || IFS=, read -ra ys <<<"$bytes"
for b in "${bs[@]}"; do
  awk "BEGIN{exit !($b > 0 && $b <= 1)}" 2>/dev/null || die "--budgets: '$b' is not in (0, 1]"
done
for y in "${ys[@]}"; do
  [[ $y =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk "BEGIN{exit !($y > 0)}" ||
    die "--bytes: '$y' is not a positive number of bytes"
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
names=()
for b in "${bs[@]}"; do
  run "$b" --methods cema,random_upload,uncertain_upload --cema-budget "$b" --random-rate "$b"
  names+=("$b")
done
for y in "${ys[@]}"; do
  run "bytes-$y" --methods cema,random_upload,uncertain_upload --byte-budget "$y"
  names+=("bytes-$y")
done
python3 bench/budget_curve.py "$out" "$(IFS=,; echo "${names[*]}")"
