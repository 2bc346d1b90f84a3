#!/usr/bin/env bash
# What one cloud session costs in memory (issue #23): `cema load` at two edge counts, each long
# enough that every session runs rounds, and the difference of the cloud's resident memory divided
# by the difference in sessions. A single run's growth includes fixed costs (each worker's
# buffers, the models), which the difference cancels. Replay pixels are reported apart.
#
#   bench/session_memory.sh [SMALL [LARGE]]     (default 50 and 200 edges; about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:-50}
large=${2:-200}
cema=target/release/cema
[ -x "$cema" ] || cargo build --release -q -p cema-cli
out=runs/session-memory
mkdir -p "$out"
lscpu | grep -m1 'Model name' | tee "$out/cpu.txt"
for n in "$small" "$large"; do
  "$cema" -q load --edges "$n" --seconds 40 --interval-ms 4000 --json "$out/load-$n.json" >/dev/null
done
python3 - "$out/load-$small.json" "$out/load-$large.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for r in (a, b):
    print(f"{r['edges']:>4} edges: {r['sessions_with_rounds']} sessions ran rounds, cloud RSS "
          f"{r['cloud_rss_kib_end'] / 1024:.0f} MiB, replay pixels {r['replay_bytes'] / 2**20:.1f} MiB")
d = b["edges"] - a["edges"]
rss = (b["cloud_rss_kib_end"] - a["cloud_rss_kib_end"]) * 1024
replay = b["replay_bytes"] - a["replay_bytes"]
print(f"per session: {rss / d / 2**20:.2f} MiB of RSS, {(rss - replay) / d / 2**20:.2f} MiB besides replay pixels")
PY
