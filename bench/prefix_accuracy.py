#!/usr/bin/env python3
"""How far a `--limit N` run would be from the full-length one, from one full-length results.json.

A method's online accuracy on the first N images of a stream is in the full run's `batch_correct`
(correct predictions per batch, in stream order), and a `--limit N` run sees exactly those images in
the same order. For N a multiple of the batch size and the same thread count it makes the same
predictions, so the prefix of the full run *is* the quick run's accuracy, without running it. One
exception: random_upload uploads at CEMA's rate on the stream it ran, which in a --limit run is
CEMA's rate on the first N images, so its row is the full run's random upload, cut at N.
Prints, per method, the mean over streams of (accuracy on the first N images − accuracy on the
whole stream), in points, and the smallest listed N from which every method stays within ±2.
Usage: bench/prefix_accuracy.py results.json [N ...]   (N rounded down to whole batches)"""
import json
import sys

r = json.load(open(sys.argv[1]))
batch = r["batch"]
full_len = r["images_per_stream"]
sizes = [int(a) for a in sys.argv[2:]] or [512, 1024, 2048, 3072, 4096, 5120, 6144]
sizes = sorted({max(batch, n - n % batch) for n in sizes if n < full_len})
order = ["source", "bn_adapt", "tent", "eata", "cema", "foundation", "random_upload"]
methods = [m for m in order if m in r["methods"]]

print("| method | full | " + " | ".join(f"first {n}" for n in sizes) + " |")
print("|---|---:|" + "---:|" * len(sizes))
worst = {n: 0.0 for n in sizes}
for m in methods:
    streams = r["methods"][m]["corruptions"].values()
    full = 100 * r["methods"][m]["avg_accuracy"]
    cells = []
    for n in sizes:
        prefix = [sum(s["batch_correct"][: n // batch]) / n for s in streams]
        delta = 100 * sum(prefix) / len(prefix) - full
        worst[n] = max(worst[n], abs(delta))
        cells.append(f"{delta:+.2f}")
    print(f"| {m} | {full:.2f} | " + " | ".join(cells) + " |")
ok = [n for n in sizes if all(worst[k] <= 2.0 for k in sizes if k >= n)]
print(f"\nwithin ±2 points for every method from N = {ok[0]}" if ok else "\nno listed N is within ±2 points for every method")
