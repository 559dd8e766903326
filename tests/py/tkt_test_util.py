"""tkt_test_util.py -- shared helpers for the Python tests (tests/py/test_*.py).

Tests run under Debian's /usr/bin/python3 with PYTHONPATH=tools:tests/py and the environment
CMake sets: TICKET_BIN (the `ticket` binary), TICKET_SOURCE_DIR, TICKET_HEAVY ("1" when heavy
cases are enabled).  TICKET_ENGINE picks the engine of `ticket run` (default reference).

  skip(reason)            exit 77 (ctest: skipped) with the reason
  require_torch()         the torch module, or skip
  ticket_bin()            path of `ticket` (TICKET_BIN, else ./build/ticket), or skip
  run([...]) / ticket(...) subprocess; raises Failed with the command's last stderr line
  Checker                 records failures; close() compares arrays by max-abs-diff / max-abs-ref
                          and reports the worst element; done() exits 0 or 1 with a summary
  random_masks(model, density, rng)  Bernoulli masks on every prunable tensor
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

SKIP = 77


def skip(reason):
    print("SKIP: %s" % reason)
    sys.exit(SKIP)


def require_torch():
    try:
        import torch
    except ImportError as e:
        skip("PyTorch is not importable (%s); install python3-torch and run /usr/bin/python3" % e)
    torch.set_num_threads(int(os.environ.get("TICKET_TEST_THREADS", "1")))
    return torch


def source_dir():
    d = os.environ.get("TICKET_SOURCE_DIR")
    return d if d else os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ticket_bin():
    b = os.environ.get("TICKET_BIN")
    if b and os.access(b, os.X_OK):
        return b
    local = os.path.join(source_dir(), "build", "ticket")
    if os.access(local, os.X_OK):
        os.environ["TICKET_BIN"] = local
        return local
    skip("no ticket binary (set TICKET_BIN or build ./build/ticket)")


def heavy():
    return os.environ.get("TICKET_HEAVY", "0") in ("1", "ON", "on", "true", "TRUE")


def engine():
    return os.environ.get("TICKET_ENGINE", "reference")


def shared_data():
    d = os.environ.get("TICKET_SHARED_DATA")
    return d if d else os.path.join(source_dir(), "..", "shared", "data")


class Failed(Exception):
    pass


def run(cmd, expect_ok=True, env=None):
    """Run a command; -> CompletedProcess (text).  With expect_ok a failure raises Failed."""
    p = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, env=env)
    if expect_ok and p.returncode != 0:
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "(no message)"
        raise Failed("%s: exit %d: %s" % (" ".join(str(c) for c in cmd[:3]), p.returncode, last))
    return p


def ticket(*args, expect_ok=True):
    return run([ticket_bin()] + list(args), expect_ok)


def bridge(*args, expect_ok=True):
    tool = os.path.join(source_dir(), "tools", "torch_bridge.py")
    return run([sys.executable, tool] + list(args), expect_ok)


def tmpdir(prefix="tkt-test-"):
    return tempfile.TemporaryDirectory(prefix=prefix)


def rel_err(got, want):
    """(max|got - want| / max|want|, flat index of the worst element)."""
    g = np.asarray(got, dtype=np.float64).reshape(-1)
    w = np.asarray(want, dtype=np.float64).reshape(-1)
    if g.shape != w.shape:
        raise Failed("shapes differ: %s vs %s" % (np.shape(got), np.shape(want)))
    if w.size == 0:
        return 0.0, -1
    d = np.abs(g - w)
    i = int(np.argmax(d))
    den = float(np.max(np.abs(w)))
    return (float(d[i]) / den if den > 0 else float(d[i])), i


class Checker:
    def __init__(self, name):
        self.name = name
        self.failures = 0
        self.checks = 0
        self.worst = {}

    def check(self, cond, msg):
        self.checks += 1
        if not cond:
            self.failures += 1
            print("FAIL: %s" % msg)
        return bool(cond)

    def close(self, what, got, want, rtol, where=None):
        """max|got - want| / max|want| <= rtol, over all elements or those where `where` is true."""
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            return self.check(False, "%s: shape %s, expected %s" % (what, got.shape, want.shape))
        if where is not None:
            sel = np.asarray(where).reshape(got.shape) != 0
            got, want = got[sel], want[sel]
        err, i = rel_err(got, want)
        key = what.split(":")[0]
        self.worst[key] = max(self.worst.get(key, 0.0), err)
        ok = err <= rtol and np.all(np.isfinite(got))
        if not ok:
            g, w = got.reshape(-1)[i], want.reshape(-1)[i]
            msg = "%s: relative error %.3g > %.1g (worst element %d of %d: got %.9g, expected %.9g)" % (
                what, err, rtol, i, got.size, g, w)
            return self.check(False, msg)
        self.checks += 1
        return True

    def equal(self, what, got, want):
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            return self.check(False, "%s: shape %s, expected %s" % (what, got.shape, want.shape))
        diff = np.flatnonzero((got != want).reshape(-1))
        if diff.size:
            i = int(diff[0])
            return self.check(False, "%s: %d of %d elements differ (first at %d: got %r, expected %r)" % (
                what, diff.size, got.size, i, got.reshape(-1)[i], want.reshape(-1)[i]))
        self.checks += 1
        return True

    def done(self):
        worst = ", ".join("%s %.2g" % kv for kv in sorted(self.worst.items()))
        if self.failures:
            print("%s: %d of %d checks FAILED%s" % (self.name, self.failures, self.checks,
                                                    "; worst: " + worst if worst else ""))
            sys.exit(1)
        print("%s: all %d checks passed%s" % (self.name, self.checks, "; worst relative errors: " + worst
                                                if worst else ""))
        sys.exit(0)


def random_masks(model, density, rng):
    """Set a Bernoulli(density) mask on every prunable tensor of a tkt.Model (data zeroed)."""
    for t in model.tensors:
        if t.prunable:
            m = (rng.random(t.shape) < density).astype(np.uint8)
            m.reshape(-1)[rng.integers(t.numel)] = 1  # never an all-zero tensor by accident
            t.mask = m
            t.data = np.where(m != 0, t.data, np.float32(0)).astype(np.float32)
    return model


def mnist_dir(d, n, rng):
    """A tiny MNIST-format training set in d (random images, labels 0..9) for the data spec
    `mnist:d`; -> (x (n, 1, 28, 28) float32 in [0, 1], y int64) as ticket reads them."""
    import struct
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    with open(os.path.join(d, "train-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes())
    with open(os.path.join(d, "train-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + y.tobytes())
    return x.reshape(n, 1, 28, 28).astype(np.float32) / np.float32(255), y.astype(np.int64)


def random_bn_state(model, rng):
    """Random BatchNorm affine parameters and running statistics on a tkt.Model, so that eval
    mode is not the identity."""
    for l in model.layers:
        if l.op == "BatchNorm":
            for f, lo, hi in (("weight", 0.5, 1.5), ("bias", -0.2, 0.2), ("running_mean", -0.2, 0.2),
                              ("running_var", 0.5, 2.0)):
                t = model.tensors[getattr(l, f)]
                t.data = rng.uniform(lo, hi, t.shape).astype(np.float32)
    return model
