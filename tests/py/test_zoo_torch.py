#!/usr/bin/python3
"""test_zoo_torch.py -- every zoo model against its PyTorch definition (tests/py/ref_models.py).

1. The zoo itself: models/*.json are what tools/gen_zoo.py writes; `ticket init` errors are one
   line and non-zero; Python's tkt.zoo_reshape agrees with `ticket init` for other classes and
   inputs; a seed gives the same model twice and another seed another one.
2. Structure against PyTorch: tensor names, shapes and order equal the reference model's
   state_dict; prunable = conv and linear weights; parameters, prunable weights and MACs equal
   what the PyTorch model has (MACs counted by forward hooks).
3. Initialisation against the reference model's own initialisation: constants exactly; random
   tensors by standard deviation, mean and kurtosis (normal vs uniform) within sampling error.
4. Numbers: the model goes to a state_dict (torch_bridge import, plain / torch-prune / synflow
   encodings), loads strictly into the PyTorch model (float64), and `ticket run` must give the
   logits and loss within 1e-4, the input gradient and every parameter gradient within 1e-3
   (max-abs-diff / max-abs-reference; masked tensors on their kept entries), dense and with
   random masks (50%, 90%), BatchNorm in eval mode (the model must come back unchanged) and in
   train mode (running statistics compared too).  Every case must be well-conditioned: PyTorch's
   own gradients at inputs moved by 1e-7 stay within 1e-4 (a case near a ReLU kink fails as
   such and gets another seed; see case()).  TICKET_ENGINE picks the engine (default
   reference); TICKET_HEAVY=1 runs every case on every model.
"""

import importlib.util
import json
import os
import sys

import numpy as np

import tkt_test_util as U

C = U.Checker("test_zoo_torch")
SRC = U.source_dir()
ARCHS = ["lenet", "cifar_model", "cifar_model_large", "vgg16_bn", "resnet18", "wrn_28_4", "resnet20"]


def graph_key(m):
    """What defines a model's graph and tensors, attribute defaults resolved."""
    key = [("input", m.input.channels, m.input.height, m.input.width, m.classes)]
    key += [("tensor", t.name, t.shape, t.init, t.init_fan_in, t.prunable, t.trainable) for t in m.tensors]
    for l in m.layers:
        k = ("layer", l.name, l.op, tuple(l.inputs), l.weight, l.bias, l.running_mean, l.running_var)
        if l.op in ("Conv2d", "MaxPool", "AvgPool"):
            k += (l.pair("kernel", 1), l.pair("stride", 1), l.pair("padding", 0))
        if l.op == "Conv2d":
            k += (l.pair("dilation", 1), l.groups)
        if l.op == "BatchNorm":
            k += (float(np.float32(l.eps)), float(np.float32(l.momentum)))
        if l.op == "Linear":
            k += (l.out_features,)
        key.append(k)
    return key


def zoo_checks():
    """Part 1: needs no torch."""
    sys.path.insert(0, os.path.join(SRC, "tools"))
    import gen_zoo
    import tkt
    C.check(gen_zoo.main(["--check"]) == 0, "models/ is not what tools/gen_zoo.py writes")
    names = json.loads(U.ticket("init", "--list", "--json").stdout)["architectures"]
    C.check(sorted(a["arch"] for a in names) == sorted(ARCHS), "ticket init --list: %s" % [a["arch"] for a in names])
    with U.tmpdir() as d:
        out = os.path.join(d, "m.tkt")
        for args, needle in [(["nosuch", "-o", out], "choices: cifar_model"),
                             (["vgg16_bn", "-o", out, "--input", "3,48,48"], "AdaptiveAvgPool2d"),
                             (["lenet", "-o", out, "--input", "1,2,2"], "too small"),
                             (["lenet", "-o", out, "--input", "1,28"], "--input"),
                             (["lenet", "-o", out, "--classes", "0"], "--classes"),
                             (["lenet", "-o", out, "--seed", "-1"], "--seed"),
                             (["lenet"], "no output file"),
                             (["lenet", "-o", os.path.join(d, "no", "such", "dir.tkt")], "dir.tkt")]:
            p = U.ticket("init", *args, expect_ok=False)
            lines = p.stderr.strip().splitlines()
            C.check(p.returncode != 0 and len(lines) == 1 and needle in lines[0] and lines[0].startswith("ticket init"),
                    "ticket init %s: exit %d, stderr %r (want one line with %r)" % (" ".join(args), p.returncode,
                                                                                  p.stderr, needle))
            C.check(not os.path.exists(out), "ticket init %s left %s behind" % (" ".join(args), out))
        C.check(U.ticket("init", "--help").stdout.startswith("usage: ticket init"), "ticket init --help")
        # Python's reshaping twin against ticket init
        for arch, classes, inp in [("lenet", 5, (3, 32, 32)), ("vgg16_bn", 100, (3, 64, 64)), ("resnet20", 0, (1, 28, 28)),
                                   ("wrn_28_4", 7, (0, 0, 0)), ("cifar_model", 3, (1, 16, 24)), ("resnet18", 200, (3, 64, 64))]:
            args = ["init", arch, "-o", out]
            if classes:
                args += ["--classes", str(classes)]
            if inp[0]:
                args += ["--input", "%d,%d,%d" % inp]
            U.ticket(*args)
            got = tkt.load(out)
            want = tkt.load_json(os.path.join(SRC, "models", arch + ".json"))
            tkt.zoo_reshape(want, classes, *inp)
            a, b = graph_key(got), graph_key(want)
            C.check(a == b, "%s classes %d input %s: ticket init and tkt.zoo_reshape disagree: %s" % (
                arch, classes, inp, next(((x, y) for x, y in zip(a, b) if x != y), (len(a), len(b)))))
        # determinism
        for arch in ("lenet", "resnet20"):
            ms = []
            for seed in ("7", "7", "8"):
                U.ticket("init", arch, "-o", out, "--seed", seed)
                ms.append(tkt.load(out))
            same = all(np.array_equal(a.data, b.data) for a, b in zip(ms[0].tensors, ms[1].tensors))
            diff = [a.name for a, b in zip(ms[0].tensors, ms[2].tensors)
                    if a.init not in ("Zeros", "Ones") and np.array_equal(a.data, b.data)]
            C.check(same, "%s: seed 7 twice gives different tensors" % arch)
            C.check(not diff, "%s: seeds 7 and 8 give the same %s" % (arch, diff[:3]))
            C.check(ms[0].provenance.method == "init" and ms[0].provenance.source == "zoo:" + arch,
                    "%s: provenance %s %s" % (arch, ms[0].provenance.method, ms[0].provenance.source))
        # changing the classes leaves the other tensors as they were
        U.ticket("init", "lenet", "-o", out, "--seed", "3")
        a = tkt.load(out)
        U.ticket("init", "lenet", "-o", out, "--seed", "3", "--classes", "4")
        b = tkt.load(out)
        C.check(all(np.array_equal(x.data, y.data) for x, y in zip(a.tensors[:-2], b.tensors[:-2])),
                "lenet: --classes changed tensors other than the last layer's")


try:
    zoo_checks()
except U.Failed as e:
    C.check(False, str(e))
if importlib.util.find_spec("torch") is None:
    print("%d zoo checks done, %d failed" % (C.checks, C.failures))
    if C.failures:
        sys.exit(1)
    U.skip("PyTorch is not importable: the comparisons against PyTorch did not run")

torch = U.require_torch()
import torch.nn.functional as F  # noqa: E402
import torch.nn.utils.prune as tprune  # noqa: E402

import ref_models as R  # noqa: E402
import tkt  # noqa: E402
import torch_bridge as TB  # noqa: E402

ENGINE = U.engine()


def torch_counts(net, inp):
    """(trainable params, conv+linear weights, MACs per image) of a PyTorch model."""
    macs = [0]

    def hook(mod, _, out):
        macs[0] += mod.weight.numel() * (out.shape[2] * out.shape[3] if out.dim() == 4 else 1)
    hs = [mm.register_forward_hook(hook) for mm in net.modules() if isinstance(mm, (torch.nn.Conv2d, torch.nn.Linear))]
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, *inp))
    for h in hs:
        h.remove()
    trainable = sum(p.numel() for n, p in net.named_parameters() if not n.endswith("shortcut.weight"))
    prunable = sum(mm.weight.numel() for mm in net.modules() if isinstance(mm, (torch.nn.Conv2d, torch.nn.Linear)))
    return trainable, prunable, macs[0]


def kurtosis(a):
    a = a.astype(np.float64).reshape(-1)
    a = a - a.mean()
    v = np.mean(a * a)
    return float(np.mean(a ** 4) / (v * v)) if v > 0 else 0.0


def structure_and_init():
    """Parts 2 and 3."""
    with U.tmpdir() as d:
        out = os.path.join(d, "m.tkt")
        for arch in ARCHS:
            info = json.loads(U.ticket("init", arch, "-o", out, "--seed", "11", "--json").stdout)
            m = tkt.load(out)
            torch.manual_seed(5)
            net = R.build(arch, sub_block1=False)
            sd = net.state_dict()
            keys = [k for k in sd if not k.endswith(("num_batches_tracked", "_mask"))]
            C.check(keys == m.names(), "%s: tensor names differ from the state_dict: %s" %
                    (arch, sorted(set(keys) ^ set(m.names()))[:4]))
            for t in m.tensors:
                if t.name not in sd:
                    continue
                C.check(tuple(sd[t.name].shape) == t.shape, "%s: %s shape %s, torch %s" %
                        (arch, t.name, t.shape, tuple(sd[t.name].shape)))
                is_w = any(getattr(mm, "weight", None) is not None and isinstance(mm, (torch.nn.Conv2d, torch.nn.Linear))
                           and n + ".weight" == t.name for n, mm in net.named_modules())
                C.check(t.prunable == is_w, "%s: %s prunable=%s" % (arch, t.name, t.prunable))
                want_tr = not t.name.endswith(("running_mean", "running_var", "shortcut.weight"))
                C.check(t.trainable == want_tr, "%s: %s trainable=%s" % (arch, t.name, t.trainable))
                ref = sd[t.name].double().numpy()
                ours = t.data.astype(np.float64)
                if np.all(ref == ref.reshape(-1)[0]):  # a constant: ones, zeros
                    C.equal("%s: init of %s (%s)" % (arch, t.name, t.init), ours, ref)
                    continue
                n = t.numel
                tol = 6.0 / np.sqrt(n) + 0.01
                rs, os_ = ref.std(), ours.std()
                C.check(abs(os_ / rs - 1) < tol, "%s: init of %s (%s): std %.5g, torch %.5g (n=%d)" %
                        (arch, t.name, t.init, os_, rs, n))
                C.check(abs(ours.mean()) < 6 * rs / np.sqrt(n) + 1e-7, "%s: init of %s: mean %.3g, std %.3g" %
                        (arch, t.name, ours.mean(), os_))
                if n >= 2000:  # uniform (1.8) vs normal (3.0); 6 x the standard error of a normal's kurtosis
                    C.check(abs(kurtosis(ours) - kurtosis(ref)) < 6 * np.sqrt(24.0 / n), "%s: init of %s (%s): kurtosis %.2f, torch %.2f" %
                            (arch, t.name, t.init, kurtosis(ours), kurtosis(ref)))
            tp, pr, macs = torch_counts(net, R.default_input(arch))
            C.check((info["params"], info["prunable"], info["macs"]) == (tp, pr, macs),
                    "%s: params/prunable/MACs %s, PyTorch %s" % (arch, (info["params"], info["prunable"], info["macs"]),
                                                                  (tp, pr, macs)))


COND_NOISE, COND_K = 1e-7, 2


def torch_grads(net, x64, y):
    """PyTorch's float64 gradients of the mean cross-entropy at x64: {"input": ..., parameter: ...}."""
    net.zero_grad()
    xt = torch.tensor(x64, dtype=torch.float64, requires_grad=True)
    F.cross_entropy(net(xt), torch.tensor(y)).backward()
    g = {"input": xt.grad.numpy().copy()}
    for n, q in net.named_parameters():
        g[n] = q.grad.numpy().copy()
    return g


def case(arch, density=None, bn="eval", batch=2, encoding="plain", classes=10, inp=None, seed=1):
    name = "%s %s %s bn=%s B=%d%s%s" % (arch, "dense" if density is None else "density %.2g" % density, encoding, bn,
                                        batch, " classes=%d" % classes if classes != 10 else "",
                                        " input=%s" % (inp,) if inp else "")
    rng = np.random.default_rng(seed)
    with U.tmpdir() as d:
        p = lambda f: os.path.join(d, f)  # noqa: E731
        args = ["init", arch, "-o", p("m0.tkt"), "--seed", str(seed), "--classes", str(classes)]
        if inp:
            args += ["--input", "%d,%d,%d" % inp]
        U.ticket(*args)
        model = tkt.load(p("m0.tkt"))
        if density is not None:
            U.random_masks(model, density, rng)
        U.random_bn_state(model, rng)  # so eval mode is not the identity
        tkt.save(model, p("m.tkt"))
        c, h, w = model.input.channels, model.input.height, model.input.width
        sd, _ = TB.import_model(model, encoding)
        net = R.build(arch, num_classes=classes, in_ch=c, hw=(h, w), sub_block1=False, masked=encoding == "synflow")
        if encoding == "torch-prune":
            mods = dict(net.named_modules())
            for t in model.tensors:
                if t.mask is not None:
                    mod, pname = t.name.rsplit(".", 1)
                    tprune.custom_from_mask(mods[mod], pname, torch.ones(t.shape))
        net.load_state_dict(sd, strict=True)
        net = net.double()
        x = rng.random((batch, c, h, w), dtype=np.float32)
        y = rng.integers(0, classes, batch)
        np.save(p("x.npy"), x)
        np.save(p("y.npy"), y)
        r = U.ticket("run", p("m.tkt"), "--input", p("x.npy"), "-o", p("lg.npy"), "--labels", p("y.npy"),
                     "--input-grad", p("dx.npy"), "--param-grads", p("g.tkt"), "--bn", bn, "--save-model",
                     p("out.tkt"), "--engine", ENGINE, "--json")
        res = json.loads(r.stdout)
        net.train(bn == "train")
        params = dict(net.named_parameters())
        # The case must pin its gradients down: PyTorch's own float64 gradients at inputs moved
        # by COND_NOISE (relative, about float32 rounding) must stay within a tenth of the
        # gradient tolerance.  Near a ReLU kink, and more so through train-mode batchnorms over
        # few values (batch 2 of 4x4 maps: 32 per channel), they do not: with wrn_28_4 at density
        # 0.1, batch 2, seed 1, noise of 1e-7 moved PyTorch's own gradient of
        # block3.layer.3.bn2.bias by 1.06e-2 of its largest element, and a float32 engine then
        # differs from it by as much through its summation order alone (ours passed on one host
        # and failed on another; the dense and reference engines on inputs moved by 1e-6 differ
        # by 1-5%).  Such a case proves nothing either way: it fails here, and gets another seed.
        state = {k: v.clone() for k, v in net.state_dict().items()}
        g0 = torch_grads(net, x.astype(np.float64), y)
        net.load_state_dict(state)  # running statistics back as they were
        moved = {}
        for k in range(COND_K):
            xp = x.astype(np.float64) * (1 + COND_NOISE * np.random.default_rng(100 + k).standard_normal(x.shape))
            gp = torch_grads(net, xp, y)
            net.load_state_dict(state)
            for n in gp:
                r = float(np.abs(gp[n] - g0[n]).max() / max(np.abs(g0[n]).max(), 1e-30))
                moved[n] = max(moved.get(n, 0.0), r)
        worst_n = max(moved, key=moved.get)
        C.check(moved[worst_n] <= 1e-4, "%s: ill-conditioned case: PyTorch's own gradient of %s moves by %.2g under "
                "%.0e input noise (choose another seed)" % (name, worst_n, moved[worst_n], COND_NOISE))
        net.zero_grad()
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        logits = net(xt)
        loss = F.cross_entropy(logits, torch.tensor(y))
        loss.backward()
        C.close("logits: " + name, np.load(p("lg.npy")), logits.detach().numpy(), 1e-4)
        C.close("loss: " + name, res["loss"], loss.item(), 1e-4)
        C.close("input grad: " + name, np.load(p("dx.npy")), xt.grad.numpy(), 1e-3)
        g = tkt.load(p("g.tkt"))
        n_grads = 0
        for t in model.tensors:
            if not t.trainable:
                continue
            tp = params.get(t.name, params.get(t.name + "_orig"))
            if tp is None:
                C.check(False, "%s: no PyTorch parameter for %s" % (name, t.name))
                continue
            got = g.tensor(t.name).data
            C.close("param grad: %s %s" % (name, t.name), got, tp.grad.numpy(), 1e-3,
                    where=t.mask if t.mask is not None else None)
            n_grads += 1
        C.check(n_grads == sum(t.trainable for t in model.tensors), "%s: %d gradients compared" % (name, n_grads))
        after = tkt.load(p("out.tkt"))
        bufs = dict(net.named_buffers())
        for t in model.tensors:
            a = after.tensor(t.name)
            if bn == "train" and t.name.endswith(("running_mean", "running_var")):
                C.close("running stats: %s %s" % (name, t.name), a.data, bufs[t.name].numpy(), 1e-4)
            else:
                C.equal("unchanged: %s %s" % (name, t.name), a.effective(), t.effective())
        print("ok: %s" % name)


try:
    structure_and_init()
    cases = [
        dict(arch="lenet", batch=4), dict(arch="lenet", density=0.5, encoding="torch-prune"),
        dict(arch="lenet", classes=5, inp=(3, 32, 32), density=0.1),
        dict(arch="cifar_model", batch=3), dict(arch="cifar_model", density=0.1, encoding="torch-prune"),
        dict(arch="cifar_model_large", density=0.5),
        dict(arch="resnet20", encoding="synflow", batch=3), dict(arch="resnet20", density=0.5, bn="train", encoding="synflow", seed=2),
        dict(arch="resnet20", density=0.1, bn="train", batch=4),
        dict(arch="vgg16_bn", batch=1), dict(arch="vgg16_bn", density=0.5), dict(arch="vgg16_bn", density=0.1, bn="train"),
        dict(arch="resnet18", batch=1), dict(arch="resnet18", density=0.5), dict(arch="resnet18", density=0.1, bn="train"),
        dict(arch="wrn_28_4", batch=1), dict(arch="wrn_28_4", density=0.1, bn="train", seed=4),
    ]
    if U.heavy():
        cases += [
            dict(arch="lenet", density=0.1, batch=8), dict(arch="cifar_model_large", bn="train", density=0.1),
            dict(arch="resnet20", inp=(3, 64, 64), classes=100, density=0.5, bn="train"),
            dict(arch="vgg16_bn", bn="train", batch=3), dict(arch="vgg16_bn", inp=(3, 64, 64), classes=100, density=0.5),
            dict(arch="resnet18", bn="train", density=0.5, batch=3),
            dict(arch="wrn_28_4", density=0.5), dict(arch="wrn_28_4", bn="train", batch=3),
        ]
    for kw in cases:
        case(**kw)
except U.Failed as e:
    C.check(False, str(e))
C.done()
