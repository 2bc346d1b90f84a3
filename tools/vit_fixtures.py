#!/usr/bin/env python3
"""Golden fixtures for cema-model's ViT, computed by timm's own `VisionTransformer`.

What it does
  1. Builds a tiny timm ViT (16x16 RGB input, patch 4, width 32, 2 blocks, 4 heads, MLP 64, 5 classes) with
     seed 0 and perturbs every LayerNorm's gamma/beta and the class/position tables, so no parameter sits at its
     trivial initial value (the head too: timm starts it near zero, which makes every prediction uniform).
  2. Draws a batch of 4 normal inputs, computes the logits (eval mode: timm's ViT has no batch-dependent layer)
     and the gradients of the mean prediction entropy, -mean_i sum_k p_ik log p_ik, with respect to every
     LayerNorm gamma and beta (the parameters CEMA adapts on a transformer).
  3. Writes one safetensors file holding
       every parameter by timm's name      float32
       input                               float32 [4, 3, 16, 16]  NCHW, already normalised
       logits                              float32 [4, 5]
       grad.<layernorm>.weight / .bias     float32 [32]
     and metadata: the configuration as cema-model's `Arch::Vit` card fields, the timm and torch versions.

Needs: pip install torch timm safetensors   (the project's bench/.venv has them)
Run (a second on a CPU):
  python tools/vit_fixtures.py        # writes crates/cema-model/tests/fixtures/vit/vit_tiny.safetensors
"""
import argparse
import json
import os

import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

CONFIG = {"family": "vit", "image_size": 16, "patch": 4, "in_channels": 3, "dim": 32, "depth": 2, "heads": 4,
          "mlp_dim": 64, "num_classes": 5}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(here, "..", "crates", "cema-model", "tests", "fixtures", "vit"))
    args = ap.parse_args()
    torch.manual_seed(0)
    c = CONFIG
    model = VisionTransformer(img_size=c["image_size"], patch_size=c["patch"], in_chans=c["in_channels"],
                              num_classes=c["num_classes"], embed_dim=c["dim"], depth=c["depth"],
                              num_heads=c["heads"], mlp_ratio=c["mlp_dim"] / c["dim"], qkv_bias=True)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "norm" in name and name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif name in ("cls_token", "pos_embed"):
                p.copy_(0.5 * torch.randn_like(p))
            elif name == "head.weight":
                p.copy_(0.5 * torch.randn_like(p))  # timm's head starts near zero: uniform, flat predictions
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    x = torch.randn(4, c["in_channels"], c["image_size"], c["image_size"])
    logits = model(x)
    p = logits.softmax(1)
    entropy = -(p * logits.log_softmax(1)).sum(1).mean()
    norms = [n for n, _ in model.named_parameters() if "norm" in n]
    grads = torch.autograd.grad(entropy, [dict(model.named_parameters())[n] for n in norms])
    out = {n: t.detach().contiguous() for n, t in model.state_dict().items()}
    out["input"] = x
    out["logits"] = logits.detach()
    for n, g in zip(norms, grads):
        out["grad." + n] = g.contiguous()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "vit_tiny.safetensors")
    meta = {"architecture": json.dumps(CONFIG), "timm": timm.__version__, "torch": torch.__version__,
            "loss": "mean prediction entropy", "entropy": repr(float(entropy.detach()))}
    save_file(out, path, metadata=meta)
    os.chmod(path, 0o644)
    print(f"{path}: {len(out)} tensors, entropy {float(entropy.detach()):.6f}, {len(norms)} LayerNorm tensors")


if __name__ == "__main__":
    main()
