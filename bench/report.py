#!/usr/bin/python3
"""report.py -- summarise `ticket bench --json` lines (bench/sweep.sh) into tables and plot data.

Usage: report.py RESULTS.jsonl OUTDIR

Writes into OUTDIR:
  summary.txt   one row per run: model, mode, batch, threads, sparsity, medians (ms) of the
                compiled engine, oneDNN and PyTorch (its faster variant: jit+optimize_for_inference
                for inference, eager channels_last otherwise), the speedups (ratios of medians),
                cold/warm build time, generated code size, and the hypervisor's steal (% of all
                CPUs' time) during our turns and PyTorch's, where the run measured it
  speedup.dat   the same numbers as whitespace columns for bench/plot.gp:
                model batch threads mode sparsity speedup_dense speedup_torch
  layers.dat    per conv/linear layer: model batch threads sparsity layer variant dense_ms
                compiled_ms speedup (forward, from the --layers profile)
PyTorch is timed once per (model, mode, batch, threads) unless sweep.sh has --torch-every: zeros
in its weights change nothing (DESIGN.md section 8), so that number serves every sparsity of the
same configuration.  In summary.txt a PyTorch figure is plain when it was measured in the same
run, its iterations interleaved with ours ("interleaved": true); marked * when it comes from
another run of the same configuration, and ~ when it comes from an older ticket that timed
PyTorch after its own engines (no "interleaved" field).
"""
import json
import math
import os
import sys


def torch_best(t):
    if not t:
        return None
    meds = [t[k]["median_ms"] for k in ("eager", "jit") if t.get(k)]
    return min(meds) if meds else None


def steal_pct(r):
    """(ours, PyTorch's) steal in percent during the timed turns, None where not measured"""
    c = r["compiled"]["latency"].get("steal")
    t = [v.get("steal") for k, v in (r.get("torch") or {}).items() if k in ("eager", "jit") and isinstance(v, dict)]
    t = [v for v in t if v is not None]
    return (100.0 * c if c is not None else None, 100.0 * max(t) if t else None)


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) and v == v else "-"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    src, out = sys.argv[1], sys.argv[2]
    runs = []
    with open(src) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                runs.append(json.loads(line))
            except ValueError as e:
                sys.exit("report.py: %s:%d: not JSON: %s" % (src, n, e))
    torch = {}
    for r in runs:
        b = torch_best(r.get("torch"))
        if b is not None:
            torch[(r["arch"], r["mode"], r["batch"], r["threads"])] = b
    os.makedirs(out, exist_ok=True)
    rows = []
    with open(os.path.join(out, "speedup.dat"), "w") as dat, open(os.path.join(out, "layers.dat"), "w") as lay:
        dat.write("# model batch threads mode sparsity speedup_dense speedup_torch\n")
        lay.write("# model batch threads sparsity layer variant dense_ms compiled_ms speedup\n")
        for r in runs:
            c = r["compiled"]["latency"]["median_ms"]
            d = r["dense"]["latency"]["median_ms"] if r.get("dense") else None
            # PyTorch timed in this run (--torch-every), else the one run of this model/mode/batch/threads
            t = torch_best(r.get("torch"))
            src = ("" if r.get("interleaved") else "~") if t else "*"
            t = t or torch.get((r["arch"], r["mode"], r["batch"], r["threads"]))
            src = src if t else ""
            sd = d / c if d else float("nan")
            st = t / c if t else float("nan")
            comp = r.get("compile") or {}
            rows.append((r["arch"], r["mode"], r["batch"], r["threads"], r["sparsity"], c, d, t, sd, st,
                         comp.get("cold_s"), comp.get("warm_s"), comp.get("code_bytes"), src, steal_pct(r)))
            dat.write("%s %d %d %s %.4f %.4f %.4f\n" % (r["arch"], r["batch"], r["threads"], r["mode"], r["sparsity"],
                                                        sd, st))
            for l in r.get("layers") or []:
                if l["op"] not in ("conv2d", "linear") or not l.get("dense_fwd_ms") or not l["compiled_fwd_ms"]:
                    continue
                lay.write("%s %d %d %.4f %s %s %.5f %.5f %.4f\n" % (
                    r["arch"], r["batch"], r["threads"], r["sparsity"], l["name"], l["variant"], l["dense_fwd_ms"],
                    l["compiled_fwd_ms"], l["dense_fwd_ms"] / l["compiled_fwd_ms"]))
    # the PyTorch columns carry one more character: where the figure comes from (docstring)
    hdr = ("%-10s %-5s %5s %3s %8s %10s %10s %10s%1s %8s %8s%1s %7s %7s %10s %11s" %
           ("model", "mode", "batch", "thr", "sparsity", "ours ms", "oneDNN ms", "torch ms", "", "x dense", "x torch",
            "", "cold s", "warm s", "code B", "steal% o/t"))
    lines = [hdr, "-" * len(hdr)]
    for r in sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3], r[4])):
        lines.append("%-10s %-5s %5d %3d %8.3f %10s %10s %10s%1s %8s %8s%1s %7s %7s %10s %11s" % (
            r[0], r[1], r[2], r[3], r[4], fmt(r[5], ".3f"), fmt(r[6], ".3f"), fmt(r[7], ".3f"), r[13],
            fmt(r[8], ".2f"), fmt(r[9], ".2f"), r[13], fmt(r[10], ".2f"), fmt(r[11], ".2f"), fmt(r[12], "d"),
            fmt(r[14][0], ".0f") + "/" + fmt(r[14][1], ".0f")))
    robust = [r for r in rows if r[1] in ("pgd", "train")]
    if robust:
        # the robust-runtime view: PGD-10 evaluation in images/s, training steps in seconds
        lines += ["", "%-10s %-5s %5s %3s %8s %12s %12s %12s%1s %8s %8s%1s %11s" % (
            "model", "mode", "batch", "thr", "sparsity", "ours", "oneDNN", "torch", "", "x dense", "x torch", "",
            "steal% o/t")]
        for r in sorted(robust, key=lambda r: (r[0], r[1], r[2], r[3], r[4])):
            if r[1] == "pgd":
                cell = lambda ms: fmt(r[2] * 1000.0 / ms, ".2f") + " img/s" if ms else "-"
            else:
                cell = lambda ms: fmt(ms / 1000.0, ".3f") + " s" if ms else "-"
            lines.append("%-10s %-5s %5d %3d %8.3f %12s %12s %12s%1s %8s %8s%1s %11s" % (
                r[0], r[1], r[2], r[3], r[4], cell(r[5]), cell(r[6]), cell(r[7]), r[13], fmt(r[8], ".2f"),
                fmt(r[9], ".2f"), r[13], fmt(r[14][0], ".0f") + "/" + fmt(r[14][1], ".0f")))
    marks = {r[13] for r in rows}
    if "*" in marks:
        lines.append("* PyTorch timed in another run of this model/mode/batch/threads, not interleaved with this one")
    if "~" in marks:
        lines.append("~ PyTorch timed after our engines in the same run (older ticket), not interleaved")
    text = "\n".join(l.rstrip() for l in lines) + "\n"
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
