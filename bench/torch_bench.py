#!/usr/bin/python3
"""torch_bench.py -- the PyTorch side of `ticket bench --vs torch`.

Runs the same network as Ticket, exported by `ticket bench` as a graph description
(graph.json: input, normalisation, layers with their tensors) and raw float32 weights
(weights.bin), and times it the way DESIGN.md section 8 says is fair to PyTorch 1.13:

  infer  eager (channels_last, no_grad) and torch.jit.trace + optimize_for_inference
  pgd    PGD-10 evaluation: eager channels_last, torch.autograd.grad on the input only,
         BatchNorm in eval mode, then one forward on the adversarial batch
  train  one PGD-10 training step: the attack with BatchNorm in train mode, then a train-mode
         forward, backward and an SGD step

torch.set_num_threads(T) is set explicitly; run under OMP_WAIT_POLICY=PASSIVE (ticket bench
does), without which eager PyTorch at batch 1 on 2 threads is erratic.  With --check X LOGITS
the eval logits of the batch X are compared with Ticket's (both raw float32 files), so the
numbers below are known to come from the same network.

Prints one JSON object on stdout:
  {"torch": "1.13...", "threads": T, "batch": N, "mode": M, "check": {...} | null,
   "eager": {stats}, "jit": {stats} | null}
with stats = {"mean_ms", "median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "iters",
"images_per_s"}.  Usage: torch_bench.py DIR --batch N --threads T --iters K --warmup W --mode M
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


class GraphNet(torch.nn.Module):
    """The layers of graph.json in execution order; value 0 is the input, layer i makes value i+1."""

    def __init__(self, graph, weights):
        super().__init__()
        self.g = graph
        self.params = torch.nn.ParameterDict()
        self.stats = {}
        for t in graph["tensors"]:
            n = int(np.prod(t["shape"]))
            data = torch.from_numpy(weights[t["offset"] // 4: t["offset"] // 4 + n].copy()).reshape(t["shape"])
            key = self._key(t["name"])
            if t["trainable"]:
                self.params[key] = torch.nn.Parameter(data)
            else:
                self.register_buffer(key, data)
                self.stats[t["name"]] = key
        mean, std = graph.get("mean"), graph.get("std")
        c = graph["input"][0]
        self.register_buffer("in_mean", torch.tensor(mean if mean else [0.0] * c).reshape(1, c, 1, 1))
        self.register_buffer("in_std", torch.tensor(std if std else [1.0] * c).reshape(1, c, 1, 1))
        self.normalise = mean is not None

    @staticmethod
    def _key(name):
        return name.replace(".", "__")

    def t(self, name):
        if name is None:
            return None
        key = self._key(name)
        if key in self.params:
            return self.params[key]
        return getattr(self, key)

    def forward(self, x):
        if self.normalise:
            x = (x - self.in_mean) / self.in_std
        vals = [x]
        for l in self.g["layers"]:
            a = vals[l["inputs"][0]]
            op = l["op"]
            if op == "conv2d":
                y = F.conv2d(a, self.t(l["weight"]), self.t(l.get("bias")), tuple(l["stride"]), tuple(l["padding"]),
                             tuple(l["dilation"]), l["groups"])
            elif op == "linear":
                y = F.linear(a.flatten(1), self.t(l["weight"]), self.t(l.get("bias")))
            elif op == "batchnorm":
                y = F.batch_norm(a, self.t(l["running_mean"]), self.t(l["running_var"]), self.t(l["weight"]),
                                 self.t(l["bias"]), self.training, l["momentum"], l["eps"])
            elif op == "relu":
                y = F.relu(a)
            elif op == "maxpool":
                y = F.max_pool2d(a, tuple(l["kernel"]), tuple(l["stride"]), tuple(l["padding"]))
            elif op == "avgpool":
                y = F.avg_pool2d(a, tuple(l["kernel"]), tuple(l["stride"]), tuple(l["padding"]))
            elif op == "globalavgpool":
                y = F.adaptive_avg_pool2d(a, 1)
            elif op == "add":
                y = a + vals[l["inputs"][1]]
            elif op == "flatten":
                y = a.flatten(1)
            elif op == "scale":
                w = self.t(l["weight"])
                y = a * (w.reshape(1, -1, 1, 1) if a.dim() == 4 else w.reshape(1, -1))
            else:
                raise ValueError("graph.json: layer %s: op %s unknown" % (l.get("name"), op))
            vals.append(y)
        return vals[-1].flatten(1)


def stats(times, batch):
    t = sorted(times)
    n = len(t)

    def pct(p):
        return t[min(n - 1, int(math.ceil(p / 100.0 * n)) - 1)] * 1e3

    return {"mean_ms": sum(t) / n * 1e3, "median_ms": (t[(n - 1) // 2] + t[n // 2]) / 2 * 1e3, "p90_ms": pct(90),
            "p99_ms": pct(99), "min_ms": t[0] * 1e3, "max_ms": t[-1] * 1e3, "iters": n,
            "images_per_s": batch * n / sum(t)}


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def pgd(model, x, y, steps, eps, alpha, lo, hi, gen):
    """L-inf PGD with a uniform start; gradients w.r.t. the input only."""
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    xa = torch.clamp(x + delta, lo, hi).contiguous(memory_format=torch.channels_last)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(model(xa), y)
        (g,) = torch.autograd.grad(loss, [xa])
        with torch.no_grad():
            xa = torch.min(torch.max(xa + alpha * g.sign(), x - eps), x + eps).clamp(lo, hi)
    return xa.detach()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--mode", choices=["infer", "pgd", "train"], default="infer")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--alpha", type=float, default=2 / 255)
    ap.add_argument("--check", nargs=2, metavar=("X", "LOGITS"))
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    try:
        with open(os.path.join(a.dir, "graph.json")) as f:
            graph = json.load(f)
        weights = np.fromfile(os.path.join(a.dir, "weights.bin"), dtype="<f4")
    except (OSError, ValueError) as e:
        sys.exit("torch_bench.py: %s: %s" % (a.dir, e))
    model = GraphNet(graph, weights)
    c, h, w = graph["input"]
    lo, hi = graph.get("min", 0.0), graph.get("max", 1.0)
    n = a.batch
    x = lo + (hi - lo) * torch.rand((n, c, h, w), generator=gen)
    y = torch.randint(0, graph["classes"], (n,), generator=gen)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": n, "mode": a.mode,
           "check": None, "eager": None, "jit": None}

    if a.check:
        xc = torch.from_numpy(np.fromfile(a.check[0], dtype="<f4").reshape(-1, c, h, w))
        ours = np.fromfile(a.check[1], dtype="<f4").reshape(xc.shape[0], -1)
        model.eval()
        with torch.no_grad():
            theirs = model(xc).numpy()
        diff = float(np.abs(theirs - ours).max())
        out["check"] = {"images": int(xc.shape[0]), "max_abs_diff": diff,
                        "max_rel_diff": diff / max(float(np.abs(theirs).max()), 1e-30)}

    model = model.to(memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)
    if a.mode == "infer":
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        def eager():
            with torch.no_grad():
                model(xcl)

        out["eager"] = stats(timed(eager, a.warmup, a.iters), n)
        with torch.no_grad():
            traced = torch.jit.trace(model, xcl)
            opt = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

        def jit():
            with torch.no_grad():
                opt(xcl)

        out["jit"] = stats(timed(jit, a.warmup, a.iters), n)
    elif a.mode == "pgd":
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        def attack():
            xa = pgd(model, xcl, y, a.steps, a.eps, a.alpha, lo, hi, gen)
            with torch.no_grad():
                model(xa)

        out["eager"] = stats(timed(attack, a.warmup, a.iters), n)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)

        def step():
            model.train()
            for p in model.parameters():
                p.requires_grad_(False)
            xa = pgd(model, xcl, y, a.steps, a.eps, a.alpha, lo, hi, gen)
            for p in model.parameters():
                p.requires_grad_(True)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xa), y).backward()
            opt.step()

        out["eager"] = stats(timed(step, a.warmup, a.iters), n)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
