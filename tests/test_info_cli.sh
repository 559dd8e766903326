#!/usr/bin/env bash
# test_info_cli.sh -- `ticket info` on good and bad models: exit codes, one error line on
# stderr that names the file, --help, --json (parsed by python3), and the numbers of a small
# architecture checked against values worked out by hand.  When `ticket init` is available,
# every zoo model is also written, then inspected as a .tkt file.
set -u
BIN=${TICKET_BIN:?TICKET_BIN must point to the ticket binary}
SRC=${TICKET_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
PY=/usr/bin/python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

# expect_error NAME EXIT FILE-NAME-IN-MESSAGE NEEDLE -- ticket info ARGS...
expect_error() {
  local name=$1 want=$2 file=$3 needle=$4
  shift 5
  "$BIN" info "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  [ "$rc" = "$want" ] || fail "$name: exit $rc, expected $want ($(cat "$TMP/err"))"
  [ "$(wc -l <"$TMP/err")" = 1 ] || fail "$name: stderr is not one line: $(cat "$TMP/err")"
  grep -q "^ticket info: error: $file" "$TMP/err" || fail "$name: message does not start with the file: $(cat "$TMP/err")"
  grep -qF -- "$needle" "$TMP/err" || fail "$name: message lacks '$needle': $(cat "$TMP/err")"
  [ -s "$TMP/out" ] && fail "$name: printed on stdout: $(head -3 "$TMP/out")"
}

# A small architecture: 2x6x6 -> conv 3x3 (4 out, bias, 2 of 72 weights masked) -> relu
# -> maxpool 2 -> flatten -> linear 16 -> 3.  Worked out by hand:
#   conv: 72 weights + 4 bias = 76 params, 70 kept, output 4x4x4: 72*16 = 1152 MACs, 70*16 = 1120
#   linear: 48 + 3 = 51 params, 48 MACs;  totals 127 params, 120 prunable, 118 kept,
#   sparsity 2/120, 1200 dense MACs, 1168 sparse.
cat >"$TMP/small.json" <<'EOF'
{
  "arch": "small", "classes": 3,
  "input": {"channels": 2, "height": 6, "width": 6, "mean": [0.5, 0.5], "std": [0.25, 0.25]},
  "tensors": [
    {"name": "conv.weight", "shape": [4, 2, 3, 3], "init": "KaimingNormalFanOut", "prunable": true,
     "mask": [252, 255, 255, 255, 255, 255, 255, 255, 255]},
    {"name": "conv.bias", "shape": [4], "init": "Zeros"},
    {"name": "fc.weight", "shape": [3, 16], "init": "TorchDefault", "prunable": true},
    {"name": "fc.bias", "shape": [3], "init": "TorchDefaultBias", "init_fan_in": 16}
  ],
  "layers": [
    {"name": "conv", "op": "Conv2d", "inputs": [0], "weight": 0, "bias": 1, "kernel": [3, 3]},
    {"name": "relu", "op": "Relu", "inputs": [1]},
    {"name": "pool", "op": "MaxPool", "inputs": [2], "kernel": [2, 2], "stride": [2, 2]},
    {"name": "flat", "op": "Flatten", "inputs": [3]},
    {"name": "fc", "op": "Linear", "inputs": [4], "weight": 2, "bias": 3}
  ],
  "provenance": {"method": "hand", "sparsity": 0.0166, "metrics": [{"name": "ra", "value": 0.25}]}
}
EOF

# --help
"$BIN" info --help >"$TMP/help" 2>&1 || fail "--help exits non-zero"
grep -q "usage: ticket info MODEL" "$TMP/help" || fail "--help lacks the usage line"

# text output of the architecture file
if "$BIN" info "$TMP/small.json" >"$TMP/out" 2>"$TMP/err"; then
  [ -s "$TMP/err" ] && fail "good model: stderr not empty: $(cat "$TMP/err")"
  grep -q "^arch *small, 3 classes" "$TMP/out" || fail "text: arch line"
  grep -q "^input *2x6x6, range \[0, 1\], normalised" "$TMP/out" || fail "text: input line"
  grep -Eq "^ +0 +conv +conv2d +2x6x6 +4x4x4 +76 +70 +0\.0278 +0\.001 +0\.001" "$TMP/out" || fail "text: conv row: $(grep ' conv ' "$TMP/out")"
  grep -q "127 parameters, 120 prunable, 118 kept (sparsity 0.0167)" "$TMP/out" || fail "text: totals"
else
  fail "info on a good architecture file: $(cat "$TMP/err")"
fi

# --json, checked field by field
if "$BIN" info "$TMP/small.json" --json >"$TMP/json" 2>"$TMP/err"; then
  "$PY" - "$TMP/json" <<'EOF' || fail "--json content"
import json, sys
d = json.load(open(sys.argv[1]))
t = d["totals"]
want = {"params": 127, "prunable": 120, "kept": 118, "macs": 1200, "sparse_macs": 1168}
bad = [(k, t[k], v) for k, v in want.items() if t[k] != v]
assert not bad, bad
assert abs(t["sparsity"] - 2 / 120) < 1e-12, t["sparsity"]
L = d["layers"]
assert [l["op"] for l in L] == ["conv2d", "relu", "maxpool", "flatten", "linear"], L
assert L[0]["input"] == [2, 6, 6] and L[0]["output"] == [4, 4, 4] and L[2]["output"] == [4, 2, 2]
assert L[0]["nonzeros"] == 70 and L[0]["macs"] == 1152 and L[0]["sparse_macs"] == 1120
assert L[4]["params"] == 51 and L[4]["weight"] == "fc.weight" and L[1]["weight"] is None
assert d["input"]["mean"] == [0.5, 0.5] and d["classes"] == 3 and d["arch"] == "small"
assert d["provenance"]["method"] == "hand" and d["provenance"]["metrics"] == {"ra": 0.25}
assert d["train_state"] is None
EOF
else
  fail "info --json: $(cat "$TMP/err")"
fi

# bad inputs: one line on stderr naming the file, the right exit code
printf '' >"$TMP/empty.tkt"
expect_error "empty file" 4 "$TMP/empty.tkt" "empty file" -- "$TMP/empty.tkt"
expect_error "missing file" 3 "$TMP/nope.tkt" "cannot open" -- "$TMP/nope.tkt"
mkdir "$TMP/dir.tkt"
expect_error "directory" 3 "$TMP/dir.tkt" "not a regular file" -- "$TMP/dir.tkt"
yes "not a model file" | head -c 4096 >"$TMP/noise.tkt"
expect_error "random bytes" 4 "$TMP/noise.tkt" "" -- "$TMP/noise.tkt"
sed 's/"mask": \[252,/"mask": [252, 1,/' "$TMP/small.json" >"$TMP/badmask.json"
expect_error "bad mask" 4 "$TMP/badmask.json" "tensor conv.weight: mask has 10 bytes, expected 9" -- "$TMP/badmask.json"
sed 's/"inputs": \[2\]/"inputs": [5]/' "$TMP/small.json" >"$TMP/cycle.json"
expect_error "cyclic graph" 4 "$TMP/cycle.json" "layer 2 (pool, maxpool): inputs[0]" -- "$TMP/cycle.json"
sed 's/"arch": "small",/"arch": "small"/' "$TMP/small.json" >"$TMP/syntax.json"
expect_error "JSON syntax" 4 "$TMP/syntax.json" "line 2" -- "$TMP/syntax.json"
"$BIN" info >/dev/null 2>"$TMP/err"
[ $? = 2 ] || fail "no MODEL: exit code is not 2"
"$BIN" info "$TMP/small.json" --bogus >/dev/null 2>"$TMP/err"
[ $? = 2 ] || fail "unknown option: exit code is not 2"

# zoo names resolve to the embedded architectures
"$BIN" info lenet --json >"$TMP/lenet.json" 2>"$TMP/err" || fail "info lenet: $(cat "$TMP/err")"

# a real model file: from `ticket init` when it exists, and truncated copies of it
if "$BIN" init --help >/dev/null 2>&1; then
  for arch in $(ls "$SRC"/models/*.json | xargs -n1 basename | sed 's/\.json$//'); do
    if ! "$BIN" init "$arch" -o "$TMP/$arch.tkt" >/dev/null 2>"$TMP/err"; then
      fail "init $arch: $(cat "$TMP/err")"
      continue
    fi
    "$BIN" info "$TMP/$arch.tkt" --json >"$TMP/$arch.info" 2>"$TMP/err" || { fail "info $arch.tkt: $(cat "$TMP/err")"; continue; }
    "$BIN" info "$SRC/models/$arch.json" --json >"$TMP/$arch.arch" 2>"$TMP/err" || fail "info models/$arch.json: $(cat "$TMP/err")"
    # the initialised model and its architecture have the same layers and totals
    "$PY" - "$TMP/$arch.info" "$TMP/$arch.arch" <<'EOF' || fail "$arch: .tkt and .json disagree"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for k in ("macs", "params", "prunable", "kept"):
    assert a["totals"][k] == b["totals"][k], (k, a["totals"][k], b["totals"][k])
assert [l["output"] for l in a["layers"]] == [l["output"] for l in b["layers"]]
EOF
    rm -f "$TMP/$arch.tkt"
  done
  "$BIN" init lenet -o "$TMP/lenet.tkt" >/dev/null 2>&1
  size=$(stat -c %s "$TMP/lenet.tkt")
  head -c $((size / 2)) "$TMP/lenet.tkt" >"$TMP/half.tkt"
  expect_error "truncated model" 4 "$TMP/half.tkt" "" -- "$TMP/half.tkt"
  head -c $((size - 1)) "$TMP/lenet.tkt" >"$TMP/minus1.tkt"
  expect_error "model minus one byte" 4 "$TMP/minus1.tkt" "" -- "$TMP/minus1.tkt"
else
  echo "note: ticket init is not available; the zoo part is skipped"
fi

if [ "$fails" -ne 0 ]; then
  echo "test_info_cli: $fails check(s) FAILED" >&2
  exit 1
fi
echo "test_info_cli: all checks passed"
