#!/usr/bin/env python3
"""Train a CIFAR-style ResNet on Fashion-MNIST in PyTorch and export it as a cema checkpoint.

Why this exists: the shipped *foundation* model must be far more robust under corruption than the edge
model (issue 6). That takes AugMix with a Jensen-Shannon consistency loss and many epochs of a wide
ResNet, which is hours on the project's 2-core CPU but minutes on a GPU. Foundation models are usually
trained elsewhere by someone else; cema imports them through its safetensors loader, so this script
writes exactly the PyTorch state-dict names that `cema-model` expects. The edge model is trained by
`cema train` (plain augmentation only); `--plain` here reproduces that recipe in PyTorch for comparison.

Never trains on a benchmark corruption: the AugMix ops below (autocontrast, equalize, posterize,
rotate, solarize, shear, translate) are disjoint from noise/blur/weather/contrast/elastic/pixelate/JPEG.

Usage:
  python3 tools/train_torch.py --depth 20 --width 32 --augmix --epochs 60 --out models/foundation
  python3 tools/train_torch.py --arch vit --patch 4 --dim 96 --depth 6 --heads 3 --mlp-dim 192 \
      --augmix --epochs 12 --lr 1e-3 --wd 0.05 --out models/foundation-vit
  python3 tools/train_torch.py --depth 8 --width 16 --plain --epochs 30 --out runs/edge-torch
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train-set pixel mean/std (pixels scaled to [0,1])
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    return x, y


# ---- the architecture: must stay identical to crates/cema-model (names and shapes) ----
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.downsample is None else self.downsample(x)
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    def __init__(self, depth, width, in_channels=1, num_classes=10):
        super().__init__()
        assert (depth - 2) % 6 == 0, "depth must be 6n+2"
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        layers = []
        for stage, mult in enumerate((1, 2, 4)):
            cout = width * mult
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def vit(args):
    """A ViT by timm's own class, so every parameter name (`patch_embed.proj`, `cls_token`,
    `pos_embed`, `blocks.N.attn.qkv`, ...) is the one cema-model's `Arch::Vit` loads."""
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=28, patch_size=args.patch, in_chans=1, num_classes=10,
                             embed_dim=args.dim, depth=args.depth, num_heads=args.heads,
                             mlp_ratio=args.mlp_dim / args.dim, qkv_bias=True)


def arch_card(args):
    if args.arch == "vit":
        return {"family": "vit", "image_size": 28, "patch": args.patch, "in_channels": 1, "dim": args.dim,
                "depth": args.depth, "heads": args.heads, "mlp_dim": args.mlp_dim, "num_classes": 10}
    return {"family": "cifar_resnet", "depth": args.depth, "width": args.width, "in_channels": 1,
            "num_classes": 10}


# ---- batched augmentation on the GPU (images in [0,1], shape N×1×H×W) ----
def crop_flip(x, pad, gen):
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    ox = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    oy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = (oy[:, None] + ar_h[None, :])[:, None, :, None].expand(n, c, h, w)
    cols = (ox[:, None] + ar_w[None, :])[:, None, None, :].expand(n, c, h, w)
    idx = rows * (w + 2 * pad) + cols
    out = xp.flatten(2).gather(2, idx.flatten(2)).view(n, c, h, w)
    flip = torch.rand(n, device=x.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _affine(x, theta):
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _level(gen, n, device, sev=3):
    # AugMix samples an op strength uniformly in [0.1, severity]/10.
    return (torch.rand(n, device=device, generator=gen) * (sev - 0.1) + 0.1) / 10.0


def op_autocontrast(x, gen):
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)


def op_equalize(x, gen):
    n = x.shape[0]
    q = (x * 255).round().long().clamp(0, 255).view(n, -1)
    hist = torch.zeros(n, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float))
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).amin(1, keepdim=True)
    total = cdf[:, -1:]
    lut = ((cdf - cdf_min) / (total - cdf_min).clamp_min(1)).clamp(0, 1)
    return lut.gather(1, q).view_as(x)


def op_posterize(x, gen):
    n = x.shape[0]
    bits = torch.randint(2, 5, (n,), device=x.device, generator=gen)  # keep 2..4 bits
    step = (2.0 ** (8 - bits).float())[:, None, None, None]
    return torch.floor(x * 255 / step) * step / 255


def op_rotate(x, gen):
    n = x.shape[0]
    deg = _level(gen, n, x.device) * 50  # up to 15 degrees
    deg = torch.where(torch.rand(n, device=x.device, generator=gen) < 0.5, -deg, deg)
    r = deg * math.pi / 180
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.cos(r)
    theta[:, 0, 1] = -torch.sin(r)
    theta[:, 1, 0] = torch.sin(r)
    theta[:, 1, 1] = torch.cos(r)
    return _affine(x, theta)


def op_solarize(x, gen):
    n = x.shape[0]
    t = 1.0 - _level(gen, n, x.device)  # threshold in [0.7, 0.99], as AugMix
    t = t[:, None, None, None]
    return torch.where(x < t, x, 1.0 - x)


def _shear_translate(x, gen, axis, kind):
    n = x.shape[0]
    v = _level(gen, n, x.device)  # in [0.01, 0.3]
    v = torch.where(torch.rand(n, device=x.device, generator=gen) < 0.5, -v, v)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    if kind == "shear":
        theta[:, axis, 1 - axis] = v * 0.6  # shear up to 0.18
    else:
        theta[:, axis, 2] = v  # grid units: up to 15% of the image
    return _affine(x, theta)


OPS = [op_autocontrast, op_equalize, op_posterize, op_rotate, op_solarize,
       lambda x, g: _shear_translate(x, g, 0, "shear"), lambda x, g: _shear_translate(x, g, 1, "shear"),
       lambda x, g: _shear_translate(x, g, 0, "translate"), lambda x, g: _shear_translate(x, g, 1, "translate")]


def apply_random_op(x, gen):
    # Every op runs on the whole batch and each sample then picks one result: on a GPU this costs a few
    # extra tiny kernels but no host sync (boolean-mask indexing would sync on every op).
    n = x.shape[0]
    choice = torch.randint(0, len(OPS), (n,), device=x.device, generator=gen)
    outs = torch.stack([op(x, gen) for op in OPS])  # ops × N × C × H × W
    return outs[choice, torch.arange(n, device=x.device)]


def augmix(x, gen, width=3, alpha=1.0):
    n = x.shape[0]
    dev = x.device
    ws = torch.distributions.Dirichlet(torch.full((width,), alpha, device=dev)).sample((n,))
    m = torch.distributions.Beta(torch.tensor(alpha, device=dev), torch.tensor(alpha, device=dev)).sample((n,))
    mix = torch.zeros_like(x)
    for i in range(width):
        depth = torch.randint(1, 4, (n,), device=dev, generator=gen)
        xa = x
        for d in range(3):
            y = apply_random_op(xa, gen)
            xa = torch.where((depth > d)[:, None, None, None], y, xa)
        mix = mix + ws[:, i][:, None, None, None] * xa
    m = m[:, None, None, None]
    return (m * x + (1 - m) * mix).clamp(0, 1)


def normalize(x):
    return (x - MEAN) / STD


def evaluate(model, x_u8, y, device, bs=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), bs):
            xb = torch.from_numpy(np.ascontiguousarray(x_u8[i:i + bs]).copy()).to(device).float().div(255).unsqueeze(1)
            pred = model(normalize(xb)).argmax(1).cpu().numpy()
            correct += int((pred == y[i:i + bs]).sum())
    return correct / len(y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.environ.get("CEMA_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--arch", choices=["resnet", "vit"], default="resnet")
    ap.add_argument("--depth", type=int, default=20, help="ResNet depth, or the ViT's number of blocks")
    ap.add_argument("--patch", type=int, default=4, help="ViT patch side")
    ap.add_argument("--dim", type=int, default=96, help="ViT embedding width")
    ap.add_argument("--heads", type=int, default=3, help="ViT attention heads")
    ap.add_argument("--mlp-dim", type=int, default=192, help="ViT MLP hidden width")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (0: its default)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT.ckpt.pt (written every epoch)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--time-budget", type=float, default=0, help="seconds; caps epochs after timing epoch 1")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--augmix", action="store_true", help="AugMix + Jensen-Shannon consistency (foundation)")
    ap.add_argument("--plain", action="store_true", help="crop+flip only (edge recipe)")
    ap.add_argument("--jsd-lambda", type=float, default=12.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N images (smoke test)")
    ap.add_argument("--out", required=True, help="output path without extension")
    ap.add_argument("--role", default="foundation")
    ap.add_argument("--init", help="start from this .safetensors checkpoint (continued training)")
    args = ap.parse_args()
    if args.augmix == args.plain:
        sys.exit("choose exactly one of --augmix / --plain")

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    xtr, ytr = load(args.data_dir, "train")
    xte, yte = load(args.data_dir, "test")
    if args.limit:
        xtr, ytr = xtr[:args.limit], ytr[:args.limit]
    X = torch.from_numpy(xtr.copy()).to(device).float().div(255).unsqueeze(1)
    Y = torch.from_numpy(ytr.astype(np.int64)).to(device)

    if args.arch == "vit":
        model = vit(args).to(device)
    else:
        model = CifarResNet(args.depth, args.width).to(device).to(memory_format=torch.channels_last)
    if args.init:
        from safetensors.torch import load_file
        missing, unexpected = model.load_state_dict(load_file(args.init), strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
        print(f"initialised from {args.init}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    # No decay on norms, biases and the ViT's token and position embeddings (timm's no_weight_decay).
    def decays(n_, p):
        return p.ndim > 1 and n_ not in ("cls_token", "pos_embed")
    decay = [p for n_, p in model.named_parameters() if decays(n_, p)]
    no_decay = [p for n_, p in model.named_parameters() if not decays(n_, p)]
    groups = [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0}]
    if args.arch == "vit":
        # Transformers train with AdamW and a linear warm-up (one epoch) before the cosine decay.
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999))
    else:
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = len(Y) // args.batch
    epochs = args.epochs
    total_steps = epochs * steps_per_epoch
    amp = device == "cuda" or os.environ.get("CEMA_CPU_AMP") == "1"
    t0 = time.time()
    history = []
    step = 0
    skipped = 0
    ep = 0
    ckpt = args.out + ".ckpt.pt"
    if args.resume and os.path.exists(ckpt):
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        ep, step, skipped, history, epochs = state["ep"], state["step"], state["skipped"], state["history"], state["epochs"]
        total_steps = epochs * steps_per_epoch
        t0 -= history[-1]["elapsed_s"] if history else 0
        print(f"resumed from {ckpt} after epoch {ep}", flush=True)
    while ep < epochs:
        model.train()
        perm = torch.randperm(len(Y), device=device, generator=gen)
        tot_loss, tot_ok, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            lr = 0.5 * args.lr * (1 + math.cos(math.pi * step / total_steps))
            if args.arch == "vit" and step < steps_per_epoch:
                lr = args.lr * (step + 1) / steps_per_epoch
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[b * args.batch:(b + 1) * args.batch]
            xb = crop_flip(X[idx], 2, gen)
            yb = Y[idx]
            if args.augmix:
                with torch.no_grad():
                    x1, x2 = augmix(xb, gen), augmix(xb, gen)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
                if args.augmix:
                    inp = normalize(torch.cat([xb, x1, x2])).contiguous(memory_format=torch.channels_last)
                    logits = model(inp).float()
                    lc, l1, l2 = logits.chunk(3)
                    loss = F.cross_entropy(lc, yb)
                    pc, p1, p2 = F.softmax(lc, 1), F.softmax(l1, 1), F.softmax(l2, 1)
                    pm = ((pc + p1 + p2) / 3).clamp(1e-7, 1).log()
                    jsd = (F.kl_div(pm, pc, reduction="batchmean") + F.kl_div(pm, p1, reduction="batchmean")
                           + F.kl_div(pm, p2, reduction="batchmean")) / 3
                    loss = loss + args.jsd_lambda * jsd
                else:
                    lc = model(normalize(xb).contiguous(memory_format=torch.channels_last)).float()
                    loss = F.cross_entropy(lc, yb)
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                skipped += 1  # a non-finite loss would poison every weight: skip the step, count it
                step += 1
                continue
            loss.backward()
            opt.step()
            step += 1
            tot_loss += float(loss.detach()) * len(yb) if b % 50 == 0 else 0.0
            tot_ok += int((lc.argmax(1) == yb).sum()) if b % 50 == 0 else 0
            seen += len(yb) if b % 50 == 0 else 0
        ep += 1
        if ep == 1 and args.time_budget > 0:
            per_epoch = time.time() - t0
            fit = max(1, int(args.time_budget / per_epoch))
            if fit < epochs:
                print(f"epoch takes {per_epoch:.1f}s: capping epochs {epochs} -> {fit}", flush=True)
                epochs = fit
                total_steps = epochs * steps_per_epoch
        acc = evaluate(model, xte, yte, device) if (ep % 5 == 0 or ep == epochs) else None
        history.append({"epoch": ep, "train_loss": tot_loss / max(seen, 1), "train_acc": tot_ok / max(seen, 1),
                        "test_acc": acc, "skipped_steps": skipped, "elapsed_s": time.time() - t0})
        print(json.dumps(history[-1]), flush=True)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "ep": ep, "step": step, "skipped": skipped,
                    "history": history, "epochs": epochs}, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)

    clean = evaluate(model, xte, yte, device)
    elapsed = time.time() - t0
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    from safetensors.torch import save_file
    save_file(sd, args.out + ".safetensors")
    sha = hashlib.sha256(open(args.out + ".safetensors", "rb").read()).hexdigest()
    card = {
        "name": os.path.basename(args.out),
        "role": args.role,
        "architecture": arch_card(args),
        "input": {"height": 28, "width": 28, "channels": 1, "mean": [MEAN], "std": [STD]},
        "classes": CLASSES,
        "dataset": "fashion-mnist",
        "clean_accuracy": clean,
        "parameters": params,
        "sha256": sha,
        "training": {
            "trainer": "pytorch " + torch.__version__ + " (tools/train_torch.py)",
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "command": "python3 " + " ".join(sys.argv),
            "recipe": ("AugMix (width 3, depth 1-3, severity 3, ops: autocontrast equalize posterize rotate solarize "
                       "shear_x shear_y translate_x translate_y) + JSD consistency (lambda %.1f)" % args.jsd_lambda)
            if args.augmix else "random crop (pad 2) + horizontal flip",
            "optimizer": (f"AdamW, lr {args.lr} (1 epoch linear warm-up, then cosine), wd {args.wd}, batch {args.batch}"
                          if args.arch == "vit" else
                          f"SGD nesterov momentum 0.9, lr {args.lr} cosine, wd {args.wd}, batch {args.batch}")
                         + ", bf16 autocast on GPU",
            "epochs": epochs,
            "seed": args.seed,
            "wall_time_s": round(elapsed, 1),
        },
        "history": history,
    }
    with open(args.out + ".json", "w") as f:
        json.dump(card, f, indent=2)
    print(json.dumps({"out": args.out, "clean_accuracy": clean, "epochs": epochs, "wall_s": elapsed}), flush=True)


if __name__ == "__main__":
    main()
