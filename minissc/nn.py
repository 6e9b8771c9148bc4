"""Layers: `Module`s that hold parameters and compose the ops of `minissc.functional`.

A `Module` finds its parameters, buffers (non-trained state such as batch-norm running
statistics) and sub-modules by looking at its attributes, in the order they were set, so
names read like PyTorch's (``layer1.0.conv1.weight``). Weights are drawn from a generator
that ``manual_seed`` resets: the same seed builds the same network.
"""
from __future__ import annotations

import math

import numpy as np

from minissc import functional as F
from minissc.checks import check_group_size, check_int, check_kernel_size
from minissc.reference import ssc_dense_kernel
from minissc.tensor import Tensor, is_grad_enabled

_init_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reset the generator that initialises weights (like torch.manual_seed)."""
    global _init_rng
    _init_rng = np.random.default_rng(seed)


def _kaiming_normal(shape, fan_in: int) -> np.ndarray:
    """He et al. 2015 initialisation for ReLU networks: N(0, 2 / fan_in)."""
    return (_init_rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def _uniform(shape, bound: float) -> np.ndarray:
    return _init_rng.uniform(-bound, bound, shape).astype(np.float32)


class Parameter(Tensor):
    """A tensor that a `Module` trains: requires_grad is on by default."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)


class Module:
    """Base class of layers and models: subclasses set attributes and define `forward`."""

    training = True
    buffer_names: tuple[str, ...] = ()  # attributes holding float arrays saved in state_dict

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def children(self):
        """(name, module) pairs of the direct sub-modules, in the order they were set."""
        return [(name, value) for name, value in vars(self).items() if isinstance(value, Module)]

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for this module and every module below it, depth first."""
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            yield name, module
            children = [(f"{name}.{child}" if name else child, m) for child, m in module.children()]
            stack.extend(reversed(children))

    def named_parameters(self):
        for module_name, module in self.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, Parameter):
                    yield (f"{module_name}.{name}" if module_name else name), value

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for module_name, module in self.named_modules():
            for name in module.buffer_names:
                yield (f"{module_name}.{name}" if module_name else name), getattr(module, name)

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    def train(self, mode: bool = True) -> Module:
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer array, by dotted name."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update((name, np.array(b, copy=True)) for name, b in self.named_buffers())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into this module's parameters and buffers (in place, keeping dtypes).

        Every name must match and every shape must agree; otherwise nothing is changed and
        a `KeyError`/`ValueError` lists what does not fit.
        """
        targets = {name: p.data for name, p in self.named_parameters()}
        targets.update(self.named_buffers())
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise KeyError(f"state_dict does not fit {type(self).__name__}: missing "
                           f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                           f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for name, target in targets.items():
            source = np.asarray(state[name])
            if source.shape != target.shape:
                raise ValueError(f"state_dict[{name!r}] has shape {source.shape}, "
                                 f"the module expects {target.shape}")
        for name, target in targets.items():
            target[...] = state[name]

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = self.children()
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied one after another; sub-modules are named 0, 1, 2, ..."""

    def __init__(self, *modules: Module):
        for index, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(f"Sequential takes Modules, argument {index} is "
                                f"{type(module).__name__}")
            setattr(self, str(index), module)

    def __iter__(self):
        return iter(m for _, m in self.children())

    def __len__(self):
        return len(self.children())

    def __getitem__(self, index: int) -> Module:
        return list(self)[index]

    def forward(self, x):
        for module in self:
            x = module(x)
        return x


def ssc_pair(x, bn1: BatchNormReLU2d, ssc1: SSCConv2d, bn2: BatchNormReLU2d,
             ssc2: SSCConv2d, conv: Conv2d | None = None) -> Tensor:
    """``ssc2(ssc1(x, input_norm=bn1), input_norm=bn2)``, the two SSC layers of an SSC module,
    or with ``conv``, ``ssc2(ssc1(conv(x), input_norm=bn1), input_norm=bn2)``.

    When a backward will follow (gradients enabled) and the layers fit one op (ssc1 with
    stride 1 and no shuffle, no biases, one kernel size, bn1 and bn2 in the same mode; conv,
    if given, 1x1 with stride 1, no padding, no groups and no bias), it is
    `F.batch_norm_relu_ssc_pair`, whose backward also folds bn2's grad_x pass into ssc1's
    kernel and bn1's into conv's backward; otherwise the separate calls. The values,
    gradients and running statistics are the same either way (tested to the bit); only the
    backward differs in speed.
    """
    fits = (isinstance(bn1, BatchNormReLU2d) and isinstance(bn2, BatchNormReLU2d)
            and bn1.training == bn2.training and ssc1.stride == 1 and ssc1.shuffle_groups == 1
            and ssc1.bias is None and ssc2.bias is None
            and ssc1.kernel_size == ssc2.kernel_size)
    conv_fits = conv is None or (isinstance(conv, Conv2d) and conv.weight.shape[2:] == (1, 1)
                                 and conv.stride == 1 and conv.padding == 0 and conv.groups == 1
                                 and conv.bias is None)
    if not (fits and conv_fits and is_grad_enabled()):
        x = x if conv is None else conv(x)
        return ssc2(ssc1(x, input_norm=bn1), input_norm=bn2)
    norm1, norm2 = ((bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps)
                    for bn in (bn1, bn2))
    return F.batch_norm_relu_ssc_pair(x, norm1, ssc1.weight, norm2, ssc2.weight,
                                      ssc1.kernel_size, ssc2.stride,
                                      shuffle_groups=ssc2.shuffle_groups, training=bn1.training,
                                      conv_weight=None if conv is None else conv.weight)


def _add_channel_bias(out: Tensor, bias: Parameter | None) -> Tensor:
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


class Conv2d(Module):
    """Dense 2-D convolution (the stem's 3x3 and the shortcuts' 1x1), He-initialised."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True):
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("kernel_size", kernel_size), ("groups", groups)):
            check_int(value, name, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        self.stride = check_int(stride, "stride", 1)
        self.padding = check_int(padding, "padding", 0)
        self.groups = groups
        fan_in = in_channels // groups * kernel_size * kernel_size
        self.weight = Parameter(_kaiming_normal(
            (out_channels, in_channels // groups, kernel_size, kernel_size), fan_in))
        self.bias = Parameter(_uniform(out_channels, 1 / math.sqrt(fan_in))) if bias else None

    def forward(self, x):
        _check_input_channels("Conv2d", x, self.weight.shape[1] * self.groups)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)

    def extra_repr(self):
        out_channels, in_per_group, k, _ = self.weight.shape
        return (f"{in_per_group * self.groups}, {out_channels}, kernel_size={k}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"bias={self.bias is not None}")


def _check_input_channels(layer, x, channels):
    """A layer built for `channels` input channels must not run on others: the functional
    ops would accept a multiple of the group size, as more groups (and another layer)."""
    shape = getattr(x, "shape", ())
    if len(shape) == 4 and shape[1] != channels:  # e.g. channels-last images (N, H, W, C)
        raise ValueError(f"{layer} expects input (N, C, H, W) with C = {channels} channels, "
                         f"got shape {tuple(shape)}")


def _check_ssc_channels(in_channels, out_channels, kernel_size, group_size):
    """Validate an SSC layer's configuration (spec section 2); returns group_size."""
    check_int(in_channels, "in_channels", 1)
    check_int(out_channels, "out_channels", 1)
    kernel_size = check_kernel_size(kernel_size)
    group_size = kernel_size * kernel_size if group_size is None else group_size
    group_size = check_group_size(group_size, kernel_size)
    if in_channels % group_size:
        raise ValueError(f"in_channels ({in_channels}) must be divisible by group_size "
                         f"({group_size})")
    groups = in_channels // group_size
    if out_channels % groups:
        raise ValueError(f"out_channels ({out_channels}) must be divisible by the number of "
                         f"groups, in_channels // group_size = {groups}")
    return group_size


class SSCConv2d(Module):
    """Super sparse convolution layer: a shift fused with a group point-wise convolution.

    Channel j of each group of `group_size` consecutive input channels reads kernel position
    j mod group_size of the kernel_size x kernel_size grid; ``weight`` has shape
    (out_channels, group_size); ``dense_weight()`` is the equivalent dense sparse kernel.
    ``shuffle_groups=g`` makes the layer read ``channel_shuffle(x, g)``, fused (no copy).
    ``layer(x, input_norm=bn)``, bn a `BatchNormReLU2d`, computes ``layer(bn(x))`` with the
    batch norm + ReLU applied as the layer reads x (``F.batch_norm_relu_ssc_conv2d``), so
    bn's output is never stored; bn keeps its parameters and running statistics.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, group_size: int | None = None, bias: bool = False,
                 shuffle_groups: int = 1):
        self.group_size = _check_ssc_channels(in_channels, out_channels, kernel_size, group_size)
        self.in_channels, self.kernel_size = in_channels, kernel_size
        self.stride = check_int(stride, "stride", 1)
        self.shuffle_groups = check_int(shuffle_groups, "shuffle_groups", 1)
        if in_channels % shuffle_groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by shuffle_groups "
                             f"({shuffle_groups})")
        self.weight = Parameter(_kaiming_normal((out_channels, self.group_size), self.group_size))
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None

    def forward(self, x, input_norm: BatchNormReLU2d | None = None):
        _check_input_channels("SSCConv2d", x, self.in_channels)
        if input_norm is None:
            out = F.ssc_conv2d(x, self.weight, self.kernel_size, self.stride,
                               shuffle_groups=self.shuffle_groups)
        elif isinstance(input_norm, BatchNormReLU2d):
            bn = input_norm
            out = F.batch_norm_relu_ssc_conv2d(
                x, bn.weight, bn.bias, bn.running_mean, bn.running_var, self.weight,
                self.kernel_size, self.stride, shuffle_groups=self.shuffle_groups,
                training=bn.training, momentum=bn.momentum, eps=bn.eps)
        else:
            raise TypeError(f"input_norm must be a BatchNormReLU2d or None, got "
                            f"{type(input_norm).__name__}")
        return _add_channel_bias(out, self.bias)

    def dense_weight(self) -> np.ndarray:
        """The dense (O, G, k, k) kernel with the same output (spec: the oracle)."""
        return ssc_dense_kernel(self.weight.data, self.kernel_size)

    def extra_repr(self):
        out_channels, group_size = self.weight.shape
        return (f"{self.in_channels}, {out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, group_size={group_size}, bias={self.bias is not None}"
                + (f", shuffle_groups={self.shuffle_groups}" if self.shuffle_groups > 1 else ""))


class Shift(Module):
    """Channel j moves by the offset of kernel position j mod group_size (no parameters)."""

    def __init__(self, kernel_size: int = 3, group_size: int | None = None):
        self.kernel_size = check_kernel_size(kernel_size)
        group_size = kernel_size * kernel_size if group_size is None else group_size
        self.group_size = check_group_size(group_size, kernel_size)

    def forward(self, x):
        return F.shift(x, self.kernel_size, self.group_size)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, group_size={self.group_size}"


class GroupPointwiseConv2d(Module):
    """Grouped 1x1 convolution: `groups` groups of in_channels // groups channels each."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, stride: int = 1,
                 bias: bool = False):
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("groups", groups)):
            check_int(value, name, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        self.stride = check_int(stride, "stride", 1)
        self.in_channels, group_size = in_channels, in_channels // groups
        self.weight = Parameter(_kaiming_normal((out_channels, group_size), group_size))
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None

    def forward(self, x):
        _check_input_channels("GroupPointwiseConv2d", x, self.in_channels)
        return _add_channel_bias(F.group_pointwise_conv2d(x, self.weight, self.stride), self.bias)

    def extra_repr(self):
        out_channels, group_size = self.weight.shape
        return (f"{self.in_channels}, {out_channels}, group_size={group_size}, "
                f"stride={self.stride}, "
                f"bias={self.bias is not None}")


class BatchNorm2d(Module):
    """Batch norm with affine weight/bias and running statistics (buffers in state_dict)."""

    buffer_names = ("running_mean", "running_var")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        check_int(num_features, "num_features", 1)
        self.eps, self.momentum = eps, momentum
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.running_mean = np.zeros(num_features, np.float32)
        self.running_var = np.ones(num_features, np.float32)

    def forward(self, x):
        return F.batch_norm2d(x, self.weight, self.bias, self.running_mean, self.running_var,
                              self.training, self.momentum, self.eps)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}, momentum={self.momentum}"


class BatchNormReLU2d(BatchNorm2d):
    """BatchNorm2d followed by ReLU, fused: one pass over memory instead of two, and one
    activation fewer kept for backward. Its state_dict is BatchNorm2d's."""

    def forward(self, x):
        return F.batch_norm_relu2d(x, self.weight, self.bias, self.running_mean,
                                   self.running_var, self.training, self.momentum, self.eps)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class ChannelShuffle(Module):
    """ShuffleNet channel shuffle with `groups` groups."""

    def __init__(self, groups: int):
        self.groups = check_int(groups, "groups", 1)

    def forward(self, x):
        return F.channel_shuffle(x, self.groups)

    def extra_repr(self):
        return f"groups={self.groups}"


class GlobalAvgPool2d(Module):
    def forward(self, x):
        return F.global_avg_pool2d(x)


class Linear(Module):
    """y = x W^T + b, initialised as PyTorch's: U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        check_int(in_features, "in_features", 1)
        check_int(out_features, "out_features", 1)
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound))
        self.bias = Parameter(_uniform(out_features, bound)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, bias={self.bias is not None}"
