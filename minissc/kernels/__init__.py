"""Compute kernels on plain NumPy arrays: no Tensor, no autograd, no argument checking.

Each fast kernel (Numba) has a plain NumPy twin named ``<name>_reference`` that reads like
the maths in its docstring; the tests hold the two equal. ``minissc.functional`` is the only
module that calls these from the autograd graph.

The helpers below are shared by `ssc` and `dense`. Numba inlines them into the kernels that
call them, and its on-disk cache checks only the caller's own file: after editing a helper
here, delete the cache (`find minissc -name '*.nb[ci]' -delete`) or the old helper is kept.

A helper that a kernel calls once per plane or per group, and that LLVM would leave as a
call, is marked ``inline="always"`` (Numba inlines it before LLVM sees the kernel): a call
passes each array as half a dozen separate arguments (forty to sixty stack pushes a call for
the SSC backward's helpers), a fixed cost that weighs most on 8x8 planes of 64 values. Inlining
`copy_shifted_plane`, `zero_wrapped_columns` and the per-plane helpers of `ssc` and `norm`
took the SSC backward kernels 0.63-0.97x the time with an input norm and 0.85-1.00x without,
the group forward 0.82-0.98x with and 0.89-0.98x without, on sscresnet20's layer shapes
(`benchmarks/ssc_versions_ab.py --against 62266f5 [--norm] --rounds 21`, median ratios).
The two plane sums that must agree to the bit across kernels (`norm._plane_moments`,
`norm._plane_grad_sums`) are left to LLVM; `tests/` compare those kernels bit for bit.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def planes(array):
    """View an (N, C, H, W) array as (N, C, H * W): one flat row per (n, c) plane."""
    return array.reshape(array.shape[0], array.shape[1], array.shape[2] * array.shape[3])


def plane_columns(width, height):
    """col of every flat position k = row * width + col of a plane, as int32: the `columns`
    argument of `copy_shifted_plane` and of the kernels that select as it does."""
    return np.arange(height * width, dtype=np.int32) % np.int32(width)


@njit(cache=True)
def valid_range(offset, stride, in_size, out_size):
    """The output positions P < out_size whose input P * stride + offset lies in [0, in_size).

    Returns (first output position, its input position, count). Both positions are >= 0, and
    `max(0, .)` tells the compiler so: indices `first + step` then need no negative-index
    wrap-around, which lets LLVM vectorise the row loops.
    """
    first_out = max(0, (stride - 1 - offset) // stride)  # ceil(-offset / stride), at least 0
    stop_out = min(out_size, (in_size - 1 - offset) // stride + 1)
    first_in = max(0, first_out * stride + offset)
    return first_out, first_in, max(0, stop_out - first_out)


@njit(cache=True)
def flat_run(row_offset, col_offset, height, width):
    """For stride 1 on flat planes (k = row * width + col): the output positions k whose row
    reads inside the image and whose input k + row_offset * width + col_offset lies inside the
    plane, as (first k, first input, count). With an offset larger than the plane the run is
    empty (count 0) and first k may lie past the plane's end.

    Both starts are >= 0 and `max(0, .)` tells the compiler so (see `valid_range`). Positions
    in the run whose column wraps (col + col_offset outside [0, width)) must still be dropped
    by the caller (`zero_wrapped_columns`, or a select).
    """
    offset = row_offset * width + col_offset
    first_out = max(max(0, -row_offset) * width, -offset)
    stop_out = min(min(height, height - row_offset) * width, height * width - offset)
    return max(0, first_out), max(0, first_out + offset), max(0, stop_out - first_out)


@njit(cache=True, inline="always")
def zero_wrapped_columns(plane, col_offset, width):
    """Zero the entries k of a flat plane whose column col(k) + col_offset lies outside
    [0, width): the values a flat shift by col_offset carried across a row edge."""
    count = min(abs(col_offset), width)
    first = width - count if col_offset > 0 else 0
    for row_start in range(first, plane.size, width):
        for step in range(count):
            plane[row_start + step] = 0


@njit(cache=True, inline="always")
def copy_shifted_plane(plane, row_offset, col_offset, width, columns, out):
    """out[row, col] = plane[row + row_offset, col + col_offset], 0 outside the image, for
    flat planes of one size: zeros before and after the run of `flat_run`, and the run copied
    in one pass whose select drops the columns that wrap across a row edge (columns[k] is the
    column of k, `plane_columns`). The select replaced a zeroing pass row by row after the
    copy (`zero_wrapped_columns`), a loop over rows of 8 or 16 values: the SSC group forward,
    which shifts every input plane this way, took 0.92x the time at 576->576 8x8, 0.96x at
    288->288 16x16 and 0.98x at 144->144 32x32 (`benchmarks/ssc_versions_ab.py --against
    f08a68d --rounds 21`, 2 threads, batch 128).
    """
    first_out, first_in, count = flat_run(row_offset, col_offset, plane.size // width, width)
    zero = out.dtype.type(0)
    for k in range(min(first_out, out.size)):  # first_out passes the end if the run is empty
        out[k] = zero
    if col_offset == 0:
        for step in range(count):
            out[first_out + step] = plane[first_in + step]
    else:
        for step in range(count):
            col = columns[first_out + step] + col_offset
            out[first_out + step] = plane[first_in + step] if (col >= 0) & (col < width) else zero
    for k in range(first_out + count, out.size):
        out[k] = zero


@intrinsic
def multiply_add(typingctx, a, b, c):
    """a * b + c, rounded once where the CPU has a fused multiply-add instruction, else
    rounded twice (LLVM's `llvm.fmuladd`): for one float type, in a Numba kernel only.

    The group kernels of `ssc` write their nine-term sums with it. Compiling a whole kernel
    with fastmath "contract" fuses the same products, but also those of the helpers Numba
    inlines into it, some of which must round as another kernel rounds them (see
    `ssc._fill_next_layer_input_grad`); this fuses only where it is written. LLVM vectorises
    the call like an operator. On one machine the rounding is fixed, so results stay
    deterministic; the NumPy twins round twice and the tests compare within a tolerance.
    """
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        value_type = context.get_value_type(signature.return_type)
        function = builder.module.declare_intrinsic(
            "llvm.fmuladd", [value_type], ir.FunctionType(value_type, [value_type] * 3))
        return builder.call(function, args)

    return a(a, b, c), codegen
