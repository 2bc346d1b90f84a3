#!/usr/bin/env bash
# The problem statement in numbers (issue #6's table): both shipped models on every corruption at
# severity 5, with running and with test-batch statistics. From a clean clone it installs what it
# needs, builds, trains the edge model if it is missing and generates Fashion-MNIST-C.
#
# Environment: CEMA_EVAL_LIMIT (test images per stream, default 2000; 10000 = the full set),
#              CEMA_SEVERITIES (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prepare.sh
[ -f data/fashion-mnist-c/labels.npy ] || $cema corrupt --out data/fashion-mnist-c --json runs/corrupt.json
limit=${CEMA_EVAL_LIMIT:-2000}
sev=${CEMA_SEVERITIES:-5}
for m in edge foundation; do
  for n in running batch; do
    echo; echo "== $m, norm = $n =="
    $cema eval --model models/$m.safetensors --norm $n --severities "$sev" --limit "$limit" \
      --json runs/eval-$m-$n.json
  done
done
python3 - "$sev" <<'PY'
import json, sys
sev = sys.argv[1].split(",")[-1]
r = {(m, n): json.load(open(f"runs/eval-{m}-{n}.json")) for m in ("edge", "foundation") for n in ("running", "batch")}
cs = list(r[("edge", "running")]["corrupted"])
print(f"\nseverity {sev}, {r[('edge','running')]['images']} test images per stream; accuracy %")
print(f"{'corruption':<20}{'edge run':>10}{'edge batch':>11}{'found run':>11}{'found batch':>12}")
for c in cs:
    print(f"{c:<20}" + "".join(f"{r[k]['corrupted'][c][sev]*100:>{w}.1f}" for k, w in
          ((('edge','running'),10), (('edge','batch'),11), (('foundation','running'),11), (('foundation','batch'),12))))
means = {k: sum(v["corrupted"][c][sev] for c in cs) / len(cs) for k, v in r.items()}
print(f"{'mean':<20}{means[('edge','running')]*100:>10.1f}{means[('edge','batch')]*100:>11.1f}"
      f"{means[('foundation','running')]*100:>11.1f}{means[('foundation','batch')]*100:>12.1f}")
print(f"{'clean':<20}" + "".join(f"{r[k]['clean_accuracy']*100:>{w}.1f}" for k, w in
      ((('edge','running'),10), (('edge','batch'),11), (('foundation','running'),11), (('foundation','batch'),12))))
PY
