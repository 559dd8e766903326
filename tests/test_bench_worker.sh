#!/usr/bin/env bash
# test_bench_worker.sh -- the PyTorch worker protocol of `ticket bench --vs torch`, without
# PyTorch and without timing anything: TICKET_PYTHON points at a stand-in worker that answers
# "run VARIANT" with fixed times (eager: 1 ms x its turn number, jit: 0.5 ms x its turn number),
# so the interleaved order of the commands, the dropped warm-up turns and every statistic in the
# JSON are known exactly.  Then the ways a worker fails -- cannot start (/bin/false, a missing
# interpreter), torch not importable (the real bench/torch_bench.py with torch hidden), a ready
# line that is not JSON, garbage replies, dying mid-run, never answering (TICKET_TORCH_TIMEOUT=2)
# -- must each give one error line on stderr, nothing on stdout, a non-zero exit, no hang, and
# no worker left running.
set -u
BIN=${TICKET_BIN:?TICKET_BIN must point to the ticket binary}
PY=/usr/bin/python3
[ -x "$PY" ] || { echo "SKIP: $PY not found (the stand-in worker and the JSON checks need it)"; exit 77; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export TICKET_CACHE="$TMP/cache" TMPDIR="$TMP"
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

# The stand-in worker: FAKE_MODE says how it behaves; it logs its arguments, environment and the
# commands it gets to FAKE_LOG.
cat >"$TMP/worker.py" <<'EOF'
#!/usr/bin/python3
import json, os, sys, time
mode, log = os.environ.get("FAKE_MODE", "ok"), open(os.environ["FAKE_LOG"], "w")
args = sys.argv[1:]  # torch_bench.py DIR --batch N --threads T --mode M --check X LOGITS
log.write("args %s\nwait_policy %s\n" % (" ".join(args[1:]), os.environ.get("OMP_WAIT_POLICY")))
d, opt = args[1], dict(zip(args[2::2], args[3::2]))
batch = int(opt["--batch"])
g = json.load(open(os.path.join(d, "graph.json")))
c, h, w = g["input"]
log.write("sizes %d %d\n" % (os.path.getsize(args[-2]) // 4, os.path.getsize(args[-1]) // 4))
log.write("expect %d %d\n" % (batch * c * h * w, batch * g["classes"]))
log.flush()
if mode == "notjson":
    print("Welcome", flush=True)
    time.sleep(1000)
with open(os.path.join(d, "fake.pid"), "w") as f:
    f.write(str(os.getpid()))
variants = ["eager", "jit"] if opt["--mode"] == "infer" else ["eager"]
print(json.dumps({"torch": "fake", "threads": int(opt["--threads"]), "batch": batch, "mode": opt["--mode"],
                  "check": {"images": batch, "max_abs_diff": 0.0, "max_rel_diff": 0.0, "tolerance": 1e-3,
                            "passed": True}, "variants": variants}), flush=True)
turns = {v: 0 for v in variants}
for line in sys.stdin:
    log.write(line)
    log.flush()
    cmd = line.split()
    if cmd == ["quit"]:
        break
    turns[cmd[1]] += 1
    if mode == "garbage":
        print("oops", flush=True)
    elif mode == "hang":
        time.sleep(1000)
    elif mode == "die" and sum(turns.values()) == 3:
        sys.stderr.write("Traceback (most recent call last):\nRuntimeError: boom\n")
        sys.exit(3)
    print("%.9e" % ((1e-3 if cmd[1] == "eager" else 5e-4) * turns[cmd[1]]), flush=True)
EOF
chmod +x "$TMP/worker.py"

bench() { # bench OUT ERR ARGS... : ticket bench with the stand-in worker, at most 60 s
  local out=$1 err=$2
  shift 2
  TICKET_PYTHON="$TMP/worker.py" FAKE_LOG="$TMP/log" timeout 60 "$BIN" bench "$@" >"$out" 2>"$err"
}

# ---- a good run: 1 warm-up + 3 timed iterations, infer (two variants), 2 threads ----
bench "$TMP/out.json" "$TMP/err" cifar_model --vs torch --threads 2 --iters 3 --warmup 1 --json
rc=$?
if [ "$rc" != 0 ]; then
  fail "good run: exit $rc: $(cat "$TMP/err")"
else
  "$PY" - "$TMP/out.json" "$TMP/log" <<'EOF' || fail "good run: see above"
import json, sys
r = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read().splitlines()
bad = []
def want(what, got, exp, tol=1e-9):
    ok = abs(got - exp) <= tol * max(1.0, abs(exp)) if isinstance(exp, float) else got == exp
    if not ok:
        bad.append("%s: got %r, expected %r" % (what, got, exp))
want("interleaved", r.get("interleaved"), True)
want("rotated", r.get("rotated"), True)
want("turns", r.get("turns"), ["compiled", "torch eager", "torch jit+ofi"])
want("compiled iters", r["compiled"]["latency"]["iters"], 3)
t = r["torch"]
want("torch version", t["torch"], "fake")
want("variants", t["variants"], ["eager", "jit"])
want("check passed", t["check"]["passed"], True)
# eager answered 1, 2, 3, 4 ms; the first is warm-up: 2, 3, 4 remain.  jit: 0.5 .. 2 ms.
e, j = t["eager"], t["jit"]
for k, v in (("iters", 3), ("median_ms", 3.0), ("mean_ms", 3.0), ("min_ms", 2.0), ("max_ms", 4.0),
             ("p90_ms", 4.0), ("p99_ms", 4.0), ("images_per_s", 1 * 3 / 0.009)):
    want("eager " + k, e[k], float(v) if k != "iters" else v, 1e-5)  # %.6g in the JSON
for k, v in (("iters", 3), ("median_ms", 1.5), ("mean_ms", 1.5), ("min_ms", 1.0), ("max_ms", 2.0),
             ("images_per_s", 1 * 3 / 0.0045)):
    want("jit " + k, j[k], float(v) if k != "iters" else v, 1e-5)
want("speedup_vs_torch", r["speedup_vs_torch"], 1.5 / r["compiled"]["latency"]["median_ms"], 1e-4)
want("spinning_before_torch", isinstance(r["spinning_before_torch"], int), True)
# the hypervisor's steal during each engine's turns: a fraction, or null for turns too short
# for the 10 ms tick (these are milliseconds)
for name, s in (("compiled", r["compiled"]["latency"]), ("eager", e), ("jit", j)):
    st = s.get("steal", "missing")
    want(name + " steal null or a fraction", st is None or (isinstance(st, float) and 0.0 <= st <= 1.0), True)
# what the worker saw: PASSIVE, its files, then run eager / run jit four times and quit
want("worker's OMP_WAIT_POLICY", log[1], "wait_policy PASSIVE")
want("x.bin and logits.bin sizes", log[2].split()[1:], log[3].split()[1:])
want("worker arguments", " ".join(log[0].split()[2:8]), "--batch 1 --threads 2 --mode infer")
# turns rotate: iteration i starts at turn i % 3 of (compiled, eager, jit)
want("commands", log[4:], ["run eager", "run jit", "run eager", "run jit", "run jit", "run eager",
                           "run eager", "run jit", "quit"])
for b in bad:
    print("FAIL: good run: " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
  [ -s "$TMP/err" ] && fail "good run: wrote on stderr: $(head -3 "$TMP/err")"
fi

# ---- the text report: PyTorch rows and the speedup over its faster variant; train has one variant ----
bench "$TMP/out.txt" "$TMP/err" cifar_model --vs torch --mode train --batch 2 --threads 1 --iters 2 --warmup 0
rc=$?
if [ "$rc" != 0 ]; then
  fail "train run: exit $rc: $(cat "$TMP/err")"
else
  grep -q "^  torch eager " "$TMP/out.txt" || fail "train run: no 'torch eager' row: $(cat "$TMP/out.txt")"
  grep -q "torch jit" "$TMP/out.txt" && fail "train run: a jit row in train mode"
  grep -q "speedup over PyTorch (its faster variant, torch eager)" "$TMP/out.txt" ||
    fail "train run: no speedup over PyTorch: $(cat "$TMP/out.txt")"
  [ "$(grep -c '^run eager$' "$TMP/log")" = 2 ] || fail "train run: not 2 'run eager' commands: $(cat "$TMP/log")"
fi

# ---- --alt: a second compiled engine built under other settings, its turns interleaved ----
TICKET_FOLD_BN=1 timeout 60 "$BIN" bench cifar_model --vs none --threads 1 --iters 3 --warmup 1 \
  --alt TICKET_FOLD_BN=0,TICKET_BOGUS_SETTING=x --json >"$TMP/alt.json" 2>"$TMP/err"
rc=$?
if [ "$rc" != 0 ]; then
  fail "alt run: exit $rc: $(cat "$TMP/err")"
else
  "$PY" - "$TMP/alt.json" <<'EOF' || fail "alt run: see above"
import json, sys
r = json.load(open(sys.argv[1]))
bad = []
def want(what, ok):
    if not ok:
        bad.append(what)
want("turns compiled, alt: %r" % r["turns"], r["turns"] == ["compiled", "alt"])
a = r["alt"]
want("alt env: %r" % a["env"], a["env"] == "TICKET_FOLD_BN=0,TICKET_BOGUS_SETTING=x")
# the setting reached the alt engine, and only it (the compiled one was built before, under
# TICKET_FOLD_BN=1, which the run must have restored)
want("alt plan without folding: %r" % a["plan"], "folding off" in a["plan"])
want("compiled plan with folding: %r" % r["compiled"]["plan"], "folding off" not in r["compiled"]["plan"])
want("alt iters %r" % a["latency"]["iters"], a["latency"]["iters"] == 3)
ratio = a["latency"]["median_ms"] / r["compiled"]["latency"]["median_ms"]
want("alt_over_compiled %r vs %r" % (r["alt_over_compiled"], ratio), abs(r["alt_over_compiled"] - ratio) <= 1e-4 * ratio)
for b in bad:
    print("FAIL: alt run: " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
fi
for spec in FOO =1 "A=1,,B=2"; do
  timeout 60 "$BIN" bench cifar_model --vs none --iters 1 --alt "$spec" >"$TMP/out" 2>"$TMP/err"
  rc=$?
  [ "$rc" = 2 ] || fail "--alt '$spec': exit $rc, expected 2 (a usage error)"
  grep -qF "ticket bench: error: --alt: '$spec' is not NAME=VALUE" "$TMP/err" || fail "--alt '$spec': $(cat "$TMP/err")"
done

# ---- failures: one line, non-zero exit, nothing on stdout, no hang, no worker left ----
# expect_error NAME NEEDLE ENV... -- every ENV is VAR=VALUE for that run
expect_error() {
  local name=$1 needle=$2
  shift 2
  local t0=$SECONDS
  env "$@" FAKE_LOG="$TMP/log" timeout 60 "$BIN" bench cifar_model --vs torch --threads 1 --iters 2 --warmup 1 \
    --torch-dir "$TMP/dir-$name" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  [ "$rc" = 124 ] && fail "$name: still running after 60 s"
  [ "$rc" != 0 ] || fail "$name: exit 0"
  [ "$(wc -l <"$TMP/err")" = 1 ] || fail "$name: stderr is not one line: $(cat "$TMP/err")"
  grep -q "^ticket bench: error: " "$TMP/err" || fail "$name: not a ticket error line: $(cat "$TMP/err")"
  grep -qF -- "$needle" "$TMP/err" || fail "$name: message lacks '$needle': $(cat "$TMP/err")"
  [ -s "$TMP/out" ] && fail "$name: printed on stdout: $(head -3 "$TMP/out")"
  if [ -f "$TMP/dir-$name/fake.pid" ]; then
    local pid
    pid=$(cat "$TMP/dir-$name/fake.pid")
    kill -0 "$pid" 2>/dev/null && { fail "$name: worker $pid still running"; kill -9 "$pid"; }
  fi
  echo "ok: $name ($((SECONDS - t0)) s): $(cat "$TMP/err")"
}
mkdir -p "$TMP/notorch/torch"
echo 'raise ModuleNotFoundError("No module named torch", name="torch")' >"$TMP/notorch/torch/__init__.py"
printf '#!/bin/bash\nPYTHONPATH=%s exec %s "$@"\n' "$TMP/notorch" "$PY" >"$TMP/python-notorch"
chmod +x "$TMP/python-notorch"

expect_error false "exited with status 1 before it was ready" TICKET_PYTHON=/bin/false
expect_error missing "cannot start the PyTorch worker" TICKET_PYTHON="$TMP/no-such-python"
expect_error notorch "cannot import torch" TICKET_PYTHON="$TMP/python-notorch"
expect_error notjson "is not the JSON object" TICKET_PYTHON="$TMP/worker.py" FAKE_MODE=notjson
expect_error garbage "replied 'oops' on 'run eager'" TICKET_PYTHON="$TMP/worker.py" FAKE_MODE=garbage
expect_error die "exited with status 3 on 'run eager' (its turn 2); its last message: RuntimeError: boom" \
  TICKET_PYTHON="$TMP/worker.py" FAKE_MODE=die
expect_error hang "no answer within 2 s on 'run eager' (its turn 1)" TICKET_PYTHON="$TMP/worker.py" FAKE_MODE=hang \
  TICKET_TORCH_TIMEOUT=2
expect_error timeout "TICKET_TORCH_TIMEOUT: 'soon' is not a number" TICKET_PYTHON="$TMP/worker.py" TICKET_TORCH_TIMEOUT=soon

if [ "$fails" != 0 ]; then
  echo "test_bench_worker: $fails failure(s)"
  exit 1
fi
echo "test_bench_worker: all passed"
