#!/usr/bin/python3
"""test_bridge.py -- tools/torch_bridge.py on checkpoints made here in each original format.

Formats (SEEDS.md section 2), each built from the reference definitions in ref_models.py:
  HYDRA subnet (popup_scores, k given at export), HYDRA dense (zeros; --mask-from-zeros),
  torch.nn.utils.prune (weight_orig / weight_mask, a pruned bias), SynFlow masked layers
  (weight_mask, bias_mask, BatchNorm masks, Identity2d shortcut masks; weights not zeroed),
  DataParallel `module.` prefixes, Double-Win nn.Sequential(normalize, net) with 0.mean/0.std,
  `normalize.mean/std`, WRN-28-4 with the unused sub_block1.
For each: masks, sparsity, values and scores against what torch computes, and the logits of
`ticket run` against the PyTorch model's (1e-4 relative).  Round trips export -> import ->
export are bit-exact for every encoding, and imported state_dicts load strictly into the
original PyTorch models and compute the same.  Bad checkpoints give a one-line error, a
non-zero exit and no output file.  Also: the generated FlatBuffers accessors in tools/ticket/
are what flatc writes from schema/ticket.fbs.
"""

import contextlib
import filecmp
import gzip
import importlib.util
import io
import json
import os
import shutil
import subprocess

import numpy as np

import tkt_test_util as U

C = U.Checker("test_bridge")
SRC = U.source_dir()


def accessors_up_to_date():
    flatc = shutil.which("flatc")
    if not flatc:
        print("note: flatc not found; the generated accessors were not compared")
        return
    with U.tmpdir() as d:
        subprocess.run([flatc, "--python", "-o", d, os.path.join(SRC, "schema", "ticket.fbs")], check=True)
        gen = os.path.join(d, "ticket", "fb")
        ours = os.path.join(SRC, "tools", "ticket", "fb")
        files = sorted(os.listdir(gen))
        C.check(files == sorted(f for f in os.listdir(ours) if f.endswith(".py")),
                "tools/ticket/fb: files %s, flatc writes %s" % (sorted(os.listdir(ours)), files))
        for f in files:
            C.check(os.path.exists(os.path.join(ours, f)) and filecmp.cmp(os.path.join(gen, f), os.path.join(ours, f),
                                                                          shallow=False),
                    "tools/ticket/fb/%s is stale: regenerate with flatc --python -o tools schema/ticket.fbs" % f)


accessors_up_to_date()
if importlib.util.find_spec("torch") is None:
    if C.failures:
        C.done()
    U.skip("PyTorch is not importable: only the generated accessors were checked")
torch = U.require_torch()
import torch.nn as nn  # noqa: E402
import torch.nn.utils.prune as tprune  # noqa: E402

import ref_models as R  # noqa: E402
import tkt  # noqa: E402
import torch_bridge as TB  # noqa: E402

torch.manual_seed(0)
RNG = np.random.default_rng(0)
ENGINE = U.engine()


def randomise_bn(net):
    for mm in net.modules():
        if isinstance(mm, nn.BatchNorm2d):
            with torch.no_grad():
                mm.weight.uniform_(0.5, 1.5)
                mm.bias.uniform_(-0.2, 0.2)
                mm.running_mean.uniform_(-0.2, 0.2)
                mm.running_var.uniform_(0.5, 2.0)


def export(d, ckpt, arch, *extra, name="out.tkt"):
    out = os.path.join(d, name)
    p = U.bridge("export", ckpt, "--arch", arch, "-o", out, "--json", *extra)
    return tkt.load(out), json.loads(p.stdout), out


def logits_check(what, d, model_path, net, batch=2):
    """ticket run on random pixels against the PyTorch model (eval mode)."""
    m = tkt.load(model_path)
    x = RNG.random((batch, m.input.channels, m.input.height, m.input.width), dtype=np.float32)
    np.save(os.path.join(d, "x.npy"), x)
    U.ticket("run", model_path, "--input", os.path.join(d, "x.npy"), "-o", os.path.join(d, "lg.npy"),
             "--engine", ENGINE)
    net.eval()
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    C.close("logits: " + what, np.load(os.path.join(d, "lg.npy")), want, 1e-4)


def round_trip(what, m, encoding, arch, d, **kw):
    """export -> import(encoding) -> export gives the same tensors, masks, scores, input spec.
    plain: the masks come back from the zeros (--mask-from-zeros; no kept weight is zero here);
    hydra: with the k of the scores, or the single k the import reports for masks without
    scores (when the layers keep different fractions there is none, and the import says so)."""
    sd, notes = TB.import_model(m, encoding)
    if encoding == "plain":
        kw = dict(kw, mask_from_zeros=True)
    if encoding == "hydra" and "k" not in kw and any(t.mask is not None for t in m.tensors):
        ks = [float(n.rsplit("k = ", 1)[1]) for n in notes if "k = " in n]
        if not ks:
            C.check(any("no single k" in n for n in notes), "round trip %s hydra: no k and no note: %s" % (what, notes))
            return sd
        kw = dict(kw, k=ks[0])
    m2, _, _ = TB.export_state_dict(sd, arch, what, **kw)
    C.check(m2.names() == m.names(), "round trip %s %s: tensor names differ" % (what, encoding))
    for a, b in zip(m.tensors, m2.tensors):
        C.equal("round trip %s %s: %s data" % (what, encoding, a.name), b.effective(), a.effective())
        C.check((a.mask is None) == (b.mask is None), "round trip %s %s: %s mask presence" % (what, encoding, a.name))
        if a.mask is not None and b.mask is not None:
            C.equal("round trip %s %s: %s mask" % (what, encoding, a.name), b.mask, a.mask)
        C.check((a.scores is None) == (b.scores is None) or encoding != "hydra",
                "round trip %s %s: %s scores presence" % (what, encoding, a.name))
        if a.scores is not None and b.scores is not None:
            C.equal("round trip %s %s: %s scores" % (what, encoding, a.name), b.scores, a.scores)
    C.check((m.input.mean, m.input.std) == (m2.input.mean, m2.input.std), "round trip %s: normalisation" % what)
    return sd


def hydra_subnet(d):
    """HYDRA subnet checkpoint: popup_scores + k (cifar_model: every conv and linear prunes)."""
    k = 0.1
    net = R.build("cifar_model", "subnet")
    for mm in net.modules():
        if hasattr(mm, "popup_scores"):
            with torch.no_grad():
                mm.popup_scores.normal_()
                mm.popup_scores[0].zero_()  # ties at zero: the order of torch's sort decides, as in HYDRA
    R.set_prune_rate(net, k)
    ck = os.path.join(d, "hydra_subnet.pth.tar")
    torch.save({"epoch": 20, "arch": "cifar_model", "state_dict": net.state_dict(), "best_prec1": 41.7,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]}}, ck)
    p = U.bridge("export", ck, "--arch", "cifar_model", "-o", os.path.join(d, "x.tkt"), expect_ok=False)
    C.check(p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "--k" in p.stderr,
            "HYDRA subnet without --k: exit %d, %r" % (p.returncode, p.stderr))
    C.check(not os.path.exists(os.path.join(d, "x.tkt")), "HYDRA subnet without --k wrote a file")
    m, info, path = export(d, ck, "cifar_model", "--k", str(k), name="hydra.tkt")
    kept = total = 0
    for name, mm in net.named_modules():
        if not hasattr(mm, "popup_scores"):
            continue
        want_mask = R.GetSubnet.apply(mm.popup_scores.abs(), k).detach().numpy().astype(np.uint8)
        t = m.tensor(name + ".weight")
        C.check(t.mask is not None, "HYDRA subnet: %s has no mask" % t.name)
        if t.mask is not None:
            C.equal("HYDRA subnet: mask of %s" % t.name, t.mask, want_mask)
        C.equal("HYDRA subnet: data of %s" % t.name, t.effective(), (mm.weight * torch.from_numpy(want_mask)).numpy())
        C.equal("HYDRA subnet: scores of %s" % t.name, t.scores, mm.popup_scores.detach().numpy())
        kept += int(want_mask.sum())
        total += want_mask.size
    C.close("HYDRA subnet: sparsity", info["sparsity"], 1 - kept / total, 1e-12)
    C.check(m.provenance.method == "torch:hydra_subnet.pth.tar", "provenance method %s" % m.provenance.method)
    logits_check("HYDRA subnet", d, path, net)
    # HYDRA encoding: loads strictly into the subnet model and computes the same
    sd, _ = TB.import_model(m, "hydra")
    net2 = R.build("cifar_model", "subnet")
    net2.load_state_dict(sd, strict=True)
    R.set_prune_rate(net2, k)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        C.close("HYDRA subnet: imported (hydra) vs original", net2(x).numpy(), net(x).numpy(), 1e-6)
    for enc in TB.ENCODINGS:
        round_trip("HYDRA subnet", m, enc, "cifar_model", d, k=k)
    # the dense form HYDRA writes with --save-dense (subnet_to_dense): weight * mask, no scores
    dense = {kk: v for kk, v in net.state_dict().items() if not kk.endswith("popup_scores")}
    for name, mm in net.named_modules():
        if hasattr(mm, "popup_scores"):
            dense[name + ".weight"] = mm.weight * R.GetSubnet.apply(mm.popup_scores.abs(), k)
    ckd = os.path.join(d, "hydra_dense.pth.tar")
    torch.save({"epoch": 20, "state_dict": dense}, ckd)
    md, infod, pathd = export(d, ckd, "cifar_model", "--mask-from-zeros", name="hydra_dense.tkt")
    for t in m.tensors:
        td = md.tensor(t.name)
        if t.mask is not None:
            C.check(td.mask is not None and np.array_equal(td.mask, t.mask),
                    "HYDRA dense --mask-from-zeros: mask of %s differs from the subnet's" % t.name)
        C.equal("HYDRA dense: data of %s" % t.name, td.effective(), t.effective())
    C.close("HYDRA dense: sparsity", infod["sparsity"], info["sparsity"], 1e-12)
    mz, infoz, pathz = export(d, ckd, "cifar_model", name="hydra_dense_plain.tkt")
    C.check(infoz["masked_tensors"] == 0 and any("--mask-from-zeros" in n for n in infoz["notes"]),
            "HYDRA dense without --mask-from-zeros: %d masked, notes %s" % (infoz["masked_tensors"], infoz["notes"]))
    logits_check("HYDRA dense", d, pathd, net)


def torch_prune(d):
    """torch.nn.utils.prune (Double-Win style) on lenet, incl. a pruned bias, DataParallel."""
    net = R.build("lenet")
    tprune.l1_unstructured(net.conv1, "weight", amount=0.3)
    tprune.random_unstructured(net.conv2, "weight", amount=0.6)
    tprune.l1_unstructured(net.linear1, "weight", amount=0.9)
    tprune.l1_unstructured(net.linear1, "bias", amount=0.25)  # not a prunable tensor for Ticket
    sd = nn.DataParallel(net).state_dict()
    C.check(all(kk.startswith("module.") for kk in sd), "DataParallel state_dict without module. prefixes")
    ck = os.path.join(d, "prune.pt")
    torch.save(sd, ck)
    m, info, path = export(d, ck, "lenet", name="prune.tkt")
    for mod, pname in (("conv1", "weight"), ("conv2", "weight"), ("linear1", "weight")):
        mm = getattr(net, mod)
        t = m.tensor(mod + "." + pname)
        C.equal("torch prune: mask of %s" % t.name, t.mask, getattr(mm, pname + "_mask").numpy().astype(np.uint8))
        C.equal("torch prune: data of %s" % t.name, t.effective(), getattr(mm, pname).detach().numpy())
    b = m.tensor("linear1.bias")
    C.check(b.mask is None, "torch prune: linear1.bias got a mask")
    C.equal("torch prune: linear1.bias = bias_orig * bias_mask", b.data, net.linear1.bias.detach().numpy())
    C.check(any("multiplied into their data" in n and "linear1.bias_mask" in n for n in info["notes"]),
            "torch prune: no note about the bias mask: %s" % info["notes"])
    C.check(any("module." in n for n in info["notes"]), "torch prune: no note about module. prefixes")
    n_kept = sum(int(getattr(net, mod).weight_mask.sum()) for mod in ("conv1", "conv2", "linear1")) + \
        net.linear2.weight.numel()
    n_all = sum(getattr(net, mod).weight.numel() for mod in ("conv1", "conv2", "linear1", "linear2"))
    C.close("torch prune: sparsity", info["sparsity"], 1 - n_kept / n_all, 1e-12)
    logits_check("torch prune", d, path, net, batch=4)
    # torch-prune encoding loads strictly into a pruned lenet and computes the same
    sd2, _ = TB.import_model(m, "torch-prune")
    net2 = R.build("lenet")
    for mod in ("conv1", "conv2", "linear1"):
        tprune.identity(getattr(net2, mod), "weight")
    net2.load_state_dict(sd2, strict=True)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        C.close("torch prune: imported (torch-prune) vs original", net2(x).numpy(), net(x).numpy(), 1e-6)
    for enc in TB.ENCODINGS:
        round_trip("torch prune", m, enc, "lenet", d)
    # masks only (from a pruned model) as HYDRA scores: a uniform k is found and reproduces them
    net3 = R.build("lenet")
    k = 0.3
    for mod in ("conv1", "conv2", "linear1", "linear2"):
        w = getattr(net3, mod).weight
        mk = torch.ones(w.numel())
        mk[torch.randperm(w.numel())[:int((1 - k) * w.numel())]] = 0
        tprune.custom_from_mask(getattr(net3, mod), "weight", mk.reshape(w.shape))
    ck3 = os.path.join(d, "prune_k.pt")
    torch.save({"model": net3.state_dict()}, ck3)
    m3, _, _ = export(d, ck3, "lenet", name="prune_k.tkt")
    pt = os.path.join(d, "hydra_k.pt")
    p = U.bridge("import", os.path.join(d, "prune_k.tkt"), "-o", pt, "--encoding", "hydra", "--json")
    notes = json.loads(p.stdout)["notes"]
    kk = [float(n.rsplit("k = ", 1)[1]) for n in notes if "k = " in n]
    C.check(len(kk) == 1, "hydra encoding from masks: no single k reported: %s" % notes)
    if kk:
        net4 = R.LeNet5()  # with HYDRA's subnet layers in place of conv/linear
        for mod in ("conv1", "conv2", "linear1", "linear2"):
            old = getattr(net4, mod)
            new = R.SubnetConv(old.in_channels, old.out_channels, old.kernel_size, padding=old.padding) \
                if isinstance(old, nn.Conv2d) else R.SubnetLinear(old.in_features, old.out_features)
            setattr(net4, mod, new)
        net4.load_state_dict(torch.load(pt), strict=True)
        R.set_prune_rate(net4, kk[0])
        x = torch.rand(2, 1, 28, 28)
        with torch.no_grad():
            C.close("hydra encoding of masks with k = %g" % kk[0], net4(x).numpy(), net3(x).numpy(), 1e-6)


def synflow(d):
    """SynFlow masked layers (resnet20): weight_mask, bias_mask, BN and Identity2d masks."""
    net = R.build("resnet20")
    randomise_bn(net)
    gen = torch.Generator().manual_seed(3)
    for name, mm in net.named_modules():
        if isinstance(mm, (R.SFConv2d, R.SFLinear)):
            mm.weight_mask.copy_((torch.rand(mm.weight.shape, generator=gen) < 0.3).float())
    net.fc.bias_mask[3] = 0
    net.blocks[1].bn1.weight_mask[5] = 0
    net.blocks[2].shortcut.weight_mask[7] = 0
    ck = os.path.join(d, "model.pt")
    torch.save(net.state_dict(), ck)
    m, info, path = export(d, ck, "resnet20", name="synflow.tkt")
    for name, mm in net.named_modules():
        if isinstance(mm, (R.SFConv2d, R.SFLinear)):
            t = m.tensor(name + ".weight")
            C.equal("synflow: mask of %s" % t.name, t.mask, mm.weight_mask.numpy().astype(np.uint8))
            C.equal("synflow: data of %s" % t.name, t.effective(), (mm.weight * mm.weight_mask).detach().numpy())
    C.check(m.tensor("fc.bias").data[3] == 0 and m.tensor("blocks.1.bn1.weight").data[5] == 0 and
            np.all(m.tensor("blocks.2.shortcut.weight").data.reshape(-1) == np.where(np.arange(16) == 7, 0, 1)),
            "synflow: masks on bias / BN / shortcut not multiplied into the data")
    note = " ".join(info["notes"])
    C.check(all(s in note for s in ("fc.bias_mask", "blocks.1.bn1.weight_mask", "blocks.2.shortcut.weight_mask")),
            "synflow: notes do not name the multiplied masks: %s" % info["notes"])
    logits_check("synflow", d, path, net)
    sd, _ = TB.import_model(m, "synflow")
    net2 = R.build("resnet20")
    net2.load_state_dict(sd, strict=True)
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    net2.eval()
    with torch.no_grad():
        C.close("synflow: imported (synflow) vs original", net2(x).numpy(), net(x).numpy(), 1e-5)
    for enc in TB.ENCODINGS:
        round_trip("synflow", m, enc, "resnet20", d)


def double_win(d):
    """nn.Sequential(NormalizeByChannelMeanStd, net) with torch prune masks on every conv."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    inner = R.build("resnet20", masked=False)
    randomise_bn(inner)
    convs = [(mm, "weight") for mm in inner.modules() if isinstance(mm, nn.Conv2d)]
    tprune.global_unstructured(convs, pruning_method=tprune.L1Unstructured, amount=0.8)
    net = nn.Sequential(R.NormalizeByChannelMeanStd(mean, std), inner)
    ck = os.path.join(d, "model_SA_best.pth.tar")
    torch.save({"best_sa": 0.9, "best_ra": 0.5, "result": {"ta": [0.1, 0.2]}, "epoch": 3, "state_dict": net.state_dict(),
                "optimizer": {}, "scheduler": {"milestones": {50: 1}}}, ck)
    m, info, path = export(d, ck, "resnet20", name="dw.tkt")
    C.close("double-win: mean", m.input.mean, mean, 1e-7)
    C.close("double-win: std", m.input.std, std, 1e-7)
    C.check(sum(t.mask is not None for t in m.tensors) == len(convs), "double-win: %d masked tensors, %d convs" %
            (sum(t.mask is not None for t in m.tensors), len(convs)))
    logits_check("double-win (normalisation inside the model)", d, path, net)
    round_trip("double-win", m, "plain", "resnet20", d, mean=m.input.mean, std=m.input.std)
    round_trip("double-win", m, "torch-prune", "resnet20", d, mean=m.input.mean, std=m.input.std)
    # normalize.mean / normalize.std (ImageNet IMP style) under a DataParallel prefix, lenet
    le = R.build("lenet")
    sd = {"module.normalize.mean": torch.tensor([0.1307]), "module.normalize.std": torch.tensor([0.3081])}
    sd.update({"module." + kk: v for kk, v in le.state_dict().items()})
    ck2 = os.path.join(d, "imp.pth.tar")
    torch.save({"state_dict": sd, "init": {}, "state_prune": None}, ck2)
    p = U.bridge("export", ck2, "--arch", "lenet", "-o", os.path.join(d, "imp.tkt"), expect_ok=False)
    C.check(p.returncode == 0, "normalize.mean export: %s" % p.stderr.strip())
    if p.returncode == 0:
        mi = tkt.load(os.path.join(d, "imp.tkt"))
        C.close("normalize.mean", mi.input.mean + mi.input.std, [0.1307, 0.3081], 1e-7)
        logits_check("normalize.mean/std", d, os.path.join(d, "imp.tkt"),
                     nn.Sequential(R.NormalizeByChannelMeanStd([0.1307], [0.3081]), le))
    # --mean/--std given on the command line
    ck3 = os.path.join(d, "plain_lenet.pt")
    torch.save(le.state_dict(), ck3)
    m3, _, path3 = export(d, ck3, "lenet", "--mean", "0.5", "--std", "0.25", name="mstd.tkt")
    C.check(m3.input.mean == [0.5] and m3.input.std == [0.25], "--mean/--std: %s %s" % (m3.input.mean, m3.input.std))
    logits_check("--mean/--std", d, path3, nn.Sequential(R.NormalizeByChannelMeanStd([0.5], [0.25]), le))


def wrn_sub_block1(d):
    """HYDRA WRN-28-4 state_dict with the unused sub_block1 (skipped with a note)."""
    net = R.build("wrn_28_4")
    randomise_bn(net)
    sd = net.state_dict()
    C.check(any(kk.startswith("sub_block1.") for kk in sd), "the reference WRN has no sub_block1")
    ck = os.path.join(d, "wrn.pth.tar")
    torch.save({"state_dict": sd}, ck)
    m, info, path = export(d, ck, "wrn_28_4", name="wrn.tkt")
    C.check(any("sub_block1" in n for n in info["notes"]), "wrn: no note about sub_block1: %s" % info["notes"])
    C.check(not any(t.name.startswith("sub_block1") for t in m.tensors), "wrn: sub_block1 tensors exported")
    logits_check("wrn_28_4 with sub_block1", d, path, net, batch=1)


def in_process(args):
    """torch_bridge's main() in this process (saves an interpreter start): -> (returncode, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = TB.main(args)
        except SystemExit as e:
            rc = e.code
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def bad_checkpoints(d):
    le = R.build("lenet")
    good = le.state_dict()
    out = os.path.join(d, "bad.tkt")

    def expect_error(what, obj, needles, extra=(), raw=None):
        ck = os.path.join(d, "bad.pt")
        if raw is not None:
            with open(ck, "wb") as f:
                f.write(raw)
        elif obj is not None:
            torch.save(obj, ck)
        args = ["export", ck if obj is not None or raw is not None else os.path.join(d, "nosuch.pt"),
                "--arch", "lenet", "-o", out] + list(extra)
        p = U.bridge(*args, expect_ok=False) if raw is not None or obj is None else in_process(args)
        lines = p.stderr.strip().splitlines()
        ok = p.returncode != 0 and len(lines) == 1 and lines[0].startswith("torch_bridge export: error: ") and \
            all(n in lines[0] for n in needles)
        C.check(ok, "%s: exit %d, stderr %r (want one line naming %s)" % (what, p.returncode, p.stderr, needles))
        C.check(not os.path.exists(out), "%s: an output file was written" % what)

    sd = dict(good)
    del sd["conv2.bias"]
    expect_error("missing key", sd, ["missing", "conv2.bias"])
    sd = dict(good)
    sd["conv2.weight"] = torch.zeros(64, 32, 5, 5)
    expect_error("shape mismatch", sd, ["shape mismatch", "conv2.weight", "64x32x5x5", "64x32x3x3"])
    sd = dict(good)
    sd["extra.weight"] = torch.zeros(3)
    expect_error("extra key", sd, ["not part of lenet", "extra.weight"])
    sd = dict(good)
    sd["conv1.weight_mask"] = torch.full((32, 1, 3, 3), 0.5)
    expect_error("mask not 0/1", sd, ["conv1.weight_mask", "0/1"])
    sd = dict(good)
    sd["linear2.bias"] = torch.tensor([float("nan")] * 10)
    expect_error("NaN", sd, ["linear2.bias", "nan"])
    expect_error("no state_dict", {"epoch": 1, "best": 0.5}, ["no state_dict"])
    expect_error("garbage", None, ["cannot load"], raw=b"this is not a checkpoint\n")
    expect_error("no such file", None, ["no such file"])
    expect_error("wrong architecture", R.build("cifar_model").state_dict(), ["lenet", "missing"])
    expect_error("bad --k", good, ["--k"], extra=("--k", "1.5"))
    with U.tmpdir() as dd:
        tk = os.path.join(dd, "m.tkt")
        with open(tk, "wb") as f:
            f.write(b"\0" * 64)
        p = U.bridge("import", tk, "-o", os.path.join(dd, "o.pt"), expect_ok=False)
        lines = p.stderr.strip().splitlines()
        C.check(p.returncode != 0 and len(lines) == 1 and "m.tkt" in lines[0] and "identifier" in lines[0],
                "import of a damaged .tkt: exit %d, %r" % (p.returncode, p.stderr))
        C.check(not os.path.exists(os.path.join(dd, "o.pt")), "import of a damaged .tkt wrote a file")


def zoo_init_round_trip(d):
    """ticket init -> import -> export: the zoo model comes back bit for bit (all archs but the big ones)."""
    for arch in ("lenet", "cifar_model_large", "resnet20") + (("vgg16_bn", "resnet18", "wrn_28_4") if U.heavy() else ()):
        path = os.path.join(d, arch + ".tkt")
        U.ticket("init", arch, "-o", path, "--seed", "4", "--classes", "7")
        m = tkt.load(path)
        U.random_masks(m, 0.3, RNG)
        for enc in TB.ENCODINGS:
            round_trip("zoo " + arch, m, enc, arch, d)
        # and through the command line with files
        tkt.save(m, path)
        U.bridge("import", path, "-o", os.path.join(d, "a.pt"), "--encoding", "torch-prune")
        m2, _, _ = export(d, os.path.join(d, "a.pt"), arch, name="b.tkt")
        C.check(all(np.array_equal(a.effective(), b.effective()) and
                    (a.mask is None) == (b.mask is None) and (a.mask is None or np.array_equal(a.mask, b.mask))
                    for a, b in zip(m.tensors, m2.tensors)) and m2.classes == 7,
                "zoo %s: CLI round trip import -> export differs" % arch)
        # without a ticket binary the graph comes from models/ARCH.json (tkt.zoo_reshape)
        sd, _ = TB.import_model(m, "synflow")
        m3, _, _ = TB.export_state_dict(sd, arch, "no binary", ticket="")
        C.check(all(np.array_equal(a.effective(), b.effective()) and a.shape == b.shape
                    for a, b in zip(m.tensors, m3.tensors)) and len(m3.layers) == len(m.layers) and m3.classes == 7,
                "zoo %s: export from the JSON architecture differs from ticket init's" % arch)


def init_enum_names(d):
    """Every Init name of the schema survives tkt: save (by name) -> ticket info -> load, "None" included
    (flatc spells it None_ in Python)."""
    C.check(tkt.INITS[0] == "None" and all(not n.endswith("_") for n in tkt.INITS), "tkt.INITS: %s" % tkt.INITS)
    path = os.path.join(d, "inits.tkt")
    U.ticket("init", "lenet", "-o", path, "--seed", "1")
    m = tkt.load(path)
    for i, t in enumerate(m.tensors):
        t.init = tkt.INITS[i % len(tkt.INITS)]
    tkt.save(m, path)
    U.ticket("info", path)  # the C loader accepts every value
    m2 = tkt.load(path)
    C.check([t.init for t in m2.tensors] == [t.init for t in m.tensors],
            "Init names do not round-trip: %s" % [(a.init, b.init) for a, b in zip(m.tensors, m2.tensors)])


def input_and_classes(d):
    """Classes and input channels follow the checkpoint; height and width come from --input."""
    net = R.LeNet5(num_classes=5, in_ch=3, hw=(32, 32))
    ck = os.path.join(d, "lenet_c3.pt")
    torch.save(net.state_dict(), ck)
    out = os.path.join(d, "o.tkt")
    p = U.bridge("export", ck, "--arch", "lenet", "-o", out, expect_ok=False)
    C.check(p.returncode != 0 and "linear1.weight is 200x4096" in p.stderr and "200x3136" in p.stderr
            and len(p.stderr.strip().splitlines()) == 1,
            "lenet 3x32x32 without --input: exit %d, %r" % (p.returncode, p.stderr))
    m, info, path = export(d, ck, "lenet", "--input", "3,32,32", name="c3.tkt")
    C.check(info["classes"] == 5 and info["input"] == [3, 32, 32], "lenet 3x32x32: %s %s" % (info["classes"],
                                                                                              info["input"]))
    logits_check("lenet 3x32x32, 5 classes", d, path, net)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def pretrained(d):
    """The real pretrained MNIST models of the shared data (when present): advertorch's LeNet5
    (zoo lenet) and convex-adversarial's small CNN, which is HYDRA's mnist_model = the zoo's
    cifar_model with --input 1,28,28.  Logits and accuracy on MNIST test images against torch."""
    root = U.shared_data()
    files = [("advertorch-mnist-lenet5/mnist_lenet5_clntrained.pt", "lenet", ()),
             ("advertorch-mnist-lenet5/mnist_lenet5_advtrained.pt", "lenet", ()),
             ("convex-adversarial/mnist_eps0.1.pth", "cifar_model", ("--input", "1,28,28"))]
    images = os.path.join(root, "mnist", "t10k-images-idx3-ubyte.gz")
    labels = os.path.join(root, "mnist", "t10k-labels-idx1-ubyte.gz")
    if not all(os.path.exists(os.path.join(root, "pretrained-weights", f)) for f, _, _ in files) or \
            not os.path.exists(images):
        print("note: shared pretrained weights or MNIST not found under %s (set TICKET_SHARED_DATA); "
              "the pretrained checks did not run" % root)
        return
    n = 300
    x = (read_idx(images)[:n].astype(np.float32) / 255.0).reshape(n, 1, 28, 28)
    y = read_idx(labels)[:n].astype(np.int64)
    np.save(os.path.join(d, "x.npy"), x)
    np.save(os.path.join(d, "y.npy"), y)
    for f, arch, extra in files:
        ck = os.path.join(root, "pretrained-weights", f)
        m, info, path = export(d, ck, arch, *extra, name="pre.tkt")
        r = json.loads(U.ticket("run", path, "--input", os.path.join(d, "x.npy"), "--labels", os.path.join(d, "y.npy"),
                                "-o", os.path.join(d, "lg.npy"), "--engine", ENGINE, "--json").stdout)
        net = R.build(arch, in_ch=1, hw=(28, 28))
        net.load_state_dict(torch.load(ck, map_location="cpu", weights_only=True), strict=True)
        net.eval()
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        C.close("logits: pretrained %s" % f, np.load(os.path.join(d, "lg.npy")), want, 1e-4)
        acc = float(np.mean(want.argmax(1) == y))
        C.check(abs(r["accuracy"] - acc) <= 1.0 / n and acc > 0.9,
                "pretrained %s: accuracy %.4f, PyTorch %.4f" % (f, r["accuracy"], acc))
        print("  %s as %s: accuracy %.4f on %d MNIST test images (PyTorch %.4f)" % (f, arch, r["accuracy"], n, acc))


for fn in (hydra_subnet, torch_prune, synflow, double_win, wrn_sub_block1, bad_checkpoints, zoo_init_round_trip, init_enum_names,
           input_and_classes, pretrained):
    try:
        with U.tmpdir() as d:
            fn(d)
        print("ok: %s" % fn.__name__)
    except U.Failed as e:
        C.check(False, "%s: %s" % (fn.__name__, e))
C.done()
