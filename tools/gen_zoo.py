#!/usr/bin/python3
"""gen_zoo.py -- writes the model zoo: models/<arch>.json (FlatBuffers JSON of
schema/ticket.fbs, tensors without data, each with its `init` rule) and models/README.md.

The architectures follow the original PyTorch code layer by layer, with the original
state_dict names as tensor names (so tools/torch_bridge.py maps checkpoints 1:1) and the
original initialisations.  tests/py/ref_models.py holds the PyTorch definitions the zoo is
tested against.

  tools/gen_zoo.py            rewrite models/
  tools/gen_zoo.py --check    exit 1 if models/ differs from what this script writes

Layer names: the PyTorch module name where there is a module (conv1, features.3,
layer1.0.shortcut.0), otherwise a descriptive one (layer1.0.add, layer1.0.relu2).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tkt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Net:
    """Builds a tkt.Model layer by layer; values are ids (0 = input, layer i -> i + 1)."""

    def __init__(self, arch, c, h, w, classes, source, notes):
        self.m = tkt.Model(arch, classes, tkt.InputSpec(c, h, w),
                           provenance=tkt.Provenance("architecture", source=source, notes=notes))
        self.shapes = [(c, h, w)]

    def _tensor(self, name, shape, init, prunable=False, trainable=True, fan_in=0):
        self.m.tensors.append(tkt.Tensor(name, shape, init=init, init_fan_in=fan_in, prunable=prunable,
                                         trainable=trainable))
        return len(self.m.tensors) - 1

    def _layer(self, layer, out):
        self.m.layers.append(layer)
        self.shapes.append(out)
        return len(self.m.layers)

    def conv(self, name, x, cout, k, s=1, p=0, bias=False, winit="TorchDefault", binit="TorchDefaultBias"):
        cin, h, w = self.shapes[x]
        wi = self._tensor(name + ".weight", (cout, cin, k, k), winit, prunable=True)
        bi = -1
        if bias:
            bi = self._tensor(name + ".bias", (cout,), binit, fan_in=cin * k * k if binit == "TorchDefaultBias" else 0)
        out = (cout, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        return self._layer(tkt.Layer(name, "Conv2d", [x], weight=wi, bias=bi, kernel=[k, k], stride=[s, s],
                                     padding=[p, p], dilation=[1, 1]), out)

    def linear(self, name, x, out_features, winit="TorchDefault", binit="TorchDefaultBias", bias=True):
        c, h, w = self.shapes[x]
        fin = c * h * w
        wi = self._tensor(name + ".weight", (out_features, fin), winit, prunable=True)
        bi = -1
        if bias:
            bi = self._tensor(name + ".bias", (out_features,), binit, fan_in=fin if binit == "TorchDefaultBias" else 0)
        return self._layer(tkt.Layer(name, "Linear", [x], weight=wi, bias=bi, out_features=out_features),
                           (out_features, 1, 1))

    def bn(self, name, x):
        c = self.shapes[x][0]
        w = self._tensor(name + ".weight", (c,), "Ones")
        b = self._tensor(name + ".bias", (c,), "Zeros")
        rm = self._tensor(name + ".running_mean", (c,), "Zeros", trainable=False)
        rv = self._tensor(name + ".running_var", (c,), "Ones", trainable=False)
        return self._layer(tkt.Layer(name, "BatchNorm", [x], weight=w, bias=b, running_mean=rm, running_var=rv,
                                     eps=1e-5, momentum=0.1), self.shapes[x])

    def relu(self, name, x):
        return self._layer(tkt.Layer(name, "Relu", [x]), self.shapes[x])

    def _pool(self, op, name, x, k, s):
        c, h, w = self.shapes[x]
        return self._layer(tkt.Layer(name, op, [x], kernel=[k, k], stride=[s, s], padding=[0, 0]),
                           (c, (h - k) // s + 1, (w - k) // s + 1))

    def maxpool(self, name, x, k, s):
        return self._pool("MaxPool", name, x, k, s)

    def avgpool(self, name, x, k, s):
        return self._pool("AvgPool", name, x, k, s)

    def gap(self, name, x):
        return self._layer(tkt.Layer(name, "GlobalAvgPool", [x]), (self.shapes[x][0], 1, 1))

    def flatten(self, name, x):
        c, h, w = self.shapes[x]
        return self._layer(tkt.Layer(name, "Flatten", [x]), (c * h * w, 1, 1))

    def add(self, name, a, b):
        assert self.shapes[a] == self.shapes[b], (name, self.shapes[a], self.shapes[b])
        return self._layer(tkt.Layer(name, "Add", [a, b]), self.shapes[a])

    def scale(self, name, x):
        c = self.shapes[x][0]
        wi = self._tensor(name + ".weight", (c, 1, 1), "Ones", trainable=False)
        return self._layer(tkt.Layer(name, "Scale", [x], weight=wi), self.shapes[x])


# ---- architectures ---------------------------------------------------------------------------

def lenet():
    n = Net("lenet", 1, 28, 28, 10,
            "BorealisAI/advertorch advertorch_examples/models.py LeNet5 (MNIST)",
            "PyTorch default init: kaiming_uniform(a=sqrt(5)) weights, U(+-1/sqrt(fan_in)) biases.")
    x = n.conv("conv1", 0, 32, 3, p=1, bias=True)
    x = n.relu("relu1", x)
    x = n.maxpool("maxpool1", x, 2, 2)
    x = n.conv("conv2", x, 64, 3, p=1, bias=True)
    x = n.relu("relu2", x)
    x = n.maxpool("maxpool2", x, 2, 2)
    x = n.flatten("flatten", x)
    x = n.linear("linear1", x, 200)
    x = n.relu("relu3", x)
    n.linear("linear2", x, 10)
    return n.m


def cifar_model():
    n = Net("cifar_model", 3, 32, 32, 10,
            "inspire-group/hydra models/basic.py cifar_model (nn.Sequential; 'cnn_small')",
            "Convs: N(0, sqrt(2/fan_out)) weights, zero biases; linears: PyTorch default init.")
    x = n.conv("0", 0, 16, 4, s=2, p=1, bias=True, winit="KaimingNormalFanOut", binit="Zeros")
    x = n.relu("1", x)
    x = n.conv("2", x, 32, 4, s=2, p=1, bias=True, winit="KaimingNormalFanOut", binit="Zeros")
    x = n.relu("3", x)
    x = n.flatten("4", x)
    x = n.linear("5", x, 100)
    x = n.relu("6", x)
    n.linear("7", x, 10)
    return n.m


def cifar_model_large():
    n = Net("cifar_model_large", 3, 32, 32, 10,
            "inspire-group/hydra models/basic.py cifar_model_large (nn.Sequential; 'cnn_large')",
            "Convs: N(0, sqrt(2/fan_out)) weights, zero biases; linears: PyTorch default init.")
    kn = dict(bias=True, winit="KaimingNormalFanOut", binit="Zeros")
    x = n.conv("0", 0, 32, 3, s=1, p=1, **kn)
    x = n.relu("1", x)
    x = n.conv("2", x, 32, 4, s=2, p=1, **kn)
    x = n.relu("3", x)
    x = n.conv("4", x, 64, 3, s=1, p=1, **kn)
    x = n.relu("5", x)
    x = n.conv("6", x, 64, 4, s=2, p=1, **kn)
    x = n.relu("7", x)
    x = n.flatten("8", x)
    x = n.linear("9", x, 512)
    x = n.relu("10", x)
    x = n.linear("11", x, 512)
    x = n.relu("12", x)
    n.linear("13", x, 10)
    return n.m


def vgg16_bn():
    n = Net("vgg16_bn", 3, 32, 32, 10,
            "inspire-group/hydra models/vgg_cifar.py vgg16_bn (cfg 16, 4 max-pools)",
            "Convs bias=False, kaiming_normal fan_out; linears N(0, 0.01), zero bias; BN 1/0. "
            "AdaptiveAvgPool2d((2,2)) is the identity at 32x32 and is not a layer here; ticket init adds "
            "an average pool for inputs whose map is 2k x 2l and refuses other sizes.")
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    x, idx = 0, 0
    for v in cfg:
        if v == "M":
            x = n.maxpool("features.%d" % idx, x, 2, 2)
            idx += 1
        else:
            x = n.conv("features.%d" % idx, x, v, 3, p=1, winit="KaimingNormalFanOut")
            x = n.bn("features.%d" % (idx + 1), x)
            x = n.relu("features.%d" % (idx + 2), x)
            idx += 3
    x = n.flatten("flatten", x)
    x = n.linear("classifier.0", x, 256, winit="Normal001", binit="Zeros")
    x = n.relu("classifier.1", x)
    x = n.linear("classifier.2", x, 256, winit="Normal001", binit="Zeros")
    x = n.relu("classifier.3", x)
    n.linear("classifier.4", x, 10, winit="Normal001", binit="Zeros")
    return n.m


def resnet18():
    n = Net("resnet18", 3, 32, 32, 10,
            "inspire-group/hydra models/resnet_cifar.py resnet18 (kuangliu/pytorch-cifar BasicBlock [2,2,2,2])",
            "All convs bias=False with PyTorch default init; BN 1/0; linear PyTorch default init. "
            "F.avg_pool2d(out, 4) at the end.")
    x = n.conv("conv1", 0, 64, 3, p=1)
    x = n.bn("bn1", x)
    x = n.relu("relu", x)
    cin = 64
    for li, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        for b in range(2):
            s = stride if b == 0 else 1
            p = "layer%d.%d." % (li, b)
            inp = x
            y = n.conv(p + "conv1", inp, planes, 3, s=s, p=1)
            y = n.bn(p + "bn1", y)
            y = n.relu(p + "relu1", y)
            y = n.conv(p + "conv2", y, planes, 3, p=1)
            y = n.bn(p + "bn2", y)
            if s != 1 or cin != planes:
                sc = n.conv(p + "shortcut.0", inp, planes, 1, s=s)
                sc = n.bn(p + "shortcut.1", sc)
            else:
                sc = inp
            y = n.add(p + "add", y, sc)
            x = n.relu(p + "relu2", y)
            cin = planes
    x = n.avgpool("avgpool", x, 4, 4)
    x = n.flatten("flatten", x)
    n.linear("linear", x, 10)
    return n.m


def wrn_28_4():
    n = Net("wrn_28_4", 3, 32, 32, 10,
            "inspire-group/hydra models/wrn_cifar.py wrn_28_4 (TRADES WideResNet, depth 28, widen 4)",
            "Pre-activation blocks; convShortcut (1x1) on the activated input when in != out. Convs "
            "N(0, sqrt(2/fan_out)); BN 1/0; fc PyTorch default weight, zero bias. The unused "
            "sub_block1 of the original is not part of the graph. F.avg_pool2d(out, 8) at the end.")
    x = n.conv("conv1", 0, 16, 3, p=1, winit="KaimingNormalFanOut")
    cin = 16
    for gi, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2)], start=1):
        for b in range(4):
            p = "block%d.layer.%d." % (gi, b)
            s = stride if b == 0 else 1
            if cin != cout:
                xa = n.relu(p + "relu1", n.bn(p + "bn1", x))
                y = n.conv(p + "conv1", xa, cout, 3, s=s, p=1, winit="KaimingNormalFanOut")
                y = n.relu(p + "relu2", n.bn(p + "bn2", y))
                y = n.conv(p + "conv2", y, cout, 3, p=1, winit="KaimingNormalFanOut")
                sc = n.conv(p + "convShortcut", xa, cout, 1, s=s, winit="KaimingNormalFanOut")
                x = n.add(p + "add", sc, y)
            else:
                o = n.relu(p + "relu1", n.bn(p + "bn1", x))
                y = n.conv(p + "conv1", o, cout, 3, s=s, p=1, winit="KaimingNormalFanOut")
                y = n.relu(p + "relu2", n.bn(p + "bn2", y))
                y = n.conv(p + "conv2", y, cout, 3, p=1, winit="KaimingNormalFanOut")
                x = n.add(p + "add", x, y)
            cin = cout
    x = n.relu("relu", n.bn("bn1", x))
    x = n.avgpool("avgpool", x, 8, 8)
    x = n.flatten("flatten", x)
    n.linear("fc", x, 10, binit="Zeros")
    return n.m


def resnet20():
    n = Net("resnet20", 3, 32, 32, 10,
            "ganguli-lab/Synaptic-Flow Models/lottery_resnet.py resnet20 (OpenLTH CIFAR ResNet-20)",
            "Convs and fc kaiming_normal (fan_in), fc bias 0, BN 1/0. Identity shortcuts are "
            "Identity2d: a per-channel scale (C,1,1), init 1, not trained. Downsampling "
            "shortcuts: 1x1 conv stride 2 + BN. Global average pool.")
    kn = dict(winit="KaimingNormalFanIn")
    x = n.conv("conv", 0, 16, 3, p=1, **kn)
    x = n.relu("relu", n.bn("bn", x))
    cin, bi = 16, 0
    for seg, filters in enumerate([16, 32, 64]):
        for blk in range(3):
            down = seg > 0 and blk == 0
            p = "blocks.%d." % bi
            y = n.conv(p + "conv1", x, filters, 3, s=2 if down else 1, p=1, **kn)
            y = n.relu(p + "relu1", n.bn(p + "bn1", y))
            y = n.conv(p + "conv2", y, filters, 3, p=1, **kn)
            y = n.bn(p + "bn2", y)
            if down or cin != filters:
                sc = n.bn(p + "shortcut.1", n.conv(p + "shortcut.0", x, filters, 1, s=2, **kn))
            else:
                sc = n.scale(p + "shortcut", x)
            y = n.add(p + "add", y, sc)
            x = n.relu(p + "relu2", y)
            cin, bi = filters, bi + 1
    x = n.gap("avgpool", x)
    x = n.flatten("flatten", x)
    n.linear("fc", x, 10, winit="KaimingNormalFanIn", binit="Zeros")
    return n.m


ARCHS = [lenet, cifar_model, cifar_model_large, vgg16_bn, resnet18, wrn_28_4, resnet20]

README_HEAD = """# The model zoo

Architecture files for `ticket init ARCH`: FlatBuffers JSON of `schema/ticket.fbs` without
tensor data, each tensor with the `init` rule of its original code.  They are written by
`tools/gen_zoo.py` (do not edit them by hand; run the script) and embedded into the `ticket`
binary at build time.  Tensor names are the original PyTorch state_dict keys, so
`tools/torch_bridge.py` maps checkpoints 1:1, and `tests/py/test_zoo_torch.py` checks every
model against its PyTorch definition (`tests/py/ref_models.py`): logits, input gradient,
parameter gradients, BatchNorm in eval and train mode, dense and masked.

    ticket init resnet18 -o r18.tkt [--classes 100] [--input 3,64,64] [--seed 1]
    ticket init --list

Counts are for the default input and 10 classes.  MACs are multiply-accumulates per image
of the conv and linear layers.  Prunable = conv and linear weights (HYDRA prunes all of
them, first and last included).

| arch | input | source | params | prunable | dense MACs |
| --- | --- | --- | ---: | ---: | ---: |
"""

README_TAIL = """
Notes on each architecture:

- **lenet**: advertorch's MNIST LeNet5 (the pretrained weights in `shared/data/pretrained-weights`
  load into it): conv 3x3 pad 1 1->32, ReLU, max-pool 2, conv 32->64, ReLU, max-pool 2, flatten
  (3136), linear 200, ReLU, linear 10.  PyTorch default initialisation.
- **cifar_model / cifar_model_large**: HYDRA's `models/basic.py` ("cnn_small"/"cnn_large", used with
  CROWN-IBP/MixTrain); `nn.Sequential` keys `0, 2, 5, 7` / `0, 2, 4, 6, 9, 11, 13`; convs with bias.
- **vgg16_bn**: HYDRA's CIFAR VGG-16 with BN (13 convs without bias, 4 max-pools, classifier
  2048-256-256-C).  `AdaptiveAvgPool2d((2,2))` is the identity at 32x32; for an input whose last map
  is 2k x 2l `ticket init` inserts an average pool k x l (exactly the adaptive pool there); other
  inputs are refused.
- **resnet18**: kuangliu's CIFAR ResNet-18 as in HYDRA (`conv1`, `layerX.Y.convZ`,
  `layerX.Y.shortcut.0/1`, `linear`); `F.avg_pool2d(out, 4)`.
- **wrn_28_4**: HYDRA's (TRADES) WideResNet-28-4, pre-activation blocks; the first block of each group
  applies `convShortcut` to the activated input.  The original also builds an unused `sub_block1`
  (in its state_dict, never run); it is not part of this graph and the bridge skips it.
  `F.avg_pool2d(out, 8)`: at other input sizes the linear layer follows the pooled map.
- **resnet20**: SynFlow's `lottery_resnet` ResNet-20 (OpenLTH); identity shortcuts are `Identity2d`
  per-channel scales (`blocks.i.shortcut.weight`, shape (C,1,1), init 1, not trained, not prunable),
  downsampling shortcuts are 1x1 conv stride 2 + BN.  Global average pool.

From PyTorch checkpoints (`tools/torch_bridge.py`, Debian's `/usr/bin/python3`; the checkpoint's
keys are the tensor names above, after `module.` and normalisation wrappers are stripped):

    tools/torch_bridge.py export model_best.pth.tar --arch vgg16_bn --k 0.01 -o vgg_hydra99.tkt   # HYDRA subnet
    tools/torch_bridge.py export model_best_dense.pth.tar --arch wrn_28_4 --mask-from-zeros -o wrn.tkt
    tools/torch_bridge.py export pruned.pth.tar --arch resnet18 -o r18.tkt      # torch.nn.utils.prune, 0.mean/0.std
    tools/torch_bridge.py export model.pt --arch resnet20 -o synflow.tkt                 # SynFlow masked layers
    tools/torch_bridge.py export mnist_eps0.1.pth --arch cifar_model --input 1,28,28 -o convex.tkt
    tools/torch_bridge.py import model.tkt -o state_dict.pt --encoding plain|torch-prune|hydra|synflow

(`cifar_model` with `--input 1,28,28` is HYDRA's `mnist_model`, the architecture of the
convex-adversarial MNIST models in the shared pretrained weights.)  The formats are read for any
zoo architecture; Double-Win's own checkpoints are torchvision ResNet-50s (ImageNet topology),
which the zoo does not have.

`--input C,H,W` changes the first conv's input channels and the in-features of the first linear
after the flatten; `--classes N` changes the last linear (weight and bias).  Initialisation is
deterministic for a seed (each tensor draws from its own generator, seeded by the seed and the
tensor name, so changing the classes leaves the other tensors as they were).
"""


def build_all():
    out = {}
    rows = []
    for fn in ARCHS:
        m = fn()
        tkt.infer(m)
        out[os.path.join("models", m.arch + ".json")] = tkt.to_json(m)
        dense, _ = tkt.macs(m)
        p, pr = tkt.params(m)
        src = m.provenance.source.split(" ")[0]
        rows.append("| %s | %dx%dx%d | %s | %s | %s | %.1f M |" % (
            m.arch, m.input.channels, m.input.height, m.input.width, src, tkt.fmt_int(p), tkt.fmt_int(pr),
            dense / 1e6))
    out[os.path.join("models", "README.md")] = README_HEAD + "\n".join(rows) + "\n" + README_TAIL
    return out


def main(argv):
    check = "--check" in argv
    files = build_all()
    stale = []
    for rel, text in files.items():
        path = os.path.join(ROOT, rel)
        old = None
        if os.path.exists(path):
            with open(path, "r", encoding="utf-8") as f:
                old = f.read()
        if old != text:
            stale.append(rel)
            if not check:
                tkt.write_atomic(path, text.encode("utf-8"))
    if check:
        for rel in stale:
            print("gen_zoo: %s is not what tools/gen_zoo.py writes (run tools/gen_zoo.py)" % rel)
        return 1 if stale else 0
    for rel in stale:
        print("gen_zoo: wrote %s" % rel)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
