#!/usr/bin/env bash
# test_prune_cli.sh -- `ticket prune` and `ticket masks` end to end on a zoo LeNet: magnitude
# (global and layer-wise), random, two IMP rounds with rewinding, the mask comparison, the
# counts they report checked against the model files (read independently with tools/tkt.py),
# and one-line errors with a non-zero exit for bad requests.  Also --help of train, prune
# and masks.
set -euo pipefail
T=${TICKET_BIN:?TICKET_BIN is not set}
SRC=${TICKET_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
export PYTHONPATH=${PYTHONPATH:-$SRC/tools:$SRC/tests/py}
PY=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
fail() { echo "FAIL: $*"; exit 1; }

for c in train prune masks; do
  "$T" $c --help > help.txt || fail "ticket $c --help: exit status"
  grep -q "usage: ticket $c" help.txt || fail "ticket $c --help"
done

"$T" init lenet -o dense.tkt --seed 1 > /dev/null
"$T" init lenet -o init2.tkt --seed 2 > /dev/null
"$T" prune dense.tkt --method magnitude --sparsity 0.9 -o g90.tkt --json > g90.json
"$T" prune dense.tkt --method magnitude --sparsity 9/10 --scope layer -o l90.tkt --json > l90.json
"$T" prune dense.tkt --method random --sparsity 0.5 --seed 4 -o r50.tkt --json > r50.json
"$T" prune g90.tkt --method magnitude --sparsity 0.95 -o g95.tkt > g95.txt
"$T" prune dense.tkt --method imp --rewind init2.tkt -o imp1.tkt --json > imp1.json
"$T" prune imp1.tkt --method imp --rewind init2.tkt -o imp2.tkt --json > imp2.json
"$T" masks g90.tkt l90.tkt --json > m_gl.json
"$T" masks g90.tkt g95.tkt --json > m_95.json
"$T" masks g90.tkt g90.tkt > m_same.txt

$PY - <<'EOF'
import json
import numpy as np
import tkt
ok = True
def check(c, msg):
    global ok
    if not c:
        print("FAIL: " + msg)
        ok = False
dense = tkt.load("dense.tkt")
init2 = tkt.load("init2.tkt")
N = sum(t.numel for t in dense.prunable_tensors())
# global magnitude: floor(0.9 N) pruned; every kept |w| >= every pruned |w|
g = tkt.load("g90.tkt")
kept = sum(t.nnz() for t in g.prunable_tensors())
check(N - kept == int(np.floor(0.9 * N + 1e-6)), "global 0.9: %d pruned of %d" % (N - kept, N))
kv = np.concatenate([np.abs(dense.tensor(t.name).data.reshape(-1))[t.mask.reshape(-1) != 0] for t in g.prunable_tensors()])
pv = np.concatenate([np.abs(dense.tensor(t.name).data.reshape(-1))[t.mask.reshape(-1) == 0] for t in g.prunable_tensors()])
check(kv.min() >= pv.max(), "global: a pruned weight is larger than a kept one")
for t in g.prunable_tensors():
    check(np.all(t.data.reshape(-1)[t.mask.reshape(-1) == 0] == 0), "%s: pruned data not zero" % t.name)
j = json.load(open("g90.json"))
check(j["kept"] == kept and j["total"] == N and abs(j["sparsity"] - (1 - kept / N)) < 1e-9, "g90.json counts")
check(g.provenance.method == "magnitude" and abs(g.provenance.sparsity - (1 - kept / N)) < 1e-9, "g90 provenance")
# layer-wise: floor(0.9 numel) in each tensor
l = tkt.load("l90.tkt")
for t in l.prunable_tensors():
    check(t.numel - t.nnz() == int(np.floor(0.9 * t.numel + 1e-6)), "layer 0.9: %s" % t.name)
    d = np.abs(dense.tensor(t.name).data.reshape(-1))
    check(d[t.mask.reshape(-1) != 0].min() >= d[t.mask.reshape(-1) == 0].max(), "layer: %s threshold" % t.name)
# random
r = tkt.load("r50.tkt")
check(N - sum(t.nnz() for t in r.prunable_tensors()) == N // 2, "random 0.5 count")
# g95 keeps g90's pruned weights pruned
g95 = tkt.load("g95.tkt")
for a, b in zip(g.prunable_tensors(), g95.prunable_tensors()):
    check(not np.any((a.mask == 0) & (b.mask != 0)), "g95 revived a pruned weight of %s" % a.name)
# IMP: round(0.2 kept) per round, values rewound to init2
i1, i2 = tkt.load("imp1.tkt"), tkt.load("imp2.tkt")
k1 = sum(t.nnz() for t in i1.prunable_tensors())
k2 = sum(t.nnz() for t in i2.prunable_tensors())
check(k1 == N - round(0.2 * N) and k2 == k1 - round(0.2 * k1), "imp counts %d %d (N %d)" % (k1, k2, N))
for t in i2.tensors:
    want = init2.tensor(t.name).data
    if t.mask is not None:
        want = np.where(t.mask != 0, want, 0)
    check(np.array_equal(t.data, want), "imp2: %s not rewound to init2" % t.name)
check(i2.provenance.method == "imp", "imp provenance")
# masks: g90 vs l90 per tensor, recomputed here
m = json.load(open("m_gl.json"))
tb, ub, oa, ob = 0, 0, 0, 0
for row in m["tensors"]:
    a, b = g.tensor(row["name"]).mask.reshape(-1) != 0, l.tensor(row["name"]).mask.reshape(-1) != 0
    both, union = int(np.sum(a & b)), int(np.sum(a | b))
    check(row["both"] == both and row["only_a"] == int(np.sum(a & ~b)) and row["only_b"] == int(np.sum(b & ~a)),
          "masks: %s counts" % row["name"])
    check(abs(row["jaccard"] - both / union) < 1e-9, "masks: %s jaccard" % row["name"])
    tb, ub = tb + both, ub + union
check(abs(m["total"]["jaccard"] - tb / ub) < 1e-9, "masks: total jaccard")
m95 = json.load(open("m_95.json"))["total"]
check(m95["only_b"] == 0 and m95["kept_b"] < m95["kept_a"], "masks g90 vs g95: %s" % m95)
raise SystemExit(0 if ok else 1)
EOF
grep -q "total" m_same.txt && grep -q "1.0000" m_same.txt || fail "masks of a model with itself"

# bad requests: one line naming the problem, non-zero exit
expect_error() { # pattern, command...
  local pat=$1; shift
  local rc=0
  "$@" > out.txt 2> err.txt || rc=$?
  [ $rc -ne 0 ] || fail "'$*' succeeded"
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; fail "'$*': expected one line of error"; }
  grep -q -- "$pat" err.txt || { cat err.txt; fail "'$*': the error does not mention '$pat'"; }
}
expect_error "--rewind" "$T" prune dense.tkt --method imp -o x.tkt
expect_error "--sparsity" "$T" prune dense.tkt --method magnitude --sparsity 1.5 -o x.tkt
expect_error "unknown method" "$T" prune dense.tkt --method nope --sparsity 0.5 -o x.tkt
expect_error "already" "$T" prune g90.tkt --method magnitude --sparsity 0.5 -o x.tkt
expect_error "missing.tkt" "$T" prune missing.tkt --method magnitude --sparsity 0.5 -o x.tkt
expect_error "missing.tkt" "$T" masks g90.tkt missing.tkt
"$T" init cifar_model -o other.tkt > /dev/null
expect_error "other.tkt" "$T" masks g90.tkt other.tkt
expect_error "--mode" "$T" train dense.tkt --data fashion-mnist -o x.tkt
expect_error "--lr" "$T" train dense.tkt --data fashion-mnist --mode st --lr abc -o x.tkt
expect_error "--augment" "$T" train dense.tkt --data fashion-mnist --mode st --augment rotate -o x.tkt
[ ! -e x.tkt ] || fail "a failed command wrote its output"
echo "test_prune_cli: passed"
