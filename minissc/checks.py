"""Argument checks shared by the ops and the layers: each error names the argument and value."""
from __future__ import annotations

import numbers

import numpy as np

from minissc.tensor import Tensor, as_float_array


def as_tensor(value, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if not isinstance(value, (np.ndarray, numbers.Number, list, tuple)):
        raise TypeError(f"{name} must be a Tensor or a NumPy array, got {type(value).__name__}")
    return Tensor(as_float_array(value, name=name))


def check_ndim(tensor: Tensor, ndim: int, name: str, layout: str) -> None:
    if tensor.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions ({layout}), "
                         f"got shape {tuple(tensor.shape)}")


def check_same_dtype(**tensors: Tensor | None) -> None:
    present = {name: t for name, t in tensors.items() if t is not None}
    dtypes = {t.dtype for t in present.values()}
    if len(dtypes) > 1:
        listing = ", ".join(f"{name} is {t.dtype}" for name, t in present.items())
        raise TypeError(f"inputs must share one dtype: {listing}")


def check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_kernel_size(kernel_size) -> int:
    kernel_size = check_int(kernel_size, "kernel_size", 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (the kernel needs a centre), got {kernel_size}")
    return kernel_size


def check_group_size(group_size, kernel_size: int) -> int:
    group_size = check_int(group_size, "group_size", 1)
    if group_size > kernel_size * kernel_size:
        raise ValueError(f"group_size must be <= kernel_size**2 = {kernel_size * kernel_size} "
                         f"(each channel of a group needs its own kernel position), "
                         f"got {group_size}")
    return group_size


def check_grouped_weight(x: Tensor, weight: Tensor) -> None:
    """Shared by the SSC and group point-wise ops: weight (O, G), groups = C // G."""
    check_ndim(weight, 2, "weight", "out_channels x group_size")
    channels = x.shape[1]
    if channels < 1:
        raise ValueError(f"x must have at least one channel, got shape {tuple(x.shape)}")
    out_channels, group_size = weight.shape
    if group_size < 1 or channels % group_size:
        raise ValueError(f"input channels ({channels}) must be divisible by the group size, "
                         f"weight.shape[1] = {group_size}")
    groups = channels // group_size
    if out_channels < 1 or out_channels % groups:
        raise ValueError(f"out_channels, weight.shape[0] = {out_channels}, must be a positive "
                         f"multiple of the number of groups ({channels} // {group_size} = {groups})")
