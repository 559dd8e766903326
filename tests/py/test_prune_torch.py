#!/usr/bin/python3
"""test_prune_torch.py -- `ticket prune --method synflow|snip` against PyTorch.

The PyTorch side follows ganguli-lab/Synaptic-Flow (SEEDS.md 3.4) on the reference model of the
zoo architecture (tests/py/ref_models.py, float64):
  synflow  every state_dict tensor replaced by its absolute value, eval mode, one all-ones
           input (after the input normalisation), R = sum of the logits, score |w * dR/dw|;
  snip     eval mode, mean cross-entropy of each batch of the prune set, score
           |sum over batches of w * dL/dw|;
then the global selection of prune.h: already pruned weights first, then the lowest scores,
floor(S * N + 1e-6) pruned in all, ties by position.  Rounds of an iterative run keep density
d^((r+1)/n) after round r, with the weights of pruned positions zero.

Float32 (ticket) and float64 (PyTorch) scores order near-equal weights differently, so the
masks are compared by what may differ: at most 0.1% of the weights, and only weights whose
float64 score is within a relative 1e-3 of the round's threshold.  Kept counts per group are
exact.  BatchNorm gets random statistics, so eval mode is not the identity, and a third of
the weights start pruned (they must stay pruned).
"""

import os
import sys

import numpy as np

import tkt_test_util as U

torch = U.require_torch()
import torch.nn.functional as F  # noqa: E402

import ref_models as R  # noqa: E402
import tkt  # noqa: E402
import torch_bridge as TB  # noqa: E402

C = U.Checker("test_prune_torch")
ENGINE = os.environ.get("TICKET_PRUNE_ENGINE", "reference")


def make_model(d, arch, seed, pre_density, rng):
    p = os.path.join(d, "m0.tkt")
    U.ticket("init", arch, "-o", p, "--seed", str(seed))
    model = tkt.load(p)
    if pre_density is not None:
        U.random_masks(model, pre_density, rng)
    U.random_bn_state(model, rng)
    out = os.path.join(d, "m.tkt")
    tkt.save(model, out)
    return model, out


def torch_net(model, arch):
    sd, _ = TB.import_model(model, "plain")
    c, h, w = model.input.channels, model.input.height, model.input.width
    net = R.build(arch, num_classes=model.classes, in_ch=c, hw=(h, w), sub_block1=False, masked=False)
    net.load_state_dict(sd, strict=True)
    return net.double()


def prunable(model):
    return [t for t in model.tensors if t.prunable]


def raw_ones(model):
    """The raw input whose normalised value is 1 everywhere."""
    c, h, w = model.input.channels, model.input.height, model.input.width
    if model.input.mean is not None:
        v = np.asarray(model.input.mean, np.float64) + np.asarray(model.input.std, np.float64)
    else:
        v = np.ones(c)
    return np.broadcast_to(v[:, None, None], (c, h, w)).copy()[None]


def synflow_scores(model, arch, masks):
    net = torch_net(model, arch)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for t, m in zip(prunable(model), masks):
            params[t.name].mul_(torch.tensor(m.reshape(t.shape), dtype=torch.float64))
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.abs_()
    net.eval()
    net.zero_grad()
    net(torch.tensor(raw_ones(model))).sum().backward()
    return [(params[t.name].grad * params[t.name]).abs().detach().numpy().reshape(-1) for t in prunable(model)]


def snip_scores(model, arch, masks, x, y, batch=256):
    net = torch_net(model, arch)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for t, m in zip(prunable(model), masks):
            params[t.name].mul_(torch.tensor(m.reshape(t.shape), dtype=torch.float64))
    net.eval()
    acc = [np.zeros(t.numel) for t in prunable(model)]
    for b0 in range(0, len(x), batch):
        net.zero_grad()
        loss = F.cross_entropy(net(torch.tensor(x[b0:b0 + batch], dtype=torch.float64)), torch.tensor(y[b0:b0 + batch]))
        loss.backward()
        for a, t in zip(acc, prunable(model)):
            a += (params[t.name].grad * params[t.name]).detach().numpy().reshape(-1)
    return [np.abs(a) for a in acc]


def select(masks, scores, target):
    """Global selection of prune.h; returns the new masks and the threshold score."""
    flat_m = np.concatenate([m.reshape(-1) for m in masks]).astype(bool)
    flat_s = np.concatenate(scores)
    need = target - int((~flat_m).sum())
    assert need >= 0
    kept = np.flatnonzero(flat_m)
    order = kept[np.lexsort((kept, flat_s[kept]))]  # by score, ties by position
    new = flat_m.copy()
    new[order[:need]] = False
    thr = flat_s[order[need - 1]] if need > 0 else 0.0
    out, o = [], 0
    for m in masks:
        out.append(new[o:o + m.size].reshape(m.shape))
        o += m.size
    return out, thr, flat_s


def compare(name, got_model, want_masks, thr, flat_s):
    got = np.concatenate([(t.mask if t.mask is not None else np.ones(t.shape, np.uint8)).reshape(-1)
                          for t in prunable(got_model)]).astype(bool)
    want = np.concatenate([m.reshape(-1) for m in want_masks])
    C.check(got.sum() == want.sum(), "%s: %d weights kept, PyTorch's selection keeps %d" % (name, got.sum(), want.sum()))
    diff = np.flatnonzero(got != want)
    C.check(diff.size <= max(2, want.size // 1000),
            "%s: %d of %d mask entries differ from PyTorch's selection" % (name, diff.size, want.size))
    if diff.size:
        rel = np.abs(flat_s[diff] - thr) / max(abs(thr), 1e-300)
        C.check(rel.max() <= 1e-3, "%s: entry %d differs but its score %.9g is %.3g (relative) from the threshold %.9g"
                % (name, int(diff[np.argmax(rel)]), flat_s[diff[np.argmax(rel)]], rel.max(), thr))
    print("%s: %d of %d entries differ (near-ties at the threshold)" % (name, diff.size, want.size))


def run_case(method, arch, sparsity, iterations, pre_density, seed, data=None):
    name = "%s %s s=%g rounds=%d" % (method, arch, sparsity, iterations)
    rng = np.random.default_rng(seed)
    with U.tmpdir() as d:
        model, path = make_model(d, arch, seed, pre_density, rng)
        out = os.path.join(d, "p.tkt")
        args = ["prune", path, "--method", method, "--sparsity", repr(sparsity), "--iterations", str(iterations),
                "--engine", ENGINE, "-o", out]
        if data:
            args += ["--data", data[0], "--samples", str(len(data[2]))]
        U.ticket(*args)
        got = tkt.load(out)
        masks = [(t.mask if t.mask is not None else np.ones(t.shape, np.uint8)).astype(bool) for t in prunable(model)]
        total = sum(m.size for m in masks)
        final = int(np.floor(sparsity * total + 1e-6))
        for r in range(iterations):
            if r == iterations - 1:
                target = final
            else:
                dens = (1.0 - final / total) ** ((r + 1) / iterations)
                target = max(int(np.floor((1.0 - dens) * total + 1e-6)), int(sum((~m).sum() for m in masks)))
            scores = synflow_scores(model, arch, masks) if method == "synflow" else \
                snip_scores(model, arch, masks, data[1], data[2])
            masks, thr, flat_s = select(masks, scores, target)
        compare(name, got, masks, thr, flat_s)
        # pruned weights are zero, weights kept unchanged
        for t0, t1 in zip(prunable(model), prunable(got)):
            m = t1.mask.astype(bool) if t1.mask is not None else np.ones(t1.shape, bool)
            C.check(np.all(t1.data[~m] == 0), "%s: %s has non-zero pruned weights" % (name, t1.name))
            C.check(np.array_equal(t1.data[m], t0.data[m]), "%s: %s kept weights changed" % (name, t1.name))
            if t0.mask is not None:
                C.check(not np.any(m & ~t0.mask.astype(bool)), "%s: %s revived a pruned weight" % (name, t1.name))


def main():
    run_case("synflow", "cifar_model", 0.9, 1, 0.7, 1)
    run_case("synflow", "cifar_model", 0.95, 4, None, 2)
    run_case("synflow", "resnet20", 0.8, 2, 0.7, 3)
    run_case("synflow", "vgg16_bn", 0.9, 1, None, 4)
    with U.tmpdir() as d:
        x, y = U.mnist_dir(d, 300, np.random.default_rng(5))
        run_case("snip", "lenet", 0.9, 1, None, 5, data=("mnist:" + d, x, y))
        run_case("snip", "lenet", 0.95, 1, 0.5, 6, data=("mnist:" + d, x[:40], y[:40]))
    # errors: snip without data, synflow with data
    with U.tmpdir() as d:
        p = os.path.join(d, "m.tkt")
        U.ticket("init", "lenet", "-o", p)
        r = U.ticket("prune", p, "--method", "snip", "--sparsity", "0.5", "-o", os.path.join(d, "o.tkt"),
                     expect_ok=False)
        C.check(r.returncode != 0 and "--data" in r.stderr and r.stderr.count("\n") == 1,
                "snip without --data: exit %d, stderr %r" % (r.returncode, r.stderr))
        r = U.ticket("prune", p, "--method", "snip", "--sparsity", "0.5", "--data", "mnist:" + d,
                     "-o", os.path.join(d, "o.tkt"), expect_ok=False)
        C.check(r.returncode != 0 and r.stderr.count("\n") == 1 and not os.path.exists(os.path.join(d, "o.tkt")),
                "snip with a missing data set: exit %d, stderr %r" % (r.returncode, r.stderr))
    C.done()


if __name__ == "__main__":
    main()
