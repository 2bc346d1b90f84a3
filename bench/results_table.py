#!/usr/bin/env python3
"""Prints a cema bench results.json as a Markdown table (streams × methods, then mean and upload %).
Usage: bench/results_table.py results.json"""
import json
import sys

r = json.load(open(sys.argv[1]))
order = ["source", "bn_adapt", "tent", "eata", "cema", "foundation", "random_upload"]
ms = [m for m in order if m in r["methods"]]
print("| stream | " + " | ".join(ms) + " |")
print("|---|" + "---:|" * len(ms))
for s in r["streams"]:
    cells = []
    for m in ms:
        c = r["methods"][m]["corruptions"].get(s)
        cells.append(f"{100 * c['accuracy']:.2f}" if c else "–")
    print(f"| {s} | " + " | ".join(cells) + " |")
print("| **mean** | " + " | ".join(f"**{100 * r['methods'][m]['avg_accuracy']:.2f}**" for m in ms) + " |")
print("| upload % | " + " | ".join(f"{100 * r['methods'][m]['upload_fraction']:.1f}" for m in ms) + " |")
print("| wall s | " + " | ".join(f"{r['methods'][m]['seconds']:.0f}" for m in ms) + " |")
