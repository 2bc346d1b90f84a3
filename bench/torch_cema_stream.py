#!/usr/bin/env python3
"""CEMA on one corrupted stream, in PyTorch eager: the counterpart of
`cema bench --methods cema --corruptions C --severity S` (issue #5, workload 4), written from
SPEC §3 and cema-adapt's defaults, on the same checkpoints and the very same stream.

    torch_cema_stream.py --order runs/X/stream_order.npy --corruption fog [--severity 5]
                         [--corrupted data/fashion-mnist-c] [--threads N] [--json FILE]

`--order` is the stream_order.npy that `cema bench --out runs/X` writes: the same images in the
same order. Everything runs in one process, synchronously, as cema bench's CEMA does (K = 1):

- edge: the first batch replaces the running statistics with its own (batch-statistics forward,
  momentum 1); after that eval-mode predictions, then the entropy filters (dynamic E_max with a
  256-sample warm-up and λ = 1, E_min = 0.02·ln C, EATA's redundancy filter with ε = 0.4), the kept
  samples go to the cloud, and a published norm state (γ, β, running statistics) is installed
  before the next batch;
- cloud: per full batch of B = 32 uploads, the foundation's self-weighted entropy step in TBR mode
  (its running statistics first taken from that batch), then the distillation step on the B new
  + 3B replayed samples (once the FIFO buffer of 10 000 holds 256) with TBR in the student; with no
  full batch but a warm buffer, one replay-only step on 4B; SGD with momentum 0.9, lr 0.00025
  (foundation) and 0.0025 (student); α = β = 3, γ = 1, T = 1.

The replay sampler is NumPy's (cema's is ChaCha8), and float rounding differs, so selections and
accuracy drift apart a little over a stream: compare accuracy as a sanity check (a few tenths of a
point), and wall time as the measurement.
"""
import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_speed import Input, entropy, load_model, norm_affine_only  # noqa: E402

EPS = 1e-5
MOMENTUM = 0.1


def bn_forward(self, x):
    """BatchNorm in cema's three uses: `eval` (running statistics), `init` (batch statistics,
    running statistics replaced: momentum 1), `tbr` (SPEC §3: the value of running-statistics
    normalisation, the gradient of batch normalisation, running statistics moving by 0.1)."""
    mode = self.cema_mode
    if mode == "eval":
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, EPS)
    if mode == "init":
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, 1.0, EPS)
    view = (1, -1, 1, 1)
    mu = x.mean((0, 2, 3))
    var = x.var((0, 2, 3), unbiased=False)
    sigma = (var + EPS).sqrt()
    sigma_run = (self.running_var + EPS).sqrt()
    r = sigma.detach() / sigma_run
    d = (mu.detach() - self.running_mean) / sigma_run
    xhat = (x - mu.view(view)) / sigma.view(view) * r.view(view) + d.view(view)
    out = xhat * self.weight.view(view) + self.bias.view(view)
    with torch.no_grad():
        n = x.numel() / x.shape[1]
        self.running_mean.mul_(1 - MOMENTUM).add_(MOMENTUM * mu)
        self.running_var.mul_(1 - MOMENTUM).add_(MOMENTUM * var * (n / max(n - 1, 1)))
    return out


def set_mode(model, mode):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.cema_mode = mode


def patch(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.forward = bn_forward.__get__(m)
    set_mode(model, "eval")
    return model


def default_epsilon(classes):
    """cema-adapt's filter::default_epsilon: 0.4 at 10 classes, 0.05 at 1000, log-log between."""
    c = min(max(classes, 10), 1000)
    t = (math.log(c) - math.log(10)) / (math.log(1000) - math.log(10))
    return math.exp(math.log(0.4) + t * (math.log(0.05) - math.log(0.4)))


class Filter:
    """cema-adapt's EntropyFilter with cema's defaults."""

    def __init__(self, classes, warmup=256, lam=1.0, emin_fraction=0.02):
        self.e0 = 0.4 * math.log(classes)
        self.e_min = emin_fraction * math.log(classes)
        self.eps = default_epsilon(classes)
        self.warmup, self.lam = warmup, lam
        self.seen, self.sum, self.warm, self.m = 0, 0.0, None, None

    def e_max(self):
        if self.warm is not None and self.warm > 0 and self.seen > 0:
            return self.lam * self.e0 * (self.sum / self.seen) / self.warm
        return self.e0

    def select(self, logits):
        e = entropy(logits)
        self.seen += len(e)
        self.sum += float(e.double().sum())
        if self.warm is None and self.seen >= self.warmup:
            self.warm = self.sum / self.seen
        e_max = self.e_max()
        cand = ((e < e_max) & (e > self.e_min)).nonzero().flatten()
        p = logits.softmax(1)
        if self.m is not None and len(cand):
            cos = F.cosine_similarity(p[cand], self.m.unsqueeze(0), dim=1, eps=1e-8)
            cand = cand[cos.abs() < self.eps]
        if len(cand):
            mean = p[cand].mean(0)
            self.m = mean if self.m is None else 0.9 * self.m + 0.1 * mean
        return cand


class Cloud:
    def __init__(self, foundation, student, f_in, s_in, classes, seed):
        self.f, self.s, self.f_in, self.s_in = foundation, student, f_in, s_in
        self.e0 = 0.4 * math.log(classes)
        self.b, self.cap, self.replay_min = 32, 10_000, 256
        self.opt_f = torch.optim.SGD(norm_affine_only(foundation), lr=0.00025, momentum=0.9)
        self.opt_s = torch.optim.SGD(norm_affine_only(student), lr=0.0025, momentum=0.9)
        self.pending = []
        self.replay = None
        self.replay_len, self.head = 0, 0
        self.f_init = False
        self.rng = np.random.default_rng(seed)
        self.samples = 0

    def receive(self, px):
        self.samples += len(px)
        self.pending.extend(px)
        if self.replay is None:
            self.replay = torch.empty((self.cap,) + tuple(px.shape[1:]), dtype=torch.uint8)
        for img in px:
            self.replay[self.head] = img
            self.head = (self.head + 1) % self.cap
            self.replay_len = min(self.replay_len + 1, self.cap)

    def sample(self, k):
        k = min(k, self.replay_len)
        idx = self.rng.choice(self.replay_len, size=k, replace=False)
        return self.replay[torch.from_numpy(idx)]

    def adapt_foundation(self, px):
        if not self.f_init:
            set_mode(self.f, "init")
            with torch.no_grad():
                self.f(self.f_in(px))
            self.f_init = True
        set_mode(self.f, "tbr")
        e = entropy(self.f(self.f_in(px)))
        loss = (e * torch.exp(-(e.detach() - self.e0))).mean()
        self.opt_f.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_f.step()

    def distill(self, px):
        set_mode(self.f, "eval")
        with torch.no_grad():
            t = self.f(self.f_in(px))
            lt = t.log_softmax(1)
            w_t = torch.exp(-(entropy(t) - self.e0))
            pseudo = t.argmax(1)
        set_mode(self.s, "tbr")
        s = self.s(self.s_in(px))
        e_s = entropy(s)
        w_s = torch.exp(-(e_s.detach() - self.e0))
        kl = (lt.exp() * (lt - s.log_softmax(1))).sum(1)
        ce = F.cross_entropy(s, pseudo, reduction="none")
        loss = 3.0 * (e_s * w_s).mean() + 3.0 * (kl * w_t).mean() + 1.0 * (ce * w_t).mean()
        self.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_s.step()

    def step(self):
        """One round; True when a new norm state is published."""
        steps = 0
        while len(self.pending) >= self.b:
            fresh = torch.stack(self.pending[: self.b])
            del self.pending[: self.b]
            self.adapt_foundation(fresh)
            batch = fresh
            if self.replay_len >= self.replay_min:
                batch = torch.cat([fresh, self.sample(3 * self.b)])
            self.distill(batch)
            steps += 1
        if steps == 0 and self.replay_len >= self.replay_min:
            self.distill(self.sample(4 * self.b))
            steps = 1
        return steps > 0


def norm_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] in ("weight", "bias", "running_mean", "running_var")
            and isinstance(dict(model.named_modules())[k.rsplit(".", 1)[0]], nn.BatchNorm2d)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--order", required=True, help="stream_order.npy written by cema bench --out")
    ap.add_argument("--corruption", required=True)
    ap.add_argument("--severity", type=int, default=5)
    ap.add_argument("--corrupted", default="data/fashion-mnist-c")
    ap.add_argument("--edge", default="models/edge.safetensors")
    ap.add_argument("--foundation", default="models/foundation.safetensors")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    images = np.load(os.path.join(args.corrupted, f"{args.corruption}.npy"), mmap_mode="r")
    labels = np.load(os.path.join(args.corrupted, "labels.npy"))
    n_per = len(labels) // 5
    order = np.load(args.order).astype(np.int64)
    rows = (args.severity - 1) * n_per + order
    px_all = torch.from_numpy(np.ascontiguousarray(images[rows]))
    if px_all.dim() == 3:
        px_all = px_all.unsqueeze(-1)
    y_all = torch.from_numpy(labels[rows].astype(np.int64))

    edge, ecard = load_model(args.edge)
    foundation, fcard = load_model(args.foundation)
    patch(edge)
    patch(foundation)
    for m in (edge, foundation):
        for p in m.parameters():
            p.requires_grad_(False)
    classes = ecard["architecture"]["num_classes"]
    e_in, f_in = Input(ecard["input"]), Input(fcard["input"])
    filt = Filter(classes)
    cloud = None
    correct = uploaded = updates = 0
    cloud_s = 0.0
    t0 = time.perf_counter()
    for start in range(0, len(order), args.batch):
        px = px_all[start:start + args.batch]
        y = y_all[start:start + args.batch]
        with torch.no_grad():
            if cloud is None and len(px) > 1:
                set_mode(edge, "init")
                logits = edge(e_in(px))
                set_mode(edge, "eval")
                student = copy.deepcopy(edge)
                cloud = Cloud(foundation, student, f_in, e_in, classes, args.seed)
            else:
                logits = edge(e_in(px))
        correct += int((logits.argmax(1) == y).sum())
        keep = filt.select(logits)
        uploaded += len(keep)
        t1 = time.perf_counter()
        if len(keep):
            cloud.receive(px[keep])
        if cloud.step():
            edge.load_state_dict(norm_state(cloud.s), strict=False)
            updates += 1
        cloud_s += time.perf_counter() - t1
    seconds = time.perf_counter() - t0
    n = len(order)
    out = {
        "engine": f"pytorch {torch.__version__} eager", "threads": torch.get_num_threads(),
        "corruption": args.corruption, "severity": args.severity, "images": n,
        "accuracy": correct / n, "uploaded": uploaded, "upload_fraction": uploaded / n, "updates": updates,
        "seconds": seconds, "cloud_seconds": cloud_s,
        "edge_images_per_s": n / max(seconds - cloud_s, 1e-9),
        "cloud_samples_per_s": uploaded / max(cloud_s, 1e-9),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
