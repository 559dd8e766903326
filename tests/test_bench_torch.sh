#!/usr/bin/env bash
# test_bench_torch.sh -- `ticket bench --vs torch` with the real PyTorch worker
# (bench/torch_bench.py under /usr/bin/python3) on the smallest zoo model: the JSON has PyTorch
# figures for each of its variants, counted from the interleaved iterations (warm-up dropped),
# PyTorch's logits on our input match ours, the speedup is over its faster variant, and
# --torch-dir keeps what it was given.  Nothing here checks a time.  The ways the worker can
# fail are in test_bench_worker.sh.  Skipped when /usr/bin/python3 cannot import torch.
set -u
BIN=${TICKET_BIN:?TICKET_BIN must point to the ticket binary}
PY=/usr/bin/python3
"$PY" -c 'import torch, numpy' 2>/dev/null || { echo "SKIP: $PY cannot import torch and numpy"; exit 77; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export TICKET_CACHE="$TMP/cache" TMPDIR="$TMP"
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

# with the dense engine too when this build has oneDNN
vs=dense,torch
"$BIN" bench cifar_model --vs dense --iters 1 --warmup 0 >/dev/null 2>&1 || vs=torch

# check_json NAME FILE ITERS VS VARIANTS...
check_json() {
  "$PY" - "$@" <<'EOF'
import json, sys
name, path, iters, vs, variants = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
r = json.load(open(path))
bad = []
def want(what, ok, detail):
    if not ok:
        bad.append("%s: %s" % (what, detail))
want("interleaved", r.get("interleaved") is True, r.get("interleaved"))
names = {"eager": "torch eager", "jit": "torch jit+ofi"}
turns = ["compiled"] + (["dense"] if "dense" in vs else []) + [names[v] for v in variants]
want("turns", r.get("turns") == turns, "%r, expected %r" % (r.get("turns"), turns))
want("compiled iters", r["compiled"]["latency"]["iters"] == iters, r["compiled"]["latency"])
if "dense" in vs:
    want("dense iters", r["dense"]["latency"]["iters"] == iters, r["dense"])
t = r.get("torch")
want("torch figures", isinstance(t, dict), t)
if isinstance(t, dict):
    want("variants", t.get("variants") == variants, t.get("variants"))
    c = t.get("check") or {}
    want("logits check", c.get("passed") is True and c.get("max_rel_diff", 1) < 1e-4 and c.get("images") == r["batch"],
         c)
    want("torch threads", t.get("threads") == r["threads"], t.get("threads"))
    meds = []
    for k in ("eager", "jit"):
        s = t.get(k)
        if k not in variants:
            want(k + " absent", s is None, s)
            continue
        want(k + " iters", isinstance(s, dict) and s.get("iters") == iters, s)
        if isinstance(s, dict):
            want(k + " statistics", 0 < s["min_ms"] <= s["median_ms"] <= s["max_ms"] and s["images_per_s"] > 0, s)
            meds.append(s["median_ms"])
    if meds and r.get("speedup_vs_torch"):
        exp = min(meds) / r["compiled"]["latency"]["median_ms"]
        want("speedup over the faster variant", abs(r["speedup_vs_torch"] - exp) <= 1e-4 * exp,
             "%r, expected %r" % (r["speedup_vs_torch"], exp))
    else:
        want("speedup_vs_torch", False, r.get("speedup_vs_torch"))
want("spinning_before_torch", isinstance(r.get("spinning_before_torch"), int), r.get("spinning_before_torch"))
for b in bad:
    print("FAIL: %s: %s" % (name, b), file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
}

# inference: eager and jit+optimize_for_inference, 1 warm-up and 2 timed turns each
timeout 300 "$BIN" bench cifar_model --vs "$vs" --threads 1 --iters 2 --warmup 1 --json --torch-dir "$TMP/keep" \
  >"$TMP/infer.json" 2>"$TMP/err"
rc=$?
if [ "$rc" != 0 ]; then
  fail "infer: exit $rc: $(cat "$TMP/err")"
else
  check_json infer "$TMP/infer.json" 2 "$vs" eager jit || fail "infer: see above"
  for f in graph.json weights.bin x.bin logits.bin torch_bench.log; do
    [ -f "$TMP/keep/$f" ] || fail "--torch-dir: no $f"
  done
fi

# a PGD-10 training step: one variant (eager), batch 2, 2 threads
timeout 300 "$BIN" bench cifar_model --vs "$vs" --mode train --batch 2 --threads 2 --iters 1 --warmup 1 --json \
  >"$TMP/train.json" 2>"$TMP/err"
rc=$?
if [ "$rc" != 0 ]; then
  fail "train: exit $rc: $(cat "$TMP/err")"
else
  check_json train "$TMP/train.json" 1 "$vs" eager || fail "train: see above"
fi
ls "$TMP" | grep -q '^ticket-bench-torch-' && fail "a temporary export directory was left behind: $(ls "$TMP")"

if [ "$fails" != 0 ]; then
  echo "test_bench_torch: $fails failure(s)"
  exit 1
fi
echo "test_bench_torch: all passed ($vs)"
