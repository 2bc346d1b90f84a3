# Sourced by test.sh after setup.sh: the tools only the test suite runs.
# Tools the test suite runs against the cloud: promtool (Debian's prometheus package) checks
# /metrics, curl speaks HTTP/2 to it, headless Chromium loads the dashboard; QEMU's user-mode
# emulator runs the kernels on emulated older CPUs (cema-model's portable_path test); the fleet's
# tests start their own nats-server (JetStream) on loopback.
if ! command -v promtool >/dev/null || ! command -v curl >/dev/null || ! command -v chromium >/dev/null ||
  ! command -v qemu-x86_64 >/dev/null || ! command -v nats-server >/dev/null; then
  echo "installing promtool, curl, chromium, qemu-user and nats-server (apt-get install -y prometheus curl chromium qemu-user nats-server)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus curl chromium fonts-dejavu-core qemu-user nats-server
fi
# In their own virtual environment (their dependency trees stay out of the system Python):
# schemathesis checks docs/openapi.yaml against a running cloud; maturin builds the Python
# bindings (crates/cema-py) that pytest then tests.
if [ ! -x tools/.venv/bin/schemathesis ] || [ ! -x tools/.venv/bin/maturin ]; then
  echo "installing schemathesis, maturin, pytest and numpy into tools/.venv (pip)"
  { [ -x tools/.venv/bin/pip ] || python3 -m venv tools/.venv; } &&
    tools/.venv/bin/pip install -q --disable-pip-version-check schemathesis==4.32.5 \
      maturin==1.16.0 pytest==9.2.0 numpy==2.4.6
fi
