#!/usr/bin/env bash
# The whole test suite, from a clean clone on a fresh machine (as root): installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
. scripts/setup-tests.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The CUDA build (#20), so it cannot rot: burn's CUDA backend with cubecl-cuda's C++ (NVRTC)
# compiler and the in-repo stand-in for cubecl-llvm (patches/cubecl-llvm). No GPU or CUDA toolkit
# is needed to build it: the CUDA libraries load at run time.
cargo clippy -p cema-cli --features cuda --locked -- -D warnings
cargo test --workspace --locked
# The Python bindings: built into tools/.venv (dev profile, sharing target/ with the tests above),
# then tested against the cema binary the tests built.
VIRTUAL_ENV="$PWD/tools/.venv" tools/.venv/bin/maturin develop -q -m crates/cema-py/Cargo.toml
tools/.venv/bin/python -m pytest -q crates/cema-py/tests
