"""test_attack_torch.py -- `ticket attack` against a PyTorch implementation of advertorch's
LinfPGDAttack (the semantics HYDRA and Double-Win evaluate with), from the same start.

Models: `ticket init lenet` (advertorch's MNIST LeNet5), brought to PyTorch through
tools/torch_bridge.py import and tests/py/ref_models.LeNet5; and the adversarially trained
advertorch checkpoint (tools/torch_bridge.py export) when the shared data has it.  Data: the
first 32 Fashion-MNIST test images (Debian), else MNIST from the shared data, else random
images written as IDX here; MNIST for the checkpoint.

Cases, from the same given start (--init-delta), with --last (the final iterate, which is what
advertorch returns):
  - one PGD step; 10 PGD steps (eps 0.3, alpha 0.01, and 0.05 for the random model);
  - for the trained model, each of the 10 steps on its own, restarted from PyTorch's iterate
    (a per-step check that does not depend on how trajectories drift apart);
  - FGSM (--fgsm: zero start, one step of eps);
  - worst-case tracking (no --last, random model): x_adv must be the clean image when PyTorch
    misclassifies it, else the first PyTorch iterate it misclassifies, else the last.

Tolerances.  sign(grad) is ambiguous where the gradient is ~0 and float rounding differs
(the engine accumulates in another order than PyTorch's kernels):
  - one step from a common state: >= 99.9% of the values identical, every other value
    within 2*alpha (one flipped sign);
  - a whole trajectory: mean cross-entropy of the clean and adversarial batches within 1e-4
    of PyTorch's and robust accuracy within one example.  Pixel identity: >= 99.9% for the
    random model.  For the adversarially trained model a flipped pixel moves that example's
    ReLU pattern (the network thresholds its input), so single flips grow into visibly
    different (equally strong) trajectories: measured 3.8% of values differing after 10 steps
    with 0.05% after one.  There: >= 90% identical and every value within 2*alpha*steps.
"""

import gzip
import json
import os
import struct
import sys

import numpy as np

import tkt_test_util as U

torch = U.require_torch()
import torch.nn.functional as F  # noqa: E402

import ref_models  # noqa: E402

N = 32
chk = U.Checker("test_attack_torch")


def write_idx(d, n, rng):
    """Random 28x28 images as gzip IDX (t10k), for when no real data set is installed."""
    img = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    lab = rng.integers(0, 10, size=n, dtype=np.uint8)
    with gzip.open(os.path.join(d, "t10k-images-idx3-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + img.tobytes())
    with gzip.open(os.path.join(d, "t10k-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + lab.tobytes())
    return img.astype(np.float32) / np.float32(255), lab.astype(np.int64)


def read_idx(d, n):
    def op(name):
        for ext in ("", ".gz"):
            p = os.path.join(d, name + ext)
            if os.path.exists(p):
                return gzip.open(p, "rb") if ext else open(p, "rb")
        raise U.Failed("%s/%s missing" % (d, name))
    with op("t10k-images-idx3-ubyte") as f:
        _, cnt, r, c = struct.unpack(">IIII", f.read(16))
        img = np.frombuffer(f.read(n * r * c), dtype=np.uint8).reshape(n, r, c)
    with op("t10k-labels-idx1-ubyte") as f:
        f.read(8)
        lab = np.frombuffer(f.read(n), dtype=np.uint8)
    return img.astype(np.float32) / np.float32(255), lab.astype(np.int64)


def torch_lenet(tkt_path, tmp):
    sd_path = os.path.join(tmp, "sd.pt")
    U.bridge("import", tkt_path, "-o", sd_path)
    net = ref_models.build("lenet")
    net.load_state_dict(torch.load(sd_path))
    net.eval()
    return net


def pgd_torch(net, x, y, delta0, eps, alpha, steps, lo=0.0, hi=1.0):
    """advertorch perturb_iterative (ord inf) with a given delta_init, mean cross-entropy.
    Returns every iterate clamp(x + delta_t) for t = 0..steps."""
    delta = torch.clamp(x + delta0, lo, hi) - x  # as LinfPGDAttack.perturb after rand_init_delta
    iterates = [torch.clamp(x + delta, lo, hi)]
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(net(x + delta), y)
        g, = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            delta = delta + alpha * g.sign()
            delta = torch.clamp(delta, -eps, eps)
            delta = torch.clamp(x + delta, lo, hi) - x
        iterates.append(torch.clamp(x + delta, lo, hi))
    return iterates


def ce(net, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(net(x), y))


def attack_c(model, spec, tmp, tag, extra):
    out = os.path.join(tmp, "adv_%s.npy" % tag)
    p = U.ticket("attack", model, "--data", spec, "--limit", str(N), "--batch", str(N), "--engine", U.engine(),
                 "--save-adv", out, "--json", *extra)
    return np.load(out), json.loads(p.stdout)


def compare(what, got, want, alpha, steps, min_same=0.999):
    got = got.reshape(-1).astype(np.float64)
    want = want.reshape(-1).astype(np.float64)
    diff = np.abs(got - want)
    same = float(np.mean(diff == 0))
    bound = 2 * alpha * max(steps, 1) + 1e-6
    worst = int(np.argmax(diff))
    print("  %s: %.4f%% identical, %d differ, max |diff| %.3g (bound %.3g)" % (
        what, 100 * same, int(np.sum(diff != 0)), diff[worst], bound))
    chk.check(same >= min_same, "%s: only %.4f%% of the values identical, %.1f%% required (worst [%d]: got %.9g "
              "expected %.9g)" % (what, 100 * same, 100 * min_same, worst, got[worst], want[worst]))
    chk.check(diff[worst] <= bound, "%s: value [%d] differs by %.3g > %.3g (got %.9g expected %.9g)" % (
        what, worst, diff[worst], bound, got[worst], want[worst]))


def run_cases(label, model, net, spec, x_np, y_np, tmp, chaotic):
    """chaotic: whole trajectories may drift apart (see the module doc); per-step checks stay tight."""
    print("%s, data %s" % (label, spec))
    x = torch.from_numpy(x_np.reshape(N, 1, 28, 28))
    y = torch.from_numpy(y_np)
    rng = np.random.default_rng(7)
    eps = 0.3
    delta0 = ((rng.random((N, 1, 28, 28), dtype=np.float32) * 2 - 1) * np.float32(eps)).astype(np.float32)
    d0 = os.path.join(tmp, "delta0.npy")
    np.save(d0, delta0)
    dt = torch.from_numpy(delta0)
    loss_clean = ce(net, x, y)
    for steps, alpha in ((1, 0.01), (10, 0.01)) + (() if chaotic else ((10, 0.05),)):
        it = pgd_torch(net, x, y, dt, eps, alpha, steps)
        adv, js = attack_c(model, spec, tmp, "%d" % steps, ["--eps", str(eps), "--alpha", str(alpha), "--steps", str(steps),
                                                          "--last", "--init-delta", d0])
        compare("%s PGD-%d alpha %g" % (label, steps, alpha), adv, it[-1].numpy(), alpha, steps,
                0.90 if chaotic and steps > 1 else 0.999)
        la = ce(net, it[-1], y)
        with torch.no_grad():
            ra = float((net(it[-1]).argmax(1) == y).double().mean())
        chk.check(abs(js["loss_clean"] - loss_clean) <= 1e-4, "%s: clean loss %.7g vs torch %.7g" % (
            label, js["loss_clean"], loss_clean))
        chk.check(abs(js["loss_adv"] - la) <= 1e-4, "%s PGD-%d: adversarial loss %.7g vs torch %.7g" % (
            label, steps, js["loss_adv"], la))
        chk.check(abs(js["ra"] - ra) <= 1.0 / N + 1e-9, "%s PGD-%d: RA %.4f vs torch %.4f" % (label, steps, js["ra"], ra))
        print("    losses: clean %.6f (torch %.6f), adversarial %.6f (torch %.6f); RA %.4f (torch %.4f)" % (
            js["loss_clean"], loss_clean, js["loss_adv"], la, js["ra"], ra))
        if steps > 1 and chaotic:
            # every step on its own, from PyTorch's iterate t (where whole trajectories drift apart)
            worst_same = 1.0
            for t in range(steps):
                dti = os.path.join(tmp, "delta_t.npy")
                np.save(dti, (it[t] - x).numpy().astype(np.float32))
                adv_t, _ = attack_c(model, spec, tmp, "step", ["--eps", str(eps), "--alpha", str(alpha), "--steps", "1",
                                                               "--last", "--init-delta", dti])
                same = float(np.mean(adv_t.reshape(-1) == it[t + 1].numpy().reshape(-1)))
                worst_same = min(worst_same, same)
                if same < 0.999 or t == steps - 1:
                    compare("%s step %d of %d from torch's iterate" % (label, t + 1, steps), adv_t, it[t + 1].numpy(),
                            alpha, 1)
            print("    each single step: at least %.4f%% identical" % (100 * worst_same))
    # FGSM: zero start, one step of eps
    eps_f = 0.1
    it = pgd_torch(net, x, y, torch.zeros_like(x), eps_f, eps_f, 1)
    adv, js = attack_c(model, spec, tmp, "fgsm", ["--eps", str(eps_f), "--fgsm", "--last"])
    compare("%s FGSM eps %g" % (label, eps_f), adv, it[-1].numpy(), eps_f, 1)
    chk.check(abs(js["loss_adv"] - ce(net, it[-1], y)) <= 1e-4, "%s FGSM: adversarial loss %.7g vs torch %.7g" % (
        label, js["loss_adv"], ce(net, it[-1], y)))
    if chaotic:
        return
    # worst-case tracking: the clean image, or the first misclassified iterate, or the last
    steps, alpha = 10, 0.02
    it = pgd_torch(net, x, y, dt, eps, alpha, steps)
    with torch.no_grad():
        wrong = [(net(t).argmax(1) != y).numpy() for t in [x] + it]
    cands = [x.numpy()] + [t.numpy() for t in it]
    want = cands[-1].copy()
    chosen = np.full(N, len(cands) - 1)
    for i in range(N):
        for k in range(len(cands)):
            if wrong[k][i]:
                want[i] = cands[k][i]
                chosen[i] = k
                break
    adv, js = attack_c(model, spec, tmp, "track", ["--eps", str(eps), "--alpha", str(alpha), "--steps", str(steps),
                                                   "--init-delta", d0])
    print("    tracking: torch picks the clean image for %d, iterate t for %s, the last for %d examples" % (
        int(np.sum(chosen == 0)), sorted(int(c) - 1 for c in chosen if 0 < c < len(cands) - 1),
        int(np.sum(chosen == len(cands) - 1))))
    compare("%s PGD-%d tracking" % (label, steps), adv, want, alpha, steps)
    ra_torch = 1.0 - float(np.mean([any(wrong[k][i] for k in range(len(cands))) for i in range(N)]))
    chk.check(abs(js["ra"] - ra_torch) <= 1.0 / N + 1e-9, "%s tracking: RA %.4f vs torch %.4f" % (
        label, js["ra"], ra_torch))


def cli_checks(model, spec, x_np, tmp):
    """--help, usage errors (exit 2, one line naming the option), a bad --init-delta (names the
    file and the field), and the saved adversarial examples (shape, range, eps-ball)."""
    for cmd in ("eval", "attack"):
        p = U.ticket(cmd, "--help")
        chk.check(p.stdout.startswith("usage: ticket %s" % cmd), "%s --help: %r" % (cmd, p.stdout[:40]))
    for args, frag in ((["--data", spec], "--eps"), (["--data", spec, "--eps", "x/255"], "--eps"),
                       (["--data", spec, "--eps", "0.1", "--fgsm", "--steps", "3"], "--fgsm"),
                       (["--data", spec, "--eps", "0.1", "--bn", "batch"], "--bn"),
                       (["--data", spec, "--eps", "0.1", "--engine", "fast"], "--engine")):
        p = U.ticket("attack", model, *args, expect_ok=False)
        err = p.stderr.strip()
        chk.check(p.returncode == 2 and "\n" not in err and frag in err, "attack %s: exit %d, stderr %r" % (
            " ".join(args[2:]), p.returncode, err))
    bad = os.path.join(tmp, "bad_delta.npy")
    np.save(bad, np.zeros((N + 1, 1, 28, 28), np.float32))
    p = U.ticket("attack", model, "--data", spec, "--limit", str(N), "--eps", "0.1", "--init-delta", bad, expect_ok=False)
    err = p.stderr.strip()
    chk.check(p.returncode != 0 and "bad_delta.npy: shape" in err and "\n" not in err, "bad --init-delta: exit %d, %r" % (
        p.returncode, err))
    eps = 8 / 255.0
    adv, js = attack_c(model, spec, tmp, "saved", ["--eps", "8/255", "--steps", "2"])
    for key in ("sa", "ra", "loss_clean", "loss_adv", "images_per_s", "clean", "adversarial", "engine"):
        chk.check(key in js, "attack --json lacks %s" % key)
    chk.check(abs(js["eps"] - eps) < 1e-12 and abs(js["alpha"] - eps / 4) < 1e-12, "eps/alpha %r %r (8/255, default eps/4)" % (
        js["eps"], js["alpha"]))
    chk.check(adv.shape == (N, 1, 28, 28) and adv.dtype == np.float32, "saved %s %s" % (adv.shape, adv.dtype))
    dev = float(np.max(np.abs(adv.astype(np.float64) - x_np.reshape(N, 1, 28, 28))))
    chk.check(dev <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1, "saved examples: max |x_adv - x| %.6g (eps %.6g), "
              "range [%g, %g]" % (dev, eps, adv.min(), adv.max()))


def main():
    U.ticket_bin()
    shared = U.shared_data()
    with U.tmpdir() as tmp:
        if os.path.isdir("/usr/share/datasets/fashion-mnist"):
            spec = "fashion-mnist"
            x_np, y_np = read_idx("/usr/share/datasets/fashion-mnist", N)
        elif os.path.isdir(os.path.join(shared, "mnist")):
            spec = "mnist:" + os.path.join(shared, "mnist")
            x_np, y_np = read_idx(os.path.join(shared, "mnist"), N)
        else:
            d = os.path.join(tmp, "idx")
            os.mkdir(d)
            x_np, y_np = write_idx(d, N, np.random.default_rng(3))
            spec = "mnist:" + d
        model = os.path.join(tmp, "lenet.tkt")
        U.ticket("init", "lenet", "-o", model, "--seed", "3")
        cli_checks(model, spec, x_np, tmp)
        run_cases("init lenet", model, torch_lenet(model, tmp), spec, x_np, y_np, tmp, False)

        ckpt = os.path.join(shared, "pretrained-weights", "advertorch-mnist-lenet5", "mnist_lenet5_advtrained.pt")
        mnist = os.path.join(shared, "mnist")
        if os.path.exists(ckpt) and os.path.isdir(mnist):
            model2 = os.path.join(tmp, "adv.tkt")
            U.bridge("export", ckpt, "--arch", "lenet", "-o", model2)
            x2, y2 = read_idx(mnist, N)
            run_cases("advertorch adv-trained lenet", model2, torch_lenet(model2, tmp), "mnist:" + mnist, x2, y2, tmp, True)
        else:
            print("advertorch checkpoint or MNIST absent (%s): that part skipped" % ckpt)
    chk.done()


if __name__ == "__main__":
    try:
        main()
    except U.Failed as e:
        print("FAIL: %s" % e)
        sys.exit(1)
