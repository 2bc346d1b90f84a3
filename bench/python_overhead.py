#!/usr/bin/env python3
"""Per-call overhead of the Python bindings (crates/cema-py) against the Rust API they wrap: the
median time of one offline `Edge.predict` on 1 and on 64 Fashion-MNIST frames, both release
builds, same machine, same run. Prints the CPU, both medians and their ratio.

    bench/python_overhead.py [CALLS]     (builds both in release first; a few minutes cold)
"""
import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200
venv = os.path.join(REPO, "tools", ".venv")
subprocess.run([os.path.join(venv, "bin", "maturin"), "develop", "-q", "--release", "-m",
                "crates/cema-py/Cargo.toml"], cwd=REPO, check=True,
               env={**os.environ, "VIRTUAL_ENV": venv})
rust = json.loads(subprocess.run(
    ["cargo", "run", "-q", "--release", "-p", "cema-edge", "--example", "predict_timing", "--",
     str(calls)], cwd=REPO, check=True, capture_output=True, text=True).stdout)
py = json.loads(subprocess.run([os.path.join(venv, "bin", "python"), "-c", f"""
import gzip, json, time, numpy as np, cema
x = np.frombuffer(gzip.open('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz').read()[16:],
                  np.uint8).reshape(-1, 28, 28, 1)
out = {{}}
for b in (1, 64):
    e = cema.Edge('models/edge.safetensors')
    e.predict(x[:64])
    ts = []
    for k in range({calls}):
        at = (k * b) % (len(x) - b)
        f = x[at:at + b]
        t = time.perf_counter(); e.predict(f); ts.append(time.perf_counter() - t)
    ts.sort(); out[f'b{{b}}_median_s'] = ts[len(ts) // 2]
print(json.dumps(out))
"""], cwd=REPO, check=True, capture_output=True, text=True).stdout)
cpu = next(l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True,
           text=True).stdout.splitlines() if l.startswith("Model name"))
print(f"CPU: {cpu}; {calls} calls each, median per call")
for b in (1, 64):
    r, p = rust[f"b{b}_median_s"], py[f"b{b}_median_s"]
    print(f"batch {b:>2}: Rust {r * 1e3:.3f} ms, Python {p * 1e3:.3f} ms, Python/Rust {p / r:.3f}")
