"""Kernels of the super sparse convolution (SSC): shift, group point-wise conv, and both fused.

All functions take and return plain NumPy arrays in NCHW layout (float32 or float64, the
output has the input's dtype); the caller has already checked shapes and arguments.

An SSC layer with kernel size k, group size G and stride s reads its C input channels in
g = C / G groups of G. Channel j looks at one position p = j % G of the k x k grid, i.e. at the
offset (dy_j, dx_j) = (p // k - k//2, p % k - k//2) (see `shift_offsets`), and

    shift(x)[n, j, y, x] = x[n, j, y + dy_j, x + dx_j]                 (0 outside the image)
    y[n, o, Y, X] = sum_{i<G} W[o, i] * shift(x)[n, g(o)*G + i, Y*s, X*s],  g(o) = o // (O / g)

`shift_*` and `group_pointwise_*` compute the two steps on their own; `ssc_*` fold the shift
into the point-wise loop and never store a shifted copy of x (the group forward keeps one
group's shifted planes in a scratch block, in cache). `ssc_*` can also apply a batch norm +
ReLU to x as they read it (``input_norm``, see `_normalised_value`), so that the activation
relu(batch_norm(x)) in front of an SSC layer is never stored either, and `ssc_backward` can
take, for its upstream gradient, the next SSC layer's upstream and weight
(`NextLayerInputGrad`), so that the gradient between two SSC layers is never stored. A group
point-wise convolution is an SSC whose offsets are all zero, so both use the same inner
kernels.

Every public function allocates its outputs and calls an `@njit` inner kernel (prefix `_`) that
runs `prange` over independent output slices only. The weight gradient is summed plane by plane
(one sample, output and input) in the input's dtype, in vector lanes whose order is fixed when
the kernel is compiled; the backward kernels add these plane sums in float64 into one partial
per chunk of consecutive samples, in sample order, and the chunks' partials are added in chunk
order. The chunks depend on the batch size only (`WEIGHT_GRAD_CHUNKS`), not on the number of
threads, so results are deterministic.
Each compute function has a plain NumPy twin `<name>_reference` that reads like the equations.
"""
import functools

import numpy as np
from numba import njit, prange

from minissc.kernels import (copy_shifted_plane, flat_run, multiply_add, plane_columns, planes,
                             valid_range)
from minissc.kernels import norm
from minissc.kernels.norm import (_input_grad, _normalised, _plane_grad_sums, _plane_moments,
                                  channel_rule)


def shift_offsets(channels, kernel_size, group_size):
    """Offsets (dy, dx), int64 arrays of length `channels`, of the kernel position of each channel.

    Channel j uses position p = j % group_size of the k x k grid in row-major order:
    dy = p // k - k // 2 and dx = p % k - k // 2.
    """
    position = np.arange(channels, dtype=np.int64) % group_size
    return position // kernel_size - kernel_size // 2, position % kernel_size - kernel_size // 2


def output_size(size, stride):
    """Output size of an SSC layer (odd kernel, padding k // 2): (size - 1) // stride + 1."""
    return (size - 1) // stride + 1


# ----------------------------------------------------------------------------------------------
# Shift
# ----------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _shift_kernel(x, row_offsets, col_offsets, width, columns, out):
    """out[n, c, y, x] = x[n, c, y + row_offsets[c], x + col_offsets[c]] inside the image, else 0;
    planes flat (N, C, H * W), each one flat copy (`copy_shifted_plane`)."""
    batch, channels = x.shape[:2]
    for plane in prange(batch * channels):
        n = plane // channels
        c = plane % channels
        copy_shifted_plane(x[n, c], row_offsets[c], col_offsets[c], width, columns, out[n, c])


def shift_forward(x, kernel_size, group_size):
    """Shift every channel j of x by its offset: out[n, j, y, x] = x[n, j, y + dy_j, x + dx_j]."""
    dy, dx = shift_offsets(x.shape[1], kernel_size, group_size)
    out = np.empty(x.shape, x.dtype)
    _shift_kernel(planes(x), dy, dx, x.shape[3], plane_columns(x.shape[3], x.shape[2]), planes(out))
    return out


def shift_backward(grad_out, kernel_size, group_size):
    """Gradient of `shift_forward`: the inverse shift, filling with zeros.

    out[n, j, y, x] = x[n, j, y + dy_j, x + dx_j] copies x[n, j, y', x'] to
    out[n, j, y' - dy_j, x' - dx_j] when that lies inside the image, so
        grad_x[n, j, y, x] = grad_out[n, j, y - dy_j, x - dx_j]    (0 outside the image),
    a shift by the negated offsets.
    """
    dy, dx = shift_offsets(grad_out.shape[1], kernel_size, group_size)
    grad_x = np.empty(grad_out.shape, grad_out.dtype)
    _shift_kernel(planes(grad_out), -dy, -dx, grad_out.shape[3],
                  plane_columns(grad_out.shape[3], grad_out.shape[2]), planes(grad_x))
    return grad_x


# ----------------------------------------------------------------------------------------------
# Shifted group point-wise convolution: the inner kernels of both `group_pointwise_*` and `ssc_*`
# ----------------------------------------------------------------------------------------------

# Two layouts of the same loops. With stride 1 a shift by (dy, dx) is one constant offset
# dy * W + dx in a plane stored flat (k = row * W + col), so the inner loops run over a whole
# plane at once (long loops LLVM vectorises; rows of 8 or 16 values are too short), and a
# select drops the values that wrapped across a row edge. With stride s > 1 the input index is
# not a constant offset of the output index: the forward goes row by row, and the backward
# upsamples grad_y to the input's grid and runs the stride-1 loops (`_flat_backward_kernel`).
#
# Stride 1 has two kernel pairs for the same sums. The flat kernels read each input shifted,
# through a select, once per output that uses it (the forward all nine inputs of a 3x3 layer
# in one pass over the output). When a group has several outputs (the
# first SSC layer of an SSC module has 9 per group) the group kernels take nine of them per
# pass: the forward shifts the group's inputs once into a scratch block and then runs plain
# multiply-add loops, nine inputs per pass over an output; the backward reads each input
# through the select once for nine outputs (for the backward a shifted copy per input cost
# more than the pass itself on 8x8 planes). These numbers predate the nine-per-pass loops
# (see `_group_backward_kernel` for those): `benchmarks/ssc_kernel_ab.py`
# (batch 128, 2 threads) measured forward + backward on sscresnet20's first SSC layers, 9
# outputs per group: about 48 -> 41 ms at 144->144 32x32 and 16 -> 12 ms at 576->576 8x8. With
# one output per group (the second SSC layers) the copy cost more than it saved (a one-off
# timing: 13 -> 18 ms at 144->16 32x32). Two or three outputs per group were not measured;
# the threshold of 4 lies between what was.


@njit(cache=True)
def _channel_norm(input_norm, channel):
    """(normalise?, mean_c, scale_c, bias_c) of input channel `channel` for
    `_normalised_value`, from an input norm (mean, scale, bias) of shape (C,) each;
    normalise is False without an input norm (three empty arrays)."""
    mean, scale, bias = input_norm
    if mean.size == 0:
        zero = mean.dtype.type(0)
        return False, zero, zero, zero
    return True, mean[channel], scale[channel], bias[channel]


@njit(cache=True)
def _normalised_value(value, channel_norm, zero):
    """The value a kernel reads for one entry of x: the entry itself, or, with an input norm,

        relu((value - mean_c) * scale_c + bias_c),   scale = inv_std * weight,

    rounded exactly as `minissc.kernels.norm.batch_norm_relu_forward` rounds it (the same
    `_normalised`, the same `< 0` test), so a layer that normalises as it reads computes what
    it would compute on the stored activation. The kernels normalise each value as they read
    it, with no normalised copy of the plane (the group forward as it shifts a whole plane,
    `_copy_shifted_normalised_plane`). The zero padding of the shift lies around the
    normalised plane: an entry read from outside the image is 0, not normalised.
    """
    normalise, channel_mean, channel_scale, channel_bias = channel_norm
    if not normalise:
        return value
    value = _normalised(value, channel_mean, channel_scale, channel_bias)
    return zero if value < 0 else value


@njit(cache=True, inline="always")
def _copy_shifted_normalised_plane(plane, channel, input_norm, row_offset, col_offset, width,
                                   columns, out):
    """`copy_shifted_plane` of input channel `channel`'s plane normalised as a kernel reads it
    (`_normalised_value`), in one pass: the values before and after the run of `flat_run` and
    those whose column wraps are 0 (the padding lies around the normalised plane). One pass
    instead of a normalised copy that is then shifted: the group forward with an input norm
    took 0.59x the time at 576->576 8x8, 0.75x at 288->288 16x16 and 0.85x at 144->144 32x32
    (`benchmarks/ssc_versions_ab.py --against` the commit before, `--norm --rounds 15`)."""
    channel_norm = _channel_norm(input_norm, channel)
    first_out, first_in, count = flat_run(row_offset, col_offset, plane.size // width, width)
    zero = out.dtype.type(0)
    for k in range(min(first_out, out.size)):  # first_out passes the end if the run is empty
        out[k] = zero
    for step in range(count):
        col = columns[first_out + step] + col_offset
        value = _normalised_value(plane[first_in + step], channel_norm, zero)
        out[first_out + step] = value if (col >= 0) & (col < width) else zero
    for k in range(first_out + count, out.size):
        out[k] = zero


@njit(cache=True, inline="always")
def _input_norm_grad_sums(grad_plane, x_plane, channel, input_norm, sums):
    """sums[:] = (sum g, sum g * (x - mean_c)) over one plane, in float64, where g is
    grad_plane (the gradient with respect to a = relu(batch_norm(x))) masked by a > 0.

    These are the plane's shares of the batch norm's parameter gradients (see
    `minissc.kernels.norm.batch_norm_backward`): grad_bias = sum g and grad_weight =
    inv_std * sum g (x - mean) over all planes of the channel. A backward kernel computes them
    while the plane's gradient and x are in cache, so the batch norm's backward need not read
    both again; the loop is the batch norm's own (`norm._plane_grad_sums`).
    """
    mean, scale, bias = input_norm
    sums[0], sums[1] = _plane_grad_sums(grad_plane.ravel(), x_plane.ravel(), channel,
                                        mean[channel], scale[channel], bias)


def _no_input_norm(dtype):
    """The `input_norm` of a layer that reads x as it is: three empty arrays."""
    empty = np.empty(0, dtype)
    return empty, empty, empty


@njit(cache=True)
def _shift_margin(row_offsets, col_offsets, width):
    """The largest |dy_i W + dx_i|: with zero margins this wide on both sides of a flat plane,
    the plane read shifted by any of the offsets is a plain slice."""
    margin = 0
    for i in range(row_offsets.size):
        margin = max(margin, abs(row_offsets[i] * width + col_offsets[i]))
    return margin


def shift_masks(row_offsets, col_offsets, height, width, dtype, stride=1):
    """masks[i, k] = 1 where position k of a flat plane, moved by (row_offsets[i],
    col_offsets[i]), lies inside the image, row and column, and on the stride grid (row and
    column multiples of `stride`); else 0. In x's dtype, so that a kernel's select on it runs
    in the lanes of its values. The backward kernels read, for input j, the output j - off_i:
    their masks are those of the negated offsets, and with stride s > 1 the inputs whose
    j - off_i is off the grid of (sY, sX) feed no output."""
    rows = np.arange(height)[None, :, None] + row_offsets[:, None, None]
    cols = np.arange(width)[None, None, :] + col_offsets[:, None, None]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    on_grid = (rows % stride == 0) & (cols % stride == 0)
    return (inside & on_grid).reshape(len(row_offsets), height * width).astype(dtype)


def _shared_shift_masks(row_offsets, col_offsets, height, width, dtype, stride=1):
    """`shift_masks`, computed once for each set of arguments and then the same array for
    every call: the kernels only read their masks, and nothing may write to it. (It stays
    writeable: a read-only array has another Numba type, for which every kernel that takes
    masks would compile again.) A training step of sscresnet20 (r=1) asked for the same few
    sets 43 times, 3.6 ms a step on one core while the other waited (a scratch script timing
    each call in training steps)."""
    return _cached_shift_masks(tuple(row_offsets.tolist()), tuple(col_offsets.tolist()),
                               height, width, np.dtype(dtype), stride)


@functools.lru_cache(maxsize=64)
def _cached_shift_masks(row_offsets, col_offsets, height, width, dtype, stride):
    return shift_masks(np.array(row_offsets, np.int64), np.array(col_offsets, np.int64),
                       height, width, dtype, stride)


@njit(cache=True, inline="always")
def _masked_value(value, channel_norm, mask, zero):
    """value as a kernel reads it (`_normalised_value`) where mask is 1, else 0."""
    value = _normalised_value(value, channel_norm, zero)
    return value if mask != zero else zero


@njit(cache=True, parallel=True)
def _flat_forward_kernel(x, weight, row_offsets, col_offsets, input_channels, input_norm, width,
                         columns, masks, y):
    """Stride 1, planes flat (N, C, H * W): y[n, o, k] = sum_i W[o, i] * x[n, c, k + dy_i W + dx_i]
    over the terms inside the image, c = input_channels[g(o)*G + i] (x normalised as read,
    with an input norm). One parallel iteration per output plane y[n, o].

    With nine inputs (3x3 kernels) one pass over the plane adds all nine: it reads each
    input from the sample's flat planes at its offset, as the group forward copies it
    (`_copy_masked_plane`), and the masks (`shift_masks` of the offsets) drop what lies
    outside the image; y[n, o] is stored once. A plane whose input would be read from before
    the sample's first value or past its last, and other group sizes, take the general loop:
    y[n, o] zeroed (in cache, instead of a separate np.zeros), then each input added over its
    run (`flat_run`), the columns that wrap dropped by a select. Both add the terms in input
    order, without fused multiply-adds, so they give the same bits; the nine-input pass adds
    w * 0 where the general loop adds nothing, which differs only for an infinite weight
    (NaN, as in the dense convolution over the zero padding). Against the general loop alone
    (`benchmarks/ssc_versions_ab.py --against 6978b77 [--norm] --rounds 15`, median ratio
    new / old, batch 128, 2 threads, without and with an input norm): 0.70 and 0.71 at
    144->16 32x32, 0.91 and 0.76 at 288->32 16x16, 0.80 and 0.73 at 576->64 8x8.
    """
    batch, channels, plane_size = x.shape
    out_channels, group_size = weight.shape
    outputs_per_group = out_channels // (channels // group_size)
    height = plane_size // width
    zero = y.dtype.type(0)
    # where the p-th input of the layer (p = g * G + i) is read from for output position 0, in
    # the sample's flat planes (C * H * W values), as `_copy_masked_plane` reads it: its plane
    # moved by (dy_i, dx_i); the run of a plane's values from there must end by the sample's end
    starts = np.empty(channels, np.int64)
    for p in range(channels):
        i = p % group_size
        starts[p] = input_channels[p] * plane_size + row_offsets[i] * width + col_offsets[i]
    last_start = channels * plane_size - plane_size
    for plane in prange(batch * out_channels):
        n = plane // out_channels
        o = plane % out_channels
        first_channel = (o // outputs_per_group) * group_size
        y_plane = y[n, o]
        sample = x[n].ravel()  # x is C-contiguous: a view of all of sample n's planes
        inside = group_size == 9
        for i in range(9 if inside else 0):
            inside &= (starts[first_channel + i] >= 0) & (starts[first_channel + i] <= last_start)
        if inside:  # max(0, .) tells LLVM the starts are >= 0 (see `flat_run`)
            s0, s1, s2 = (max(0, starts[first_channel]), max(0, starts[first_channel + 1]),
                          max(0, starts[first_channel + 2]))
            s3, s4, s5 = (max(0, starts[first_channel + 3]), max(0, starts[first_channel + 4]),
                          max(0, starts[first_channel + 5]))
            s6, s7, s8 = (max(0, starts[first_channel + 6]), max(0, starts[first_channel + 7]),
                          max(0, starts[first_channel + 8]))
            n0, n1, n2 = (_channel_norm(input_norm, input_channels[first_channel]),
                          _channel_norm(input_norm, input_channels[first_channel + 1]),
                          _channel_norm(input_norm, input_channels[first_channel + 2]))
            n3, n4, n5 = (_channel_norm(input_norm, input_channels[first_channel + 3]),
                          _channel_norm(input_norm, input_channels[first_channel + 4]),
                          _channel_norm(input_norm, input_channels[first_channel + 5]))
            n6, n7, n8 = (_channel_norm(input_norm, input_channels[first_channel + 6]),
                          _channel_norm(input_norm, input_channels[first_channel + 7]),
                          _channel_norm(input_norm, input_channels[first_channel + 8]))
            w0, w1, w2, w3, w4, w5, w6, w7, w8 = weight[o, 0], weight[o, 1], weight[o, 2], \
                weight[o, 3], weight[o, 4], weight[o, 5], weight[o, 6], weight[o, 7], weight[o, 8]
            m0, m1, m2, m3, m4, m5, m6, m7, m8 = masks[0], masks[1], masks[2], masks[3], \
                masks[4], masks[5], masks[6], masks[7], masks[8]
            for k in range(plane_size):
                total = zero + w0 * _masked_value(sample[s0 + k], n0, m0[k], zero)
                total += w1 * _masked_value(sample[s1 + k], n1, m1[k], zero)
                total += w2 * _masked_value(sample[s2 + k], n2, m2[k], zero)
                total += w3 * _masked_value(sample[s3 + k], n3, m3[k], zero)
                total += w4 * _masked_value(sample[s4 + k], n4, m4[k], zero)
                total += w5 * _masked_value(sample[s5 + k], n5, m5[k], zero)
                total += w6 * _masked_value(sample[s6 + k], n6, m6[k], zero)
                total += w7 * _masked_value(sample[s7 + k], n7, m7[k], zero)
                y_plane[k] = total + w8 * _masked_value(sample[s8 + k], n8, m8[k], zero)
            continue
        y_plane[:] = 0
        for i in range(group_size):
            channel = input_channels[first_channel + i]
            x_plane, channel_norm = x[n, channel], _channel_norm(input_norm, channel)
            w = weight[o, i]
            col_offset = col_offsets[i]
            first_out, first_in, count = flat_run(row_offsets[i], col_offset, height, width)
            if col_offset == 0:
                for step in range(count):
                    y_plane[first_out + step] += w * _normalised_value(x_plane[first_in + step],
                                                                       channel_norm, zero)
            else:
                for step in range(count):
                    col = columns[first_out + step] + col_offset
                    inside_row = (col >= 0) & (col < width)
                    value = _normalised_value(x_plane[first_in + step], channel_norm, zero)
                    y_plane[first_out + step] += w * (value if inside_row else zero)


@njit(cache=True, parallel=True)
def _strided_forward_kernel(x, weight, row_offsets, col_offsets, stride, input_channels,
                            input_norm, y):
    """Stride s > 1: y[n, o, Y, X] = sum_i W[o, i] * x[n, c, Y*s + dy_i, X*s + dx_i]
    over the terms inside the image, c = input_channels[g(o)*G + i]; row by row.

    Stride 2, the only one the models use, has a loop of its own in which the stride is the
    constant 2: LLVM vectorises that loop's reads of every other value (wide loads and a
    shuffle), and leaves the loop with the stride a variable scalar. The same sums in the same
    order; against the loop with a variable stride alone (`benchmarks/ssc_versions_ab.py
    --against 226a99c [--norm] --rounds 15`, median ratio new / old, batch 128, 2 threads,
    without and with an input norm): 0.75 and 0.72 at 288->32 32x32, 0.71 and 0.93 at
    576->64 16x16."""
    batch, channels, height, width = x.shape
    out_channels, group_size = weight.shape
    out_height, out_width = y.shape[2], y.shape[3]
    outputs_per_group = out_channels // (channels // group_size)
    zero = y.dtype.type(0)
    for plane in prange(batch * out_channels):
        n = plane // out_channels
        o = plane % out_channels
        first_channel = (o // outputs_per_group) * group_size
        y_plane = y[n, o]
        y_plane[:, :] = 0
        for i in range(group_size):
            channel = input_channels[first_channel + i]
            x_plane, channel_norm = x[n, channel], _channel_norm(input_norm, channel)
            w = weight[o, i]
            first_row, first_in_row, rows = valid_range(row_offsets[i], stride,
                                                         height, out_height)
            first_col, first_in_col, cols = valid_range(col_offsets[i], stride,
                                                         width, out_width)
            for row_step in range(rows):
                y_row = y_plane[first_row + row_step]
                x_row = x_plane[first_in_row + row_step * stride]
                if stride == 2:  # the same loop, inlined with the constant
                    _add_strided_row(x_row, first_in_col, 2, w, channel_norm, y_row[first_col:],
                                     cols)
                else:
                    _add_strided_row(x_row, first_in_col, stride, w, channel_norm,
                                     y_row[first_col:], cols)


def _uses_3x3_stride2_kernel(weight, row_offsets, col_offsets, stride):
    """Whether a layer runs on `_3x3_stride2_forward_kernel`: stride 2 and the nine offsets of
    a full 3x3 grid, `shift_offsets(9, 3, 9)` (every SSC layer of the models), not a group
    point-wise convolution's zeros."""
    grid_rows, grid_cols = shift_offsets(9, 3, 9)
    return (stride == 2 and weight.shape[1] == 9 and np.array_equal(row_offsets, grid_rows)
            and np.array_equal(col_offsets, grid_cols))


@njit(cache=True, inline="always")
def _3x3_tap(input_channels, first_channel, i, input_norm, one):
    """(channel, mean, scale, bias) of tap i of a group: its input channel and the norm
    `_3x3_term` applies, scale 1 (and mean = bias = 0) without an input norm."""
    channel = input_channels[first_channel + i]
    normalise, mean, scale, bias = _channel_norm(input_norm, channel)
    return channel, mean, scale if normalise else one, bias


@njit(cache=True, inline="always")
def _3x3_term(row, j, w, mean, scale, bias, floor, inside, zero):
    """w * row[j] as the layer reads it, relu((v - mean) * scale + bias) with floor 0 (the
    rounding of `_normalised_value`) or v itself with floor -inf and scale 1; 0 for a tap
    outside the image (`inside` False), whose value is not read."""
    value = _normalised(row[j], mean, scale, bias)
    term = w * (floor if value < floor else value)
    return term if inside else zero


@njit(cache=True, parallel=True)
def _3x3_stride2_forward_kernel(x, weight, input_channels, input_norm, y):
    """`_strided_forward_kernel` for a 3x3 grid at stride 2 (`_uses_3x3_stride2_kernel`): the
    same sums in the same order, nine terms in one pass over each output row.

    For output row Y, tap i = 3 * (dy + 1) + (dx + 1) reads input row 2Y + dy of its channel
    at columns 2X + dx: each output row reads nine fixed input rows, so
        y[n, o, Y, X] = sum_i W[o, i] * a[n, c_i, 2Y + dy_i, 2X + dx_i]
    is one loop over X with the nine rows' values at stride 2, instead of nine loops of a few
    values each (on an 8x8 output, 72 loops of 8 per output plane, each with its own set-up).
    The taps outside the image: row 2Y + dy_i above or below it (only in
    the first row, and in the last one of an odd height) is read as a row of zeros with
    weight 0, column -1 (only in column 0) and column W (only in the last column of an odd
    width) are left out where those columns are summed apart. Such a term adds 0 (a value
    that is never read, so an infinity there adds no NaN), where the term-by-term loop adds
    nothing: only the sign of a zero can differ. The terms are added in tap order, each
    rounded as `_add_strided_row` rounds it, and `tests/test_ssc_kernels.py` finds the same
    values.

    Against `_strided_forward_kernel` alone (`benchmarks/ssc_versions_ab.py --against e3acad4
    [--norm] --network --rounds 15`, median ratio new / old, batch 128, 2 threads): with an
    input norm 0.62 at 576->64 16x16 (12.9 -> 8.5 ms) and 0.74 at 288->32 32x32 (14.4 ->
    10.7 ms), without 0.76 and 0.78; whole training steps r=1 0.991, r=2 0.988.
    """
    batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    out_height, out_width = y.shape[2], y.shape[3]
    outputs_per_group = out_channels // (channels // 9)
    zero, one = y.dtype.type(0), y.dtype.type(1)
    floor = zero if input_norm[0].size else y.dtype.type(-np.inf)  # the ReLU, or none
    stop = out_width if width % 2 == 0 else out_width - 1  # columns whose taps are all inside
    outside = np.zeros(width, x.dtype)  # the row a tap reads above or below the image
    for plane in prange(batch * out_channels):
        n, o = plane // out_channels, plane % out_channels
        first = (o // outputs_per_group) * 9
        c0, m0, s0, b0 = _3x3_tap(input_channels, first, 0, input_norm, one)
        c1, m1, s1, b1 = _3x3_tap(input_channels, first, 1, input_norm, one)
        c2, m2, s2, b2 = _3x3_tap(input_channels, first, 2, input_norm, one)
        c3, m3, s3, b3 = _3x3_tap(input_channels, first, 3, input_norm, one)
        c4, m4, s4, b4 = _3x3_tap(input_channels, first, 4, input_norm, one)
        c5, m5, s5, b5 = _3x3_tap(input_channels, first, 5, input_norm, one)
        c6, m6, s6, b6 = _3x3_tap(input_channels, first, 6, input_norm, one)
        c7, m7, s7, b7 = _3x3_tap(input_channels, first, 7, input_norm, one)
        c8, m8, s8, b8 = _3x3_tap(input_channels, first, 8, input_norm, one)
        for out_row in range(out_height):
            up, down = out_row > 0, 2 * out_row + 1 < height
            w0, w1, w2 = (weight[o, 0], weight[o, 1], weight[o, 2]) if up else (zero, zero, zero)
            w3, w4, w5 = weight[o, 3], weight[o, 4], weight[o, 5]
            w6, w7, w8 = (weight[o, 6], weight[o, 7], weight[o, 8]) if down else (zero, zero, zero)
            top, middle, bottom = 2 * out_row - 1, 2 * out_row, 2 * out_row + 1
            r0 = x[n, c0, top] if up else outside
            r1 = x[n, c1, top] if up else outside
            r2 = x[n, c2, top] if up else outside
            r3, r4, r5 = x[n, c3, middle], x[n, c4, middle], x[n, c5, middle]
            r6 = x[n, c6, bottom] if down else outside
            r7 = x[n, c7, bottom] if down else outside
            r8 = x[n, c8, bottom] if down else outside
            y_row = y[n, o, out_row]
            # column 0: the taps with dx = -1 (0, 3, 6) read outside; with width 1, dx = +1 too
            right = width > 1
            j = 1 if right else 0
            total = zero + _3x3_term(r1, 0, w1, m1, s1, b1, floor, True, zero)
            total = total + _3x3_term(r2, j, w2, m2, s2, b2, floor, right, zero)
            total = total + _3x3_term(r4, 0, w4, m4, s4, b4, floor, True, zero)
            total = total + _3x3_term(r5, j, w5, m5, s5, b5, floor, right, zero)
            total = total + _3x3_term(r7, 0, w7, m7, s7, b7, floor, True, zero)
            y_row[0] = total + _3x3_term(r8, j, w8, m8, s8, b8, floor, right, zero)
            for col in range(1, stop):
                j = 2 * col
                total = zero + _3x3_term(r0, j - 1, w0, m0, s0, b0, floor, True, zero)
                total = total + _3x3_term(r1, j, w1, m1, s1, b1, floor, True, zero)
                total = total + _3x3_term(r2, j + 1, w2, m2, s2, b2, floor, True, zero)
                total = total + _3x3_term(r3, j - 1, w3, m3, s3, b3, floor, True, zero)
                total = total + _3x3_term(r4, j, w4, m4, s4, b4, floor, True, zero)
                total = total + _3x3_term(r5, j + 1, w5, m5, s5, b5, floor, True, zero)
                total = total + _3x3_term(r6, j - 1, w6, m6, s6, b6, floor, True, zero)
                total = total + _3x3_term(r7, j, w7, m7, s7, b7, floor, True, zero)
                y_row[col] = total + _3x3_term(r8, j + 1, w8, m8, s8, b8, floor, True, zero)
            if 0 < stop < out_width:  # odd width: the last column's taps with dx = +1 read outside
                j = 2 * stop
                total = zero + _3x3_term(r0, j - 1, w0, m0, s0, b0, floor, True, zero)
                total = total + _3x3_term(r1, j, w1, m1, s1, b1, floor, True, zero)
                total = total + _3x3_term(r3, j - 1, w3, m3, s3, b3, floor, True, zero)
                total = total + _3x3_term(r4, j, w4, m4, s4, b4, floor, True, zero)
                total = total + _3x3_term(r6, j - 1, w6, m6, s6, b6, floor, True, zero)
                y_row[stop] = total + _3x3_term(r7, j, w7, m7, s7, b7, floor, True, zero)


@njit(cache=True, inline="always")
def _add_strided_row(x_row, first_in_col, stride, w, channel_norm, out, cols):
    """out[X] += w * x_row[first_in_col + X * stride] (normalised as read) for X < cols."""
    zero = out.dtype.type(0)
    for step in range(cols):
        out[step] += w * _normalised_value(x_row[first_in_col + step * stride], channel_norm,
                                           zero)


@njit(cache=True, inline="always")
def _fill_margined_upstream(upstream, stride, width, margin, margined):
    """margined[margin:margin + plane size] = one upstream plane on the layer's input grid
    (width `width`): the plane itself at stride 1; with stride s > 1, upstream[Y, X] at
    (sY, sX), the entries between stay as they are (0: nothing else is ever written there).
    The margins stay 0, so that the plane read from any shift is a plain slice. Row by row,
    against one loop over the plane with a division for each entry's row and column: 0.92 of
    the time of the flat backward at 288->32 32x32 and 576->64 16x16 stride 2, 0.95-0.96 of
    the SSC module's SSC1 backward with SSC2 at stride 2 (`benchmarks/ssc_versions_ab.py
    --against 814e506 --norm --rounds 15`, and a scratch A/B of the pair's SSC1 backward);
    same values."""
    if stride == 1:
        margined[margin:margin + upstream.size] = upstream
        return
    out_width = (width - 1) // stride + 1  # `output_size`
    for row in range(upstream.size // out_width):  # row by row: no division per entry
        grid_row = margined[margin + stride * row * width:]
        upstream_row = upstream[row * out_width:(row + 1) * out_width]
        for col in range(out_width):
            grid_row[stride * col] = upstream_row[col]


@njit(cache=True, inline="always")
def _masked_term(upstream, mask, w, previous, adds, zero):
    """(previous if adds else 0) + w * upstream, the upstream 0 where mask is 0: one value of
    `_add_masked_upstream`, which `_fill_single_reader_grad_through_output_norm` computes
    too and must round alike."""
    return (previous if adds else zero) + w * (upstream if mask != zero else zero)


@njit(cache=True, inline="always")
def _add_masked_upstream(upstream_plane, mask, w, adds, out):
    """out = (out if adds else 0) + w * upstream_plane, the upstream 0 where mask is 0: one
    output's term of a flat backward's grad_x plane. One loop for `_flat_backward_kernel` and
    `_fill_next_layer_input_grad`, which must round alike."""
    zero = out.dtype.type(0)
    for j in range(out.size):  # each value loaded first, then selected: vectorises
        out[j] = _masked_term(upstream_plane[j], mask[j], w, out[j], adds, zero)


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def _flat_backward_kernel(x, weight, grad_y, row_offsets, col_offsets, stride, input_channels,
                          input_norm, width, masks, grad_x, grad_weight_partials, norm_sums):
    """Gradients of `_flat_forward_kernel` and `_strided_forward_kernel`, one chunk of
    consecutive samples n per parallel iteration (see `WEIGHT_GRAD_CHUNKS`).

    For every term y[n, o, j - off_i] += W[o, i] * x[n, c, j] (off_i = dy_i W + dx_i, over
    the input positions j whose output position j - off_i lies inside the image, row and
    column: masks[i, j] = 1, `shift_masks` of the negated offsets):
        grad_x[n, c, j] += W[o, i] * grad_y[n, o, j - off_i]
        grad_weight_partials[chunk of n, o, i] += grad_y[n, o, j - off_i] * x[n, c, j]
    As in `_group_backward_kernel`, each upstream plane is first copied into a row with zero
    margins, so that the loops run over whole planes. The group's first output writes its
    planes of grad_x and later ones add to them: no zeroing pass over grad_x, whose planes
    are written once, not zeroed, read back and written again.

    Against the kernels before (a zeroing pass and loops over the run of `flat_run` at
    stride 1, a row-by-row kernel at stride 2; `benchmarks/ssc_versions_ab.py
    --against 496f6f5 --rounds 15`, median ratio new / old, this kernel as it is, with the
    batch norm's float32 plane sums): 0.85 at 576->64 8x8, 0.98 at 288->32 16x16 and 1.09 at
    144->16 32x32 (a noisy phase), 0.52 at 288->32 32x32 stride 2 and 0.89 at 576->64 16x16
    stride 2; with an input norm 0.66, 0.85, 0.93, 0.52 and 0.79.

    With stride s > 1 the copy upsamples the upstream plane: grad_y[n, o, Y, X] goes to
    position (sY, sX) and the other entries stay 0, which is the gradient of a stride-1 layer
    whose outputs off the stride grid nobody reads; the loops then run as with stride 1,
    vectorised, over s^2 times as many values as the terms need. They replaced a row-by-row
    kernel with strided indices, which LLVM left scalar, and a zeroing pass over grad_x. The
    masks are 0 off the grid too (`shift_masks` with the stride), and the weight sums select
    each product once it is taken, so that a non-finite input that no output reads adds 0,
    not 0 * inf = NaN, as in the exact sum.

    The weight sum runs in a loop of its own, which stores nothing: in the grad_x loop LLVM
    vectorised it behind a run-time check that the arrays do not overlap, a check that
    fails, conservatively, when grad_x happens to start just after an array the loop reads;
    the scalar loop then summed in another order, and the same call gave other bits about
    once in 1000 on tiny planes (`tests/test_ssc_kernels.py`, where arrays lie in memory).
    `fastmath={"reassoc"}` lets LLVM split the weight sums into vector lanes, in an order
    fixed at compile time (so still deterministic); they run in x's dtype, at most one plane
    long (float32 sums measured 25-35% faster than float64 in the group kernel at 1 thread,
    relative change 1e-7). With an input norm, x is read normalised, grad_x is the gradient
    with respect to the normalised values, and norm_sums[n, c] gets plane c's
    `_input_norm_grad_sums` once the last output of its group has added to it. An empty
    grad_x (shape (0, 0, 0)) asks for the sums only: the planes of grad_x go to a scratch
    block of the group's planes, in cache, and are dropped once the sums have read them.
    """
    batch, channels, plane_size = x.shape
    out_channels, group_size = weight.shape
    outputs_per_group = out_channels // (channels // group_size)
    zero = x.dtype.type(0)
    margin = _shift_margin(row_offsets, col_offsets, width)
    keep_grad_x = grad_x.shape[0] != 0
    chunks = grad_weight_partials.shape[0]
    for chunk in prange(chunks):  # samples chunk * batch // chunks ... in sample order
        margined = np.zeros(plane_size + 2 * margin, x.dtype)
        group_planes = np.empty((0 if keep_grad_x else group_size, plane_size), x.dtype)
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            for o in range(out_channels):
                first_channel = (o // outputs_per_group) * group_size
                adds = o % outputs_per_group != 0  # the group's first output writes, others add
                _fill_margined_upstream(grad_y[n, o], stride, width, margin, margined)
                for i in range(group_size):
                    channel = input_channels[first_channel + i]
                    x_plane, channel_norm = x[n, channel], _channel_norm(input_norm, channel)
                    grad_x_plane = grad_x[n, channel] if keep_grad_x else group_planes[i]
                    w, mask = weight[o, i], masks[i]
                    first = margin - (row_offsets[i] * width + col_offsets[i])  # j = 0 reads here
                    upstream_plane = margined[first:first + plane_size]
                    _add_masked_upstream(upstream_plane, mask, w, adds, grad_x_plane)
                    weight_sum = zero
                    for j in range(plane_size):  # no store: always the same vector loop
                        term = upstream_plane[j] * _normalised_value(x_plane[j], channel_norm,
                                                                     zero)
                        weight_sum += term if mask[j] != zero else zero  # (0 * inf is NaN)
                    grad_weight_partials[chunk, o, i] += weight_sum
                if input_norm[0].size and (o + 1) % outputs_per_group == 0:  # group done
                    for i in range(group_size):
                        channel = input_channels[first_channel + i]
                        grad_x_plane = grad_x[n, channel] if keep_grad_x else group_planes[i]
                        _input_norm_grad_sums(grad_x_plane, x[n, channel], channel, input_norm,
                                              norm_sums[n, channel])


@njit(cache=True, inline="always")
def _copy_masked_plane(source, mask, channel_norm, out):
    """out[k] = source[k] (normalised as read, `_normalised_value`) where mask[k] is 1, else 0.

    source is a plane's run of a sample's flat planes (C * H * W values) read from k + dy W
    + dx: where the shift leaves the image it runs into the rows of the plane before or
    after, or wraps to the row's other end, and the mask (`shift_masks` of the offsets)
    drops those values. One loop over the whole plane, with no run to compute and no
    zeroing loops around it: the group forward, which copies every input plane so, took
    0.80x the time of `copy_shifted_plane`'s three loops at 576->576 8x8, 0.92x at 288->288
    16x16, 0.96x at 144->144 32x32 (0.85x, 0.94x, 1.00x with an input norm;
    `benchmarks/ssc_versions_ab.py --against 8c0ef4e [--norm] --rounds 15`). A plane whose
    run would start before the sample's first value or end past its last takes
    `copy_shifted_plane`."""
    zero = out.dtype.type(0)
    for k in range(out.size):
        out[k] = _masked_value(source[k], channel_norm, mask[k], zero)


@njit(cache=True)
def _weight_or_zero(weight, o, i, stop):
    """weight[o, i], or 0 for an output o at or past `stop` (a pass of nine outputs that runs
    past its group's end) or an input i at or past G (a pass of nine inputs, G < 9)."""
    return weight[o, i] if o < stop and i < weight.shape[1] else weight.dtype.type(0)


@njit(cache=True, inline="always")
def _nine_weights(weight, o, stop):
    """weight[o, 0], ..., weight[o, 8], with 0 past the row's end (G < 9) or for o >= stop."""
    return (_weight_or_zero(weight, o, 0, stop), _weight_or_zero(weight, o, 1, stop),
            _weight_or_zero(weight, o, 2, stop), _weight_or_zero(weight, o, 3, stop),
            _weight_or_zero(weight, o, 4, stop), _weight_or_zero(weight, o, 5, stop),
            _weight_or_zero(weight, o, 6, stop), _weight_or_zero(weight, o, 7, stop),
            _weight_or_zero(weight, o, 8, stop))


@njit(cache=True, inline="always")
def _nine_term_sum(w, v0, v1, v2, v3, v4, v5, v6, v7, v8):
    """w[0] * v0 + w[1] * v1 + ... + w[8] * v8, a chain of `multiply_add` in that order."""
    total = w[0] * v0
    total = multiply_add(w[1], v1, total)
    total = multiply_add(w[2], v2, total)
    total = multiply_add(w[3], v3, total)
    total = multiply_add(w[4], v4, total)
    total = multiply_add(w[5], v5, total)
    total = multiply_add(w[6], v6, total)
    total = multiply_add(w[7], v7, total)
    return multiply_add(w[8], v8, total)


@njit(cache=True, parallel=True)
def _group_forward_kernel(x, weight, row_offsets, col_offsets, input_channels, input_norm, width,
                          columns, masks, pass_outputs, y, moments):
    """Stride 1, planes flat, for groups with several outputs: the same sums as
    `_flat_forward_kernel`, with the shift done once per group instead of once per output.

    All outputs of group g read the same G shifted input planes, so those are copied once
    into a scratch block (in cache, `_copy_masked_plane` with masks = `shift_masks` of the
    offsets), shifted[i, k] = x[n, c_i, k + dy_i W + dx_i] (0 outside),
    and each output plane is y[n, o] = sum_i W[o, i] * shifted[i]: loops without offsets or
    masks. One parallel iteration per sample n, which owns its scratch block.

    The sum over i takes nine inputs per pass over y[n, o] (then any further inputs one by
    one): one load and store of y for nine inputs, and one loop, whose fixed cost dominates
    on 8x8 planes. With fewer than nine inputs the scratch block's rows past G stay zero and
    are read with weight 0. Three inputs per pass, measured against one (one thread, 9 inputs
    per group, process time, median of 30 calls, three alternating rounds beside another
    process): 576->576 8x8 5.4-10.5 -> 4.6-4.7 ms, 16x16 17.5-22.7 -> 13.7-16.0 ms; 144->144
    32x32 unchanged (19.8-23.2 against 20.2-21.6 ms). Nine against three, in one process,
    call by call, 2 threads (`benchmarks/ssc_versions_ab.py --against 1c11bb2`, median ratio
    of 15 calls, with and without an input norm): 0.89-0.90 at 576->576 8x8, 0.84-0.85 at
    144->144 32x32, 0.90-1.04 at 288->288 16x16.

    The nine-term sums are chains of `multiply_add` (a fused multiply-add where the CPU has
    one): against separate products and adds, 0.95x the time at 576->576 8x8, 0.94x at
    144->144 32x32, 0.96x at 288->288 16x16 (`benchmarks/ssc_versions_ab.py --against af99682
    --rounds 15`, median ratios); the group backward's, 0.93-0.94x.

    On planes of 1,024 values or more (32x32) a pass sums three outputs side by side
    (pass_outputs = (0, 1, 2) rather than (0,), from `THREE_OUTPUTS_MIN_PLANE_SIZE`; a tuple,
    so that each length compiles to a kernel of its own with the other branch dropped). It
    loads the nine shifted values once for three outputs, and each output's chain is the one
    above, so the same bits. A pass's outputs past the group's end go to a spare row, with
    weight 0. Nine such planes (36 KB) outgrow a 32 KB L1 data cache, and one output a pass
    reads them back from L2 for every output. On the AMD EPYC (Zen 4) VM of 2026-12-04
    (`benchmarks/ssc_versions_ab.py --against 0ca3402 --rounds 15`, with and without an input
    norm): 0.82 and 0.84 at 144->144 32x32, and 0.95-1.03 at 576->576 8x8 and 288->288 16x16,
    which keep one output a pass. Three outputs a pass at every size had taken 1.19 at 8x8
    and 1.34 at 16x16 (with an input norm), whose nine planes fit L1; the entry of
    full-20261203l had found it no faster on an Intel VM, with 8-lane vectors.

    moments: (N, O, 3) float64 to take each finished plane's moments in (`_plane_moments`,
    for the next batch norm's statistics), or an empty (0, 0, 3) array.
    """
    batch, channels, plane_size = x.shape
    out_channels, group_size = weight.shape
    groups = channels // group_size
    outputs_per_group = out_channels // groups
    outputs_per_pass = len(pass_outputs)  # known when compiled: a kernel for each
    for n in prange(batch):
        shifted = np.zeros((max(group_size, 9), plane_size), x.dtype)
        spare = np.empty((2, plane_size), x.dtype)  # the outputs a pass has past its group's end
        sample = x[n].ravel()  # x is C-contiguous: a view of all of sample n's planes
        for g in range(groups):
            for i in range(group_size):  # shifted[i] = input i shifted by (dy_i, dx_i), 0 outside
                channel = input_channels[g * group_size + i]
                start = channel * plane_size + row_offsets[i] * width + col_offsets[i]
                if start >= 0 and start + plane_size <= sample.size:
                    _copy_masked_plane(sample[start:start + plane_size], masks[i],
                                       _channel_norm(input_norm, channel), shifted[i])
                elif input_norm[0].size == 0:  # two calls: a plane chosen by a branch cost more
                    copy_shifted_plane(x[n, channel], row_offsets[i], col_offsets[i], width,
                                       columns, shifted[i])
                else:
                    _copy_shifted_normalised_plane(x[n, channel], channel, input_norm,
                                                   row_offsets[i], col_offsets[i], width,
                                                   columns, shifted[i])
            group_stop = (g + 1) * outputs_per_group
            first_output = g * outputs_per_group
            for o in range(first_output, group_stop):
                y_plane = y[n, o]
                plane0, plane1, plane2 = shifted[0], shifted[1], shifted[2]
                plane3, plane4, plane5 = shifted[3], shifted[4], shifted[5]
                plane6, plane7, plane8 = shifted[6], shifted[7], shifted[8]
                if outputs_per_pass == 1:
                    w_a = _nine_weights(weight, o, group_stop)
                    for k in range(plane_size):
                        y_plane[k] = _nine_term_sum(w_a, plane0[k], plane1[k], plane2[k],
                                                    plane3[k], plane4[k], plane5[k], plane6[k],
                                                    plane7[k], plane8[k])
                elif (o - first_output) % 3 == 0:  # the same sums of o, o + 1, o + 2 side by side
                    y_b = y[n, o + 1] if o + 1 < group_stop else spare[0]
                    y_c = y[n, o + 2] if o + 2 < group_stop else spare[1]
                    w_a = _nine_weights(weight, o, group_stop)
                    w_b = _nine_weights(weight, o + 1, group_stop)
                    w_c = _nine_weights(weight, o + 2, group_stop)
                    for k in range(plane_size):
                        v0, v1, v2 = plane0[k], plane1[k], plane2[k]
                        v3, v4, v5 = plane3[k], plane4[k], plane5[k]
                        v6, v7, v8 = plane6[k], plane7[k], plane8[k]
                        y_plane[k] = _nine_term_sum(w_a, v0, v1, v2, v3, v4, v5, v6, v7, v8)
                        y_b[k] = _nine_term_sum(w_b, v0, v1, v2, v3, v4, v5, v6, v7, v8)
                        y_c[k] = _nine_term_sum(w_c, v0, v1, v2, v3, v4, v5, v6, v7, v8)
                for i in range(9, group_size):
                    w, shifted_plane = weight[o, i], shifted[i]
                    for k in range(plane_size):
                        y_plane[k] = multiply_add(w, shifted_plane[k], y_plane[k])
                if moments.shape[0]:  # the plane's moments for the next batch norm, in cache
                    _plane_moments(y_plane, moments[n, o])


@njit(cache=True)
def _add_if_inside(sums, o, stop, value):
    """sums[o] += value for an output o before the group's end (stop)."""
    if o < stop:
        sums[o] += value


@njit(cache=True, inline="always")
def _fill_upstream_block(grad_y, n, first_output, stop, output_norm, next_layer, next_block,
                         width, block, margin):
    """Write the upstream gradients of outputs first_output ... stop - 1 of sample n into
    block[j, margin:margin + plane size], one row each (the block's margins stay 0): the
    rows of grad_y itself, or, with a next layer, computed from its upstream (see
    `_fill_next_layer_input_grad`); then, with an output norm, taken through it.

    An output norm (y, rules, bias) says that the layer's output y is read by a batch norm +
    ReLU, a = relu(batch_norm(y)), that grad_y is the gradient with respect to a, and that
    the batch norm's parameter gradients are known (the next layer's backward summed them),
    and with them its `norm.input_grad_rules`. By the chain rule through a,
    the gradient with respect to y is the batch norm's grad_x (`norm._input_grad`) of
    grad_y * [a > 0], and it is computed here, group by group, as the rows are about to be
    read: the batch norm's own grad_x pass would write it to memory and read it back. Without
    an output norm its arrays are empty. No fastmath, as in `norm._input_grad`: the values
    are rounded as that pass rounds them. With neither, the rows are copied as they are, in
    a loop of their own: a scratch script timed the one-sample group backward at 576->576
    8x8 at 7.4 ms with the rows copied through the general loop, 6.4 ms with a plain copy.
    """
    plane_size = block.shape[1] - 2 * margin
    if next_block.shape[0] == 0 and output_norm[1].shape[0] == 0:  # the rows of grad_y
        for j in range(stop - first_output):
            block[j, margin:margin + plane_size] = grad_y[n, first_output + j]
        return
    for j in range(stop - first_output):
        o = first_output + j
        row = block[j, margin:margin + plane_size]
        if next_block.shape[0] == 0:
            _through_output_norm(grad_y[n, o], n, o, output_norm, row)
        elif _single_reader(next_layer) and output_norm[1].shape[0] != 0:
            _fill_single_reader_grad_through_output_norm(next_layer, next_block, o, width, n,
                                                         output_norm, row)
        else:
            _fill_next_layer_input_grad(next_layer, next_block, o, width, row)
            _through_output_norm(row, n, o, output_norm, row)


@njit(cache=True, inline="always")
def _through_output_norm(grads, n, o, output_norm, row):
    """row = grads (one plane of output o of sample n), taken through the output norm if
    there is one (see `_fill_upstream_block`); grads may be row itself."""
    y, rules, bias = output_norm
    if rules.shape[0] == 0:
        row[:] = grads
        return
    rule, channel_bias, zero = channel_rule(rules, o), bias[o], row.dtype.type(0)
    values = y[n, o]
    for k in range(row.size):
        row[k] = _output_norm_grad(grads[k], values[k], rule, channel_bias, zero)


@njit(cache=True, inline="always")
def _output_norm_grad(grad, value, rule, channel_bias, zero):
    """One value of `_through_output_norm`: the batch norm's grad_x (`norm._input_grad`) of
    grad where relu(batch_norm(value)) > 0, else of 0; rule = `channel_rule` of the channel."""
    kept = _normalised(value, rule[0], rule[1], channel_bias) > 0
    return _input_grad(grad if kept else zero, value, rule)


@njit(cache=True, inline="always")
def _single_reader(next_layer):
    """Whether each input channel of the next layer is read by one output only (one output
    per group: the SSC module's SSC2)."""
    weight, first_reader = next_layer[1], next_layer[6]
    return weight.shape[0] == first_reader.size // weight.shape[1]


@njit(cache=True, inline="always")
def _fill_single_reader_grad_through_output_norm(next_layer, next_block, channel, width, n,
                                                 output_norm, row):
    """`_fill_next_layer_input_grad` and then `_through_output_norm` of the row, in one loop,
    where one output of the next layer reads the channel: each value through the same
    helpers (`_masked_term`, `_output_norm_grad`), so the same bits, with one pass over the
    row instead of two. The SSC module's SSC1
    backward (output norm and next layer) took 0.94 of the time at 144 channels 32x32, 0.94
    with SSC2 at stride 2 (288, 32x32), 0.98 at 288 16x16, 0.96 at 576 16x16 with stride 2,
    0.97 at 576 8x8 (a scratch A/B of the two versions' `ssc_backward` in one process, median
    ratio of 15 alternating calls, batch 128, 2 threads)."""
    weight, row_offsets, col_offsets = next_layer[1], next_layer[2], next_layer[3]
    masks, first_reader, reader_input = next_layer[5], next_layer[6], next_layer[7]
    y, rules, bias = output_norm
    plane_size = row.size
    margin = (next_block.shape[1] - plane_size) // 2
    i = reader_input[channel]
    first = margin - (row_offsets[i] * width + col_offsets[i])  # j = 0 reads here
    upstream, mask, w = next_block[first_reader[channel], first:first + plane_size], masks[i], \
        weight[first_reader[channel], i]
    rule, channel_bias, zero = channel_rule(rules, channel), bias[channel], row.dtype.type(0)
    values = y[n, channel]
    for k in range(plane_size):
        grad = _masked_term(upstream[k], mask[k], w, zero, False, zero)
        row[k] = _output_norm_grad(grad, values[k], rule, channel_bias, zero)


@njit(cache=True, inline="always")
def _fill_next_layer_input_grad(next_layer, next_block, channel, width, row):
    """row = the gradient that the next SSC layer's backward (`_flat_backward_kernel`) would
    write for its input channel `channel` (this layer's output channel c), the same values
    summed in the same order, by the same loop (`_add_masked_upstream`): over the outputs o2
    of the next layer that read c, as input i,
        row = (0, then the row so far) + W2[o2, i] * (upstream2[o2] read from j - off_i,
                                                     0 where masks2[i, j] is 0).
    next_layer = (upstream2, W2, row offsets, column offsets, stride, masks2, first_reader,
    reader_input): the next layer's upstream gradient (N, O2, plane), weight (O2, G2),
    offsets and stride, its backward's masks (`shift_masks` of the negated offsets), and for
    each channel c the first output that reads it and as which input. next_block[o2] holds
    upstream2[n, o2] on this layer's grid, between zero margins (`_fill_margined_upstream`)."""
    weight, row_offsets, col_offsets = next_layer[1], next_layer[2], next_layer[3]
    masks, first_reader, reader_input = next_layer[5], next_layer[6], next_layer[7]
    readers = weight.shape[0] // (first_reader.size // weight.shape[1])  # outputs per group
    plane_size = row.size
    margin = (next_block.shape[1] - plane_size) // 2
    i = reader_input[channel]
    first = margin - (row_offsets[i] * width + col_offsets[i])  # j = 0 reads here
    for step in range(readers):
        o2 = first_reader[channel] + step
        _add_masked_upstream(next_block[o2, first:first + plane_size], masks[i],
                             weight[o2, i], step > 0, row)


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def _group_backward_kernel(x, weight, grad_y, row_offsets, col_offsets, input_channels,
                           input_norm, output_norm, next_layer, width, masks, grad_x,
                           grad_weight_partials, norm_sums):
    """Gradients of `_group_forward_kernel`, one chunk of consecutive samples n per parallel
    iteration (see `WEIGHT_GRAD_CHUNKS`).

    For each input i of group g and the group's outputs o, with off_i = dy_i W + dx_i:
        grad_x[n, c_i, j] = sum_o W[o, i] * grad_y[n, o, j - off_i],
        grad_weight_partials[chunk of n, o, i] += sum_j grad_y[n, o, j - off_i] * x[n, c_i, j]
    over the input positions j whose output position j - off_i lies inside the image, row
    and column (masks[i, j] = 1, `shift_masks` of the negated offsets); every other entry
    of grad_x[n, c_i] is 0: no output read it. The group's upstream rows are first copied
    into a block with zero margins (`_fill_upstream_block`), so that row o read from
    j - off_i is a plain slice of the block for every j: the loops run over whole planes,
    with no run to compute, and their length is a multiple of the vector width. The loops
    over the run of `flat_run` that this replaced ended in a scalar remainder of up to 15
    values, half of an 8x8 plane: against them (`benchmarks/ssc_versions_ab.py --against
    bb24bcf --rounds 15`, median ratio new / old, 2 threads, batch 128) 0.87 at 576->576
    8x8 (0.88 with an input norm), 0.94-0.99 at 288->288 16x16, 0.97-1.01 at 144->144 32x32.

    The group's first nine outputs share one pass over the plane: it reads the input and
    writes the gradient plane once for all nine, and their nine weight sums run side by side
    in vector registers. The sums stay in this loop with the stores, unlike
    `_flat_backward_kernel`'s (a second loop for them cost 1.1-1.3x at 16x16 and 32x32).
    That loop is vectorised behind LLVM's run-time check that its stores do not overlap its
    other arrays, and the check fails for arrays that lie close together: the loop then runs
    scalar, and its sums come out in another order. The arrays of a training step (megabytes
    each) are far apart. `tests/test_ssc_kernels.py` repeats thousands of tiny calls and
    finds the same bits, but its calls have one sample a chunk (below). With pairs (batches
    of 2 to 4 in one chunk), a scratch loop of those tiny calls, each made again on copies of
    its inputs, found other weight-gradient bits in 2 of 9,000 calls, and 2 of 6,000 in a
    second run.
    The gradient's nine-term sum and the nine weight sums are `multiply_add` chains, as in
    the forward. A group with fewer than nine outputs reads its last output again in the
    missing places, with weight 0, and drops their sums (with a non-finite grad_y that adds
    0 * inf = NaN where the exact sum is inf); outputs past nine are added one by one.

    The pass takes two samples at once, n and n + 1, so that what it costs per plane apart
    from its arithmetic is paid once for two planes: the weights' broadcasts, the loop's
    set-up (LLVM's overlap checks), the nine horizontal sums and float64 partial updates
    after it (a large part of a pass on 8x8 planes, whose loop runs 8 vector steps). Both
    samples' gradient planes are written in the loop, and the nine weight sums add both
    samples' products lane by lane: another order than one sample a pass, the same on any
    number of threads, since the pairs follow from the chunks. A chunk's odd last sample is
    its own partner: its gradient plane is written twice with the same values, and the
    partner's weight-sum terms are multiplied by 0 (with a non-finite upstream gradient that
    adds NaN, as for missing outputs). Its two stores alias, so such a pass always runs
    scalar: at 144->144 32x32 on one thread, a batch of 32 (32 chunks of one sample) took
    7x the time per sample of a batch of 128 (145 against 20 ms per 128 samples; 2026-12-04,
    a scratch script). A scratch row for the missing partner's plane made it vectorised (33
    ms), and placement-dependent like the pairs above; written to scratch rows and copied out,
    both samples' planes took 1.24-1.35x the time at batch 128. Neither was kept.
    The two samples' terms are written out one after the other: as one inline helper
    called twice (nine sums in and out as a tuple) the pass ran 1.04-1.11x slower with an
    input norm and 0.95-1.04x without (a scratch script, medians of 15 alternating calls,
    two runs).

    Against one sample a pass (the commit before; `benchmarks/ssc_versions_ab.py --against
    c3691ea`, 15 and 21 rounds, median ratio new / old, 2 threads, batch 128; the same
    change copies the upstream rows directly when there is no output norm or next layer,
    `_fill_upstream_block`): 0.71-0.74 at 576->576 8x8, 0.81-0.95 at 288->288 16x16,
    0.90-0.92 at 144->144 32x32; with an input norm 0.79-0.81, 0.99-1.00 and 0.79-0.84.
    With an output norm and a next layer (the SSC module's first layer in training) filling
    the block costs as much as the pass, and the pair op's backward did not change
    (0.98-1.04, a scratch script), nor did whole sscresnet20 steps (`--steps-against
    c3691ea --rounds 48`: r=1 0.982, r=2 1.029).

    With an input norm each value is normalised as it is read (`_normalised_value`, rounded
    as the forward rounds it), and norm_sums[n, c_i] gets the plane's `_input_norm_grad_sums`
    as soon as grad_x[n, c_i] is written, while it is in cache. Each input channel belongs to
    one group, so every grad_x plane is written by one iteration.

    With a next layer (`NextLayerInputGrad.kernel_arguments`; grad_y is then empty) the
    upstream rows are that layer's input gradient, recomputed from its upstream planes,
    which each sample's pass first lays out on this layer's grid (`_fill_margined_upstream`,
    `_fill_next_layer_input_grad`).
    """
    batch, channels, plane_size = x.shape
    out_channels, group_size = weight.shape
    groups = channels // group_size
    outputs_per_group = out_channels // groups
    zero = x.dtype.type(0)
    margin = _shift_margin(row_offsets, col_offsets, width)
    next_upstream, next_stride = next_layer[0], next_layer[4]
    next_margin = _shift_margin(next_layer[2], next_layer[3], width)
    chunks = grad_weight_partials.shape[0]
    has_input_norm = input_norm[0].size > 0
    for chunk in prange(chunks):  # samples chunk * batch // chunks ... in sample order
        blocks = np.zeros((2, max(outputs_per_group, 9), plane_size + 2 * margin), x.dtype)
        next_blocks = np.zeros((2, next_upstream.shape[1], plane_size + 2 * next_margin),
                               x.dtype)
        start, stop = chunk * batch // chunks, (chunk + 1) * batch // chunks
        for n in range(start, stop, 2):
            pair = min(2, stop - n)
            partner, has_partner = n + pair - 1, pair == 2  # n itself when it has none
            for s in range(pair):
                for o2 in range(next_blocks.shape[1]):  # empty without a next layer
                    _fill_margined_upstream(next_upstream[n + s, o2], next_stride, width,
                                            next_margin, next_blocks[s, o2])
            for g in range(groups):
                first_output, stop_output = g * outputs_per_group, (g + 1) * outputs_per_group
                _fill_upstream_block(grad_y, n, first_output, stop_output, output_norm,
                                     next_layer, next_blocks[0], width, blocks[0], margin)
                _fill_upstream_block(grad_y, partner, first_output, stop_output, output_norm,
                                     next_layer, next_blocks[pair - 1], width, blocks[1], margin)
                for i in range(group_size):
                    channel = input_channels[g * group_size + i]
                    plane_a = x[n, channel]
                    plane_b = x[partner, channel]
                    grad_a = grad_x[n, channel]
                    grad_b = grad_x[partner, channel]
                    channel_norm = _channel_norm(input_norm, channel)
                    mask = masks[i]
                    first = margin - (row_offsets[i] * width + col_offsets[i])  # j = 0 reads here
                    rows_a = blocks[0, :, first:first + plane_size]
                    rows_b = blocks[1, :, first:first + plane_size]
                    o, last = first_output, stop_output - first_output - 1  # nine outputs a pass
                    a0, a1, a2 = rows_a[0], rows_a[min(1, last)], rows_a[min(2, last)]
                    a3, a4, a5 = rows_a[min(3, last)], rows_a[min(4, last)], rows_a[min(5, last)]
                    a6, a7, a8 = rows_a[min(6, last)], rows_a[min(7, last)], rows_a[min(8, last)]
                    b0, b1, b2 = rows_b[0], rows_b[min(1, last)], rows_b[min(2, last)]
                    b3, b4, b5 = rows_b[min(3, last)], rows_b[min(4, last)], rows_b[min(5, last)]
                    b6, b7, b8 = rows_b[min(6, last)], rows_b[min(7, last)], rows_b[min(8, last)]
                    w0, w1, w2 = weight[o, i], _weight_or_zero(weight, o + 1, i, stop_output), \
                        _weight_or_zero(weight, o + 2, i, stop_output)
                    w3, w4, w5 = _weight_or_zero(weight, o + 3, i, stop_output), \
                        _weight_or_zero(weight, o + 4, i, stop_output), \
                        _weight_or_zero(weight, o + 5, i, stop_output)
                    w6, w7, w8 = _weight_or_zero(weight, o + 6, i, stop_output), \
                        _weight_or_zero(weight, o + 7, i, stop_output), \
                        _weight_or_zero(weight, o + 8, i, stop_output)
                    sum0 = sum1 = sum2 = sum3 = sum4 = sum5 = sum6 = sum7 = sum8 = zero
                    for j in range(plane_size):
                        inside = mask[j] != zero
                        value_a = _normalised_value(plane_a[j], channel_norm, zero)
                        value_a = value_a if inside else zero
                        value_b = _normalised_value(plane_b[j], channel_norm, zero)
                        value_b = value_b if inside and has_partner else zero
                        up0, up1, up2, up3, up4 = a0[j], a1[j], a2[j], a3[j], a4[j]
                        up5, up6, up7, up8 = a5[j], a6[j], a7[j], a8[j]
                        grad = w0 * up0  # + w1 * up1 + ... + w8 * up8
                        grad = multiply_add(w1, up1, grad)
                        grad = multiply_add(w2, up2, grad)
                        grad = multiply_add(w3, up3, grad)
                        grad = multiply_add(w4, up4, grad)
                        grad = multiply_add(w5, up5, grad)
                        grad = multiply_add(w6, up6, grad)
                        grad = multiply_add(w7, up7, grad)
                        grad = multiply_add(w8, up8, grad)
                        grad_a[j] = grad if inside else zero
                        sum0 = multiply_add(up0, value_a, sum0)
                        sum1 = multiply_add(up1, value_a, sum1)
                        sum2 = multiply_add(up2, value_a, sum2)
                        sum3 = multiply_add(up3, value_a, sum3)
                        sum4 = multiply_add(up4, value_a, sum4)
                        sum5 = multiply_add(up5, value_a, sum5)
                        sum6 = multiply_add(up6, value_a, sum6)
                        sum7 = multiply_add(up7, value_a, sum7)
                        sum8 = multiply_add(up8, value_a, sum8)
                        up0, up1, up2, up3, up4 = b0[j], b1[j], b2[j], b3[j], b4[j]
                        up5, up6, up7, up8 = b5[j], b6[j], b7[j], b8[j]
                        grad = w0 * up0
                        grad = multiply_add(w1, up1, grad)
                        grad = multiply_add(w2, up2, grad)
                        grad = multiply_add(w3, up3, grad)
                        grad = multiply_add(w4, up4, grad)
                        grad = multiply_add(w5, up5, grad)
                        grad = multiply_add(w6, up6, grad)
                        grad = multiply_add(w7, up7, grad)
                        grad = multiply_add(w8, up8, grad)
                        grad_b[j] = grad if inside else zero
                        sum0 = multiply_add(up0, value_b, sum0)
                        sum1 = multiply_add(up1, value_b, sum1)
                        sum2 = multiply_add(up2, value_b, sum2)
                        sum3 = multiply_add(up3, value_b, sum3)
                        sum4 = multiply_add(up4, value_b, sum4)
                        sum5 = multiply_add(up5, value_b, sum5)
                        sum6 = multiply_add(up6, value_b, sum6)
                        sum7 = multiply_add(up7, value_b, sum7)
                        sum8 = multiply_add(up8, value_b, sum8)
                    sums = grad_weight_partials[chunk, :, i]
                    _add_if_inside(sums, o, stop_output, sum0)
                    _add_if_inside(sums, o + 1, stop_output, sum1)
                    _add_if_inside(sums, o + 2, stop_output, sum2)
                    _add_if_inside(sums, o + 3, stop_output, sum3)
                    _add_if_inside(sums, o + 4, stop_output, sum4)
                    _add_if_inside(sums, o + 5, stop_output, sum5)
                    _add_if_inside(sums, o + 6, stop_output, sum6)
                    _add_if_inside(sums, o + 7, stop_output, sum7)
                    _add_if_inside(sums, o + 8, stop_output, sum8)
                    # per sample: the outputs past nine and the input norm's sums; skipped when
                    # there are none (left in, the empty loop measured 1.05x and 1.14x at
                    # 576->576 8x8 in two A/B runs of 15 rounds)
                    for s in range(pair if outputs_per_group > 9 or has_input_norm else 0):
                        rows = blocks[s, :, first:first + plane_size]
                        plane, grad_x_plane = x[n + s, channel], grad_x[n + s, channel]
                        for o in range(first_output + 9, stop_output):  # past nine, one by one
                            grad_y_plane, w = rows[o - first_output], weight[o, i]
                            for j in range(plane_size):
                                grad = grad_y_plane[j]
                                grad_x_plane[j] += w * (grad if mask[j] != zero else zero)
                            weight_sum = zero
                            for j in range(plane_size):  # no store, as in `_flat_backward_kernel`
                                term = grad_y_plane[j] * _normalised_value(plane[j], channel_norm,
                                                                           zero)
                                weight_sum += term if mask[j] != zero else zero
                            grad_weight_partials[chunk, o, i] += weight_sum
                        if has_input_norm:
                            _input_norm_grad_sums(grad_x_plane, plane, channel, input_norm,
                                                  norm_sums[n + s, channel])


def channel_shuffle(x, groups):
    """ShuffleNet's shuffle (a NumPy copy): view C as (groups, C / groups), swap, flatten."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(
        x.reshape(n, groups, c // groups, h, w).swapaxes(1, 2).reshape(n, c, h, w))


def shuffled_channels(channels, shuffle_groups):
    """Which channel of x the channel_shuffle(x, shuffle_groups) output channel c comes from.

    The shuffle views C as (groups, C / groups), swaps the two and flattens, so output
    channel c = a * groups + b holds input channel b * (C / groups) + a.
    """
    c = np.arange(channels, dtype=np.int64)
    return (c % shuffle_groups) * (channels // shuffle_groups) + c // shuffle_groups


GROUP_KERNEL_MIN_OUTPUTS = 4

# The group forward sums three outputs a pass on planes of at least this many values, one output
# a pass on smaller ones (`pass_outputs`, see `_group_forward_kernel`).
THREE_OUTPUTS_MIN_PLANE_SIZE = 1024

# The backward kernels run over min(batch, WEIGHT_GRAD_CHUNKS) chunks of consecutive samples in
# parallel, and each chunk adds its weight sums into a float64 partial of its own (O, G): 32
# chunks of a batch of 128 divide evenly among 2, 4, 8 or 16 threads. One partial per sample,
# summed after the kernel, cost a write of N x O x G float64 (5.3 MB at 576->576 8x8) and a pass
# to add them up: against it the group backward took 0.93-0.96x the time at 576->576 8x8 in
# three runs (0.97x with an input norm), and the other backward shapes 0.96-1.06x, within the
# noise of those runs (`benchmarks/ssc_versions_ab.py --against 81366b0 [--norm] --rounds 11`
# and `--rounds 21`, median ratios).
WEIGHT_GRAD_CHUNKS = 32


def _uses_group_kernels(channels, weight, stride):
    """Use the group kernels (one shifted copy per group) rather than the flat ones (a masked
    shifted read per output) for a stride-1 layer on `channels` input channels whose groups
    have at least GROUP_KERNEL_MIN_OUTPUTS outputs each (weight (O, G))."""
    return stride == 1 and weight.shape[0] // (channels // weight.shape[1]) \
        >= GROUP_KERNEL_MIN_OUTPUTS


def _shifted_pointwise_forward(x, weight, row_offsets, col_offsets, stride, shuffle_groups=1,
                               input_norm=None, moments=None):
    """Allocate y (N, O, Ho, Wo) and run a forward kernel; offsets are indexed by i < G. With
    moments (N, O, 3), also y's plane moments (`norm.plane_moments`): taken by the group
    kernel as it writes each plane, else in a pass of their own. Arrays in another layout
    are copied C-contiguous first: the kernels are compiled for that layout only (a group
    kernel takes tens of seconds to compile for each new one)."""
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    batch, channels, height, width = x.shape
    y = np.empty((batch, weight.shape[0], output_size(height, stride), output_size(width, stride)),
                 dtype=x.dtype)
    input_channels = shuffled_channels(channels, shuffle_groups)
    input_norm = input_norm or _no_input_norm(x.dtype)
    if _uses_group_kernels(channels, weight, stride):
        kernel_moments = np.empty((0, 0, 3)) if moments is None else moments
        masks = _shared_shift_masks(row_offsets, col_offsets, height, width, x.dtype)
        pass_outputs = (0, 1, 2) if height * width >= THREE_OUTPUTS_MIN_PLANE_SIZE else (0,)
        _group_forward_kernel(planes(x), weight, row_offsets, col_offsets,
                              input_channels, input_norm, width, plane_columns(width, height),
                              masks, pass_outputs, planes(y), kernel_moments)
        return y
    if stride == 1:
        masks = _shared_shift_masks(row_offsets, col_offsets, height, width, x.dtype)
        _flat_forward_kernel(planes(x), weight, row_offsets, col_offsets, input_channels,
                             input_norm, width, plane_columns(width, height), masks, planes(y))
    elif _uses_3x3_stride2_kernel(weight, row_offsets, col_offsets, stride):
        _3x3_stride2_forward_kernel(x, weight, input_channels, input_norm, y)
    else:
        _strided_forward_kernel(x, weight, row_offsets, col_offsets, stride, input_channels,
                                input_norm, y)
    if moments is not None:
        moments[...] = norm.plane_moments(y)
    return y


def _no_output_norm(dtype):
    """The `output_norm` of a layer whose output gradient is given as it is."""
    return np.empty((0, 0, 0), dtype), np.empty((0, 4), dtype), np.empty(0, dtype)


def _no_next_layer(dtype):
    """The `next_layer` of a group backward whose upstream gradient is given as an array (see
    `NextLayerInputGrad.kernel_arguments`): empty arrays of the same types."""
    no_indices = np.empty(0, np.int64)
    return (np.empty((0, 0, 0), dtype), np.empty((0, 0), dtype), no_indices, no_indices, 1,
            np.empty((0, 0), dtype), no_indices, no_indices)


def _shifted_pointwise_backward(x, weight, grad_y, row_offsets, col_offsets, stride,
                                shuffle_groups=1, input_norm=None, output_norm=None,
                                input_grad=True):
    """Run a backward kernel; grad_W sums its float64 per-chunk partials in chunk order
    (`WEIGHT_GRAD_CHUNKS`), and the input norm's parameter-gradient sums (returned only with an
    input norm) their per-sample partials in sample order. An
    output norm is folded into the group kernel's reads; the other kernels get grad_y through
    the batch norm's own grad_x pass, the same values. grad_y may be a `NextLayerInputGrad`
    where `folds_next_layer`; with input_grad=False grad_x is None (the flat kernel then
    never writes it). Arrays are made C-contiguous first, as in the forward."""
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    batch, channels, height, width = x.shape
    group_kernel = _uses_group_kernels(channels, weight, stride)
    kernel_next_layer = _no_next_layer(x.dtype)
    if isinstance(grad_y, NextLayerInputGrad):
        if not folds_next_layer(channels, weight, stride, grad_y.weight, grad_y.stride):
            raise ValueError("a NextLayerInputGrad needs a stride-1 layer with at least "
                             f"{GROUP_KERNEL_MIN_OUTPUTS} outputs per group, read by a layer "
                             "on the flat kernels (see folds_next_layer)")
        kernel_next_layer = grad_y.kernel_arguments(weight.shape[0], height, width)
        grad_y = np.empty((0, 0, 0, 0), x.dtype)
    kernel_output_norm = _no_output_norm(x.dtype)
    if output_norm is not None and group_kernel:
        y, mean, inv_std, bn_weight, bn_bias, sum_grad, sum_grad_centred, training = output_norm
        rules = norm.relu_input_grad_rules(y, mean, inv_std, bn_weight, sum_grad,
                                           sum_grad_centred, training)
        kernel_output_norm = planes(y), rules, bn_bias
    elif output_norm is not None:
        grad_y = norm.batch_norm_relu_input_grad(grad_y, *output_norm)[0]
    grad_x = np.empty(x.shape if input_grad or group_kernel else (0, 0, 0, 0), x.dtype)
    grad_weight_partials = np.zeros((min(batch, WEIGHT_GRAD_CHUNKS),) + weight.shape, np.float64)
    input_channels = shuffled_channels(channels, shuffle_groups)
    norm_sums = np.zeros((batch if input_norm else 0, channels, 2))
    kernel_input_norm = input_norm or _no_input_norm(x.dtype)
    masks = _shared_shift_masks(-row_offsets, -col_offsets, height, width, x.dtype, stride)
    if group_kernel:
        _group_backward_kernel(planes(x), weight, planes(grad_y), row_offsets, col_offsets,
                               input_channels, kernel_input_norm, kernel_output_norm,
                               kernel_next_layer, width, masks, planes(grad_x),
                               grad_weight_partials, norm_sums)
    else:
        _flat_backward_kernel(planes(x), weight, planes(grad_y), row_offsets, col_offsets,
                              stride, input_channels, kernel_input_norm, width, masks,
                              planes(grad_x), grad_weight_partials, norm_sums)
    grads = (grad_x if input_grad else None), grad_weight_partials.sum(axis=0).astype(x.dtype)
    if not input_norm:
        return grads
    sum_grad, sum_grad_centred = norm_sums.sum(axis=0).T
    return grads + (sum_grad, sum_grad_centred)


def folds_next_layer(channels, weight, stride, next_weight, next_stride):
    """Whether the backward of a layer on `channels` input channels (weight, stride) can
    compute its upstream gradient from the next SSC layer's upstream (`NextLayerInputGrad`):
    this layer on the group kernels, the next on the flat ones, whose grad_x the group
    kernel recomputes (`_fill_next_layer_input_grad`)."""
    return (_uses_group_kernels(channels, weight, stride)
            and not _uses_group_kernels(weight.shape[0], next_weight, next_stride))


class NextLayerInputGrad:
    """The gradient with respect to a layer's output y when y is the input of a next SSC
    layer (weight, kernel_size, stride, shuffle_groups) whose upstream gradient is `grad`:
    ``ssc_backward(y, weight, grad, kernel_size, stride, shuffle_groups)[0]``, which depends
    on grad and the weight only. Given as the grad_y of the layer's `ssc_backward` (where
    `folds_next_layer`), the group kernel computes each row as it reads it, in cache, and the
    next layer's backward need not write it (``input_grad=False``): one write and one read
    of the widest tensor less. The same values, to the bit. Measured on the SSC module's
    pair op (`minissc.functional.BatchNormReLUSSCPair`) of sscresnet20 (r=1), backward with
    this against without it, same process, alternating, median of 19 ratios (batch 128,
    2 threads, a scratch script): 0.95 at 144 channels 32x32, 0.90 with SSC2 at stride 2
    (288, 32x32), 0.91 at 288 16x16, 0.95 at 576 8x8."""

    def __init__(self, grad, weight, kernel_size, stride, shuffle_groups=1):
        self.grad, self.weight = grad, weight
        self.kernel_size, self.stride, self.shuffle_groups = kernel_size, stride, shuffle_groups

    def kernel_arguments(self, channels, height, width):
        """The `next_layer` tuple of `_group_backward_kernel`, for the next layer's input of
        `channels` planes of height x width."""
        outputs, group_size = self.weight.shape
        dy, dx = shift_offsets(group_size, self.kernel_size, group_size)
        position_of_channel = np.argsort(shuffled_channels(channels, self.shuffle_groups))
        first_reader = position_of_channel // group_size * (outputs // (channels // group_size))
        reader_input = position_of_channel % group_size
        masks = _shared_shift_masks(-dy, -dx, height, width, self.grad.dtype, self.stride)
        return (planes(self.grad), self.weight, dy, dx, self.stride, masks, first_reader,
                reader_input)


def group_pointwise_forward(x, weight, stride):
    """Grouped 1x1 convolution with stride s, weight (O, G), g = C / G groups.

    y[n, o, Y, X] = sum_{i<G} W[o, i] * x[n, g(o)*G + i, Y*s, X*s],  g(o) = o // (O / g).
    """
    no_offsets = np.zeros(weight.shape[1], dtype=np.int64)
    return _shifted_pointwise_forward(x, weight, no_offsets, no_offsets, stride)


def group_pointwise_backward(x, weight, grad_y, stride):
    """Gradients (grad_x, grad_weight) of `group_pointwise_forward`.

    y[n, o, Y, X] is linear in W[o, i] and in x[n, g(o)*G + i, Y*s, X*s], so
        grad_x[n, g*G + i, Y*s, X*s] = sum_{o in group g} W[o, i] * grad_y[n, o, Y, X]
        (0 at the pixels the stride skips: the transpose point-wise conv, upsampled by s),
        grad_W[o, i] = sum_{n, Y, X} grad_y[n, o, Y, X] * x[n, g(o)*G + i, Y*s, X*s].
    """
    no_offsets = np.zeros(weight.shape[1], dtype=np.int64)
    return _shifted_pointwise_backward(x, weight, grad_y, no_offsets, no_offsets, stride)


def ssc_forward(x, weight, kernel_size, stride, shuffle_groups=1, input_norm=None,
                moments=None):
    """Fused SSC: y = group_pointwise(shift(x)) without storing shift(x); G = weight.shape[1].

    y[n, o, Y, X] = sum_{i<G} W[o, i] * x[n, g(o)*G + i, Y*s + dy_i, X*s + dx_i]  (0 outside).
    With shuffle_groups > 1 the layer reads channel_shuffle(x, shuffle_groups) instead of x,
    through the index map `shuffled_channels`: no shuffled copy either. With input_norm =
    (mean, scale, bias), arrays (C,) in x's dtype, it reads a = relu((x - mean) * scale + bias)
    instead of x (a batch norm + ReLU in front of the layer, scale = inv_std * weight): y is
    the SSC of a, and a is never stored. With moments, a float64 array (N, O, 3), it also
    fills in y's plane moments for y's batch statistics (`minissc.kernels.norm.plane_moments`;
    the group kernel takes them as it writes each plane).
    """
    group_size = weight.shape[1]
    dy, dx = shift_offsets(group_size, kernel_size, group_size)
    return _shifted_pointwise_forward(x, weight, dy, dx, stride, shuffle_groups, input_norm,
                                      moments)


def ssc_backward(x, weight, grad_y, kernel_size, stride, shuffle_groups=1, input_norm=None,
                 output_norm=None, input_grad=True):
    """Gradients (grad_x, grad_weight) of `ssc_forward`, fused, without a shifted copy of x.

    With z = shift(x) and y = group_pointwise(z):
        grad_z[n, g*G + i, Y*s, X*s] = sum_{o in group g} W[o, i] * grad_y[n, o, Y, X]
                                       (0 at the pixels the stride skips),
        grad_x[n, j, y, x] = grad_z[n, j, y - dy_j, x - dx_j]         (inverse shift, 0 outside),
        grad_W[o, i] = sum_{n, Y, X} grad_y[n, o, Y, X] * x[n, g(o)*G + i, Y*s + dy_i, X*s + dx_i].
    The first two combine to
        grad_x[n, g*G + i, Y*s + dy_i, X*s + dx_i] = sum_{o in g} W[o, i] * grad_y[n, o, Y, X],
    so the kernel scatters into grad_x directly. A channel shuffle in front (shuffle_groups > 1)
    is a permutation of channels, so the same sums are written back through the same index map.
    With an input norm the layer's input is a = relu((x - mean) * scale + bias), recomputed from
    x as the kernel reads it: grad_W is the sum above with a in place of x, the first result
    is grad_a, the gradient with respect to a, and two more follow, the batch norm's
    parameter-gradient sums per channel (float64, shape (C,)), with g = grad_a * [a > 0]:
        sum_grad = sum_{n,y,x} g,    sum_grad_centred = sum_{n,y,x} g * (x - mean),
    computed as each grad_a plane is finished, in cache. The caller chains the batch norm +
    ReLU's backward from them (`minissc.kernels.norm.batch_norm_relu_input_grad`) to reach x.

    With output_norm = (y, mean, inv_std, weight, bias, sum_grad, sum_grad_centred,
    batch_statistics), the arguments of `batch_norm_relu_input_grad` but for its upstream,
    the layer's output y (this call's forward result) is read by a batch norm + ReLU whose
    backward has not run yet: grad_y is the gradient with respect to relu(batch_norm(y)), and
    the gradient with respect to y that the sums above need is that batch norm's grad_x. The
    group kernels compute it group by group as they read it, instead of a separate pass that
    writes it to memory and reads it back (the same values, rounded the same way).

    When y is read by a next SSC layer, grad_y may be a `NextLayerInputGrad`, which stands for
    that layer's grad_x, where `folds_next_layer`: the group kernel computes each row of it as
    it reads it, and the next layer's backward, called first with input_grad=False, need not
    write it. With input_grad=False the first result is None (the flat kernels then write no
    grad_x at all; the group kernels still do).
    """
    group_size = weight.shape[1]
    dy, dx = shift_offsets(group_size, kernel_size, group_size)
    return _shifted_pointwise_backward(x, weight, grad_y, dy, dx, stride, shuffle_groups,
                                       input_norm, output_norm, input_grad)


# ----------------------------------------------------------------------------------------------
# NumPy twins: the same functions written like the equations, for tests and tutorials
# ----------------------------------------------------------------------------------------------

def _shift_by_reference(x, dy, dx, pad):
    """out[:, j] = x[:, j] moved by (dy[j], dx[j]): zero-pad, then slice each channel."""
    height, width = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.empty_like(x)
    for j in range(x.shape[1]):
        top, left = pad + dy[j], pad + dx[j]
        out[:, j] = padded[:, j, top:top + height, left:left + width]
    return out


def shift_forward_reference(x, kernel_size, group_size):
    """NumPy twin of `shift_forward`: zero-pad by k//2, then slice each channel at its offset."""
    dy, dx = shift_offsets(x.shape[1], kernel_size, group_size)
    return _shift_by_reference(x, dy, dx, kernel_size // 2)


def shift_backward_reference(grad_out, kernel_size, group_size):
    """NumPy twin of `shift_backward`: the same slicing with negated offsets."""
    dy, dx = shift_offsets(grad_out.shape[1], kernel_size, group_size)
    return _shift_by_reference(grad_out, -dy, -dx, kernel_size // 2)


def _split_groups(array, groups):
    """(N, groups * m, H, W) -> (N, groups, m, H, W)."""
    batch, channels, height, width = array.shape
    return array.reshape(batch, groups, channels // groups, height, width)


def group_pointwise_forward_reference(x, weight, stride):
    """NumPy twin of `group_pointwise_forward`: subsample by the stride, then one einsum."""
    out_channels, group_size = weight.shape
    groups = x.shape[1] // group_size
    sampled = _split_groups(x[:, :, ::stride, ::stride], groups)       # (N, g, G, Ho, Wo)
    grouped_weight = weight.reshape(groups, out_channels // groups, group_size)
    y = np.einsum("goi,ngiyx->ngoyx", grouped_weight, sampled)
    return y.reshape(x.shape[0], out_channels, *y.shape[3:])


def group_pointwise_backward_reference(x, weight, grad_y, stride):
    """NumPy twin of `group_pointwise_backward`: transpose einsum upsampled by the stride."""
    out_channels, group_size = weight.shape
    groups = x.shape[1] // group_size
    sampled = _split_groups(x[:, :, ::stride, ::stride], groups)       # (N, g, G, Ho, Wo)
    grouped_weight = weight.reshape(groups, out_channels // groups, group_size)
    grouped_grad_y = _split_groups(grad_y, groups)                      # (N, g, O/g, Ho, Wo)
    grad_x = np.zeros_like(x)
    grad_sampled = np.einsum("goi,ngoyx->ngiyx", grouped_weight, grouped_grad_y)
    grad_x[:, :, ::stride, ::stride] = grad_sampled.reshape(x.shape[0], x.shape[1],
                                                            *grad_y.shape[2:])
    grad_weight = np.einsum("ngoyx,ngiyx->goi", grouped_grad_y, sampled)
    return grad_x, grad_weight.reshape(out_channels, group_size)


def _normalised_reference(x, input_norm):
    """x, or relu((x - mean) * scale + bias) per channel with input_norm = (mean, scale, bias)."""
    if input_norm is None:
        return x
    mean, scale, bias = (values[:, None, None] for values in input_norm)
    normalised = (x - mean) * scale + bias
    return np.where(normalised < 0, 0, normalised).astype(x.dtype)


def ssc_forward_reference(x, weight, kernel_size, stride, shuffle_groups=1, input_norm=None):
    """NumPy twin of `ssc_forward`: (batch norm + ReLU,) channel shuffle, shift, then group
    point-wise convolution."""
    x = channel_shuffle(_normalised_reference(x, input_norm), shuffle_groups)
    shifted = shift_forward_reference(x, kernel_size, weight.shape[1])
    return group_pointwise_forward_reference(shifted, weight, stride)


def ssc_backward_reference(x, weight, grad_y, kernel_size, stride, shuffle_groups=1,
                           input_norm=None, output_norm=None):
    """NumPy twin of `ssc_backward`: group point-wise backward on shift(x), the inverse shift,
    then the inverse channel shuffle (the shuffle with C / shuffle_groups groups); with an
    input norm, x normalised first, the gradient with respect to the normalised x, and the
    batch norm's two parameter-gradient sums; with an output norm, grad_y taken through that
    batch norm + ReLU's backward first."""
    group_size = weight.shape[1]
    if isinstance(grad_y, NextLayerInputGrad):  # the next layer's grad_x, which x does not change
        output_shape = (x.shape[0], weight.shape[0]) + x.shape[2:]
        grad_y = ssc_backward_reference(np.zeros(output_shape, x.dtype), grad_y.weight,
                                        grad_y.grad, grad_y.kernel_size, grad_y.stride,
                                        grad_y.shuffle_groups)[0]
    grad_y = _through_output_norm_reference(grad_y, output_norm)
    activation = _normalised_reference(x, input_norm)
    shuffled = channel_shuffle(activation, shuffle_groups)
    shifted = shift_forward_reference(shuffled, kernel_size, group_size)
    grad_shifted, grad_weight = group_pointwise_backward_reference(shifted, weight, grad_y, stride)
    grad_shuffled = shift_backward_reference(grad_shifted, kernel_size, group_size)
    grad_x = channel_shuffle(grad_shuffled, x.shape[1] // shuffle_groups)
    if input_norm is None:
        return grad_x, grad_weight
    kept_grad = np.where(activation > 0, grad_x, 0)
    centred = x - input_norm[0][:, None, None]
    return (grad_x, grad_weight, kept_grad.sum(axis=(0, 2, 3), dtype=np.float64),
            (kept_grad * centred).sum(axis=(0, 2, 3), dtype=np.float64))


def _through_output_norm_reference(grad_y, output_norm):
    """The gradient with respect to the layer's output y, from grad_y, the gradient with
    respect to relu(batch_norm(y)), with the batch norm's parameter-gradient sums given
    (output_norm, see `ssc_backward`): the batch norm's backward formula on g = grad_y [a > 0]."""
    if output_norm is None:
        return grad_y
    y, mean, inv_std, weight, bias, sum_grad, sum_grad_centred, batch_statistics = output_norm
    kept = norm.batch_norm_relu_forward_reference(y, mean, inv_std, weight, bias) > 0
    grad = np.where(kept, grad_y, 0)
    scale = (inv_std * weight)[:, None, None]
    if not batch_statistics:
        return (grad * scale).astype(y.dtype)
    count = y.size // y.shape[1]
    grad_weight, grad_bias = norm.parameter_grads(sum_grad, sum_grad_centred, inv_std, y.dtype)
    xhat = (y - mean[:, None, None]) * inv_std[:, None, None]
    return (scale / count * (count * grad - grad_bias[:, None, None]
                             - xhat * grad_weight[:, None, None])).astype(y.dtype)
