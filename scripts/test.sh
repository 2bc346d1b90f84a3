#!/usr/bin/env bash
# The whole test suite, from a clean clone on a fresh machine (as root): installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ -z "${CEMA_FASHION_MNIST_DIR:-}" ]; then
  echo "installing Fashion-MNIST (apt-get install -y dataset-fashion-mnist)"
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 2; }
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
