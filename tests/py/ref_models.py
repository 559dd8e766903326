"""ref_models.py -- PyTorch definitions of the zoo's original architectures, the oracles of
tests/py/test_zoo_torch.py and tests/py/test_bridge.py.

Each follows its original code (module structure, state_dict names, forward, init):
  lenet               BorealisAI/advertorch advertorch_examples/models.py LeNet5
  cifar_model(_large) inspire-group/hydra models/basic.py
  vgg16_bn            inspire-group/hydra models/vgg_cifar.py (cfg "16", initialize_weights)
  resnet18            inspire-group/hydra models/resnet_cifar.py (kuangliu BasicBlock)
  wrn_28_4            inspire-group/hydra models/wrn_cifar.py (TRADES WRN with the unused
                      sub_block1; sub_block1=False leaves it out for strict loading of a
                      state_dict exported from a Ticket model, which has no such module)
  resnet20            ganguli-lab/Synaptic-Flow Models/lottery_resnet.py, with SynFlow's masked
                      layers (Layers/layers.py) or plain torch layers (masked=False)
and the layer types the checkpoints come from:
  SubnetConv/SubnetLinear   HYDRA models/layers.py (popup_scores, GetSubnet top-k, k at runtime)
  NormalizeByChannelMeanStd advertorch (Double-Win wraps nn.Sequential(normalize, net))
  torch.nn.utils.prune      Double-Win (weight_orig / weight_mask)

Differences from the originals, all optional and off by default: `in_ch` (input channels)
and `hw` (input height/width, which sets the in-features of the first linear after a flatten)
so a model built by `ticket init --input` can be checked; the originals hard-code 3 (or 1)
channels and their dataset's size.
"""

import math

import torch
import torch.autograd as autograd
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parameter import Parameter


# ---- HYDRA subnet layers (models/layers.py) --------------------------------------------------

class GetSubnet(autograd.Function):
    @staticmethod
    def forward(ctx, scores, k):
        out = scores.clone()
        _, idx = scores.flatten().sort()
        j = int((1 - k) * scores.numel())
        flat_out = out.flatten()
        flat_out[idx[:j]] = 0
        flat_out[idx[j:]] = 1
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


class SubnetConv(nn.Conv2d):
    # HYDRA HEAD: default padding 0 (it was 1 before commit 6ef5ea3)
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.popup_scores = Parameter(torch.Tensor(self.weight.shape))
        nn.init.kaiming_uniform_(self.popup_scores, a=math.sqrt(5))
        self.weight.requires_grad = False
        if self.bias is not None:
            self.bias.requires_grad = False
        self.w = 0

    def set_prune_rate(self, k):
        self.k = k

    def forward(self, x):
        adj = GetSubnet.apply(self.popup_scores.abs(), self.k)
        self.w = self.weight * adj
        return F.conv2d(x, self.w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SubnetLinear(nn.Linear):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias=True)
        self.popup_scores = Parameter(torch.Tensor(self.weight.shape))
        nn.init.kaiming_uniform_(self.popup_scores, a=math.sqrt(5))
        self.weight.requires_grad = False
        self.bias.requires_grad = False
        self.w = 0

    def set_prune_rate(self, k):
        self.k = k

    def forward(self, x):
        adj = GetSubnet.apply(self.popup_scores.abs(), self.k)
        self.w = self.weight * adj
        return F.linear(x, self.w, self.bias)


def set_prune_rate(model, k):
    """HYDRA utils/model.py set_prune_rate_model."""
    for m in model.modules():
        if hasattr(m, "set_prune_rate"):
            m.set_prune_rate(k)


class Flatten(nn.Module):
    def forward(self, input):
        return input.view(input.size(0), -1)


# ---- advertorch LeNet5 -------------------------------------------------------------------------

class LeNet5(nn.Module):
    def __init__(self, num_classes=10, in_ch=1, hw=(28, 28)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 32, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.maxpool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.maxpool2 = nn.MaxPool2d(2)
        self.linear1 = nn.Linear((hw[0] // 4) * (hw[1] // 4) * 64, 200)
        self.relu3 = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(200, num_classes)

    def forward(self, x):
        out = self.maxpool1(self.relu1(self.conv1(x)))
        out = self.maxpool2(self.relu2(self.conv2(out)))
        out = out.view(out.size(0), -1)
        out = self.relu3(self.linear1(out))
        return self.linear2(out)


# ---- HYDRA models/basic.py ----------------------------------------------------------------------

def _basic_init(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
            m.bias.data.zero_()
    return model


def cifar_model(conv_layer=nn.Conv2d, linear_layer=nn.Linear, num_classes=10, in_ch=3, hw=(32, 32)):
    model = nn.Sequential(
        conv_layer(in_ch, 16, 4, stride=2, padding=1), nn.ReLU(),
        conv_layer(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        Flatten(),
        linear_layer(32 * (hw[0] // 4) * (hw[1] // 4), 100), nn.ReLU(),
        linear_layer(100, num_classes))
    return _basic_init(model)


def cifar_model_large(conv_layer=nn.Conv2d, linear_layer=nn.Linear, num_classes=10, in_ch=3, hw=(32, 32)):
    model = nn.Sequential(
        conv_layer(in_ch, 32, 3, stride=1, padding=1), nn.ReLU(),
        conv_layer(32, 32, 4, stride=2, padding=1), nn.ReLU(),
        conv_layer(32, 64, 3, stride=1, padding=1), nn.ReLU(),
        conv_layer(64, 64, 4, stride=2, padding=1), nn.ReLU(),
        Flatten(),
        linear_layer(64 * (hw[0] // 4) * (hw[1] // 4), 512), nn.ReLU(),
        linear_layer(512, 512), nn.ReLU(),
        linear_layer(512, num_classes))
    return _basic_init(model)


# ---- HYDRA models/vgg_cifar.py ------------------------------------------------------------------

class VGG(nn.Module):
    def __init__(self, features, last_conv_channels_len, linear_layer, num_classes=10):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            linear_layer(last_conv_channels_len * 2 * 2, 256), nn.ReLU(True),
            linear_layer(256, 256), nn.ReLU(True),
            linear_layer(256, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _vgg_init(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.01)
            m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def vgg16_bn(conv_layer=nn.Conv2d, linear_layer=nn.Linear, num_classes=10, in_ch=3, hw=None):
    layers, c = [], in_ch
    for v in VGG16_CFG:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            layers += [conv_layer(c, v, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    model = VGG(nn.Sequential(*layers), 512, linear_layer, num_classes)
    _vgg_init(model)
    return model


# ---- HYDRA models/resnet_cifar.py ---------------------------------------------------------------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, conv_layer, stride=1):
        super().__init__()
        self.conv1 = conv_layer(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv_layer(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                conv_layer(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, conv_layer, linear_layer, block, num_blocks, num_classes=10, in_ch=3, hw=(32, 32)):
        super().__init__()
        self.in_planes = 64
        self.conv_layer = conv_layer
        self.conv1 = conv_layer(in_ch, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.linear = linear_layer(512 * block.expansion * (hw[0] // 32) * (hw[1] // 32), num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, self.conv_layer, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def resnet18(conv_layer=nn.Conv2d, linear_layer=nn.Linear, num_classes=10, in_ch=3, hw=(32, 32)):
    return ResNet(conv_layer, linear_layer, BasicBlock, [2, 2, 2, 2], num_classes, in_ch, hw)


# ---- HYDRA models/wrn_cifar.py ------------------------------------------------------------------

class WRNBlock(nn.Module):
    def __init__(self, conv_layer, in_planes, out_planes, stride, dropRate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv_layer(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv_layer(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = ((not self.equalInOut) and conv_layer(in_planes, out_planes, kernel_size=1, stride=stride,
                                                                 padding=0, bias=False) or None)

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, block, conv_layer, stride, dropRate=0.0):
        super().__init__()
        self.layer = nn.Sequential(*[block(conv_layer, i == 0 and in_planes or out_planes, out_planes,
                                           i == 0 and stride or 1, dropRate) for i in range(int(nb_layers))])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, conv_layer, linear_layer, depth=34, num_classes=10, widen_factor=10, dropRate=0.0,
                 in_ch=3, sub_block1=True, hw=(32, 32)):
        super().__init__()
        nChannels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        assert (depth - 4) % 6 == 0
        n = (depth - 4) / 6
        self.conv1 = conv_layer(in_ch, nChannels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, nChannels[0], nChannels[1], WRNBlock, conv_layer, 1, dropRate)
        if sub_block1:  # built by the original, never used in forward
            self.sub_block1 = NetworkBlock(n, nChannels[0], nChannels[1], WRNBlock, conv_layer, 1, dropRate)
        self.block2 = NetworkBlock(n, nChannels[1], nChannels[2], WRNBlock, conv_layer, 2, dropRate)
        self.block3 = NetworkBlock(n, nChannels[2], nChannels[3], WRNBlock, conv_layer, 2, dropRate)
        self.bn1 = nn.BatchNorm2d(nChannels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = linear_layer(nChannels[3] * (hw[0] // 32) * (hw[1] // 32), num_classes)
        self.nChannels = nChannels[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / k))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, linear_layer):
                m.bias.data.zero_()

    def forward(self, x):
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        out = out.view(out.size(0), -1)
        return self.fc(out)


def wrn_28_4(conv_layer=nn.Conv2d, linear_layer=nn.Linear, num_classes=10, in_ch=3, sub_block1=True, hw=(32, 32)):
    return WideResNet(conv_layer, linear_layer, depth=28, num_classes=num_classes, widen_factor=4, in_ch=in_ch,
                      sub_block1=sub_block1, hw=hw)


# ---- SynFlow Layers/layers.py ------------------------------------------------------------------

class SFLinear(nn.Linear):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("weight_mask", torch.ones(self.weight.shape))
        if self.bias is not None:
            self.register_buffer("bias_mask", torch.ones(self.bias.shape))

    def forward(self, input):
        W = self.weight_mask * self.weight
        b = self.bias_mask * self.bias if self.bias is not None else self.bias
        return F.linear(input, W, b)


class SFConv2d(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)
        self.register_buffer("weight_mask", torch.ones(self.weight.shape))
        if self.bias is not None:
            self.register_buffer("bias_mask", torch.ones(self.bias.shape))

    def forward(self, input):
        W = self.weight_mask * self.weight
        b = self.bias_mask * self.bias if self.bias is not None else self.bias
        return F.conv2d(input, W, b, self.stride, self.padding, self.dilation, self.groups)


class SFBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        if self.affine:
            self.register_buffer("weight_mask", torch.ones(self.weight.shape))
            self.register_buffer("bias_mask", torch.ones(self.bias.shape))

    def forward(self, input):
        self._check_input_dim(input)
        eaf = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked = self.num_batches_tracked + 1
                eaf = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        if self.affine:
            W = self.weight_mask * self.weight
            b = self.bias_mask * self.bias
        else:
            W, b = self.weight, self.bias
        return F.batch_norm(input, self.running_mean, self.running_var, W, b,
                            self.training or not self.track_running_stats, eaf, self.eps)


class SFIdentity2d(nn.Module):
    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features
        self.weight = Parameter(torch.Tensor(num_features, 1, 1))
        self.register_buffer("weight_mask", torch.ones(self.weight.shape))
        nn.init.ones_(self.weight)

    def forward(self, input):
        return input * (self.weight_mask * self.weight)


class PlainIdentity2d(nn.Module):
    """SFIdentity2d without the mask buffer (for masked=False)."""

    def __init__(self, num_features):
        super().__init__()
        self.weight = Parameter(torch.ones(num_features, 1, 1))

    def forward(self, input):
        return input * self.weight


# ---- SynFlow Models/lottery_resnet.py ----------------------------------------------------------

class SFBlock(nn.Module):
    def __init__(self, L, f_in, f_out, downsample=False):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = L.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = L.BatchNorm2d(f_out)
        self.conv2 = L.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = L.BatchNorm2d(f_out)
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(L.Conv2d(f_in, f_out, kernel_size=1, stride=2, bias=False),
                                          L.BatchNorm2d(f_out))
        else:
            self.shortcut = L.Identity2d(f_in)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class SFResNet(nn.Module):
    def __init__(self, L, plan, num_classes, in_ch=3):
        super().__init__()
        current = plan[0][0]
        self.conv = L.Conv2d(in_ch, current, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = L.BatchNorm2d(current)
        blocks = []
        for seg, (filters, num_blocks) in enumerate(plan):
            for b in range(num_blocks):
                blocks.append(SFBlock(L, current, filters, seg > 0 and b == 0))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = L.Linear(plan[-1][0], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        out = F.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.fc(out)


class _SynFlowLayers:
    Conv2d, Linear, BatchNorm2d, Identity2d = SFConv2d, SFLinear, SFBatchNorm2d, SFIdentity2d


class _PlainLayers:
    Conv2d, Linear, BatchNorm2d, Identity2d = nn.Conv2d, nn.Linear, nn.BatchNorm2d, PlainIdentity2d


def resnet20(num_classes=10, in_ch=3, masked=True, hw=None):
    return SFResNet(_SynFlowLayers if masked else _PlainLayers, [(16, 3), (32, 3), (64, 3)], num_classes, in_ch)


# ---- Double-Win / advertorch -------------------------------------------------------------------

class NormalizeByChannelMeanStd(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


# ---- by name ----------------------------------------------------------------------------------

ARCHS = ["lenet", "cifar_model", "cifar_model_large", "vgg16_bn", "resnet18", "wrn_28_4", "resnet20"]
DEFAULT_INPUT = {"lenet": (1, 28, 28)}


def default_input(arch):
    return DEFAULT_INPUT.get(arch, (3, 32, 32))


def build(arch, layer_type="dense", num_classes=10, in_ch=None, hw=None, sub_block1=True, masked=True):
    """The original model; layer_type "dense" (nn.Conv2d/nn.Linear) or "subnet" (HYDRA)."""
    c, h, w = default_input(arch)
    in_ch = in_ch or c
    hw = hw or (h, w)
    conv, lin = (SubnetConv, SubnetLinear) if layer_type == "subnet" else (nn.Conv2d, nn.Linear)
    if arch == "lenet":
        return LeNet5(num_classes, in_ch, hw)
    if arch == "cifar_model":
        return cifar_model(conv, lin, num_classes, in_ch, hw)
    if arch == "cifar_model_large":
        return cifar_model_large(conv, lin, num_classes, in_ch, hw)
    if arch == "vgg16_bn":
        return vgg16_bn(conv, lin, num_classes, in_ch)
    if arch == "resnet18":
        return resnet18(conv, lin, num_classes, in_ch, hw)
    if arch == "wrn_28_4":
        return wrn_28_4(conv, lin, num_classes, in_ch, sub_block1, hw)
    if arch == "resnet20":
        return resnet20(num_classes, in_ch, masked)
    raise ValueError("unknown arch %s" % arch)
