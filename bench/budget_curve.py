#!/usr/bin/env python3
"""The accuracy-against-budget curve of bench/budget_curve.sh, from its runs: OUT/<b>/results.json
for each budget b (a fraction of the stream) and OUT/bytes-<B>/results.json for each byte budget B
(bytes per image of the stream). Writes OUT/curve.json, OUT/curve.md and OUT/curve.svg.

Two views of the same runs: by sample budget (what fraction of the stream a method uploads) and by
bytes (upload bodies' pixels plus what a method sends besides them, e.g. uncertain_upload's
statistics, per image of the stream): a byte budget per device is read off the second.

Usage: bench/budget_curve.py OUT [BUDGETS]   (BUDGETS: comma-separated folder names, e.g.
0.05,0.1,bytes-40; default: every OUT/<b>/ with a results.json, fractions first)
       bench/budget_curve.py --partial OUT   (a curve still running: per budget, the mean over
the streams every method has finished so far, from `cema bench`'s per-stream records)
"""
import json
import os
import sys

METHODS = {"cema": "cema (E_max per batch)", "random_upload": "random upload",
           "uncertain_upload": "uncertain upload (#25)"}
COLOURS = {"cema": "#d62728", "random_upload": "#1f77b4", "uncertain_upload": "#2ca02c"}


def budget(name):
    """A budget folder's name as (kind, value): ("fraction", 0.05) or ("bytes", 40.0)."""
    if name.startswith("bytes-"):
        return ("bytes", float(name[len("bytes-"):]))
    return ("fraction", float(name))


def order(name):
    """Fractions first, then byte budgets, each increasing."""
    kind, v = budget(name)
    return (kind == "bytes", v)


def label(name):
    kind, v = budget(name)
    return f"{v:g} B/image" if kind == "bytes" else f"{100 * v:g} %"


def load(out, names):
    """`names`: the budgets as OUT's sub-folders are named."""
    curve = {"budgets": [budget(n)[1] for n in names], "kinds": [budget(n)[0] for n in names],
             "names": list(names), "methods": {}}
    for key in METHODS:
        pts = []
        for name in names:
            runs = json.load(open(os.path.join(out, name, "results.json")))
            m = runs["methods"][key]
            images = sum(c["images"] for c in m["corruptions"].values())
            kind, b = budget(name)
            pts.append({"budget": b, "kind": kind, "accuracy": m["avg_accuracy"],
                        "upload_fraction": m["upload_fraction"], "bytes_up": m["bytes_up"],
                        "bytes_per_image": m["bytes_up"] / images, "images": images})
        curve["methods"][key] = pts
    return curve


def table(curve):
    rows = ["| budget | " + " | ".join(METHODS.values()) + " |",
            "|---:|" + "---:|" * len(METHODS)]
    for i, name in enumerate(curve["names"]):
        cells = []
        for key in METHODS:
            p = curve["methods"][key][i]
            cells.append(f"{100 * p['accuracy']:.2f} ({100 * p['upload_fraction']:.1f} %, "
                         f"{p['bytes_per_image']:.0f} B/image)")
        rows.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def svg(curve, path):
    """Accuracy against bytes uploaded per image of the stream, one line per method and kind of
    budget: fractions solid with dots, byte budgets dashed with squares."""
    w, h, left, bottom, top, right = 720, 400, 60, 50, 20, 200
    pts = [p for ps in curve["methods"].values() for p in ps]
    x1 = max(p["bytes_per_image"] for p in pts) * 1.05
    y0 = min(p["accuracy"] for p in pts) * 100 - 0.5
    y1 = max(p["accuracy"] for p in pts) * 100 + 0.5
    sx = lambda x: left + (w - left - right) * x / x1
    sy = lambda y: h - bottom - (h - bottom - top) * (y - y0) / (y1 - y0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
           f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">'
           'bytes uploaded per image of the stream</text>',
           f'<text x="14" y="{(top + h - bottom) / 2}" text-anchor="middle" '
           f'transform="rotate(-90 14 {(top + h - bottom) / 2})">online accuracy (%)</text>']
    for i in range(5):
        x = x1 * i / 4
        out.append(f'<text x="{sx(x):.1f}" y="{h - bottom + 16}" text-anchor="middle">'
                   f'{x:.0f}</text>')
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.1f}</text>')
    for j, (key, all_ps) in enumerate(curve["methods"].items()):
        c = COLOURS[key]
        for kind, dash in (("fraction", ""), ("bytes", ' stroke-dasharray="6 4"')):
            ps = sorted((p for p in all_ps if p.get("kind", "fraction") == kind),
                        key=lambda p: p["bytes_per_image"])
            line = " ".join(f"{sx(p['bytes_per_image']):.1f},{sy(100 * p['accuracy']):.1f}"
                            for p in ps)
            out.append(f'<polyline points="{line}" fill="none" stroke="{c}" '
                       f'stroke-width="2"{dash}/>')
            for p in ps:
                x, y = sx(p["bytes_per_image"]), sy(100 * p["accuracy"])
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"/>'
                           if kind == "fraction" else
                           f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" '
                           f'fill="{c}"/>')
        ly = top + 16 + 18 * j
        out.append(f'<line x1="{w - right + 10}" y1="{ly - 4}" x2="{w - right + 30}" '
                   f'y2="{ly - 4}" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{w - right + 36}" y="{ly}">{METHODS[key]}</text>')
    ly = top + 16 + 18 * len(curve["methods"]) + 10
    out.append(f'<circle cx="{w - right + 20}" cy="{ly - 4}" r="3" fill="gray"/>')
    out.append(f'<text x="{w - right + 36}" y="{ly}">budget: a fraction</text>')
    out.append(f'<rect x="{w - right + 17}" y="{ly + 11}" width="6" height="6" fill="gray"/>')
    out.append(f'<text x="{w - right + 36}" y="{ly + 18}">budget: bytes per image</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")


def partial(out):
    """Means over the streams all three methods have recorded, per budget folder."""
    rows = ["| budget | streams | " + " | ".join(METHODS.values()) + " |",
            "|---:|---:|" + "---:|" * len(METHODS)]
    for name in sorted((d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))),
                       key=order):
        recs = {}
        for key in METHODS:
            d = os.path.join(out, name, "streams", key)
            files = os.listdir(d) if os.path.isdir(d) else []
            recs[key] = {f[:-5]: json.load(open(os.path.join(d, f)))["result"]
                         for f in files if f.endswith(".json")}
        done = sorted(set.intersection(*(set(r) for r in recs.values())))
        if not done:
            rows.append(f"| {label(name)} | 0 |" + " |" * len(METHODS))
            continue
        cells = []
        for key in METHODS:
            rs = [recs[key][s] for s in done]
            acc = sum(r["correct"] / r["images"] for r in rs) / len(rs)
            up = sum(r["uploaded"] for r in rs) / sum(r["images"] for r in rs)
            cells.append(f"{100 * acc:.2f} ({100 * up:.1f} %)")
        rows.append(f"| {label(name)} | {len(done)}: {', '.join(done)} | "
                    + " | ".join(cells) + " |")
    print("\n".join(rows))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--partial":
        return partial(sys.argv[2])
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out = sys.argv[1]
    if len(sys.argv) == 3:
        names = sys.argv[2].split(",")
    else:
        names = sorted((d for d in os.listdir(out)
                        if os.path.isfile(os.path.join(out, d, "results.json"))), key=order)
    if not names:
        sys.exit(f"{out}: no <budget>/results.json")
    curve = load(out, names)
    json.dump(curve, open(os.path.join(out, "curve.json"), "w"), indent=2)
    md = table(curve)
    open(os.path.join(out, "curve.md"), "w").write(md)
    svg(curve, os.path.join(out, "curve.svg"))
    print(md, end="")


if __name__ == "__main__":
    main()
