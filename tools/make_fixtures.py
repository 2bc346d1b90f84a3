#!/usr/bin/env python3
"""Golden numbers for cema-model's tests, computed by PyTorch on the same weights.

Run from the repo root (needs torch, safetensors, numpy; bench/.venv has them):
  bench/.venv/bin/python tools/make_fixtures.py
Writes crates/cema-model/tests/fixtures/{golden.json, resnet8_w4.pth}.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import train_torch as T  # noqa: E402

OUT = "crates/cema-model/tests/fixtures"
x, y = T.load(os.environ.get("CEMA_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"), "test")
xb = torch.from_numpy(x[:8].copy()).float().div(255).unsqueeze(1)
inp = T.normalize(xb)

golden = {"images": "first 8 Fashion-MNIST test images", "mean": T.MEAN, "std": T.STD}

f = T.CifarResNet(20, 32)
f.load_state_dict(load_file("models/foundation.safetensors"), strict=False)
f.eval()
with torch.no_grad():
    golden["foundation_running"] = f(inp).flatten().tolist()
    f.train()
    # train-mode BN: batch statistics (running statistics move too, irrelevant here)
    golden["foundation_batch"] = f(inp).flatten().tolist()

torch.manual_seed(0)
small = T.CifarResNet(8, 4)
# non-trivial norm state so that a loader that skips it would fail
for m in small.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.3, 0.3)
        m.running_var.uniform_(0.5, 2.0)
small.eval()
torch.save(small.state_dict(), os.path.join(OUT, "resnet8_w4.pth"))
with torch.no_grad():
    golden["resnet8_w4_running"] = small(inp).flatten().tolist()
    # one plain SGD step on norm affine only, CE loss, batch statistics: gradient check
    small.train()
    params = [p for n, p in small.named_parameters() if ".bn" in n or n.startswith("bn") or "downsample.1" in n]
with torch.enable_grad():
    loss = F.cross_entropy(small(inp), torch.from_numpy(y[:8].astype("int64")))
    loss.backward()
golden["resnet8_w4_batch_ce"] = float(loss)
golden["resnet8_w4_grad_bn1_weight"] = small.bn1.weight.grad.tolist()
golden["resnet8_w4_grad_layer3_0_bn2_bias"] = small.layer3[0].bn2.bias.grad.tolist()
golden["resnet8_w4_conv_grad_is_none_when_frozen"] = True
with open(os.path.join(OUT, "golden.json"), "w") as fh:
    json.dump(golden, fh)
print("wrote", OUT)
