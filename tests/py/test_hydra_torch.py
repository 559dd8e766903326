#!/usr/bin/python3
"""test_hydra_torch.py -- `ticket train --prune-scores` (HYDRA's pruning step) against HYDRA's
own layers in PyTorch.

The model: conv(no bias)-BN-ReLU-avgpool, conv(stride 2, bias)-BN-ReLU, linear, input
normalisation; every conv and linear prunable.  (Average, not max, pooling: the score gradient
needs dL/dW_eff at pruned positions too, and where a max-pool window holds near-equal values,
which adversarial images clamped to the eps-ball and [0, 1] make common, float32 and float64
pick different maxima and route that gradient differently.)  The PyTorch side (float64) builds it from
ref_models.SubnetConv / SubnetLinear (HYDRA models/layers.py: GetSubnet's layer-wise top-k of
|popup_scores|, straight-through backward, weights and biases frozen), optimises the popup
scores and the BatchNorm affine parameters (none with --freeze-bn) with torch.optim.SGD
(momentum 0.9, weight decay on everything trained), and takes the recipes' losses from
test_train_torch (HYDRA trades_loss, Madry PGD).  The data are a tiny MNIST-format directory
of random images written here; the attacks start from --init-delta.

Per recipe (st, pgd, trades with --freeze-bn), engine (reference; dense and compiled when the
build has them: score training runs on the dense model, so every engine must give the full
weight gradient) and step (1 and 2 steps):
  - the loss, relative 1e-4; the attack: at most 0.5% of the elements differ by > 1e-5;
  - the scores: max |got - want| <= 1e-4 * max |change| + 1e-7;
  - the masks: exactly the top-k of PyTorch's scores;
  - BatchNorm affine and running statistics: 2e-4 of their change (frozen: bit for bit);
  - conv/linear weights: the original ones with the mask applied, biases unchanged, bit for
    bit; the checkpoint holds the original dense weights bit for bit and the same scores.
Also: the scaled score init against sqrt(6/fan_in) W / max|W| (and its mask against
`ticket prune --method magnitude --scope layer`), --resume after a stop ending bit for bit
where an uninterrupted run ends, bad options as one-line errors, and a plain `ticket train`
fine-tuning the result with its mask and scores fixed.
"""

import json
import os
import subprocess
import sys

import numpy as np

import tkt_test_util as U

torch = U.require_torch()
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ref_models as R  # noqa: E402
import test_train_torch as TT  # noqa: E402  (the reference recipes)
import tkt  # noqa: E402

C = U.Checker("test_hydra_torch")
B = 16
MEAN, STD = 0.2860, 0.3530
S = 0.75  # exact in binary: HYDRA's int((1 - k) * n) with k = 0.25 equals floor(S * n + 1e-6)
PRUNABLE = ("conv1.weight", "conv2.weight", "fc.weight")
BN_AFFINE = ("bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias")
worst = {}


def note_worst(what, ratio):
    if ratio > worst.get(what, (0.0, ""))[0]:
        worst[what] = (ratio, what)


# ---- data and model --------------------------------------------------------------------------

def make_arrays(seed, with_scores):
    rng = np.random.default_rng(seed)
    a = {}
    a["conv1.weight"] = rng.normal(0, 0.4, (6, 1, 3, 3))
    a["bn1.weight"] = rng.uniform(0.8, 1.2, 6)
    a["bn1.bias"] = rng.normal(0, 0.1, 6)
    a["bn1.running_mean"] = rng.normal(0, 0.1, 6)
    a["bn1.running_var"] = rng.uniform(0.5, 1.5, 6)
    a["conv2.weight"] = rng.normal(0, 0.2, (8, 6, 3, 3))
    a["conv2.bias"] = rng.normal(0, 0.1, 8)
    a["bn2.weight"] = rng.uniform(0.8, 1.2, 8)
    a["bn2.bias"] = rng.normal(0, 0.1, 8)
    a["bn2.running_mean"] = rng.normal(0, 0.1, 8)
    a["bn2.running_var"] = rng.uniform(0.5, 1.5, 8)
    a["fc.weight"] = rng.normal(0, 0.08, (10, 392))
    a["fc.bias"] = rng.normal(0, 0.05, 10)
    a = {k: v.astype(np.float32) for k, v in a.items()}
    scores = None
    if with_scores:
        # signed scores of the magnitude HYDRA's init gives, unrelated to the weights
        scores = {k: (rng.normal(0, 1, a[k].shape) * np.sqrt(2.0 / (a[k].size / a[k].shape[0]))).astype(np.float32)
                  for k in PRUNABLE}
    return a, scores


def write_tkt(path, a, scores, masks=None):
    names = list(a)
    idx = {n: i for i, n in enumerate(names)}
    tensors = []
    for n in names:
        stat = n.endswith("running_mean") or n.endswith("running_var")
        mk = None if masks is None else masks.get(n)
        data = a[n].copy() if mk is None else np.where(mk != 0, a[n], np.float32(0)).astype(np.float32)
        tensors.append(tkt.Tensor(n, a[n].shape, data=data, mask=mk,
                                  scores=None if scores is None or n not in scores else scores[n].copy(), init=0,
                                  prunable=n in PRUNABLE, trainable=not stat))
    layers = TT.small_cnn_layers(idx, "AvgPool")
    m = tkt.Model("test_hydra_torch", 10, tkt.InputSpec(1, 28, 28, mean=[MEAN], std=[STD]), tensors, layers,
                  provenance=tkt.Provenance(method="none", sparsity=0.0, source="tests/py/test_hydra_torch.py"))
    tkt.save(m, path)


class HydraNet(nn.Module):
    """The model with HYDRA's subnet layers (ref_models: models/layers.py)."""

    def __init__(self, a, scores, k):
        super().__init__()
        self.conv1 = R.SubnetConv(1, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = R.SubnetConv(6, 8, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = R.SubnetLinear(392, 10)
        sd = self.state_dict()
        for n, v in a.items():
            sd[n] = torch.from_numpy(v.copy())
        for n, v in scores.items():
            sd[n[:-len("weight")] + "popup_scores"] = torch.from_numpy(v.copy())
        self.load_state_dict(sd)
        R.set_prune_rate(self, k)

    def forward(self, x):
        x = (x - MEAN) / STD
        x = F.avg_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def hydra_mask(s, k):
    """GetSubnet on |s| (a stable sort, so that ties, if any, go by position as in ticket)."""
    flat = torch.as_tensor(s).abs().flatten()
    idx = torch.sort(flat, stable=True)[1]
    j = int((1 - k) * flat.numel())
    m = torch.ones_like(flat, dtype=torch.uint8)
    m[idx[:j]] = 0
    return m.numpy()


class TorchHydra:
    """HYDRA's prune phase, float64: popup scores (and BatchNorm affine unless frozen) trained."""

    def __init__(self, a, scores, hp):
        self.k = 1.0 - S
        self.model = HydraNet(a, scores, self.k).double()
        if hp["freeze_bn"]:
            for bn in (self.model.bn1, self.model.bn2):
                bn.weight.requires_grad = False
                bn.bias.requires_grad = False
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(trained, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["wd"])
        self.hp = hp

    def step(self, mode, x, y, delta0, given_adv):
        loss, own = TT.recipe_loss(self.model, mode, x, y, delta0, self.hp, given_adv)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.item()), None if own is None else own.numpy()

    def state(self):
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items() if "num_batches" not in k}


# ---- comparisons -----------------------------------------------------------------------------

def close_change(what, got, want, start, rtol, atol):
    got, want, start = (np.asarray(v, np.float64).reshape(-1) for v in (got, want, start))
    d = np.abs(got - want)
    scale = float(np.max(np.abs(want - start))) if want.size else 0.0
    lim = rtol * scale + atol
    i = int(np.argmax(d))
    note_worst(what.split(": ")[-1].split(" ")[0], float(d[i] / lim))
    return C.check(d[i] <= lim, "%s: worst [%d]: got %.9g expected %.9g (start %.9g; |diff| %.3g > %.3g = %.0e * max "
                   "change %.3g)" % (what, i, got[i], want[i], start[i], d[i], lim, rtol, scale))


def tensor_mask(t):
    return np.ones(t.data.size, np.uint8) if t.mask is None else t.mask.reshape(-1).astype(np.uint8)


def run_ticket(args):
    return subprocess.run([U.ticket_bin()] + args, capture_output=True, text=True)


def train_args(model, data, out, mode, epochs, hp, engine, extra=()):
    args = ["train", model, "--data", data, "--limit", str(B), "--batch", str(B), "--epochs", str(epochs), "--mode",
            mode, "--lr", repr(hp["lr"]), "--momentum", repr(hp["momentum"]), "--schedule", "constant", "--eps",
            repr(hp["eps"]), "--alpha", repr(hp["alpha"]), "--steps", str(hp["steps"]), "--beta", repr(hp["beta"]),
            "--val", "0", "--engine", engine, "--threads", "1", "--seed", "1", "-o", out, "--json",
            "--prune-scores", "--sparsity", repr(S)]
    if hp.get("wd_arg") is not None:
        args += ["--wd", repr(hp["wd_arg"])]
    if hp["freeze_bn"]:
        args.append("--freeze-bn")
    return args + list(extra)


# ---- the step-by-step comparison ---------------------------------------------------------------

def steps_case(tmp, data, x, y, a, scores, mode, engine, hp, rng):
    model_path = os.path.join(tmp, "model.tkt")
    write_tkt(model_path, a, scores)
    eps = hp["eps"]
    if mode == "trades":
        delta0 = (0.001 * rng.standard_normal(x.shape)).astype(np.float32)
    else:
        delta0 = rng.uniform(-eps, eps, x.shape).astype(np.float32)
    dpath = os.path.join(tmp, "delta.npy")
    np.save(dpath, delta0)
    what = "%s/%s%s" % (engine, mode, " freeze-bn" if hp["freeze_bn"] else "")
    runs = []
    for epochs in (1, 2):
        out = os.path.join(tmp, "out%d.tkt" % epochs)
        adv_path = os.path.join(tmp, "adv%d.npy" % epochs)
        extra = ["--init-delta", dpath] + (["--dump-adv", adv_path] if mode != "st" else [])
        p = run_ticket(train_args(model_path, data, out, mode, epochs, hp, engine, extra))
        if p.returncode != 0:
            if engine != "reference" and any(w in p.stderr for w in ("this build has no", "not available",
                                                                      "not found in PATH")):
                print("%s engine: not available (%s)" % (engine, p.stderr.strip().splitlines()[-1]))
                return False
            C.check(False, "%s: ticket train exited %d: %s" % (what, p.returncode, p.stderr.strip()[-400:]))
            return True
        res = json.loads(p.stdout)
        C.check(res["engine"] == engine, "%s: ran on engine %s" % (what, res["engine"]))
        ck = tkt.load(os.path.join(tmp, "out%d.ckpt.tkt" % epochs))
        runs.append((res["train_loss"], tkt.load(out), np.load(adv_path) if mode != "st" else None, ck))
    th = TorchHydra(a, scores, hp)
    prev_masks = {n: hydra_mask(scores[n], 1.0 - S) for n in PRUNABLE}
    xd = torch.from_numpy(x).double()
    yd = torch.from_numpy(y)
    for k, (got_loss, got, got_adv, ck) in enumerate(runs):
        sw = "%s step %d" % (what, k + 1)
        ok0 = C.failures
        given = None if got_adv is None else torch.from_numpy(got_adv).double()
        want_loss, own_adv = th.step(mode, xd, yd, torch.from_numpy(delta0).double(), given)
        if got_adv is not None:
            d = np.abs(got_adv.astype(np.float64) - own_adv)
            frac = float(np.mean(d > 1e-5))
            i = int(np.argmax(d))
            C.check(frac <= 0.005, "%s: adversarial examples: %.3f%% differ; worst [%d] got %.7g expected %.7g"
                    % (sw, 100 * frac, i, got_adv.reshape(-1)[i], own_adv.reshape(-1)[i]))
        C.check(abs(got_loss - want_loss) <= 1e-4 * abs(want_loss) + 1e-7,
                "%s: loss %.9g, PyTorch %.9g" % (sw, got_loss, want_loss))
        note_worst("loss", abs(got_loss - want_loss) / (1e-4 * abs(want_loss) + 1e-7))
        want = th.state()
        flips = 0
        for n in PRUNABLE:
            t = got.tensor(n)
            ws = want[n[:-len("weight")] + "popup_scores"]
            C.check(t.scores is not None, "%s: %s: the output has no scores" % (sw, n))
            if t.scores is None:
                continue
            close_change("%s: scores %s" % (sw, n), t.scores, ws, scores[n], 1e-4, 1e-7)
            wm = hydra_mask(ws, 1.0 - S)
            gm = tensor_mask(t)
            C.check(np.array_equal(gm, wm), "%s: %s: mask differs from the top-k of PyTorch's scores at %d positions"
                    % (sw, n, int(np.sum(gm != wm))))
            C.check(int(np.sum(gm == 0)) == int(np.floor(S * t.data.size + 1e-6)), "%s: %s: pruned count" % (sw, n))
            flips += int(np.sum(wm != prev_masks[n]))
            prev_masks[n] = wm
            eff = np.where(gm.reshape(t.shape) != 0, a[n], np.float32(0)).astype(np.float32)
            C.check(np.array_equal(t.data, eff) and not np.any(np.signbit(t.data[gm.reshape(t.shape) == 0])),
                    "%s: %s: data is not the original weights with the mask applied" % (sw, n))
            c = ck.tensor(n)
            C.check(c.mask is None and np.array_equal(c.data, a[n]), "%s: checkpoint %s: not the dense original weights"
                    % (sw, n))
            C.check(c.scores is not None and np.array_equal(c.scores, t.scores),
                    "%s: checkpoint %s: scores differ from the output's" % (sw, n))
        for n in ("conv2.bias", "fc.bias"):
            C.check(np.array_equal(got.tensor(n).data, a[n]), "%s: %s changed" % (sw, n))
        for n in BN_AFFINE:
            if hp["freeze_bn"]:
                C.check(np.array_equal(got.tensor(n).data, a[n]), "%s: %s changed under --freeze-bn" % (sw, n))
            else:
                close_change("%s: %s" % (sw, n), got.tensor(n).data, want[n], a[n], 2e-4, 2e-7)
        for n in ("bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"):
            close_change("%s: %s" % (sw, n), got.tensor(n).data, want[n], a[n], 2e-4, 2e-7)
        C.check(got.provenance.method == "hydra", "%s: provenance method %r" % (sw, got.provenance.method))
        mom = {t.name for t in ck.train_state.momenta} if ck.train_state else set()
        need = set(PRUNABLE) | (set() if hp["freeze_bn"] else set(BN_AFFINE))
        C.check(mom == need, "%s: checkpoint momenta %s, expected %s" % (sw, sorted(mom), sorted(need)))
        print("%-34s %s  loss %.7f (PyTorch %.7f), %d mask positions changed"
              % (sw, "ok" if C.failures == ok0 else "FAILED", got_loss, want_loss, flips))
    return True


# ---- the scaled score init -------------------------------------------------------------------

def scaled_init_case(tmp, data, a, scores):
    hp = dict(lr=0.0, momentum=0.9, eps=0.1, alpha=0.03, steps=2, beta=6.0, freeze_bn=False)
    for given, flag in ((None, []), (scores, ["--scaled-score-init"])):
        model_path = os.path.join(tmp, "init_model.tkt")
        write_tkt(model_path, a, given)
        out = os.path.join(tmp, "init_out.tkt")
        p = run_ticket(train_args(model_path, data, out, "st", 1, hp, "reference", flag))
        if not C.check(p.returncode == 0, "scaled init%s: ticket train exited %d: %s"
                       % (" (flag)" if flag else "", p.returncode, p.stderr.strip()[-300:])):
            continue
        C.check(json.loads(p.stdout)["scores_init"] == 3, "scaled init: scores_init != 3")
        got = tkt.load(out)
        lwm_path = os.path.join(tmp, "lwm.tkt")
        U.ticket("prune", model_path, "--method", "magnitude", "--scope", "layer", "--sparsity", repr(S), "-o",
                 lwm_path)
        lwm = tkt.load(lwm_path)
        for n in PRUNABLE:
            w = a[n].astype(np.float64)
            fan_in = w.size // w.shape[0]
            want = np.sqrt(6.0 / fan_in) * w / np.max(np.abs(w))
            s = got.tensor(n).scores.astype(np.float64)
            err = float(np.max(np.abs(s - want)) / np.max(np.abs(want)))
            note_worst("scaled init", err / 1e-6)
            C.check(err <= 1e-6, "scaled init%s: %s: relative error %.3g" % (" (flag)" if flag else "", n, err))
            C.check(np.array_equal(tensor_mask(got.tensor(n)), tensor_mask(lwm.tensor(n))),
                    "scaled init: %s: the first mask is not layer-wise magnitude pruning" % n)
        print("scaled score init%-18s ok" % (" (--scaled-score-init)" if flag else " (no scores)"))


# ---- resume --------------------------------------------------------------------------------------

def resume_case(tmp, d_data, a, scores):
    model_path = os.path.join(tmp, "res_model.tkt")
    write_tkt(model_path, a, scores)
    base = ["--data", d_data, "--limit", str(3 * B + 8), "--val", "8", "--val-steps", "2", "--batch", str(B),
            "--epochs", "2", "--mode", "pgd", "--steps", "2", "--eps", "0.1", "--alpha", "0.03", "--lr", "0.2",
            "--engine", "reference", "--threads", "1", "--prune-scores", "--sparsity", "0.8", "--json"]
    full = os.path.join(tmp, "full.tkt")
    part = os.path.join(tmp, "part.tkt")
    p = run_ticket(["train", model_path, "-o", full] + base)
    if not C.check(p.returncode == 0, "resume: the full run exited %d: %s" % (p.returncode, p.stderr.strip()[-300:])):
        return
    p = run_ticket(["train", model_path, "-o", part, "--max-steps", "4"] + base)
    C.check(p.returncode == 0 and json.loads(p.stdout)["interrupted"], "resume: the stopped run: %s"
            % p.stderr.strip()[-300:])
    ck = tkt.load(os.path.join(tmp, "part.ckpt.tkt"))
    for n in PRUNABLE:
        C.check(ck.tensor(n).mask is None and np.array_equal(ck.tensor(n).data, a[n]),
                "resume: the checkpoint's %s is not the dense original" % n)
    p = run_ticket(["train", model_path, "-o", part, "--resume"] + base)
    if not C.check(p.returncode == 0, "resume: exited %d: %s" % (p.returncode, p.stderr.strip()[-300:])):
        return
    C.check(json.loads(p.stdout)["resumed_epoch"] == 1, "resume: did not resume after epoch 1")
    f, g = tkt.load(full), tkt.load(part)
    same = True
    for t in f.tensors:
        u = g.tensor(t.name)
        eq = np.array_equal(t.data, u.data) and np.array_equal(tensor_mask(t), tensor_mask(u))
        if t.scores is not None:
            eq = eq and u.scores is not None and np.array_equal(t.scores, u.scores)
        if not eq:
            i = int(np.argmax(np.abs((t.scores if t.scores is not None else t.data) -
                                     (u.scores if u.scores is not None else u.data)).reshape(-1)))
            C.check(False, "resume: %s differs from the uninterrupted run (element %d)" % (t.name, i))
            same = False
    C.check(f.sparsity() > 0.79, "resume: the result has sparsity %.4f" % f.sparsity())
    best = tkt.load(os.path.join(tmp, "full.best_sa.tkt"))
    C.check(best.provenance.method == "hydra" and best.tensor("fc.weight").mask is not None,
            "resume: the best-SA model is not the pruned network")
    # the checkpoint refuses other settings
    p = run_ticket(["train", model_path, "-o", part, "--resume", "--max-steps", "1"] +
                   [v if v != "0.8" else "0.7" for v in base])
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    C.check(p.returncode != 0 and "error" in last and "sparsity: 0.8" in last,
            "resume with another --sparsity: exit %d, %r" % (p.returncode, last))
    print("resume after a stop                %s" % ("ok" if same else "FAILED"))


# ---- bad options and fine-tuning ---------------------------------------------------------------

def bad_options(tmp, data, a, scores):
    model_path = os.path.join(tmp, "bad_model.tkt")
    write_tkt(model_path, a, scores)
    out = os.path.join(tmp, "bad_out.tkt")
    base = ["train", model_path, "--data", data, "--mode", "st", "-o", out]
    cases = [
        (["--prune-scores"], "--sparsity"),
        (["--prune-scores", "--sparsity", "1.5"], "--sparsity"),
        (["--prune-scores", "--sparsity", "-0.1"], "--sparsity"),
        (["--prune-scores", "--sparsity", "abc"], "--sparsity"),
        (["--sparsity", "0.5"], "--prune-scores"),
        (["--freeze-bn"], "--prune-scores"),
        (["--scaled-score-init"], "--prune-scores"),
    ]
    for extra, needle in cases:
        p = run_ticket(base + extra)
        lines = p.stderr.strip().splitlines()
        C.check(p.returncode != 0 and len(lines) == 1 and needle in lines[0] and not os.path.exists(out),
                "%s: exit %d, stderr %r" % (" ".join(extra), p.returncode, p.stderr))
    # a model without prunable tensors
    nop = os.path.join(tmp, "noprune.tkt")
    m = tkt.load(model_path)
    for t in m.tensors:
        t.prunable, t.scores = False, None
    tkt.save(m, nop)
    p = run_ticket(["train", nop, "--data", data, "--mode", "st", "-o", out, "--limit", str(B), "--batch", str(B),
                    "--val", "0", "--prune-scores", "--sparsity", "0.5", "--engine", "reference"])
    lines = p.stderr.strip().splitlines()
    C.check(p.returncode != 0 and "prunable" in lines[-1] and "error" in lines[-1],
            "no prunable tensors: exit %d, stderr %r" % (p.returncode, p.stderr))
    print("bad options                        checked")


def finetune_case(tmp, data, a, scores):
    model_path = os.path.join(tmp, "ft_model.tkt")
    write_tkt(model_path, a, scores)
    pruned = os.path.join(tmp, "ft_pruned.tkt")
    hp = dict(lr=0.1, momentum=0.9, eps=0.1, alpha=0.03, steps=2, beta=6.0, freeze_bn=False)
    p = run_ticket(train_args(model_path, data, pruned, "st", 1, hp, "reference"))
    if not C.check(p.returncode == 0, "fine-tune: score training exited %d: %s" % (p.returncode, p.stderr[-300:])):
        return
    tuned = os.path.join(tmp, "ft_tuned.tkt")
    p = run_ticket(["train", pruned, "--data", data, "--limit", str(B), "--batch", str(B), "--epochs", "2", "--mode",
                    "st", "--lr", "0.05", "--val", "0", "--threads", "1", "-o", tuned, "--json"])
    if not C.check(p.returncode == 0, "fine-tune: exited %d: %s" % (p.returncode, p.stderr[-300:])):
        return
    P, T = tkt.load(pruned), tkt.load(tuned)
    for n in PRUNABLE:
        pm, tm = tensor_mask(P.tensor(n)), tensor_mask(T.tensor(n))
        C.check(np.array_equal(pm, tm), "fine-tune: %s: the mask changed" % n)
        C.check(np.all(T.tensor(n).data.reshape(-1)[tm == 0] == 0), "fine-tune: %s: a pruned weight is not 0" % n)
        C.check(np.any(T.tensor(n).data.reshape(-1)[tm != 0] != P.tensor(n).data.reshape(-1)[tm != 0]),
                "fine-tune: %s: the kept weights did not move" % n)
        C.check(T.tensor(n).scores is not None and np.array_equal(T.tensor(n).scores, P.tensor(n).scores),
                "fine-tune: %s: the scores changed" % n)
    print("fine-tune of the pruned network    ok")


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(11)
    a, scores = make_arrays(3, True)
    with U.tmpdir() as tmp:
        x, y = U.mnist_dir(tmp, 3 * B + 8, np.random.default_rng(5))
        data = "mnist:" + tmp
        x, y = x[:B], y[:B]
        cases = [
            ("st", dict()),
            ("pgd", dict(wd_arg=0.01, wd=0.01)),
            ("trades", dict(freeze_bn=True)),
        ]
        for engine in ("reference", "dense", "compiled"):
            for mode, extra in cases:
                hp = dict(lr=0.1, momentum=0.9, wd=1e-4, wd_arg=None, eps=0.1, alpha=0.03, steps=3, beta=6.0,
                          attack_bn="eval", freeze_bn=False)
                hp.update(extra)
                if not steps_case(tmp, data, x, y, a, scores, mode, engine, hp, rng):
                    break
        scaled_init_case(tmp, data, a, scores)
        resume_case(tmp, data, a, scores)
        bad_options(tmp, data, a, scores)
        finetune_case(tmp, data, a, scores)
    for k, (r, _) in sorted(worst.items()):
        print("worst %-18s %.3g of its tolerance" % (k, r))
    C.done()


if __name__ == "__main__":
    main()
