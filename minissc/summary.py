"""Layer-by-layer summary of a model: output shapes, parameters and multiply-accumulates.

``summarize`` runs one forward pass on zeros and records, for every leaf module (one with no
sub-modules) that the pass calls, its output shape; parameters and MACs follow from the
module's weights and that shape. ``format_summary`` prints the rows as a table, which is what
``minissc summary MODEL`` shows; ``summary_text("resnet20")`` does both for a zoo model.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from minissc import models
from minissc.nn import Conv2d, GroupPointwiseConv2d, Linear, Module, Parameter, SSCConv2d
from minissc.tensor import Tensor, no_grad

_MISSING = object()  # marks an instance attribute that was not set


@dataclass(frozen=True)
class LayerRow:
    """One call of a leaf module in the forward pass."""

    name: str  # dotted module name, e.g. "layer2.0.ssc2"
    type: str  # class name, e.g. "SSCConv2d"
    output_shape: tuple[int, ...]  # with the batch axis
    parameters: int  # the module's own parameters (counted at its first call only)
    macs: int  # multiply-accumulates per image


def layer_macs(module: Module, output_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates per image of one call of `module` giving `output_shape`.

    dense Conv2d:                         O * (C / groups) * kh * kw * Ho * Wo
    SSCConv2d and GroupPointwiseConv2d:   O * G * Ho * Wo  (the shift costs nothing)
    Linear:                               in_features * out_features
    BatchNorm2d, ReLU, pooling, channel shuffle, Shift and the residual add: 0 (they have no
    multiply-accumulate, or one per element at most, which is conventionally not counted).
    Bias additions are not counted either.
    """
    pixels = math.prod(output_shape[2:])
    if isinstance(module, Conv2d):
        out_channels, in_per_group, kh, kw = module.weight.shape
        return out_channels * in_per_group * kh * kw * pixels
    if isinstance(module, (SSCConv2d, GroupPointwiseConv2d)):
        out_channels, group_size = module.weight.shape
        return out_channels * group_size * pixels
    if isinstance(module, Linear):
        out_features, in_features = module.weight.shape
        return in_features * out_features
    return 0


def _own_parameters(module: Module) -> int:
    return sum(value.size for value in vars(module).values() if isinstance(value, Parameter))


def summarize(model: Module, input_shape=(1, 3, 32, 32)) -> list[LayerRow]:
    """Run `model` once on zeros of `input_shape` and return one `LayerRow` per leaf call.

    The pass runs in eval mode under ``no_grad()`` (so batch-norm statistics do not move);
    each leaf's ``forward`` is wrapped for the pass to see its output. Afterwards the model is
    as it was: the wrappers are removed and every module's training flag is restored.
    """
    input_shape = tuple(input_shape)
    if len(input_shape) != 4 or not all(
            isinstance(size, numbers.Integral) and size >= 1 for size in input_shape):
        raise ValueError(f"input_shape must be 4 positive ints (N, C, H, W), got {input_shape}")
    parameters = model.parameters()
    dtype = parameters[0].dtype if parameters else np.float32
    modules = [(name or type(m).__name__, m) for name, m in model.named_modules()]
    leaves = [(name, m) for name, m in modules if not m.children()]
    rows: list[LayerRow] = []
    seen: set[int] = set()

    names = {id(module): name for name, module in leaves}

    def record(name, module, shape):
        params = 0 if id(module) in seen else _own_parameters(module)
        seen.add(id(module))
        rows.append(LayerRow(name, type(module).__name__, shape, params,
                             layer_macs(module, shape)))

    def recording(name, module, forward):
        def forward_and_record(*args, **kwargs):
            norm = kwargs.get("input_norm")
            if norm is not None:  # an SSC layer applying a batch norm to its input: its row
                record(names[id(norm)], norm, tuple(args[0].shape))  # comes first
            out = forward(*args, **kwargs)
            record(name, module, tuple(out.shape))
            return out
        return forward_and_record

    saved = [(m, "training", vars(m).get("training", _MISSING)) for _, m in modules]
    saved += [(m, "forward", vars(m).get("forward", _MISSING)) for _, m in leaves]
    try:
        model.eval()
        for name, module in leaves:
            module.forward = recording(name, module, module.forward)
        with no_grad():
            model(Tensor(np.zeros(input_shape, dtype)))
    finally:
        for module, attribute, value in saved:
            if value is _MISSING:
                vars(module).pop(attribute, None)
            else:
                setattr(module, attribute, value)
    return rows


def format_summary(rows: list[LayerRow]) -> str:
    """The rows as an aligned text table, followed by the totals."""
    header = ("Layer", "Type", "Output shape", "Params", "MACs")
    table = [(r.name, r.type, "x".join(map(str, r.output_shape)), f"{r.parameters:,}",
              f"{r.macs:,}") for r in rows]
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]

    def line(cells):
        left = [cell.ljust(width) for cell, width in zip(cells[:3], widths)]
        right = [cell.rjust(width) for cell, width in zip(cells[3:], widths[3:])]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(line(header))
    total_params = sum(r.parameters for r in rows)
    total_macs = sum(r.macs for r in rows)
    return "\n".join([line(header), rule, *map(line, table), rule,
                      f"Total parameters: {total_params:,}",
                      f"Total MACs per image: {total_macs:,} ({total_macs / 1e6:.2f} M)"])


def summary_text(name: str, num_classes: int = 10, **kwargs) -> str:
    """The summary table of zoo model `name` (see `models.create`) on one 3x32x32 image."""
    model = models.create(name, num_classes=num_classes, **kwargs)
    options = "".join(f", {key}={value}" for key, value in kwargs.items())
    title = f"{name} (num_classes={num_classes}{options}), input 1x3x32x32"
    return title + "\n" + format_summary(summarize(model))
