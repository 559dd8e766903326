#!/usr/bin/env python3
"""demo_summary.py -- the main job's closing table, from the JSON each step wrote.

usage: demo_summary.py OUT_DIR      (writes OUT_DIR/summary.json and prints a table)
"""
import json
import os
import sys


def load(path):
    with open(path) as f:
        text = f.read().strip()
    # a command may print progress lines before its JSON object: take the last JSON line
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"demo_summary: {path}: no JSON object found")


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    d = sys.argv[1]
    before = load(os.path.join(d, "attack_before.json"))
    after = load(os.path.join(d, "attack_after.json"))
    benches = [load(os.path.join(d, f)) for f in ("bench_b1.json", "bench_b64.json")]
    summary = {
        "eps": before["eps"], "attack": before["attack"], "images": before["n"],
        "before": {"sa": before["sa"], "ra": before["ra"]},
        "after": {"sa": after["sa"], "ra": after["ra"]},
        "speed": [{"batch": b["batch"], "threads": b["threads"],
                   "compiled_median_ms": b["compiled"]["latency"]["median_ms"],
                   "dense_median_ms": (b.get("dense") or {}).get("latency", {}).get("median_ms"),
                   "speedup_vs_dense": b.get("speedup_vs_dense")} for b in benches],
    }
    tmp = os.path.join(d, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(d, "summary.json"))

    print(f"\n== summary: 90%-sparse LeNet on Fashion-MNIST, {summary['attack']} eps {summary['eps']:g}, "
          f"{summary['images']} test images")
    print(f"  {'':28s} {'SA':>7s} {'RA':>7s}")
    print(f"  {'pruned, standard-trained':28s} {100*before['sa']:6.1f}% {100*before['ra']:6.1f}%")
    print(f"  {'after adversarial fine-tune':28s} {100*after['sa']:6.1f}% {100*after['ra']:6.1f}%")
    for s in summary["speed"]:
        dense = s["dense_median_ms"]
        ratio = s["speedup_vs_dense"]
        print(f"  speed, batch {s['batch']:3d}, {s['threads']} thread(s): compiled sparse "
              f"{s['compiled_median_ms']:.3f} ms, dense oneDNN "
              + (f"{dense:.3f} ms -> {ratio:.2f}x" if dense else "n/a"))
    print(f"  (details: {d}/summary.json and the JSON of each step)")


if __name__ == "__main__":
    main()
