#!/usr/bin/python3
"""torch_bridge.py -- PyTorch checkpoints <-> Ticket model files.

  torch_bridge.py export CKPT --arch ARCH -o OUT.tkt [--k K] [--mask-from-zeros]
                  [--input C,H,W] [--classes N] [--mean M1,M2,.. --std S1,S2,..] [--trust-pickle] [--json]
  torch_bridge.py import MODEL.tkt -o OUT.pt [--encoding plain|torch-prune|hydra|synflow] [--json]

export: a torch checkpoint (.pt/.pth/.pth.tar; a dict with a "state_dict", "model", "net" or
"model_state_dict" entry, or a bare state_dict) and a zoo architecture (its graph comes from
`ticket init`, found through $TICKET_BIN, ./build/ticket or PATH, or else from the
architecture file models/ARCH.json read directly) -> a .tkt with the checkpoint's weights.
Tensor names are the original state_dict keys (see models/README.md), after stripping:
  - `module.` prefixes (DataParallel);
  - a Sequential(normalize, net) wrapper: `0.mean` / `0.std` become the model's input
    normalisation, `1.*` the network (Double-Win adversarial transfer);
  - `normalize.mean` / `normalize.std` (Double-Win ImageNet IMP), also the input normalisation;
  - `num_batches_tracked`; for wrn_28_4 the unused `sub_block1.*` of the original (with a note).
Mask encodings (SEEDS.md section 2), per tensor; the effective weight W * M is stored:
  - HYDRA subnet: `<m>.popup_scores` beside `<m>.weight`.  k is not in the checkpoint: give
    --k (fraction kept).  Mask = top-k of |scores| per layer exactly as HYDRA's GetSubnet
    (j = int((1 - k) * numel); sort |s| ascending; the first j are pruned).  Scores are kept.
  - HYDRA dense (subnet_to_dense): zeros in the weights; they become masks only with
    --mask-from-zeros (otherwise the zeros are ordinary values).
  - torch.nn.utils.prune: `<t>_orig` and `<t>_mask` (Double-Win).
  - SynFlow: `<t>` and `<t>_mask` (weight_mask, bias_mask, BatchNorm and Identity2d masks).
    A mask on a tensor the model does not prune (biases, BatchNorm, shortcut scales) cannot be
    expressed: it is multiplied into the data, and the output says so.
Every key of the checkpoint must be used and every tensor of the model found, with the same
shape; otherwise the error lists the first few offenders.

import: .tkt -> a state_dict (torch.save) with the original key names:
  plain        `<t>` = W * M (what the model computes)
  torch-prune  masked tensors as `<t>_orig` (W * M) + `<t>_mask`; others plain
  hydra        every prunable weight with `<m>.popup_scores`: the stored scores, or else the
               mask as scores (1 kept, 0 pruned), which HYDRA's top-k reproduces when the layer's
               k is the kept fraction (the output says which single k does, if one does)
  synflow      SynFlow's masked layers: weight_mask / bias_mask on every conv, linear,
               BatchNorm and shortcut scale (ones where there is no mask)
Round trip: export -> import -> export gives the same tensors, masks and scores bit for bit.

Errors are one line: "torch_bridge export: error: <file>: <what>".  Exit status 1 (2 for
usage errors).  Run with Debian's /usr/bin/python3 (python3-torch).
"""

import argparse
import collections
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tkt  # noqa: E402

try:
    import torch
except ImportError:  # reported by main(); the module stays importable for tests that skip
    torch = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "state")
# Modules the original code builds but never runs: skipped with a note.
UNUSED_MODULES = {"wrn_28_4": ("sub_block1.",)}


class BridgeError(Exception):
    """A one-line error (the message names the file and the key or field)."""


def _few(items, n=4):
    items = list(items)
    s = ", ".join(items[:n])
    return s + (" (and %d more)" % (len(items) - n) if len(items) > n else "")


def _shape(s):
    return "x".join(str(int(d)) for d in s) if len(s) else "scalar"


# ---- the zoo graph ----------------------------------------------------------------------------

def find_ticket():
    """The `ticket` binary: $TICKET_BIN, ./build/ticket of this source tree, or PATH."""
    env = os.environ.get("TICKET_BIN")
    if env and os.access(env, os.X_OK):
        return env
    local = os.path.join(ROOT, "build", "ticket")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("ticket")


def zoo_model(arch, classes=0, c=0, h=0, w=0, ticket=None):
    """The architecture as a tkt.Model (tensor data is the reference init, or None without
    the binary)."""
    ticket = ticket if ticket is not None else find_ticket()
    if ticket:
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "zoo.tkt")
            cmd = [ticket, "init", arch, "-o", out]
            if classes:
                cmd += ["--classes", str(classes)]
            if c or h or w:
                cmd += ["--input", "%d,%d,%d" % (c, h, w)]
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            if p.returncode != 0:
                msg = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "exit status %d" % p.returncode
                raise BridgeError(msg.replace("ticket init: error: ", ""))
            return tkt.load(out)
    path = os.path.join(ROOT, "models", arch + ".json")
    if not os.path.exists(path):
        names = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "models")) if f.endswith(".json"))
        raise BridgeError("unknown architecture '%s' (choices: %s)" % (arch, ", ".join(names)))
    m = tkt.load_json(path)
    try:
        d = (m.input.channels, m.input.height, m.input.width)
        tkt.zoo_reshape(m, classes, c or d[0], h or d[1], w or d[2])
    except tkt.TktError as e:
        raise BridgeError(str(e)) from None
    return m


# ---- reading checkpoints ------------------------------------------------------------------------

# Globals a checkpoint may name when it is read without --trust-pickle: tensors, containers
# and plain values only.  (torch 1.13's own weights_only reader refuses Python floats, which
# every HYDRA checkpoint holds, so the restriction is done here with pickle's find_class.)
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "slice"), ("builtins", "complex"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    ("argparse", "Namespace"),
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._utils", "_rebuild_sparse_tensor"),
    ("torch._utils", "_rebuild_sparse_csr_tensor"), ("torch._utils", "_rebuild_meta_tensor_no_storage"),
    ("torch.serialization", "_get_layout"), ("torch", "Size"), ("torch", "device"), ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"), ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS or (module == "torch" and (name.endswith("Storage") or
                                                                      name in ("float32", "float64", "float16",
                                                                               "int64", "int32", "uint8", "bool"))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError("it pickles %s.%s, which is not plain data" % (module, name))


_safe_pickle = types.SimpleNamespace(__name__="safe_pickle", Unpickler=_SafeUnpickler,
                                     load=lambda f, **kw: _SafeUnpickler(f, **kw).load())


def _load_restricted(path):
    """torch.load through _SafeUnpickler.  torch 1.13's torch.load ignores a custom
    pickle_module (it always uses pickle unless weights_only), so its readers are called here
    directly; elsewhere torch.load(weights_only=True)."""
    ser = torch.serialization
    if not all(hasattr(ser, f) for f in ("_load", "_legacy_load", "_is_zipfile", "_open_zipfile_reader")):
        return torch.load(path, map_location="cpu", weights_only=True)
    with open(path, "rb") as f:
        if ser._is_zipfile(f):
            with ser._open_zipfile_reader(f) as z:
                return ser._load(z, "cpu", _safe_pickle, encoding="utf-8")
        return ser._legacy_load(f, "cpu", _safe_pickle, encoding="utf-8")


def load_checkpoint(path, trust_pickle=False):
    """-> (flat state_dict of float tensors, container description)."""
    if torch is None:
        raise BridgeError("PyTorch is not importable (Debian: apt-get install python3-torch; run /usr/bin/python3)")
    if not os.path.exists(path):
        raise BridgeError("%s: no such file" % path)
    try:
        obj = torch.load(path, map_location="cpu") if trust_pickle else _load_restricted(path)
    except Exception as e:  # unpickling refused or a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if trust_pickle or not isinstance(e, pickle.UnpicklingError) else \
            " (pass --trust-pickle if you trust the file)"
        raise BridgeError("%s: cannot load as a torch checkpoint: %s%s" % (path, first[:200], hint)) from None
    where = "checkpoint"
    for _ in range(3):
        if torch is not None and isinstance(obj, torch.nn.Module):
            obj, where = obj.state_dict(), where + " (a pickled module)"
            break
        if isinstance(obj, dict) and not all(torch.is_tensor(v) for v in obj.values()):
            for k in STATE_DICT_KEYS:
                if k in obj and isinstance(obj[k], (dict, torch.nn.Module)):
                    obj, where = obj[k], "%s[%r]" % (where, k)
                    break
            else:
                break
        else:
            break
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not obj:
        raise BridgeError("%s: no state_dict found (a %s)" % (path, type(obj).__name__))
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise BridgeError("%s: no state_dict found: %s has entries that are not tensors: %s" %
                          (path, where, _few(map(str, bad))))
    return collections.OrderedDict(obj), where


def normalise_keys(sd, arch, notes):
    """Strip wrappers; returns (state_dict, mean, std) with mean/std lists or None."""
    out = collections.OrderedDict()
    n_module = 0
    for k, v in sd.items():
        k0 = k
        while k.startswith("module."):
            k = k[len("module."):]
        n_module += k != k0
        if k in out:
            raise BridgeError("key %s appears twice once `module.` prefixes are stripped" % k)
        out[k] = v
    if n_module:
        notes.append("stripped the DataParallel prefix `module.` from %d keys" % n_module)
    mean = std = None
    keys = list(out)
    if "0.mean" in out and "0.std" in out and all(k.startswith("1.") for k in keys if k not in ("0.mean", "0.std")):
        mean, std = out.pop("0.mean"), out.pop("0.std")
        out = collections.OrderedDict((k[2:], v) for k, v in out.items())
        notes.append("Sequential(normalize, net): 0.mean/0.std became the input normalisation")
    elif "normalize.mean" in out and "normalize.std" in out:
        mean, std = out.pop("normalize.mean"), out.pop("normalize.std")
        notes.append("normalize.mean/std became the input normalisation")
    dropped = [k for k in out if k.endswith("num_batches_tracked")]
    for k in dropped:
        del out[k]
    skip = UNUSED_MODULES.get(arch, ())
    unused = [k for k in out if k.startswith(skip)] if skip else []
    for k in unused:
        del out[k]
    if unused:
        notes.append("skipped %d tensors of %s (built but never run by the original model)" %
                     (len(unused), ", ".join(p.rstrip(".") for p in skip)))
    if mean is not None:
        mean = [float(x) for x in mean.reshape(-1)]
        std = [float(x) for x in std.reshape(-1)]
    return out, mean, std


def hydra_mask(scores, k):
    """HYDRA GetSubnet on |scores|: the first int((1-k)*numel) of the ascending sort are pruned."""
    s = torch.as_tensor(scores).abs()
    out = s.clone()
    _, idx = s.flatten().sort()
    j = int((1 - k) * s.numel())
    flat = out.flatten()
    flat[idx[:j]] = 0
    flat[idx[j:]] = 1
    return flat.reshape(s.shape).numpy().astype(np.uint8)


def _f32(v, key, what):
    if not v.is_floating_point():
        raise BridgeError("%s: %s: dtype %s, expected floating point" % (what, key, v.dtype))
    a = v.detach().to(torch.float32).cpu().numpy()
    if not np.all(np.isfinite(a)):
        bad = int(np.flatnonzero(~np.isfinite(a.reshape(-1)))[0])
        raise BridgeError("%s: %s: element %d is %s" % (what, key, bad, a.reshape(-1)[bad]))
    return a


def _mask01(v, key, what):
    a = v.detach().to(torch.float64).cpu().numpy()
    if not np.all((a == 0) | (a == 1)):
        bad = int(np.flatnonzero(~((a == 0) | (a == 1)).reshape(-1))[0])
        raise BridgeError("%s: %s: a mask must be 0/1, element %d is %g" % (what, key, bad, a.reshape(-1)[bad]))
    return (a != 0).astype(np.uint8)


def export_state_dict(sd, arch, what="checkpoint", k=None, mask_from_zeros=False, classes=0, input_shape=None,
                      mean=None, std=None, ticket=None, notes=None):
    """Fill the zoo graph of `arch` with a (raw) state_dict.  -> (tkt.Model, notes, counts)."""
    notes = notes if notes is not None else []
    sd, ck_mean, ck_std = normalise_keys(sd, arch, notes)
    if mean is None and ck_mean is not None:
        mean, std = ck_mean, ck_std
    # classes and input channels follow the checkpoint unless given
    base = zoo_model(arch, ticket=ticket)
    c = h = w = 0
    if input_shape:
        c, h, w = input_shape
    last = base.tensors[base.layers[-1].weight].name
    first = next((base.tensors[l.weight].name for l in base.layers if l.op == "Conv2d"), None)

    def ck_shape(name):
        for key in (name, name + "_orig"):
            if key in sd:
                return tuple(sd[key].shape)
        return None
    if not classes and ck_shape(last) is not None and len(ck_shape(last)) == 2:
        classes = ck_shape(last)[0]
    if not c and first and ck_shape(first) is not None and len(ck_shape(first)) == 4:
        c = ck_shape(first)[1]
    if mean is not None and not c:
        c = len(mean)
    m = zoo_model(arch, classes, c or base.input.channels, h or base.input.height, w or base.input.width,
                  ticket=ticket) \
        if (classes, c, h, w) != (base.classes, base.input.channels, 0, 0) else base
    if mean is not None:
        if len(mean) != m.input.channels or len(std) != m.input.channels:
            raise BridgeError("%s: input normalisation has %d means and %d stds for %d input channels" %
                              (what, len(mean), len(std), m.input.channels))
        if not all(s > 0 for s in std):
            raise BridgeError("%s: input normalisation: std %s must be positive" % (what, std))
        m.input.mean, m.input.std = [float(x) for x in mean], [float(x) for x in std]

    used, missing, counts = set(), [], collections.Counter()
    mismatch = []
    has_scores = [key for key in sd if key.endswith(".popup_scores")]
    if has_scores and k is None:
        raise BridgeError("%s: HYDRA subnet checkpoint (%s): the fraction of weights kept is not stored; "
                          "give --k (e.g. --k 0.1 for 90%% pruned)" % (what, _few(has_scores, 2)))
    if k is not None and not (0.0 <= k <= 1.0):
        raise BridgeError("--k %g: must be a fraction in [0, 1]" % k)
    zero_notes, multiplied = [], []
    for t in m.tensors:
        key = t.name if t.name in sd else (t.name + "_orig" if t.name + "_orig" in sd else None)
        if t.name in sd and t.name + "_orig" in sd:
            raise BridgeError("%s: both %s and %s_orig are present" % (what, t.name, t.name))
        if key is None:
            missing.append(t.name)
            continue
        v = sd[key]
        if tuple(v.shape) != t.shape:
            mismatch.append("%s is %s, %s expects %s" % (key, _shape(v.shape), arch, _shape(t.shape)))
            continue
        used.add(key)
        data = _f32(v, key, what).reshape(t.shape)
        mask = None
        mkey = t.name + "_mask"
        skey = t.name[:-len("weight")] + "popup_scores" if t.name.endswith("weight") else None
        if skey in sd:
            if not t.prunable:
                raise BridgeError("%s: %s: popup_scores on a tensor %s does not prune" % (what, skey, arch))
            if mkey in sd:
                raise BridgeError("%s: %s has both popup_scores and %s" % (what, t.name, mkey))
            s = sd[skey]
            if tuple(s.shape) != t.shape:
                mismatch.append("%s is %s, expected %s" % (skey, _shape(s.shape), _shape(t.shape)))
                continue
            used.add(skey)
            t.scores = _f32(s, skey, what).reshape(t.shape)
            mask = hydra_mask(s.detach().to(torch.float32), k)
            counts["hydra popup_scores"] += 1
        elif mkey in sd:
            mv = sd[mkey]
            if tuple(mv.shape) != t.shape:
                mismatch.append("%s is %s, expected %s" % (mkey, _shape(mv.shape), _shape(t.shape)))
                continue
            used.add(mkey)
            mask = _mask01(mv, mkey, what).reshape(t.shape)
            counts["%s + %s" % ("_orig" if key.endswith("_orig") else "value", "_mask")] += 1
        else:
            counts["plain"] += 1
            if t.prunable and np.any(data == 0):
                z = int(np.count_nonzero(data == 0))
                if mask_from_zeros:
                    mask = (data != 0).astype(np.uint8)
                elif z >= 0.01 * t.numel:  # a pruned layer, not an odd exact zero
                    zero_notes.append((t.name, z, t.numel))
        if mask is not None and not mask.all():
            data = np.where(mask != 0, data, np.float32(0)).astype(np.float32)
            if t.prunable:
                t.mask = mask
            else:
                multiplied.append("%s (%d of %d zero)" % (mkey, int(t.numel - mask.sum()), t.numel))
        t.data = data
    problems = []
    if mismatch:
        problems.append("shape mismatch: %s" % _few(mismatch, 3))
    if missing:
        problems.append("%d tensors of %s are missing from the checkpoint: %s" % (len(missing), arch, _few(missing)))
    unused = [key for key in sd if key not in used and not any(key == t.name + x for t in m.tensors
                                                                    for x in ("", "_orig", "_mask"))]
    if unused:
        problems.append("%d keys of the checkpoint are not part of %s: %s" % (len(unused), arch, _few(unused)))
    if problems:
        raise BridgeError("%s: %s" % (what, "; ".join(problems)))
    if k is not None and has_scores:
        notes.append("masks from HYDRA popup_scores, top-k per layer with k = %g (scores kept)" % k)
    elif k is not None:
        notes.append("--k %g unused: the checkpoint has no popup_scores" % k)
    if multiplied:
        notes.append("masks on tensors %s does not prune were multiplied into their data: %s" %
                     (arch, _few(multiplied, 3)))
    if zero_notes:
        z = sum(x[1] for x in zero_notes)
        n = sum(x[2] for x in zero_notes)
        notes.append("%d prunable tensors hold %d zeros (%.1f%% of their weights) kept as values; "
                     "--mask-from-zeros makes them masks" % (len(zero_notes), z, 100.0 * z / n))
    elif mask_from_zeros:
        notes.append("masks from the zeros of the weights (--mask-from-zeros)")
    return m, notes, counts


def export(ckpt, arch, out, k=None, mask_from_zeros=False, classes=0, input_shape=None, mean=None, std=None,
           trust_pickle=False, ticket=None):
    sd, where = load_checkpoint(ckpt, trust_pickle)
    notes = [] if where == "checkpoint" else ["state_dict from %s" % where]
    m, notes, counts = export_state_dict(sd, arch, ckpt, k, mask_from_zeros, classes, input_shape, mean, std,
                                         ticket, notes)
    m.provenance = tkt.Provenance("torch:" + os.path.basename(ckpt), m.sparsity(), os.path.abspath(ckpt),
                                  tkt.now_iso(), notes="; ".join(notes) if notes else None)
    m.train_state = None
    try:
        tkt.save(m, out)
    except OSError as e:
        raise BridgeError("%s: cannot write: %s" % (out, e.strerror)) from None
    return m, notes, counts


# ---- writing checkpoints ------------------------------------------------------------------------

ENCODINGS = ("plain", "torch-prune", "hydra", "synflow")


def _uniform_k(ms):
    """A k in (0, 1] for which HYDRA's j = int((1-k)*n) equals every layer's number of pruned
    weights, or None.  ms: [(pruned, numel)]."""
    lo, hi = 0.0, 1.0
    for z, n in ms:
        lo = max(lo, 1.0 - (z + 1) / n)
        hi = min(hi, 1.0 - z / n)
    if lo >= hi:
        return None
    # the midpoint, then check with the exact float arithmetic HYDRA uses
    for k in ((lo + hi) / 2, hi, np.nextafter(hi, 0.0)):
        if all(int((1 - k) * n) == z for z, n in ms):
            return float(k)
    return None


def import_model(m, encoding="plain"):
    """tkt.Model -> (OrderedDict state_dict of torch tensors, notes)."""
    if torch is None:
        raise BridgeError("PyTorch is not importable (Debian: apt-get install python3-torch; run /usr/bin/python3)")
    if encoding not in ENCODINGS:
        raise BridgeError("--encoding %s: choose one of %s" % (encoding, ", ".join(ENCODINGS)))
    role = {}  # tensor index -> (layer op, field)
    for l in m.layers:
        for f in tkt.LAYER_FIELDS:
            if getattr(l, f) >= 0:
                role[getattr(l, f)] = (l.op, f)
    sd = collections.OrderedDict()
    notes = []
    after = collections.defaultdict(list)  # tensor index -> [(key, value)] emitted right after it
    from_masks = []
    for i, t in enumerate(m.tensors):
        op, field = role.get(i, (None, None))
        eff = torch.from_numpy(np.ascontiguousarray(t.effective(), dtype=np.float32))
        mask = None if t.mask is None else torch.from_numpy(t.mask.astype(np.float32).reshape(t.shape))
        if encoding == "torch-prune" and mask is not None:
            sd[t.name + "_orig"] = eff
            sd[t.name + "_mask"] = mask
        else:
            sd[t.name] = eff
        if encoding == "hydra" and t.prunable and t.name.endswith("weight") and op in ("Conv2d", "Linear"):
            if t.scores is not None:
                sc = torch.from_numpy(np.array(t.scores, dtype=np.float32))
            else:
                sc = torch.ones(t.shape) if mask is None else mask.clone()
                from_masks.append((t.numel - t.nnz(), t.numel))
            l = next(l for l in m.layers if l.weight == i)
            after[l.bias if l.bias >= 0 else i].append((t.name[:-len("weight")] + "popup_scores", sc))
        if encoding == "synflow" and op in ("Conv2d", "Linear", "BatchNorm", "Scale") and field in ("weight", "bias"):
            l = next(l for l in m.layers if getattr(l, field) == i)
            last = max(x for x in (l.weight, l.bias, l.running_mean, l.running_var) if x >= 0)
            ones = torch.ones(t.shape) if mask is None else mask.clone()
            after[last].append((t.name + "_mask", ones))
        if op == "BatchNorm" and field == "running_var":
            sd[t.name[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        for key, v in after.pop(i, []):
            sd[key] = v
    for i, items in after.items():  # references to later tensors (not produced by the zoo)
        for key, v in items:
            sd[key] = v
    if encoding == "hydra" and from_masks:
        k = _uniform_k(from_masks)
        if k is not None:
            notes.append("popup_scores from the masks (1 kept, 0 pruned): HYDRA's subnet layers reproduce them "
                         "with k = %.9g" % k)
        else:
            notes.append("popup_scores from the masks (1 kept, 0 pruned): the layers keep different fractions, "
                         "so no single k of HYDRA reproduces every mask")
    if m.input.mean is not None:
        notes.append("the model normalises its input (mean %s, std %s) and a state_dict cannot say so: wrap the "
                     "network as nn.Sequential(NormalizeByChannelMeanStd(mean, std), net)" % (m.input.mean, m.input.std))
    return sd, notes


def save_torch(obj, path):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp.", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---- command line -------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write("%s: error: %s (see --help)\n" % (self.prog, message))
        sys.exit(2)


def _floats(s, what):
    try:
        v = [float(x) for x in s.split(",")]
    except ValueError:
        raise BridgeError("%s: '%s' is not a comma-separated list of numbers" % (what, s)) from None
    return v


def _input(s):
    try:
        v = [int(x) for x in s.split(",")]
    except ValueError:
        v = []
    if len(v) != 3 or min(v) < 1:
        raise BridgeError("--input: '%s' is not C,H,W (three positive integers)" % s)
    return tuple(v)


def main(argv=None):
    ap = _Parser(prog="torch_bridge.py", description="PyTorch checkpoints <-> Ticket model files.")
    sub = ap.add_subparsers(dest="cmd", parser_class=_Parser)
    ex = sub.add_parser("export", help="checkpoint -> .tkt", description="checkpoint + zoo architecture -> .tkt")
    ex.add_argument("checkpoint")
    ex.add_argument("--arch", required=True, help="zoo architecture giving the graph (ticket init --list)")
    ex.add_argument("-o", "--output", required=True)
    ex.add_argument("--k", type=float, help="HYDRA: fraction of weights kept (top-k of |popup_scores|)")
    ex.add_argument("--mask-from-zeros", action="store_true", help="zeros of prunable weights become the mask")
    ex.add_argument("--input", help="C,H,W (default: the architecture's, channels from the checkpoint)")
    ex.add_argument("--classes", type=int, default=0, help="default: from the checkpoint's last layer")
    ex.add_argument("--mean", help="input normalisation mean per channel, e.g. 0.4914,0.4822,0.4465")
    ex.add_argument("--std", help="input normalisation std per channel")
    ex.add_argument("--trust-pickle", action="store_true",
                    help="allow arbitrary pickled objects (only for files you trust)")
    ex.add_argument("--json", action="store_true")
    im = sub.add_parser("import", help=".tkt -> state_dict", description=".tkt -> torch state_dict")
    im.add_argument("model")
    im.add_argument("-o", "--output", required=True)
    im.add_argument("--encoding", default="plain", choices=ENCODINGS)
    im.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not a.cmd:
        ap.print_usage(sys.stderr)
        return 2
    try:
        if torch is None:
            raise BridgeError("PyTorch is not importable (Debian: apt-get install python3-torch; run /usr/bin/python3)")
        if a.cmd == "export":
            mean = _floats(a.mean, "--mean") if a.mean else None
            std = _floats(a.std, "--std") if a.std else None
            if (mean is None) != (std is None):
                raise BridgeError("--mean and --std go together")
            m, notes, counts = export(a.checkpoint, a.arch, a.output, a.k, a.mask_from_zeros, a.classes,
                                      _input(a.input) if a.input else None, mean, std, a.trust_pickle)
            if a.json:
                print(json.dumps({"output": a.output, "arch": m.arch, "classes": m.classes,
                                  "input": [m.input.channels, m.input.height, m.input.width],
                                  "mean": m.input.mean, "std": m.input.std, "sparsity": m.sparsity(),
                                  "masked_tensors": sum(t.mask is not None for t in m.tensors),
                                  "encodings": dict(counts), "notes": notes}))
            else:
                print("%s: %s, input %dx%dx%d, %d classes, %d of %d prunable tensors masked, sparsity %.4f" %
                      (a.output, m.arch, m.input.channels, m.input.height, m.input.width, m.classes,
                       sum(t.mask is not None for t in m.tensors), len(m.prunable_tensors()), m.sparsity()))
                for n in notes:
                    print("  note: " + n)
        else:
            try:
                m = tkt.load(a.model)
            except tkt.TktError as e:
                raise BridgeError(str(e)) from None
            sd, notes = import_model(m, a.encoding)
            try:
                save_torch(sd, a.output)
            except OSError as e:
                raise BridgeError("%s: cannot write: %s" % (a.output, e.strerror)) from None
            if a.json:
                print(json.dumps({"output": a.output, "arch": m.arch, "encoding": a.encoding, "keys": len(sd),
                                  "notes": notes}))
            else:
                print("%s: %d keys (%s encoding) from %s" % (a.output, len(sd), a.encoding, a.model))
                for n in notes:
                    print("  note: " + n)
        return 0
    except (BridgeError, tkt.TktError) as e:
        sys.stderr.write("torch_bridge %s: error: %s\n" % (a.cmd, str(e).replace("\n", " ")))
        return 1


if __name__ == "__main__":
    sys.exit(main())
