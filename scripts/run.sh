#!/usr/bin/env bash
# The main job, from a clean clone on a fresh machine (as root): installs what it needs, builds,
# trains the edge model if it is missing, then runs `cema demo`: one real cloud and N real edges as
# separate processes on loopback, each edge on its own Fashion-MNIST-C stream, with a live view and
# a final table (also written to runs/demo.json). Nothing is left running afterwards.
#
# Environment: CEMA_DEMO_EDGES (default 3), CEMA_DEMO_LIMIT (images per edge, default 2000),
#              CEMA_DEMO_PACE_MS (ms between an edge's batches, default 1200: a camera's pace that
#              one 2-core cloud keeps up with for 3 edges), CEMA_DEMO_CORRUPTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prepare.sh
$cema demo --edges "${CEMA_DEMO_EDGES:-3}" --limit "${CEMA_DEMO_LIMIT:-2000}" \
  --pace-ms "${CEMA_DEMO_PACE_MS:-1200}" --workers 2 \
  --corruptions "${CEMA_DEMO_CORRUPTIONS:-gaussian_noise,fog,contrast}" --json runs/demo.json
