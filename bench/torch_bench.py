#!/usr/bin/python3
"""torch_bench.py -- the PyTorch side of `ticket bench --vs torch`: a worker that times one
iteration at a time, on command, so that ticket can interleave PyTorch's iterations with its own.

It runs the same network as Ticket, exported by `ticket bench` as a graph description
(graph.json: input, normalisation, layers with their tensors) and raw float32 weights
(weights.bin), the way DESIGN.md section 8 says is fair to PyTorch 1.13:

  infer  two variants: "eager" (channels_last, no_grad) and "jit" (torch.jit.trace + freeze +
         optimize_for_inference)
  pgd    "eager": PGD-10 evaluation, channels_last, torch.autograd.grad on the input only,
         BatchNorm in eval mode, then one forward on the adversarial batch
  train  "eager": one PGD-10 training step: the attack with BatchNorm in train mode (or in eval
         mode with --attack-bn eval), then a train-mode forward, backward and an SGD step

torch.set_num_threads(T) is set explicitly; run under OMP_WAIT_POLICY=PASSIVE (ticket bench
does), without which eager PyTorch at batch 1 on 2 threads is erratic, and so that its idle
threads sleep while ticket's engines take their turns.  With --check X LOGITS the eval logits of
the batch X are compared with Ticket's (both raw float32 files), so the numbers are known to
come from the same network.

Protocol (one line each way, stdout flushed after every line):
  ready   after loading the network, building the variants and the check, the worker writes
          one JSON object: {"torch": "1.13...", "threads": T, "batch": N, "mode": M,
          "check": {"images", "max_abs_diff", "max_rel_diff", "tolerance", "passed"} | null,
          "variants": ["eager", "jit"]}
  run V   one iteration of variant V; the reply is its time in seconds (a decimal number),
          measured with time.perf_counter around the iteration only
  quit    (or end of input) exit 0
Anything else, or an error, ends the worker with a message on stderr and a non-zero exit.
Warm-up, statistics and the order of turns are ticket's.  By hand:
  printf 'run jit\\nrun jit\\nrun jit\\n' | bench/torch_bench.py DIR --batch 1 --threads 1
Usage: torch_bench.py DIR --batch N --threads T --mode M [--check X LOGITS [--tolerance R]]
"""
import argparse
import json
import os
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:
    sys.exit("torch_bench.py: %s cannot import %s (%s)" % (sys.executable, getattr(e, "name", None) or "a module", e))


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


def variants(model, a, x, y, lo, hi, gen):
    """The iterations ticket asks for by name: {name: function doing one iteration}."""
    model = model.to(memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)
    if a.mode == "infer":
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            opt = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, xcl).eval()))

        def eager():
            with torch.no_grad():
                model(xcl)

        def jit():
            with torch.no_grad():
                opt(xcl)

        return {"eager": eager, "jit": jit}
    if a.mode == "pgd":
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        def attack():
            xa = pgd(model, xcl, y, a.steps, a.eps, a.alpha, lo, hi, gen)
            with torch.no_grad():
                model(xa)

        return {"eager": attack}
    sgd = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        model.train(a.attack_bn == "train")
        for p in model.parameters():
            p.requires_grad_(False)
        xa = pgd(model, xcl, y, a.steps, a.eps, a.alpha, lo, hi, gen)
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(model(xa), y).backward()
        sgd.step()

    return {"eager": step}


def reply(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", choices=["infer", "pgd", "train"], default="infer")
    ap.add_argument("--attack-bn", choices=["train", "eval"], default="train",
                    help="train mode: BatchNorm mode of the attack's forwards")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--alpha", type=float, default=2 / 255)
    ap.add_argument("--check", nargs=2, metavar=("X", "LOGITS"))
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest relative logit difference that passes")
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
    hello = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": n, "mode": a.mode,
             "check": None}

    if a.check:
        try:
            xc = torch.from_numpy(np.fromfile(a.check[0], dtype="<f4").reshape(-1, c, h, w))
            ours = np.fromfile(a.check[1], dtype="<f4").reshape(xc.shape[0], -1)
        except (OSError, ValueError) as e:
            sys.exit("torch_bench.py: --check %s %s: %s" % (a.check[0], a.check[1], e))
        model.eval()
        with torch.no_grad():
            theirs = model(xc).numpy()
        diff = float(np.abs(theirs - ours).max())
        rel = diff / max(float(np.abs(theirs).max()), 1e-30)
        hello["check"] = {"images": int(xc.shape[0]), "max_abs_diff": diff, "max_rel_diff": rel,
                          "tolerance": a.tolerance, "passed": bool(rel <= a.tolerance)}

    runs = variants(model, a, x, y, lo, hi, gen)
    hello["variants"] = list(runs)
    reply(json.dumps(hello))
    for line in sys.stdin:
        cmd = line.split()
        if cmd == ["quit"]:
            return
        if len(cmd) != 2 or cmd[0] != "run" or cmd[1] not in runs:
            sys.exit("torch_bench.py: unknown command %r (expected 'run %s' or 'quit')" %
                     (line.strip(), "|".join(runs)))
        fn = runs[cmd[1]]
        t0 = time.perf_counter()
        fn()
        reply("%.9e" % (time.perf_counter() - t0))


if __name__ == "__main__":
    main()
