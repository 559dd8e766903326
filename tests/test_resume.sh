#!/usr/bin/env bash
# test_resume.sh -- training resumes exactly: a short adversarial training run (PGD-AT with
# augmentation, validation, a BatchNorm model with a mask) is
#   B: killed with SIGKILL at a random point after its first checkpoint, then resumed;
#   C: stopped with SIGTERM at a random point (a clean stop: the step finishes, a mid-epoch
#      checkpoint is written, exit status 143), then resumed;
#   D: stopped after 5 steps (mid-epoch), resumed for 7 more (across an epoch boundary), then
#      resumed to the end (--max-steps: the same stop path as a signal, at fixed points);
# and all must end with the same tensors, byte for byte, as the uninterrupted run A (same
# thread count), and with the same epoch log.  The random points are drawn from the time A
# spent between its first checkpoint and its end; they are printed, and RESUME_KILL_MS /
# RESUME_TERM_MS fix them to reproduce a failure.
set -euo pipefail
T=${TICKET_BIN:?TICKET_BIN is not set}
SRC=${TICKET_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
export PYTHONPATH=${PYTHONPATH:-$SRC/tools:$SRC/tests/py}
PY=/usr/bin/python3
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "SKIPPED: Fashion-MNIST (Debian dataset-fashion-mnist) is not installed"
  exit 77
fi
tmp=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
cd "$tmp"

# a small model with BatchNorm (running statistics are part of the state) and a 50% mask
$PY - model.tkt <<'EOF'
import sys
import numpy as np
import tkt
rng = np.random.default_rng(1)
def arr(shape, s):
    return (rng.standard_normal(shape) * s).astype(np.float32)
a = {"conv1.weight": arr((8, 1, 3, 3), 0.4), "bn1.weight": np.ones(8, np.float32), "bn1.bias": np.zeros(8, np.float32),
     "bn1.running_mean": np.zeros(8, np.float32), "bn1.running_var": np.ones(8, np.float32),
     "conv2.weight": arr((16, 8, 3, 3), 0.15), "conv2.bias": np.zeros(16, np.float32),
     "fc.weight": arr((10, 16 * 7 * 7), 0.05), "fc.bias": np.zeros(10, np.float32)}
masks = {k: (rng.uniform(size=a[k].shape) >= 0.5).astype(np.uint8) for k in ("conv1.weight", "conv2.weight", "fc.weight")}
idx = {n: i for i, n in enumerate(a)}
tensors = [tkt.Tensor(n, a[n].shape, data=a[n] * (masks[n] if n in masks else 1), mask=masks.get(n), init=0,
                      prunable=n in masks, trainable="running" not in n) for n in a]
L = tkt.Layer
layers = [L("conv1", "Conv2d", [0], weight=idx["conv1.weight"], kernel=[3, 3], stride=[1, 1], padding=[1, 1], dilation=[1, 1]),
          L("bn1", "BatchNorm", [1], weight=idx["bn1.weight"], bias=idx["bn1.bias"], running_mean=idx["bn1.running_mean"],
            running_var=idx["bn1.running_var"]),
          L("relu1", "Relu", [2]),
          L("pool1", "MaxPool", [3], kernel=[2, 2], stride=[2, 2], padding=[0, 0]),
          L("conv2", "Conv2d", [4], weight=idx["conv2.weight"], bias=idx["conv2.bias"], kernel=[3, 3], stride=[2, 2],
            padding=[1, 1], dilation=[1, 1]),
          L("relu2", "Relu", [5]),
          L("flatten", "Flatten", [6]),
          L("fc", "Linear", [7], weight=idx["fc.weight"], bias=idx["fc.bias"], out_features=10)]
tkt.save(tkt.Model("resume_test", 10, tkt.InputSpec(1, 28, 28, mean=[0.286], std=[0.353]), tensors, layers,
                   provenance=tkt.Provenance(method="random")), sys.argv[1])
EOF

ARGS=(--data fashion-mnist --limit 352 --val 64 --epochs 3 --batch 32 --mode pgd --eps 0.1 --alpha 0.03
      --steps 2 --val-steps 2 --augment crop:2,flip --lr 0.05 --schedule cosine --seed 3 --threads 2 --engine auto)
now_ms() { date +%s%3N; }

# A: uninterrupted; `window` = the time from its first checkpoint to its end
"$T" train model.tkt "${ARGS[@]}" -o A.tkt --json > A.json 2> A.err &
pid=$!
while [ ! -f A.ckpt.tkt ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
t1=$(now_ms)
wait $pid
window=$(( $(now_ms) - t1 ))
echo "A: uninterrupted run, ${window} ms from its first checkpoint to the end ($(grep -o '"engine":"[^"]*"' A.json))"

# B: SIGKILL at a random point after the first checkpoint, then resume
"$T" train model.tkt "${ARGS[@]}" -o B.tkt --json > B1.json 2> B1.err &
pid=$!
while [ ! -f B.ckpt.tkt ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
kill_ms=${RESUME_KILL_MS:-$(( RANDOM % (window * 8 / 10 + 1) ))}
sleep "$(printf '%d.%03d' $((kill_ms / 1000)) $((kill_ms % 1000)))"
if kill -9 $pid 2>/dev/null; then echo "B: SIGKILL ${kill_ms} ms after the first checkpoint"; else echo "B: the run ended before the kill"; fi
wait $pid 2>/dev/null || true
rm -f B.tkt
"$T" train model.tkt "${ARGS[@]}" -o B.tkt --resume --json > B.json 2> B.err
grep -o '"resumed_epoch":[-0-9]*' B.json
grep -q "resuming from" B.err || { echo "FAIL: B did not resume from its checkpoint"; cat B.err; exit 1; }

# C: SIGTERM at a random point: a clean stop with a mid-epoch checkpoint, then resume
"$T" train model.tkt "${ARGS[@]}" -o C.tkt --json > C1.json 2> C1.err &
pid=$!
while [ ! -f C.ckpt.tkt ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
term_ms=${RESUME_TERM_MS:-$(( RANDOM % (window * 8 / 10 + 1) ))}
sleep "$(printf '%d.%03d' $((term_ms / 1000)) $((term_ms % 1000)))"
kill -TERM $pid 2>/dev/null && echo "C: SIGTERM ${term_ms} ms after the first checkpoint" || echo "C: the run ended before SIGTERM"
rc=0
wait $pid || rc=$?
if [ $rc -eq 143 ]; then
  echo "C: stopped cleanly (exit 143) with a mid-run checkpoint"
  grep -q "checkpoint saved to" C1.err || { echo "FAIL: no stop message after SIGTERM"; cat C1.err; exit 1; }
  grep -q '"interrupted":true' C1.json || { echo "FAIL: the stopped run does not say interrupted"; exit 1; }
  [ ! -f C.tkt ] || { echo "FAIL: a stopped run wrote its final model"; exit 1; }
elif [ $rc -ne 0 ]; then
  echo "FAIL: the run exited $rc after SIGTERM"; cat C1.err; exit 1
fi
rm -f C.tkt
"$T" train model.tkt "${ARGS[@]}" -o C.tkt --resume --json > C.json 2> C.err

# D: stops at fixed steps: 5 (mid-epoch 1), 12 (mid-epoch 2, across the boundary), then the end
"$T" train model.tkt "${ARGS[@]}" -o D.tkt --max-steps 5 --json > D1.json 2> D1.err
"$T" train model.tkt "${ARGS[@]}" -o D.tkt --max-steps 7 --resume --json > D2.json 2> D2.err
grep -q '"interrupted":true' D1.json && grep -q '"interrupted":true' D2.json && [ ! -f D.tkt ] ||
  { echo "FAIL: --max-steps did not stop the run"; exit 1; }
grep -q '"steps":12' D2.json || { echo "FAIL: D stopped at the wrong step"; cat D2.json; exit 1; }
"$T" train model.tkt "${ARGS[@]}" -o D.tkt --resume --json > D.json 2> D.err

# the same tensors, byte for byte, and the same epoch log
$PY - A.tkt B.tkt C.tkt D.tkt <<'EOF'
import sys
import numpy as np
import tkt
ref = tkt.load(sys.argv[1])
bad = 0
for path in sys.argv[2:]:
    m = tkt.load(path)
    assert m.names() == ref.names(), path
    for a, b in zip(ref.tensors, m.tensors):
        da, db = a.data.reshape(-1).view(np.uint32), b.data.reshape(-1).view(np.uint32)
        if not np.array_equal(da, db):
            i = int(np.argmax(da != db))
            print("FAIL: %s: tensor %s differs from the uninterrupted run first at [%d]: %.9g vs %.9g"
                  % (path, a.name, i, b.data.reshape(-1)[i], a.data.reshape(-1)[i]))
            bad += 1
        if (a.mask is None) != (b.mask is None) or (a.mask is not None and not np.array_equal(a.mask, b.mask)):
            print("FAIL: %s: the mask of %s differs" % (path, a.name))
            bad += 1
    if (m.train_state.log if m.train_state else None) != (ref.train_state.log if ref.train_state else None):
        print("FAIL: %s: the epoch log differs from the uninterrupted run" % path)
        bad += 1
    if not bad:
        print("%s: all %d tensors identical to the uninterrupted run" % (path, len(m.tensors)))
sys.exit(1 if bad else 0)
EOF
cmp -s A.tkt B.tkt && cmp -s A.tkt C.tkt && cmp -s A.tkt D.tkt && echo "the final model files are identical byte for byte"
# and training did something: the weights moved from the start
$PY - model.tkt A.tkt <<'EOF'
import sys
import numpy as np
import tkt
a, b = tkt.load(sys.argv[1]), tkt.load(sys.argv[2])
d = max(float(np.max(np.abs(x.data - y.data))) for x, y in zip(a.tensors, b.tensors))
assert d > 1e-3, "the weights did not move (%g)" % d
EOF
echo "test_resume: passed"
