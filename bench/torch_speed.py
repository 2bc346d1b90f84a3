#!/usr/bin/env python3
"""PyTorch half of `bench/compare`: the workloads of `cema speed`, in PyTorch eager, on the same
checkpoints, the same u8 input and the same thread count. See bench/README.md for the definitions.

    torch_speed.py --workload edge_b64[,...] [--models EDGE,FOUNDATION] [--threads N]
                   [--seconds S] [--json FILE]
    torch_speed.py --check-logits CEMA_LOGITS.json --json FILE     (numerical agreement)
    torch_speed.py --device cuda --workload ...                    (the GPU counterpart of
                                                                    `cema --backend cuda speed`)

Every timed iteration starts from u8 NHWC pixels, as cema's does (`Model::logits`, the cloud's
uploads): the conversion to normalised f32 NCHW is part of the work on both sides.

Inference runs under `torch.inference_mode()` (PyTorch's fastest eager mode). In adaptation steps
BatchNorm runs in train mode (batch statistics, running statistics updated with momentum 0.1) as
the stand-in for cema's TBR: same statistics, same reductions, same backward through the batch
statistics; TBR's forward only adds the per-channel rescale by r = σ_B/σ_run and shift d, which
BatchNorm's fused kernel does not have to do, so this side's cost is if anything a lower bound.
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
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import train_torch as T  # noqa: E402

WORKLOADS = ["edge_b64", "edge_b1", "resnet18_224", "cloud_step", "cloud_round_s16", "foundation_b64", "foundation_step",
             "effnet_lite0_b1", "effnet_lite0_b16", "effnet_lite0_step", "vit_s16_224_b8", "vit_s16_224_step"]
CHECK_IMAGES = 64
RESNET18_BATCH = 8
STEP_BATCH = 128
EFFNET_STEP_BATCH = 32
VIT_BATCH = 8
VIT_STEP_BATCH = 16
CLOUD_REPLAY = 1024
# CloudConfig::default() and DistillWeights::default() of cema-adapt / cema-model (SPEC §3).
CLOUD = dict(batch=32, replay_ratio=3, replay_capacity=10_000, foundation_lr=0.00025, student_lr=0.0025,
             momentum=0.9, alpha=3.0, beta=3.0, gamma=1.0, temperature=1.0)


# --device: the u8 pixels start on the host on both sides, so the upload to the GPU is part of the
# work, and every timed iteration ends with the result on the host (logits) or synchronised (steps).
DEVICE = torch.device("cpu")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def check_pixels(nbytes):
    """Byte i of the flat NHWC u8 batch = ((i * 2654435761) >> 7) mod 256 (u64), as `cema speed`."""
    i = np.arange(nbytes, dtype=np.uint64)
    return ((i * np.uint64(2654435761)) >> np.uint64(7)).astype(np.uint8)


def proc_status_kib(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def mib(kib):
    return None if kib is None else round(kib / 1024.0, 1)


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Input:
    """u8 NHWC → normalised f32 NCHW exactly as cema-model's input.rs: x·(1/(255·std)) − mean/std,
    both constants rounded to f32 first."""

    def __init__(self, spec):
        self.h, self.w, self.c = spec["height"], spec["width"], spec["channels"]
        std = np.asarray(spec["std"], dtype=np.float32)
        mean = np.asarray(spec["mean"], dtype=np.float32)
        self.scale = torch.from_numpy(np.float32(1.0) / (np.float32(255.0) * std)).view(1, -1, 1, 1)
        self.shift = torch.from_numpy(mean / std).view(1, -1, 1, 1)

    def pixels(self, n):
        return torch.from_numpy(check_pixels(n * self.h * self.w * self.c)).view(n, self.h, self.w, self.c)

    def __call__(self, u8, dtype=torch.float32):
        x = u8.to(DEVICE).permute(0, 3, 1, 2).to(dtype=dtype, memory_format=torch.contiguous_format)
        return x.mul_(self.scale.to(DEVICE, dtype)).sub_(self.shift.to(DEVICE, dtype))


def load_model(path):
    """cema checkpoint (safetensors + JSON card) → CifarResNet of tools/train_torch.py, strict."""
    card = json.load(open(path.rsplit(".", 1)[0] + ".json"))
    a = card["architecture"]
    if a["family"] != "cifar_resnet":
        sys.exit(f"torch_speed.py: {path}: family {a['family']} not supported")
    m = T.CifarResNet(a["depth"], a["width"], a["in_channels"], a["num_classes"])
    missing, unexpected = m.load_state_dict(load_file(path), strict=False)
    bad = [k for k in missing if not k.endswith("num_batches_tracked")]
    if bad or unexpected:
        sys.exit(f"torch_speed.py: {path}: missing {bad}, unexpected {unexpected}")
    return m, card


def resnet18():
    """torchvision's ResNet-18 (random weights, 1000 classes), or the same layout defined here."""
    torch.manual_seed(0)
    try:
        import torchvision
        return torchvision.models.resnet18(weights=None, num_classes=1000), f"torchvision {torchvision.__version__}"
    except ImportError:
        pass

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, layers = 64, []
            for i, cout in enumerate((64, 128, 256, 512)):
                blocks = [T.BasicBlock(cin, cout, 1 if i == 0 else 2), T.BasicBlock(cout, cout, 1)]
                cin = cout
                layers.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return ResNet18(), "defined in bench/torch_speed.py (torchvision not installed)"


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 as cema-model's efficientnet.rs builds it (random weights, 1000 classes):
    MBConv blocks without squeeze-excitation, ReLU6, BatchNorm eps 1e-3, TensorFlow "SAME"
    padding. Symmetric padding goes into the convolution; only the stride-2 layers, whose SAME
    padding is asymmetric, pad separately (what a PyTorch port does)."""

    STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
              (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]

    class ConvBN(nn.Module):
        def __init__(self, cin, cout, k, s, groups=1, act=True):
            super().__init__()
            self.k, self.s, self.act = k, s, act
            self.conv = nn.Conv2d(cin, cout, k, s, padding=(k // 2 if s == 1 else 0), groups=groups, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=1e-3)

        def forward(self, x):
            if self.s > 1:
                h, w = x.shape[-2:]
                ph = max((math.ceil(h / self.s) - 1) * self.s + self.k - h, 0)
                pw = max((math.ceil(w / self.s) - 1) * self.s + self.k - w, 0)
                x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            x = self.bn(self.conv(x))
            return F.relu6(x) if self.act else x

    class Block(nn.Module):
        def __init__(self, cin, cout, k, s, e):
            super().__init__()
            mid = cin * e
            C = EfficientNetLite0.ConvBN
            layers = ([C(cin, mid, 1, 1)] if e != 1 else []) + [C(mid, mid, k, s, groups=mid),
                                                                 C(mid, cout, 1, 1, act=False)]
            self.body = nn.Sequential(*layers)
            self.skip = s == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return y + x if self.skip else y

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        blocks, cin = [], 32
        for r, k, s, e, cout in self.STAGES:
            for i in range(r):
                blocks.append(self.Block(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        self.stem = self.ConvBN(3, 32, 3, 2)
        self.blocks = nn.Sequential(*blocks)
        self.head = self.ConvBN(cin, 1280, 1, 1)
        self.fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def vit_s16():
    """timm's ViT-S/16 (vit_small_patch16_224) with random weights; `cema speed` builds the same
    graph (cema-model's Arch::vit_s16)."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=384, depth=12,
                             num_heads=6, mlp_ratio=4.0, qkv_bias=True)


def entropy_step(name, model, inp, b, seconds):
    """One LayerNorm-affine entropy step (the foundation's loss on a transformer), SGD momentum."""
    px = inp.pixels(b)
    opt = torch.optim.SGD(norm_affine_only(model), lr=0.00025, momentum=0.9)
    model.train()

    def fn():
        opt.zero_grad(set_to_none=True)
        entropy(model(inp(px))).mean().backward()
        opt.step()
        sync()

    what = f"u8 → input, forward + backward (norm affine only), mean entropy, SGD momentum step, batch {b}"
    r = report(name, what, "images", b, measure(seconds, fn))
    r["batch"] = b
    return r


VIT_INPUT = {"height": 224, "width": 224, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
EFFNET_INPUT = {"height": 224, "width": 224, "channels": 3, "mean": [127 / 255] * 3, "std": [128 / 255] * 3}


def measure(seconds, fn):
    """Two warm-up calls, then calls until `seconds` have passed (at least three). The peak-RSS
    window opens here, after all setup (model loading), as in `cema speed`."""
    rss_idle = proc_status_kib("VmRSS")
    reset = reset_peak_rss()
    fn()
    fn()
    iters = []
    t0 = time.perf_counter()
    while len(iters) < 3 or time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        fn()
        iters.append(time.perf_counter() - t)
    mem = {"rss_idle_mib": mib(rss_idle), "peak_rss_mib": mib(proc_status_kib("VmHWM")),
           "peak_rss_scope": ("from just before warm-up to the end of this workload (VmHWM reset via "
                              "/proc/self/clear_refs); includes everything resident, models and libraries"
                              if reset else "whole process (VmHWM could not be reset)")}
    return iters, time.perf_counter() - t0, mem


def report(name, what, unit, per_iter, timing):
    iters, total, mem = timing
    s = sorted(iters)
    median = s[len(s) // 2]
    thr, mean = per_iter / median, len(iters) * per_iter / total
    print(f"{name:<16} {thr:>10.1f} {unit}/s  (median {median * 1e3:>8.3f} ms over {len(iters)} iterations, "
          f"mean {mean:.1f} {unit}/s)", flush=True)
    return {"what": what, "unit": f"{unit}/s", "per_iteration": per_iter, "throughput": thr,
            "throughput_mean": mean, "iterations": len(iters), "median_ms": median * 1e3, "min_ms": s[0] * 1e3,
            **mem}


def norm_affine_only(m):
    """Freeze everything but the BatchNorm / LayerNorm γ/β; returns the trainable parameters."""
    params = []
    for mod in m.modules():
        for p in mod.parameters(recurse=False):
            trainable = isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm))
            p.requires_grad_(trainable)
            if trainable:
                params.append(p)
    return params


def entropy(logits):
    logp = logits.log_softmax(1)
    return -(logp.exp() * logp).sum(1)


def inference(name, model, inp, b, seconds):
    model.eval()
    px = inp.pixels(b)

    def fn():
        with torch.inference_mode():
            model(inp(px)).cpu().numpy()

    what = (f"model(u8 NHWC → normalised f32 NCHW, n = {b}) in eval mode under torch.inference_mode(), "
            "logits as numpy")
    r = report(name, what, "images", b, measure(seconds, fn))
    r["batch"] = b
    return r


def tbr_step(name, model, card, seconds, b=STEP_BATCH):
    inp = Input(card["input"])
    px = inp.pixels(b)
    y = (torch.arange(b) % card["architecture"]["num_classes"]).to(DEVICE)
    opt = torch.optim.SGD(norm_affine_only(model), lr=0.00025, momentum=0.9)
    model.train()

    def fn():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(inp(px)), y).backward()
        opt.step()
        sync()

    what = ("u8 → input, BatchNorm train-mode forward + backward (norm affine only), cross-entropy, "
            f"SGD momentum step, batch {b}")
    r = report(name, what, "images", b, measure(seconds, fn))
    r["batch"] = b
    return r


def session_round(foundation, fcard, student, scard):
    """One cloud session (its own copy of both models, optimisers and replay buffer): a function
    running SPEC §3 cloud steps 1–2 as cema-adapt's CloudAdapter runs them, in eager PyTorch."""
    c = CLOUD
    b, k = c["batch"], c["replay_ratio"] * c["batch"]
    classes = scard["architecture"]["num_classes"]
    e0 = 0.4 * math.log(classes)
    f_in, s_in = Input(fcard["input"]), Input(scard["input"])
    opt_f = torch.optim.SGD(norm_affine_only(foundation), lr=c["foundation_lr"], momentum=c["momentum"])
    opt_s = torch.optim.SGD(norm_affine_only(student), lr=c["student_lr"], momentum=c["momentum"])
    pool_n = CLOUD_REPLAY + 32 * b
    pool = s_in.pixels(pool_n)
    # FIFO replay buffer of u8 images, pre-filled like cema's session (restore with CLOUD_REPLAY).
    replay = torch.empty((c["replay_capacity"],) + tuple(pool.shape[1:]), dtype=torch.uint8)
    replay[:CLOUD_REPLAY] = pool[:CLOUD_REPLAY]
    state = {"len": CLOUD_REPLAY, "head": CLOUD_REPLAY, "next": CLOUD_REPLAY}
    gen = torch.Generator().manual_seed(0)
    alpha, beta, gamma, temp = c["alpha"], c["beta"], c["gamma"], c["temperature"]

    def fn():
        if state["next"] + b > pool_n:
            state["next"] = 0
        new = pool[state["next"]:state["next"] + b]
        state["next"] += b
        # receive: append to the replay buffer (FIFO ring)
        cap = c["replay_capacity"]
        idx = (torch.arange(b) + state["head"]) % cap
        replay[idx] = new
        state["head"] = (state["head"] + b) % cap
        state["len"] = min(state["len"] + b, cap)
        # 1. foundation: batch statistics, loss mean[E·1/exp(E − E0)] with constant weights, SGD
        foundation.train()
        e = entropy(foundation(f_in(new)))
        loss_f = (e * torch.exp(-(e.detach() - e0))).mean()
        opt_f.zero_grad(set_to_none=True)
        loss_f.backward()
        opt_f.step()
        # 2. distillation on B new + 3B distinct replayed samples
        pick = torch.randperm(state["len"], generator=gen)[:k]
        batch = torch.cat([new, replay[pick]])
        foundation.eval()
        with torch.no_grad():
            t = foundation(f_in(batch))
            lt = (t / temp).log_softmax(1)
            w_t = torch.exp(-(entropy(t) - e0))
            pseudo = t.argmax(1)
        student.train()
        s = student(s_in(batch))
        e_s = entropy(s)
        w_s = torch.exp(-(e_s.detach() - e0))
        kl = (lt.exp() * (lt - (s / temp).log_softmax(1))).sum(1)
        ce = F.cross_entropy(s, pseudo, reduction="none")
        loss = alpha * (e_s * w_s).mean() + beta * temp * temp * (kl * w_t).mean() + gamma * (ce * w_t).mean()
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()
        sync()

    return fn


def cloud_round(name, foundation, fcard, student, scard, seconds, sessions=1):
    """`sessions` cloud sessions of the same models, each running one round per iteration, one
    after another (what PyTorch eager does for several devices: no batching across sessions)."""
    b, k = CLOUD["batch"], CLOUD["replay_ratio"] * CLOUD["batch"]
    fns = [session_round(foundation, fcard, student, scard)]
    fns += [session_round(copy.deepcopy(foundation), fcard, copy.deepcopy(student), scard)
            for _ in range(sessions - 1)]

    def fn():
        for f in fns:
            f()

    per_round = b + k
    what = (f"replay append of {b} new u8 images, foundation BatchNorm-train entropy step on {b}, teacher eval "
            f"logits + student BatchNorm-train distillation step (α·entropy + β·T²·KL + γ·CE, SPEC §3) on {per_round} "
            f"({b} new + {k} replay), SGD momentum; samples = {per_round} per round")
    if sessions > 1:
        what = f"{sessions} sessions (own model copies), one after another, each: " + what
    r = report(name, what, "samples", sessions * per_round, measure(seconds, fn))
    r["sessions"] = sessions
    r["new_per_round"], r["replay_per_round"] = b, k
    r["rounds_per_s"] = sessions * 1e3 / r["median_ms"]
    return r


def run_workload(w, models, seconds):
    torch.manual_seed(0)
    if w in ("edge_b64", "edge_b1", "foundation_b64"):
        m, card = load_model(models[0] if w.startswith("edge") else models[1])
        b = 1 if w == "edge_b1" else 64
        return lambda: inference(w, m.to(DEVICE), Input(card["input"]), b, seconds), {}
    if w == "resnet18_224":
        m, source = resnet18()
        inp = Input({"height": 224, "width": 224, "channels": 3,
                     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
        return lambda: inference(w, m.to(DEVICE), inp, RESNET18_BATCH, seconds), {"resnet18": source}
    if w.startswith("effnet_lite0"):
        m = EfficientNetLite0()
        card = {"input": EFFNET_INPUT, "architecture": {"num_classes": 1000}}
        extra = {"model": "EfficientNet-Lite0 defined in bench/torch_speed.py, random weights"}
        if w == "effnet_lite0_step":
            return lambda: tbr_step(w, m.to(DEVICE), card, seconds, EFFNET_STEP_BATCH), extra
        b = 1 if w == "effnet_lite0_b1" else 16
        return lambda: inference(w, m.to(DEVICE), Input(EFFNET_INPUT), b, seconds), extra
    if w.startswith("vit_s16_224"):
        import timm
        m = vit_s16().to(DEVICE)
        extra = {"model": f"timm {timm.__version__} VisionTransformer (ViT-S/16 shape), random weights"}
        if w == "vit_s16_224_step":
            return lambda: entropy_step(w, m, Input(VIT_INPUT), VIT_STEP_BATCH, seconds), extra
        return lambda: inference(w, m, Input(VIT_INPUT), VIT_BATCH, seconds), extra
    if w == "foundation_step":
        m, card = load_model(models[1])
        return lambda: tbr_step(w, m.to(DEVICE), card, seconds), {}
    if w in ("cloud_step", "cloud_round_s16"):
        f, fcard = load_model(models[1])
        s, scard = load_model(models[0])
        n = 1 if w == "cloud_step" else 16
        return lambda: cloud_round(w, f.to(DEVICE), fcard, s.to(DEVICE), scard, seconds, n), {}
    raise AssertionError(w)


def check_logits(path):
    """max |Δ| between cema's logits (written by `cema speed --logits`) and PyTorch's, f32 and f64."""
    data = json.load(open(path))
    n = data["input"]["images"]
    out = {}
    for name, entry in data["models"].items():
        m, card = load_model(entry["checkpoint"])
        m.eval()
        inp = Input(card["input"])
        px = inp.pixels(n)
        with torch.no_grad():
            t32 = m(inp(px)).numpy().astype(np.float64)
            t64 = m.double()(inp(px, torch.float64)).numpy()
        cema = np.asarray(entry["logits"], dtype=np.float64).reshape(t32.shape)
        out[name] = {
            "checkpoint": entry["checkpoint"],
            "images": n,
            "max_abs_diff": float(np.abs(cema - t32).max()),
            "max_abs_diff_cema_vs_torch_f64": float(np.abs(cema - t64).max()),
            "max_abs_diff_torch_f32_vs_f64": float(np.abs(t32 - t64).max()),
            "max_abs_logit": float(np.abs(t64).max()),
            "argmax_agree": float((cema.argmax(1) == t32.argmax(1)).mean()),
        }
        print(f"agreement {name:<11} max|Δ| cema vs torch f32 {out[name]['max_abs_diff']:.2e}  "
              f"(vs f64 reference: cema {out[name]['max_abs_diff_cema_vs_torch_f64']:.2e}, "
              f"torch f32 {out[name]['max_abs_diff_torch_f32_vs_f64']:.2e}; "
              f"max |logit| {out[name]['max_abs_logit']:.1f})", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="models/edge.safetensors,models/foundation.safetensors",
                    help="EDGE,FOUNDATION checkpoints")
    ap.add_argument("--workload", default="", help="comma-separated: " + ", ".join(WORKLOADS))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--check-logits", metavar="FILE", help="cema speed --logits output to compare against")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the timings then include host↔GPU copies)")
    ap.add_argument("--json")
    args = ap.parse_args()
    workloads = [w for w in args.workload.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"--workload: unknown workload {w!r} (one of {', '.join(WORKLOADS)})")
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        ap.error("--seconds must be a positive number")
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    models = args.models.split(",")
    if len(models) != 2:
        ap.error("--models takes EDGE,FOUNDATION")
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: PyTorch sees no CUDA device")
    out = {"engine": f"pytorch {torch.__version__} eager", "device": str(DEVICE), "threads": torch.get_num_threads(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "seconds": args.seconds, "throughput": "units per iteration / median iteration time",
           "models": models, "workloads": {}}
    if args.check_logits:
        out["agreement"] = check_logits(args.check_logits)
    for w in workloads:
        fn, extra = run_workload(w, models, args.seconds)
        r = fn()
        r.update(extra)
        out["workloads"][w] = r
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
