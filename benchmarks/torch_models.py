"""PyTorch twins of the minissc zoo, for the benchmark and the optional cross-check tests.

Each twin is built with torch.nn exactly as `minissc.models` builds its model: the same
layers in the same order, the same shapes and the same dotted parameter names
(``layer2.0.ssc2.weight``), so `load_minissc_weights` copies a minissc model into its twin
name by name. The SSC and shift layers use PyTorch's fastest equivalent [recon]:

- shift: a depthwise 3x3 convolution (groups = C) with a fixed one-hot kernel; channel j's
  one is at position j mod G of the k x k grid, row-major, as `minissc.kernels.ssc.shift_offsets`
  (a buffer, not trained);
- SSC: that one-hot depthwise convolution followed by a grouped 1x1 convolution
  (groups = C // G) whose weight (O, G, 1, 1) is minissc's (O, G). A stride s goes to the
  depthwise convolution: subsampling commutes with the 1x1 convolution, and the depthwise
  convolution then computes only the pixels that are kept (about 2x faster for PyTorch than
  striding the 1x1 convolution on the strided layers of sscresnet20);
- the SSC module's channel shuffle is an explicit view / transpose / reshape, as ShuffleNet.

Only torch and NumPy are imported here: a torch process of the benchmark does not load minissc.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STAGE_WIDTHS = (16, 32, 64)


def one_hot_shift_kernel(channels: int, kernel_size: int = 3, group_size: int | None = None,
                         dtype=torch.float32) -> torch.Tensor:
    """The (C, 1, k, k) depthwise kernel of a shift: channel j has a one at position
    p = j mod G, row p // k, column p % k, so conv2d(x, kernel, padding=k // 2, groups=C)
    gives x[n, j, y + p // k - k // 2, x + p % k - k // 2] (0 outside the image)."""
    group_size = kernel_size * kernel_size if group_size is None else group_size
    position = torch.arange(channels) % group_size
    kernel = torch.zeros(channels, 1, kernel_size, kernel_size, dtype=dtype)
    kernel[torch.arange(channels), 0, position // kernel_size, position % kernel_size] = 1
    return kernel


def ssc_dense_kernel(weight: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """The dense (O, G, k, k) kernel of an SSC with weight (O, G): K[o, i] = W[o, i] times the
    one-hot of position i (as `minissc.reference.ssc_dense_kernel`)."""
    out_channels, group_size = weight.shape
    one_hot = one_hot_shift_kernel(group_size, kernel_size, group_size, weight.dtype)
    return weight[:, :, None, None] * one_hot.reshape(1, group_size, kernel_size, kernel_size)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: view C as (groups, C / groups), swap the two, flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Shift(nn.Module):
    """Channel j moves by the offset of kernel position j mod G: a one-hot depthwise conv."""

    def __init__(self, channels: int, kernel_size: int = 3, group_size: int | None = None,
                 stride: int = 1):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.register_buffer("kernel", one_hot_shift_kernel(channels, kernel_size, group_size),
                             persistent=False)

    def forward(self, x):
        return F.conv2d(x, self.kernel, stride=self.stride, padding=self.kernel_size // 2,
                        groups=x.shape[1])


class SSCConv2d(nn.Module):
    """(channel shuffle ->) one-hot depthwise conv (stride s) -> grouped 1x1 conv.

    ``weight`` has shape (O, G, 1, 1): minissc's SSC weight (O, G) with two unit axes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, group_size: int | None = None, shuffle_groups: int = 1):
        super().__init__()
        group_size = kernel_size * kernel_size if group_size is None else group_size
        self.groups = in_channels // group_size
        self.shuffle_groups = shuffle_groups
        self.shift = Shift(in_channels, kernel_size, group_size, stride)
        self.weight = nn.Parameter(torch.empty(out_channels, group_size, 1, 1))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x):
        if self.shuffle_groups > 1:
            x = channel_shuffle(x, self.shuffle_groups)
        return F.conv2d(self.shift(x), self.weight, groups=self.groups)


def projection_shortcut(in_channels: int, out_channels: int, stride: int):
    """1x1 conv (stride s) + BN when the shape changes, else None (the identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


def _shortcut(shortcut, x):
    return x if shortcut is None else shortcut(x)


class BasicBlock(nn.Module):
    """conv3x3 (stride s) -> BN -> ReLU -> conv3x3 -> BN -> + shortcut -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + _shortcut(self.shortcut, x))


class ShiftBlock(nn.Module):
    """Shift-Net CSC: 1x1 (-> e c_out) -> BN -> ReLU -> shift -> 1x1 (stride s) -> BN -> ReLU,
    then + shortcut (no ReLU after the add)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, e: int = 6):
        super().__init__()
        mid = e * out_channels
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shift = Shift(mid, 3)
        self.conv2 = nn.Conv2d(mid, out_channels, 1, stride=stride, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        out = self.shift(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        return out + _shortcut(self.shortcut, x)


class SSCBlock(nn.Module):
    """1x1 (-> m) -> BN -> ReLU -> SSC1 (m -> m) -> BN -> ReLU -> channel shuffle (m / 9)
    -> SSC2 (m -> c_out, stride s) -> BN -> + shortcut -> ReLU, with m = 9 c_out / r."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, r: int = 1):
        super().__init__()
        mid = 9 * out_channels // r
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.ssc1 = SSCConv2d(mid, mid, 3, group_size=9)
        self.bn2 = nn.BatchNorm2d(mid)
        self.ssc2 = SSCConv2d(mid, out_channels, 3, stride=stride, group_size=9,
                              shuffle_groups=mid // 9)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.ssc1(out)))
        out = self.bn3(self.ssc2(out))
        return F.relu(out + _shortcut(self.shortcut, x))


class CifarResNet(nn.Module):
    """He et al. 2016 CIFAR backbone: stem, three stages of n blocks, pool, linear."""

    def __init__(self, block, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        in_channels = STAGE_WIDTHS[0]
        stages = []
        for index, width in enumerate(STAGE_WIDTHS):
            first_stride = 1 if index == 0 else 2
            blocks = [block(in_channels, width, first_stride)]
            blocks += [block(width, width, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def create(name: str, num_classes: int = 10, **options) -> CifarResNet:
    """The twin of ``minissc.models.create(name, num_classes, **options)`` (depth 6n + 2)."""
    for prefix, block, option in (("sscresnet", SSCBlock, "r"), ("shiftresnet", ShiftBlock, "e"),
                                  ("resnet", BasicBlock, None)):
        if name.startswith(prefix):
            depth = int(name[len(prefix):])
            if option is not None:
                default = {"r": 1, "e": 6}[option]
                block = functools.partial(block, **{option: options.pop(option, default)})
            if options:
                raise TypeError(f"{name} does not take {sorted(options)}")
            return CifarResNet(block, (depth - 2) // 6, num_classes)
    raise ValueError(f"no torch twin for {name!r}")


def load_minissc_weights(torch_model: nn.Module, minissc_model) -> None:
    """Copy every parameter and buffer of `minissc_model` into its twin, by name."""
    load_minissc_state(torch_model, minissc_model.state_dict())


def load_minissc_state(torch_model: nn.Module, state: dict) -> None:
    """Copy a minissc ``state_dict()`` (name -> NumPy array) into the twin, by name.

    Shapes must agree after one reshape: an SSC weight (O, G) becomes (O, G, 1, 1). Raises
    KeyError when a name of either side has no partner (BN's ``num_batches_tracked`` and the
    one-hot shift kernels are torch-only and fixed, so they are left out), ValueError when a
    shape does not fit.
    """
    targets = dict(torch_model.named_parameters())
    targets.update((name, b) for name, b in torch_model.named_buffers()
                   if not name.endswith("num_batches_tracked") and not name.endswith(".kernel"))
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise KeyError(f"the models do not match: torch-only {missing[:5]}, "
                       f"minissc-only {unexpected[:5]}")
    for name, target in targets.items():
        shape = tuple(np.shape(state[name]))
        if int(np.prod(shape)) != target.numel() or len(shape) > target.dim():
            raise ValueError(f"{name}: minissc shape {shape} does not fit torch shape "
                             f"{tuple(target.shape)}")
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(torch.as_tensor(np.array(state[name])).reshape(target.shape))


def gradients_in_minissc_layout(torch_model: nn.Module, minissc_model) -> dict:
    """The .grad of every twin parameter as a NumPy array shaped like minissc's parameter."""
    shapes = {name: p.shape for name, p in minissc_model.named_parameters()}
    return {name: p.grad.detach().numpy().reshape(shapes[name])
            for name, p in torch_model.named_parameters() if p.grad is not None}


def minissc_model_to_float64(minissc_model) -> None:
    """Turn a minissc model's parameters and buffers into float64, in place (for checks that
    must tell a wrong formula from float32 rounding)."""
    for _, parameter in minissc_model.named_parameters():
        parameter.data = parameter.data.astype(np.float64)
    for _, module in minissc_model.named_modules():
        for name in module.buffer_names:
            setattr(module, name, getattr(module, name).astype(np.float64))
