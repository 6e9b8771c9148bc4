"""CIFAR networks: ResNet, Shift-Net's ShiftResNet and the SSC-Net, on one backbone.

Every model is the CIFAR backbone of He et al. 2016 with a different residual block:

    3x3 conv 3->16 -> BN -> ReLU                                  (the stem)
    layer1: n blocks, 16 channels, 32x32
    layer2: n blocks, 32 channels, 16x16 (the first block has stride 2)
    layer3: n blocks, 64 channels, 8x8   (the first block has stride 2)
    global average pool -> linear 64 -> num_classes               depth = 6n + 2

What comes from where (spec sections 4 and 5; the tags match the spec's):
- [paper] He et al. 2016: the backbone and the `BasicBlock`. Wu et al. 2018 (Shift-Net): the
  CSC module `ShiftBlock` with expansion e. Lu et al. 2019 (SSC): an SSC module is "a point-wise
  convolutional layer, two SSC layers with a shuffle-channel operation, and identity mapping,
  akin to ResNets".
- [recon] minissc's choices where the sources say nothing: 1x1-conv + BN projection shortcuts
  whenever the stride or the width changes (He et al.'s option B), the inner width of the SSC
  module m = 9 c_out / r, the order BN/ReLU/shuffle inside it, and the ShiftResNets' default
  expansion e=6.
The parameter counts of the zoo equal the spec's table (tests/test_models.py checks them).

Build a model by name with ``create("sscresnet20", num_classes=100, r=2)`` or call the zoo
function, ``sscresnet20(num_classes=100, r=2)``.
"""
from __future__ import annotations

import difflib
import functools
import inspect

from minissc import functional as F
from minissc.checks import check_int
from minissc.nn import (BatchNorm2d, BatchNormReLU2d, Conv2d, GlobalAvgPool2d, Linear, Module,
                        Sequential, Shift, SSCConv2d, ssc_pair)

SHIFT_EXPANSIONS = (1, 3, 6, 9)  # the expansions Shift-Net reports on CIFAR [paper]
SSC_RATIOS = (1, 2, 4)  # outputs per SSC2 group that divide every width 16/32/64 [recon]
STAGE_WIDTHS = (16, 32, 64)


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> Module | None:
    """1x1 conv (stride s) + BN when the shape changes, else None (the identity) [recon]."""
    if stride == 1 and in_channels == out_channels:
        return None
    return Sequential(Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                      BatchNorm2d(out_channels))


def _apply_shortcut(shortcut: Module | None, x):
    return x if shortcut is None else shortcut(x)


class BasicBlock(Module):
    """ResNet block [paper: He et al. 2016].

    x -> conv3x3 (stride s) -> BN -> ReLU -> conv3x3 -> BN -> + shortcut(x) -> ReLU
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNormReLU2d(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        out = self.bn1(self.conv1(x))  # BN + ReLU, fused
        out = self.bn2(self.conv2(out))
        return F.add_relu(out, _apply_shortcut(self.shortcut, x))  # one pass


class ShiftBlock(Module):
    """Shift-Net's CSC module with expansion e [paper: Wu et al. 2018].

    x -> 1x1 conv (c_in -> e c_out) -> BN -> ReLU -> shift (channel c to direction c mod 9)
      -> 1x1 conv (-> c_out, stride s) -> BN -> ReLU -> + shortcut(x)     (no ReLU after the add)

    e c_out need not be a multiple of 9: the last directions then get one channel fewer.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, e: int = 6):
        mid = check_int(e, "e", 1) * out_channels
        self.conv1 = Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = BatchNormReLU2d(mid)
        self.shift = Shift(3)
        self.conv2 = Conv2d(mid, out_channels, 1, stride=stride, bias=False)
        self.bn2 = BatchNormReLU2d(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        out = self.shift(self.bn1(self.conv1(x)))  # bn1, bn2: BN + ReLU, fused
        out = self.bn2(self.conv2(out))
        return out + _apply_shortcut(self.shortcut, x)


class SSCBlock(Module):
    """The SSC module, r outputs per SSC2 group [paper: the parts; recon: the wiring].

    x -> 1x1 conv (c_in -> m) -> BN -> ReLU
      -> SSC1 (m -> m, G=9) -> BN -> ReLU
      -> channel shuffle (m / 9 groups)
      -> SSC2 (m -> c_out, G=9, stride s) -> BN -> + shortcut(x) -> ReLU

    with m = 9 c_out / r. SSC1 keeps each group of 9 channels apart; the shuffle then
    interleaves the groups (shuffled channel j * m / 9 + b is channel j of SSC1 group b, see
    `minissc.kernels.ssc.shuffled_channels`), and SSC2 group j reads shuffled channels 9j to
    9j + 8, so for r = 1 each SSC2 output sees one channel from each of 9 SSC1 groups, each
    at a different kernel position. The shuffle is a
    pure permutation, so SSC2 performs it while reading its input (``shuffle_groups``):
    the same function without a shuffled copy of the widest tensor of the block. Likewise each
    SSC layer applies the BN + ReLU in front of it as it reads its input (``input_norm``), so
    the two widest activations of the block are never stored, and in training the two SSC
    layers run as one op with the 1x1 conv in front (`minissc.nn.ssc_pair`), whose backward
    folds the second BN's into SSC1's kernel and the first BN's into the conv's.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, r: int = 1):
        check_int(r, "r", 1)
        if out_channels % r:
            raise ValueError(f"r ({r}) must divide out_channels ({out_channels}): each SSC2 "
                             f"group has r outputs")
        mid = 9 * out_channels // r
        self.conv1 = Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = BatchNormReLU2d(mid)
        self.ssc1 = SSCConv2d(mid, mid, 3, group_size=9)
        self.bn2 = BatchNormReLU2d(mid)
        self.ssc2 = SSCConv2d(mid, out_channels, 3, stride=stride, group_size=9,
                              shuffle_groups=mid // 9)  # channel shuffle, then SSC2
        self.bn3 = BatchNorm2d(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        # ssc2(ssc1(conv1(x), input_norm=bn1), input_norm=bn2): bn1, bn2 (BN + ReLU) applied as
        # ssc1 / ssc2 read, ssc2 also shuffles, bn2's backward folded into ssc1's and bn1's
        # into conv1's
        out = ssc_pair(x, self.bn1, self.ssc1, self.bn2, self.ssc2, conv=self.conv1)
        out = self.bn3(out)
        return F.add_relu(out, _apply_shortcut(self.shortcut, x))  # one pass


class CifarResNet(Module):
    """The He et al. 2016 CIFAR backbone with n blocks per stage [paper].

    `block` is called as ``block(in_channels, out_channels, stride)`` and returns a Module,
    e.g. ``BasicBlock`` or ``functools.partial(SSCBlock, r=2)``.
    """

    def __init__(self, block, n: int, num_classes: int = 10):
        check_int(n, "n", 1)
        check_int(num_classes, "num_classes", 2)
        self.conv1 = Conv2d(3, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = BatchNormReLU2d(STAGE_WIDTHS[0])
        in_channels = STAGE_WIDTHS[0]
        stages = []
        for index, width in enumerate(STAGE_WIDTHS):
            first_stride = 1 if index == 0 else 2
            blocks = [block(in_channels, width, first_stride)]
            blocks += [block(width, width, 1) for _ in range(n - 1)]
            stages.append(Sequential(*blocks))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = GlobalAvgPool2d()
        self.fc = Linear(STAGE_WIDTHS[-1], num_classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x))  # BN + ReLU, fused
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))


# --------------------------------------------------------------------------------------------
# The zoo: depth = 6n + 2.
# --------------------------------------------------------------------------------------------


def _check_choice(value, name: str, choices: tuple) -> None:
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _resnet(depth: int, num_classes: int) -> CifarResNet:
    return CifarResNet(BasicBlock, (depth - 2) // 6, num_classes)


def _shiftresnet(depth: int, num_classes: int, e: int) -> CifarResNet:
    _check_choice(e, "e", SHIFT_EXPANSIONS)
    return CifarResNet(functools.partial(ShiftBlock, e=e), (depth - 2) // 6, num_classes)


def _sscresnet(depth: int, num_classes: int, r: int) -> CifarResNet:
    _check_choice(r, "r", SSC_RATIOS)
    return CifarResNet(functools.partial(SSCBlock, r=r), (depth - 2) // 6, num_classes)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (n=3), 272,474 parameters on CIFAR-10."""
    return _resnet(20, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (n=5)."""
    return _resnet(32, num_classes)


def resnet44(num_classes: int = 10) -> CifarResNet:
    """ResNet-44 (n=7)."""
    return _resnet(44, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (n=9), 855,770 parameters on CIFAR-10."""
    return _resnet(56, num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 (n=18), 1,730,714 parameters on CIFAR-10."""
    return _resnet(110, num_classes)


def shiftresnet20(num_classes: int = 10, e: int = 6) -> CifarResNet:
    """ShiftResNet-20 with expansion e in (1, 3, 6, 9) [paper].

    The default e=6 is minissc's choice [recon]: the expansion whose size is closest to an SSC-Net
    with r=1 (186,746 parameters against 168,986 on CIFAR-10).
    """
    return _shiftresnet(20, num_classes, e)


def shiftresnet56(num_classes: int = 10, e: int = 6) -> CifarResNet:
    """ShiftResNet-56 with expansion e in (1, 3, 6, 9); default e=6 as `shiftresnet20`."""
    return _shiftresnet(56, num_classes, e)


def shiftresnet110(num_classes: int = 10, e: int = 6) -> CifarResNet:
    """ShiftResNet-110 with expansion e in (1, 3, 6, 9); default e=6 as `shiftresnet20`."""
    return _shiftresnet(110, num_classes, e)


def sscresnet20(num_classes: int = 10, r: int = 1) -> CifarResNet:
    """SSC-Net with 20 layers, r in (1, 2, 4) outputs per SSC2 group [recon]."""
    return _sscresnet(20, num_classes, r)


def sscresnet56(num_classes: int = 10, r: int = 1) -> CifarResNet:
    """SSC-Net with 56 layers, r in (1, 2, 4) outputs per SSC2 group [recon]."""
    return _sscresnet(56, num_classes, r)


def sscresnet110(num_classes: int = 10, r: int = 1) -> CifarResNet:
    """SSC-Net with 110 layers, r in (1, 2, 4) outputs per SSC2 group [recon]."""
    return _sscresnet(110, num_classes, r)


_ZOO = {model.__name__: model for model in (
    resnet20, resnet32, resnet44, resnet56, resnet110,
    shiftresnet20, shiftresnet56, shiftresnet110,
    sscresnet20, sscresnet56, sscresnet110)}
MODEL_NAMES = tuple(_ZOO)


def create(name: str, num_classes: int = 10, **kwargs) -> CifarResNet:
    """Build a zoo model by name, e.g. ``create("shiftresnet20", e=3)``.

    Raises ValueError for an unknown name (with the valid ones and a close match) or a bad
    option value, TypeError for an option the model does not take.
    """
    if name not in _ZOO:
        close = difflib.get_close_matches(str(name).lower(), MODEL_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(MODEL_NAMES)}")
    model = _ZOO[name]
    accepted = [p for p in inspect.signature(model).parameters if p != "num_classes"]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        takes = f"only {', '.join(accepted)}" if accepted else "no options"
        raise TypeError(f"{name} does not take {', '.join(map(repr, unexpected))}; it takes "
                        f"num_classes and {takes}")
    return model(num_classes=num_classes, **kwargs)
