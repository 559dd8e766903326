#!/usr/bin/python3
"""perf_annotate.py -- instruction-level samples of the generated kernels.

    TICKET_CACHE=$(mktemp -d) TICKET_DUMP_DIR=DIR TICKET_PERF_MAP=1 \\
        perf record -e cpu-clock -o perf.data build/ticket bench resnet18 --random-mask 0.9 ...
    bench/perf_annotate.py perf.data DIR [--top 5] [--min 0.5] [--symbol tk_k..._fwd]

perf names the JIT's functions from /tmp/perf-<pid>.map (TICKET_PERF_MAP=1) but cannot
disassemble them; TICKET_DUMP_DIR (with an empty cache, so that every kernel is emitted and
compiled) leaves each layer's object as DIR/layerNNN[t]_<hash>.o.  For the kernels with the
most samples (or --symbol), this prints each instruction that got at least --min percent of
that kernel's samples, its offset and the disassembly.  Without hardware counters (this VM),
cpu-clock samples land on the instruction after the one that waits.
"""
import argparse
import collections
import glob
import os
import re
import subprocess
import sys


def die(msg):
    print("perf_annotate: error: " + msg, file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("perf_data")
    ap.add_argument("dump_dir")
    ap.add_argument("--top", type=int, default=5, help="kernels to annotate (default 5)")
    ap.add_argument("--min", type=float, default=0.5, help="percent of a kernel's samples to show a line")
    ap.add_argument("--symbol", help="annotate this kernel only")
    a = ap.parse_args()
    if not os.path.isfile(a.perf_data):
        die("%s: no such perf data" % a.perf_data)
    if not os.path.isdir(a.dump_dir):
        die("%s: no such dump directory" % a.dump_dir)
    try:
        out = subprocess.run(["perf", "script", "-i", a.perf_data, "-F", "pid,ip,sym"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        die("perf script on %s failed: %s" % (a.perf_data, e))
    samples = collections.defaultdict(collections.Counter)  # sym -> ip -> count
    pids = collections.defaultdict(set)
    total = 0
    for line in out.splitlines():
        p = line.split()
        if len(p) < 3:
            continue
        total += 1
        if re.fullmatch(r"tk_k[0-9a-f]{16}_\w+", p[2]):
            samples[p[2]][int(p[1], 16)] += 1
            pids[p[2]].add(p[0])
    if not samples:
        die("no samples in generated kernels (was TICKET_PERF_MAP=1 set for the recorded run?)")
    if a.symbol:
        if a.symbol not in samples:
            die("%s: no samples" % a.symbol)
        syms = [a.symbol]
    else:
        syms = sorted(samples, key=lambda s: -sum(samples[s].values()))[: a.top]
    for sym in syms:
        n = sum(samples[sym].values())
        print("== %s: %d samples, %.1f%% of all" % (sym, n, 100.0 * n / total))
        base = None
        for pid in pids[sym]:
            try:
                for line in open("/tmp/perf-%s.map" % pid):
                    f = line.split()
                    if len(f) == 3 and f[2] == sym:
                        base = int(f[0], 16)
            except OSError:
                pass
        objs = glob.glob(os.path.join(a.dump_dir, "layer*_%s.o" % sym[4:20]))
        if base is None or not objs:
            print("   (no %s)" % ("perf map entry" if base is None else "dumped object in " + a.dump_dir))
            continue
        dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "--disassemble=" + sym, objs[0]],
                             capture_output=True, text=True).stdout
        lines = [l for l in dis.splitlines() if re.match(r"\s*[0-9a-f]+:", l)]
        if not lines:
            print("   (%s not in %s)" % (sym, objs[0]))
            continue
        start = int(lines[0].split(":")[0], 16)
        for l in lines:
            off = int(l.split(":")[0], 16) - start
            c = samples[sym].get(base + off, 0)
            if 100.0 * c / n >= a.min:
                print("%6.1f%%  +%-5x %s" % (100.0 * c / n, off, l.split(":", 1)[1].strip()))


if __name__ == "__main__":
    main()
