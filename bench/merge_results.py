#!/usr/bin/env python3
"""Merges the results.json of several `cema bench` runs into one results.json: runs of different
methods over the same streams (so that partial results survive), or runs of the same methods over
different streams (a long benchmark split into chunks of corruptions, as bench/full_s5.sh does).
A method's averages are recomputed over all the streams it ran on.
Usage: bench/merge_results.py OUT.json IN1.json IN2.json ..."""
import json
import sys

out, ins = sys.argv[1], sys.argv[2:]
if not ins:
    sys.exit(__doc__)
runs = [json.load(open(p)) for p in ins]
merged = dict(runs[0])
merged["methods"] = {}
merged["streams"] = []
merged["seconds"] = 0.0
merged["merged_from"] = ins
for r in runs:
    for k in ("protocol", "images_per_stream", "batch", "seed"):
        if r[k] != merged[k]:
            sys.exit(f"cannot merge: {k} differs ({r[k]} vs {merged[k]})")
    if r["protocol"] == "continual" and len(runs) > 1 and r["streams"] != runs[0]["streams"]:
        sys.exit("cannot merge continual runs over different streams: the order is the experiment")
    for s in r["streams"]:
        if s not in merged["streams"]:
            merged["streams"].append(s)
    for m, v in r["methods"].items():
        into = merged["methods"].setdefault(m, {"corruptions": {}})
        for s, c in v["corruptions"].items():
            if s in into["corruptions"]:
                sys.exit(f"cannot merge: {m} on {s} appears twice")
            into["corruptions"][s] = c
    merged["seconds"] += r["seconds"]
for m, v in merged["methods"].items():
    cs = list(v["corruptions"].values())
    v["avg_accuracy"] = sum(c["accuracy"] for c in cs) / len(cs)
    v["upload_fraction"] = sum(c["upload_fraction"] for c in cs) / len(cs)
    for k in ("bytes_up", "bytes_down", "updates", "uploaded", "selected", "seconds"):
        v[k] = sum(c[k] for c in cs)
json.dump(merged, open(out, "w"), indent=1)
print(f"{out}: {', '.join(merged['methods'])} over {len(merged['streams'])} streams")
