"""test_train_torch.py -- training steps of every recipe (st, pgd, fgsm-rs, trades, mart, and
pgd with train-mode BatchNorm in the attack) against PyTorch reference implementations of the
seed recipes, on a small masked model with BatchNorm and input normalisation.

`ticket train` runs one and two steps (epochs of one batch) from attack starts given by
--init-delta (the random draws of two implementations cannot match otherwise) and dumps each
step's adversarial batch (--dump-adv).  The PyTorch side, in float64, follows the reference
code of each recipe (Madry PGD-AT as advertorch, locuslab/fast_adversarial FGSM-RS, HYDRA
trades_loss, YisenWang/MART mart_loss) and torch.optim.SGD (momentum 0.9, weight decay; st
with Nesterov) with the mask applied to gradients and weights.  Per step:
  - the attack: PyTorch's own attack from the same start and the same weights against ticket's
    adversarial batch: at most 0.5% of the elements differ by more than 1e-5 (sign(grad) of a
    near-zero gradient may flip between two correct implementations: TRADES' KL gradient
    near its start is tiny), none by more than min(2 eps, 2 alpha steps);
  - the loss and the update, computed by PyTorch on ticket's adversarial batch (so an
    attack-side flip cannot blur the check of the loss and its gradients): loss relative
    1e-4; every tensor (weights, biases, BatchNorm affine and running statistics),
    max |got - want| <= 2e-4 * max |change of the tensor| + 2e-7 (2 ulp at 1);
  - pruned weights exactly zero, masks unchanged.
Runs on the reference engine, and on the compiled and dense engines when the build has them.
"""

import gzip
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import tkt

TICKET = os.environ.get("TICKET_BIN")
FMNIST = "/usr/share/datasets/fashion-mnist"
B = 32
MEAN, STD = 0.2860, 0.3530
failures = []


def skip(why):
    print("SKIPPED: " + why)
    sys.exit(77)


def load_fmnist(n):
    with gzip.open(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")) as f:
        raw = f.read(16 + n * 784)
    with gzip.open(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz")) as f:
        lab = f.read(8 + n)
    x = np.frombuffer(raw[16:], np.uint8).reshape(n, 1, 28, 28).astype(np.float32) / np.float32(255)
    y = np.frombuffer(lab[8:], np.uint8).astype(np.int64)
    return x, y


# ---- the model: conv-bn-relu-pool, conv(stride 2)-bn-relu, linear; masks on the weights ------

def make_arrays(seed):
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
    masks = {"conv1.weight": 0.3, "conv2.weight": 0.5, "fc.weight": 0.7}
    masks = {k: (rng.uniform(size=a[k].shape) >= s).astype(np.uint8) for k, s in masks.items()}
    for k, mk in masks.items():
        a[k] = np.where(mk != 0, a[k], np.float32(0)).astype(np.float32)
    return a, masks


def small_cnn_layers(idx, pool):
    """The layers of the test network (conv-bn-relu-POOL-conv/2-bn-relu-flatten-fc), tensors by name in idx."""
    L = tkt.Layer
    return [
        L("conv1", "Conv2d", [0], weight=idx["conv1.weight"], kernel=[3, 3], stride=[1, 1], padding=[1, 1],
          dilation=[1, 1]),
        L("bn1", "BatchNorm", [1], weight=idx["bn1.weight"], bias=idx["bn1.bias"],
          running_mean=idx["bn1.running_mean"], running_var=idx["bn1.running_var"]),
        L("relu1", "Relu", [2]),
        L("pool1", pool, [3], kernel=[2, 2], stride=[2, 2], padding=[0, 0]),
        L("conv2", "Conv2d", [4], weight=idx["conv2.weight"], bias=idx["conv2.bias"], kernel=[3, 3], stride=[2, 2],
          padding=[1, 1], dilation=[1, 1]),
        L("bn2", "BatchNorm", [5], weight=idx["bn2.weight"], bias=idx["bn2.bias"],
          running_mean=idx["bn2.running_mean"], running_var=idx["bn2.running_var"]),
        L("relu2", "Relu", [6]),
        L("flatten", "Flatten", [7]),
        L("fc", "Linear", [8], weight=idx["fc.weight"], bias=idx["fc.bias"], out_features=10),
    ]


def write_tkt(path, a, masks):
    names = list(a)
    idx = {n: i for i, n in enumerate(names)}
    tensors = []
    for n in names:
        stat = n.endswith("running_mean") or n.endswith("running_var")
        tensors.append(tkt.Tensor(n, a[n].shape, data=a[n].copy(), mask=masks.get(n), init=0, prunable=n in masks,
                                  trainable=not stat))
    layers = small_cnn_layers(idx, "MaxPool")
    m = tkt.Model("test_train_torch", 10, tkt.InputSpec(1, 28, 28, mean=[MEAN], std=[STD]), tensors, layers,
                  provenance=tkt.Provenance(method="random", sparsity=0.0, source="tests/py/test_train_torch.py"))
    tkt.save(m, path)


class Net(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(392, 10)
        sd = self.state_dict()
        for k in a:
            sd[k] = torch.from_numpy(a[k].copy())
        self.load_state_dict(sd)

    def forward(self, x):
        x = (x - MEAN) / STD
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


# ---- the reference recipes ---------------------------------------------------------------------

def pgd_ce(model, x, y, delta0, eps, alpha, steps, bn_train):
    """Madry / advertorch / MART attack on CE, from a given start clamped to [0, 1]."""
    model.train(bn_train)
    x_adv = torch.clamp(x + delta0, 0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        grad, = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv.detach()


def trades_attack(model, x, delta0, eps, alpha, steps):
    """HYDRA trades_loss's attack (model.eval(), KLDivLoss(sum) against the clean softmax)."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    x_adv = torch.clamp(x + delta0, 0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv.detach()


def recipe_loss(model, mode, x, y, delta0, hp, given_adv=None):
    """The recipe's loss and PyTorch's own adversarial batch; the loss uses given_adv (ticket's
    batch) when given, after running PyTorch's attack (which may update BatchNorm statistics)."""
    eps, alpha, steps, beta = hp["eps"], hp["alpha"], hp["steps"], hp["beta"]
    n = x.shape[0]
    if mode == "st":
        model.train()
        return F.cross_entropy(model(x), y), None
    if mode in ("pgd", "fgsm-rs"):
        adv = pgd_ce(model, x, y, delta0, eps, alpha, 1 if mode == "fgsm-rs" else steps, hp["attack_bn"] == "train")
        use = adv if given_adv is None else given_adv
        model.train()
        return F.cross_entropy(model(use), y), adv
    if mode == "trades":
        own = trades_attack(model, x, delta0, eps, alpha, steps)
        adv = own if given_adv is None else given_adv
        model.train()
        criterion_kl = nn.KLDivLoss(reduction="sum")
        logits = model(x)
        loss_natural = F.cross_entropy(logits, y)
        loss_robust = (1.0 / n) * criterion_kl(F.log_softmax(model(adv), dim=1), F.softmax(model(x), dim=1))
        return loss_natural + beta * loss_robust, own
    if mode == "mart":
        own = pgd_ce(model, x, y, delta0, eps, alpha, steps, False)
        adv = own if given_adv is None else given_adv
        model.train()
        kl = nn.KLDivLoss(reduction="none")
        logits = model(x)
        logits_adv = model(adv)
        adv_probs = F.softmax(logits_adv, dim=1)
        tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
        new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
        loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
        nat_probs = F.softmax(logits, dim=1)
        true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
        loss_robust = (1.0 / n) * torch.sum(
            torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
        return loss_adv + float(beta) * loss_robust, own
    raise ValueError(mode)


class TorchTrainer:
    """The PyTorch side, float64, one step at a time."""

    def __init__(self, a, masks, hp):
        self.model = Net(a).double()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=hp["lr"], momentum=hp["momentum"],
                                   weight_decay=hp["wd"], nesterov=hp["nesterov"])
        self.masks = {k: torch.from_numpy(v.astype(np.float64)) for k, v in masks.items()}
        self.params = dict(self.model.named_parameters())
        self.hp = hp

    def step(self, mode, x, y, delta0, given_adv):
        loss, own = recipe_loss(self.model, mode, x, y, delta0, self.hp, given_adv)
        self.opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            for k, mk in self.masks.items():
                self.params[k].grad.mul_(mk)
        self.opt.step()
        with torch.no_grad():
            for k, mk in self.masks.items():
                self.params[k].mul_(mk)
        return float(loss.item()), None if own is None else own.numpy()

    def state(self):
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items() if "num_batches" not in k}


# ---- comparisons -----------------------------------------------------------------------------

def fail(msg):
    print("FAIL: " + msg)
    failures.append(msg)


worst_ratio = [0.0, ""]


def compare_change(what, got, want, start, rtol=2e-4, atol=2e-7):
    got, want, start = (np.asarray(v, np.float64).reshape(-1) for v in (got, want, start))
    d = np.abs(got - want)
    scale = np.max(np.abs(want - start)) if want.size else 0.0
    lim = rtol * scale + atol
    if scale > 0 and float(np.max(d) / lim) > worst_ratio[0]:
        worst_ratio[0], worst_ratio[1] = float(np.max(d) / lim), what
    i = int(np.argmax(d))
    if not d[i] <= lim:
        fail("%s: worst [%d]: got %.9g expected %.9g (start %.9g; |diff| %.3g > %.3g = %.0e * max change %.3g)"
             % (what, i, got[i], want[i], start[i], d[i], lim, rtol, scale))
        return False
    return True


def main():
    if not TICKET or not os.path.exists(TICKET):
        skip("TICKET_BIN is not set")
    if not os.path.exists(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")):
        skip("Fashion-MNIST (Debian dataset-fashion-mnist) is not installed")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_np, y_np = load_fmnist(B)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    a, masks = make_arrays(3)
    rng = np.random.default_rng(5)
    eps = 0.1
    cases = [
        ("st", dict(nesterov=True)),
        ("pgd", dict()),
        ("pgd", dict(attack_bn="train")),
        ("fgsm-rs", dict(alpha=1.25 * eps)),
        ("trades", dict()),
        ("mart", dict(beta=5.0)),
    ]
    engines = ["reference", "compiled", "dense"]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = os.path.join(tmp, "model.tkt")
        write_tkt(model_path, a, masks)
        start = tkt.load(model_path)
        xd, yd = x.double(), y
        for engine in engines:
            ran = 0
            for mode, extra in cases:
                hp = dict(lr=0.1, momentum=0.9, wd=5e-4, nesterov=False, eps=eps, alpha=0.03, steps=3, beta=6.0,
                          attack_bn="eval")
                hp.update(extra)
                if mode in ("trades", "mart"):
                    delta0 = (0.001 * rng.standard_normal(x_np.shape)).astype(np.float32)
                else:
                    delta0 = rng.uniform(-eps, eps, x_np.shape).astype(np.float32)
                dpath = os.path.join(tmp, "delta.npy")
                np.save(dpath, delta0)
                what = "%s/%s%s" % (engine, mode, " (attack bn train)" if hp["attack_bn"] == "train" else "")
                # ticket: 1 and 2 steps
                runs = []
                for epochs in (1, 2):
                    out = os.path.join(tmp, "out%d.tkt" % epochs)
                    adv_path = os.path.join(tmp, "adv%d.npy" % epochs)
                    cmd = [TICKET, "train", model_path, "--data", "fashion-mnist", "--limit", str(B), "--batch",
                           str(B), "--epochs", str(epochs), "--mode", mode, "--lr", repr(hp["lr"]), "--momentum",
                           repr(hp["momentum"]), "--wd", repr(hp["wd"]), "--schedule", "constant", "--eps", repr(eps),
                           "--alpha", repr(hp["alpha"]), "--steps", str(hp["steps"]), "--beta", repr(hp["beta"]),
                           "--attack-bn", hp["attack_bn"], "--val", "0", "--init-delta", dpath, "--engine", engine,
                           "--threads", "1", "--seed", "1", "-o", out, "--json"]
                    if hp["nesterov"]:
                        cmd.append("--nesterov")
                    if mode != "st":
                        cmd += ["--dump-adv", adv_path]
                    p = subprocess.run(cmd, capture_output=True, text=True)
                    if p.returncode != 0:
                        runs = None if engine != "reference" and ("no compiled engine" in p.stderr or
                                                                  "no dense engine" in p.stderr) else p
                        break
                    runs.append((json.loads(p.stdout)["train_loss"], tkt.load(out),
                                 np.load(adv_path) if mode != "st" else None))
                if runs is None:
                    print("%s engine: not available" % engine)
                    break
                if not isinstance(runs, list):
                    fail("%s: ticket train exited %d: %s" % (what, runs.returncode, runs.stderr.strip()[-500:]))
                    continue
                ran += 1
                ok = True
                tt = TorchTrainer(a, masks, hp)
                for k, (got_loss, got, got_adv) in enumerate(runs):
                    sw = "%s step %d" % (what, k + 1)
                    given = None if got_adv is None else torch.from_numpy(got_adv).double()
                    want_loss, own_adv = tt.step(mode, xd, yd, torch.from_numpy(delta0).double(), given)
                    if got_adv is not None:
                        d = np.abs(got_adv.astype(np.float64) - own_adv)
                        frac = float(np.mean(d > 1e-5))
                        bound = min(2 * eps, 2 * hp["alpha"] * (1 if mode == "fgsm-rs" else hp["steps"])) + 1e-5
                        i = int(np.argmax(d))
                        if frac > 0.005 or d.reshape(-1)[i] > bound:
                            fail("%s: adversarial examples: %.3f%% differ; worst [%d] got %.7g expected %.7g"
                                 % (sw, 100 * frac, i, got_adv.reshape(-1)[i], own_adv.reshape(-1)[i]))
                            ok = False
                        if float(np.max(np.abs(got_adv - x_np))) > eps + 1e-6 or got_adv.min() < 0 or got_adv.max() > 1:
                            fail("%s: adversarial examples leave the eps-ball or [0, 1]" % sw)
                            ok = False
                    if not abs(got_loss - want_loss) <= 1e-4 * abs(want_loss) + 1e-7:
                        fail("%s: loss %.9g, PyTorch %.9g" % (sw, got_loss, want_loss))
                        ok = False
                    want_sd = tt.state()
                    for t in got.tensors:
                        ok &= compare_change("%s: %s" % (sw, t.name), t.data, want_sd[t.name],
                                             start.tensor(t.name).data)
                        if t.name in masks:
                            if t.mask is None or not np.array_equal(t.mask.reshape(-1), masks[t.name].reshape(-1)):
                                fail("%s: %s: the mask changed" % (sw, t.name))
                                ok = False
                            elif np.any(t.data.reshape(-1)[masks[t.name].reshape(-1) == 0] != 0):
                                fail("%s: %s: a pruned weight is not zero" % (sw, t.name))
                                ok = False
                    moved = max(float(np.max(np.abs(t.data - start.tensor(t.name).data))) for t in got.tensors)
                    if not moved > 1e-4:
                        fail("%s: the weights did not move" % sw)
                        ok = False
                    print("%-40s %s  loss %.7f (PyTorch %.7f)" % (sw, "ok" if ok else "FAILED", got_loss, want_loss))
            if engine == "reference" and ran != len(cases):
                fail("reference engine: %d of %d cases ran" % (ran, len(cases)))
    print("largest tensor difference as a fraction of its tolerance: %.3g (%s)" % tuple(worst_ratio))
    if failures:
        print("test_train_torch: %d failure(s)" % len(failures))
        sys.exit(1)
    print("test_train_torch: all checks passed")


if __name__ == "__main__":
    main()
