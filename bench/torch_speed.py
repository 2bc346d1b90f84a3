#!/usr/bin/env python3
"""PyTorch side of `bench/compare`: the same models, the same safetensors, the same work as `cema speed`.

Forward: eval mode, no_grad. Adaptation step: norm-affine parameters only (every other weight
frozen), BatchNorm in train mode (batch statistics; cema runs TBR, whose cost is the same kind of
work), cross-entropy, SGD momentum.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import train_torch as T  # noqa: E402


def measure(seconds, batch, fn):
    fn()
    fn()
    t0 = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models/edge.safetensors,models/foundation.safetensors")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for path in args.models.split(","):
        card = json.load(open(path.rsplit(".", 1)[0] + ".json"))
        a = card["architecture"]
        m = T.CifarResNet(a["depth"], a["width"], a["in_channels"], a["num_classes"])
        m.load_state_dict(load_file(path), strict=False)
        h, w, c = card["input"]["height"], card["input"]["width"], card["input"]["channels"]
        entry = {}
        m.eval()
        for b in (64, 1):
            x = torch.randn(b, c, h, w)
            with torch.no_grad():
                entry[f"forward_b{b}"] = measure(args.seconds, b, lambda: m(x))
        b = 128
        x = torch.randn(b, c, h, w)
        y = torch.arange(b) % a["num_classes"]
        for n_, p in m.named_parameters():
            p.requires_grad_(isinstance(dict(m.named_modules()).get(n_.rsplit(".", 1)[0]), torch.nn.BatchNorm2d))
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.00025, momentum=0.9)
        m.train()

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()

        entry[f"tbr_step_b{b}"] = measure(args.seconds, b, step)
        for k, v in entry.items():
            print(f"{path:<40} {k:<14} {v:>9.1f} img/s")
        results[os.path.basename(path).rsplit(".", 1)[0]] = entry
    out = {"engine": f"pytorch {torch.__version__} eager", "threads": args.threads, "results": results}
    if args.json:
        json.dump(out, open(args.json, "w"), indent=2)


if __name__ == "__main__":
    main()
