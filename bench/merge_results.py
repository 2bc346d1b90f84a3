#!/usr/bin/env python3
"""Merges the results.json of several `cema bench` runs over the same streams (e.g. methods run
in separate processes so that partial results survive) into one results.json.
Usage: bench/merge_results.py OUT.json IN1.json IN2.json ..."""
import json
import sys

out, ins = sys.argv[1], sys.argv[2:]
runs = [json.load(open(p)) for p in ins]
merged = dict(runs[0])
merged["methods"] = {}
merged["seconds"] = 0.0
merged["merged_from"] = ins
for r in runs:
    for k in ("protocol", "streams", "images_per_stream", "batch", "seed"):
        if r[k] != merged[k]:
            sys.exit(f"cannot merge: {k} differs ({r[k]} vs {merged[k]})")
    merged["methods"].update(r["methods"])
    merged["seconds"] += r["seconds"]
json.dump(merged, open(out, "w"), indent=1)
print(f"{out}: {', '.join(merged['methods'])}")
