#!/usr/bin/env bash
# The CUDA check, for a machine with an NVIDIA GPU and a build with the `cuda` feature
# (`cargo build --release -p cema-cli --features cuda`). Three questions, each with its CPU
# counterpart on the same machine in the same run:
#   1. inference: do the shipped models give the same accuracies with `--backend cuda`?
#   2. adaptation: does a short CEMA/Tent stream give the same online accuracy on the GPU?
#   3. speed: `cema --backend cuda speed` against PyTorch on the same GPU (bench/torch_speed.py).
# Usage: bench/cuda_check.sh OUT_DIR   (CEMA_BIN: the cuda build; PYTHON: a python with torch;
#        BACKENDS="cuda" skips the CPU references when OUT_DIR already holds them from a CPU build)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/cuda_check.sh OUT_DIR}
mkdir -p "$out"
bin=${CEMA_BIN:-target/release/cema}
py=${PYTHON:-python3}
if [ -z "${CUDA_PATH:-}" ] && command -v nvcc >/dev/null; then
  CUDA_PATH=$(dirname "$(dirname "$(command -v nvcc)")"); export CUDA_PATH
fi
export LD_LIBRARY_PATH=${CUDA_PATH:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
failed=0
step() { # name timeout command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.txt"
  echo "== $name: exit $rc in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || failed=1
}
nvidia-smi -L || true
for b in ${BACKENDS:-cpu cuda}; do
  step "eval-$b" 150 "$bin" -q --backend $b eval --model models/foundation.safetensors \
    --corruptions fog,gaussian_noise --severities 5 --limit 2000 --json "$out/eval-foundation-$b.json"
  step "bench-$b" 200 "$bin" -q --backend $b bench --methods bn_adapt,tent,cema \
    --corruptions fog --limit 1024 --out "$out/bench-$b"
done
# cloud_round_s16: 16 sessions' rounds (cema: batched, then one at a time; PyTorch: in turn).
w=edge_b64,foundation_b64,foundation_step,cloud_step,cloud_round_s16
step speed-cema-cuda 200 "$bin" -q --backend cuda speed --workload $w --seconds 3 --json "$out/speed-cema-cuda.json"
step speed-torch-cuda 120 "$py" bench/torch_speed.py --device cuda --workload $w --seconds 3 --json "$out/speed-torch-cuda.json"
"$py" - "$out" <<'PY' || failed=1
import json, sys
out = sys.argv[1]
def load(p):
    try:
        return json.load(open(f"{out}/{p}"))
    except OSError as e:
        print(f"missing {p}: {e}")
        return None
e = {b: load(f"eval-foundation-{b}.json") for b in ("cpu", "cuda")}
if all(e.values()):
    print("eval clean accuracy cpu %.4f cuda %.4f" % (e["cpu"]["clean_accuracy"], e["cuda"]["clean_accuracy"]))
    for c, sev in e["cpu"]["corrupted"].items():
        for s, a in sev.items():
            print(f"eval {c} s{s}: cpu {a:.4f} cuda {e['cuda']['corrupted'][c][s]:.4f}")
r = {b: load(f"bench-{b}/results.json") for b in ("cpu", "cuda")}
if all(r.values()):
    for m in r["cpu"]["methods"]:
        a, g = r["cpu"]["methods"][m], r["cuda"]["methods"][m]
        print(f"bench {m}: accuracy cpu {a['avg_accuracy']:.4f} cuda {g['avg_accuracy']:.4f}, "
              f"uploads cpu {a['upload_fraction']:.4f} cuda {g['upload_fraction']:.4f}, "
              f"seconds cpu {a['seconds']:.1f} cuda {g['seconds']:.1f}")
s = {k: load(f"speed-{k}-cuda.json") for k in ("cema", "torch")}
if all(s.values()):
    for w, v in s["cema"]["workloads"].items():
        t = s["torch"]["workloads"].get(w)
        if t:
            print(f"speed {w}: cema {v['throughput']:.1f} torch {t['throughput']:.1f} {v['unit']} "
                  f"ratio {v['throughput'] / t['throughput']:.2f}")
PY
exit $failed
