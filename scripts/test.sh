#!/usr/bin/env bash
# The whole test suite, from a clean clone on a fresh machine (as root): installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
. scripts/setup-tests.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
