# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 4: inside the kernels
#
# `minissc/kernels/ssc.py` computes an SSC layer three ways:
#
# 1. **NumPy twins** (`*_reference`): shift by slicing a padded copy, then one `einsum` per
#    layer. They read like the equations; the tests hold the fast kernels to them.
# 2. **Unfused Numba pair**: `shift_forward` writes the shifted copy of x, then
#    `group_pointwise_forward` runs the 1x1 convolution over it.
# 3. **Fused Numba kernel** `ssc_forward`: the point-wise loop reads each input pixel at its
#    shifted position directly, so the shifted copy never exists. Avoiding that copy (and
#    im2col) is the practical promise of the paper's "shift and group point-wise" form
#    **[paper]**; the fused kernel itself is minissc's implementation.
#
# This tutorial reads the code, checks the three agree, and times them on a realistic layer,
# with the JIT warm-up reported apart from the steady state.

# %%
import inspect
import statistics
import sys
import time

import minissc  # before NumPy, so that minissc can limit BLAS to one thread (see its __init__)
import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numba
import numpy as np

import minissc.functional as F
from minissc import Tensor, models, reference
from minissc.kernels import dense, plane_columns, ssc
from minissc.summary import summarize

from tutorial_setup import FIGURES, QUICK, save  # noqa: E402 (shared setup)


rng = np.random.default_rng(0)

# %% [markdown]
# ## The NumPy reference
#
# Here is the whole reference forward pass: a shift (pad, then slice each channel at its
# offset) and a grouped point-wise convolution (subsample by the stride, one `einsum`).

# %%
for function in (ssc.ssc_forward_reference, ssc.shift_forward_reference,
                 ssc.group_pointwise_forward_reference):
    print(inspect.getsource(function))

# %% [markdown]
# ## The equation as loops
#
# Before Numba, the same maths as plain Python loops (written here for teaching only). It is
# the sum of tutorial 2, term by term:
#
#     y[n, o, Y, X] = sum_i W[o, i] * x[n, g(o)*G + i, Y*s + dy_i, X*s + dx_i]   (0 outside)


# %%
def ssc_forward_loops(x, weight, kernel_size, stride):
    """A naive SSC forward pass, one multiply-accumulate per Python iteration."""
    batch, channels, height, width = x.shape
    out_channels, group_size = weight.shape
    outputs_per_group = out_channels // (channels // group_size)
    dy, dx = ssc.shift_offsets(group_size, kernel_size, group_size)
    out_height, out_width = ssc.output_size(height, stride), ssc.output_size(width, stride)
    y = np.zeros((batch, out_channels, out_height, out_width), dtype=x.dtype)
    for n in range(batch):
        for o in range(out_channels):
            first_channel = (o // outputs_per_group) * group_size
            for row in range(out_height):
                for col in range(out_width):
                    total = 0.0
                    for i in range(group_size):
                        in_row, in_col = row * stride + dy[i], col * stride + dx[i]
                        if 0 <= in_row < height and 0 <= in_col < width:
                            total += weight[o, i] * x[n, first_channel + i, in_row, in_col]
                    y[n, o, row, col] = total
    return y


tiny_x = rng.standard_normal((1, 18, 8, 8)).astype(np.float32)
tiny_w = rng.standard_normal((18, 9)).astype(np.float32)
start = time.perf_counter()
loops = ssc_forward_loops(tiny_x, tiny_w, 3, 1)
loop_seconds = time.perf_counter() - start
tiny_macs = 18 * 9 * 8 * 8
print(f"plain loops: {1e-3 * tiny_macs / loop_seconds:.0f} thousand MACs/s; "
      f"max |loops - ssc_forward| = "
      f"{np.abs(loops - ssc.ssc_forward(tiny_x, tiny_w, 3, 1)).max():.1e}")

# %% [markdown]
# ## The Numba kernel
#
# The fast kernel is those same loops, compiled by Numba, with these changes:
#
# * `prange` runs the output planes y[n, o] in parallel: each is written by one thread only,
#   so there is no race and no lock.
# * With stride 1 a shift by (dy, dx) is a constant offset dy * W + dx in a plane stored
#   flat (k = row * W + col). So the inner loop walks the whole plane at once: one long loop
#   that LLVM vectorises, where rows of 8 or 16 values would be too short to. With nine
#   inputs (3 x 3) one such loop adds all nine into y[n, o], each read at its offset from the
#   sample's planes laid end to end; a mask per input (`shift_masks`) drops the values that
#   lie outside the image, above, below, or across a row edge (col + dx outside the row),
#   by a select, which adds exactly 0. A plane whose read would run off the sample's ends,
#   and other group sizes, take a loop per input over the run of positions whose row reads
#   inside the image (`flat_run`). (With stride 2 the input index is not a constant offset
#   of the output index; `_strided_forward_kernel` goes row by row, every other value of an
#   input row, and for a full 3 x 3 grid `_3x3_stride2_forward_kernel` adds all nine inputs
#   in one pass over each output row, each output row reading nine fixed input rows at
#   stride 2. The backward instead spreads grad_y onto the input's grid, zeros between,
#   and runs the stride-1 loops: four times the terms, but vectorised, and faster than the
#   strided loops LLVM left scalar.)
# * The offsets are arguments: with all of them 0 the same kernel *is* the group point-wise
#   convolution, so `group_pointwise_forward` and `ssc_forward` share it.
# * Input channels are read through an index map (`input_channels`): the identity for a plain
#   SSC layer, a permutation when the SSC module's channel shuffle is folded into the second
#   SSC layer's reads (tutorial 5), so the shuffled copy is never stored either.
# * When a group has several outputs (SSC1 of an SSC module has 9 per group), all of them
#   read the same G shifted input planes. `_group_forward_kernel` then shifts the G planes
#   once into a small scratch block (per sample, in cache) and each output is a plain
#   weighted sum of the block, nine inputs per pass: no offsets, no select. Its backward,
#   `_group_backward_kernel`, goes input by input and takes the group's nine outputs in one
#   pass: it reads the input once, writes its gradient plane once, and keeps the nine weight
#   sums side by side in registers. Each pass takes two samples, so that the pass's fixed
#   costs (broadcasting nine weights, summing nine vector registers) are paid once for two
#   planes: on 8x8 planes, eight vector steps long, they were a large part. It first copies
#   the group's upstream planes into a block with zero margins, so that each loop runs over
#   a whole plane (a multiple of the vector width) instead of over a run that ends in a
#   scalar remainder. `ssc_forward` picks this
#   pair for stride 1 when a group has at least `GROUP_KERNEL_MIN_OUTPUTS` outputs
#   (`benchmarks/ssc_kernel_ab.py` compares the two pairs).

# %%
print(inspect.getsource(ssc._flat_forward_kernel.py_func))

# %% [markdown]
# ## A realistic layer
#
# The SSC1 layer of the first stage of an SSC-Net with r = 1 (tutorial 5): 144 -> 144 channels
# at 32 x 32, G = 9, stride 1, float32, batch 32 in quick mode and 128 otherwise.
# We compute it four ways and check that they agree; the fourth is a dense grouped 3x3
# convolution (im2col + BLAS, `minissc.kernels.dense`) with the SSC layer's dense kernel, i.e.
# what SSC costs when its sparsity is ignored.

# %%
batch = 32 if QUICK else 128
channels = out_channels = 144
height = width = 32
group_size, k = 9, 3
x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
weight = (rng.standard_normal((out_channels, group_size)) / 3).astype(np.float32)
grad_y = rng.standard_normal((batch, out_channels, height, width)).astype(np.float32)
dense_kernel = reference.ssc_dense_kernel(weight, k)
groups = channels // group_size


def forward_unfused():
    return ssc.group_pointwise_forward(ssc.shift_forward(x, k, group_size), weight, 1)


shifted = ssc.shift_forward(x, k, group_size)  # the pair keeps this copy from its forward pass


def backward_unfused():
    grad_shifted, grad_weight = ssc.group_pointwise_backward(shifted, weight, grad_y, 1)
    return ssc.shift_backward(grad_shifted, k, group_size), grad_weight


methods = {  # (pass, method): function
    ("forward", "NumPy reference"): lambda: ssc.ssc_forward_reference(x, weight, k, 1),
    ("forward", "Numba unfused pair"): forward_unfused,
    ("forward", "Numba fused"): lambda: ssc.ssc_forward(x, weight, k, 1),
    ("forward", "dense 3x3 (im2col)"): lambda: dense.conv2d_forward(x, dense_kernel, 1, 1,
                                                                    groups),
    ("backward", "NumPy reference"): lambda: ssc.ssc_backward_reference(x, weight, grad_y, k, 1),
    ("backward", "Numba unfused pair"): backward_unfused,
    ("backward", "Numba fused"): lambda: ssc.ssc_backward(x, weight, grad_y, k, 1),
    ("backward", "dense 3x3 (im2col)"): lambda: dense.conv2d_backward(x, dense_kernel, grad_y,
                                                                      1, 1, groups),
}

# %% [markdown]
# ### Warm-up
#
# A Numba kernel is compiled on its first call for the argument types it gets. minissc's
# kernels use `@njit(cache=True)`, so the machine code is also saved next to the source
# (`minissc/kernels/__pycache__`) and later processes only load it. The first call of each
# method below therefore costs a compile (the very first run after installing or editing
# minissc) or a cache load, plus the first touch of freshly allocated memory, unless an
# earlier cell already ran its kernel: the plain-loops check above ran the fused forward,
# and `shifted` the shift kernel, so the forward rows can say "already warm".

# %%
numba_kernels = (ssc._shift_kernel, ssc._flat_forward_kernel, ssc._flat_backward_kernel,
                 ssc._group_forward_kernel, ssc._group_backward_kernel)


def cache_counts():
    return (sum(sum(kernel.stats.cache_hits.values()) for kernel in numba_kernels),
            sum(sum(kernel.stats.cache_misses.values()) for kernel in numba_kernels))


outputs, first_call = {}, {}
print(f"{'pass':9s}{'method':22s}{'first call':>12s}   Numba kernels")
for (pass_name, method), function in methods.items():
    hits, misses = cache_counts()
    start = time.perf_counter()
    outputs[pass_name, method] = function()
    first_call[pass_name, method] = time.perf_counter() - start
    new_hits, new_misses = cache_counts()
    note = ("compiled" if new_misses > misses else "loaded from the cache" if new_hits > hits
            else "already warm (its kernels ran before)" if "Numba" in method
            else "(no Numba)")
    print(f"{pass_name:9s}{method:22s}{1000 * first_call[pass_name, method]:9.1f} ms   {note}")

# %% [markdown]
# How long a compile without the cache takes: compile a fresh copy of the shift kernel (the
# same Python function, `py_func`, given to `numba.njit` again, without `cache=True`). The
# point-wise kernels are larger and take longer.

# %%
fresh_kernel = numba.njit(parallel=True)(ssc._shift_kernel.py_func)
dy, dx = ssc.shift_offsets(18, k, group_size)
start = time.perf_counter()
flat_x = tiny_x.reshape(1, 18, 64)  # the kernel takes flat planes
fresh_kernel(flat_x, dy, dx, 8, plane_columns(8, 8), np.zeros_like(flat_x))
print(f"JIT compile of the shift kernel: {time.perf_counter() - start:.2f} s "
      f"(paid once per process when there is no cache)")

# %% [markdown]
# ### They agree

# %%
for pass_name in ("forward", "backward"):
    fused = outputs[pass_name, "Numba fused"]
    fused = fused if pass_name == "forward" else fused[0]  # backward: compare grad_x
    for method in ("NumPy reference", "Numba unfused pair", "dense 3x3 (im2col)"):
        other = outputs[pass_name, method]
        other = other if pass_name == "forward" else other[0]
        print(f"{pass_name:9s} max |fused - {method}| = {np.abs(fused - other).max():.1e}")

# %% [markdown]
# ### Steady state
#
# Each method again, several times; we report the median. The machine these tutorials were
# run on has 2 cores shared with other work, so expect noise, sometimes large.

# %%
repeats = 3 if QUICK else 7


def median_seconds(function):
    """The median time of `repeats` calls of function()."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


steady = {key: median_seconds(function) for key, function in methods.items()}

macs = batch * out_channels * group_size * height * width
print(f"batch {batch}, {numba.get_num_threads()} Numba threads, {macs / 1e6:.0f} M MACs per pass "
      f"(the dense 3x3 does {9 * macs / 1e6:.0f} M)")
print(f"{'pass':9s}{'method':22s}{'first call':>12s}{'steady':>11s}{'images/s':>10s}")
for key in methods:
    print(f"{key[0]:9s}{key[1]:22s}{1000 * first_call[key]:9.1f} ms{1000 * steady[key]:8.1f} ms"
          f"{batch / steady[key]:10.0f}")
for pass_name in ("forward", "backward"):
    speedup = steady[pass_name, "Numba unfused pair"] / steady[pass_name, "Numba fused"]
    fused = steady[pass_name, "Numba fused"]
    print(f"{pass_name}: fused is {speedup:.2f}x as fast as the unfused pair, "
          f"{steady[pass_name, 'NumPy reference'] / fused:.2f}x the NumPy reference, "
          f"{steady[pass_name, 'dense 3x3 (im2col)'] / fused:.1f}x the dense 3x3")
parts = {"shift": median_seconds(lambda: ssc.shift_forward(x, k, group_size)),
         "point-wise": median_seconds(lambda: ssc.group_pointwise_forward(shifted, weight, 1))}
fused_forward = steady["forward", "Numba fused"]
print(f"forward, the pair's parts: shift {1000 * parts['shift']:.1f} ms + point-wise "
      f"{1000 * parts['point-wise']:.1f} ms; the fused kernel, {1000 * fused_forward:.1f} ms, "
      f"costs {fused_forward / parts['point-wise']:.2f}x the plain point-wise pass")
pair_total = steady["forward", "Numba unfused pair"] + steady["backward", "Numba unfused pair"]
fused_total = steady["forward", "Numba fused"] + steady["backward", "Numba fused"]
print(f"forward + backward: fused {1000 * fused_total:.1f} ms, unfused pair "
      f"{1000 * pair_total:.1f} ms ({pair_total / fused_total:.2f}x)")

# %% [markdown]
# ## Why fusion wins, and by how much: memory traffic
#
# Count the bytes each version must move between main memory and the cores, in float32
# (4 bytes), with X = the bytes of x, Y = the bytes of y (here X = Y) and z = shift(x):
#
# | pass | unfused pair | fused |
# |---|---|---|
# | forward | shift x -> z, point-wise z -> y: **3X + Y** | x -> y: **X + Y** |
# | backward | point-wise (z, dy) -> dz, inverse shift dz -> dx: **4X + Y** | (x, dy) -> dx: **2X + Y** |
#
# The arithmetic is small: 9 MACs (18 flops) per output value, against at least 8 bytes moved
# per output value in the fused forward pass, about 2 flops per byte. A CPU core does tens of
# flops in the time it moves a byte from main memory, so an SSC layer is limited by memory
# traffic rather than by arithmetic, and the pair's extra passes over z are pure overhead. (The
# model ignores re-reads: the fused kernel reads each input plane once per output of its
# group, but those re-reads of a 4 KB plane hit the L1/L2 cache.)
#
# Read the measurements with two caveats:
#
# * The model counts traffic to **main memory**. Arrays that fit in the last-level cache (32 MB
#   on the machine the committed figures were made on: at batch 32 each tensor of this layer is
#   19 MB) make the pair's extra pass cheap, and the speed-up shrinks towards 1x; at batch 128
#   (75 MB per tensor) the extra passes go to main memory. On a machine shared with other work
#   the numbers also move by tens of percent from run to run.
# * The fused loop can be slower than the plain point-wise loop over the same data (its runs
#   are shifted, so they start at unaligned addresses and the edge columns need a select;
#   the printout above compares the two), which then eats part of the saved shift. The backward
#   kernel also computes dW in the same loop: a sum per plane in vector lanes, in an order fixed
#   when the kernel is compiled, so that the result is deterministic. So the measured gain is
#   smaller than the traffic ratio, and it varies from run to run.
#
# What fusion saves whatever the machine is memory: for its backward pass the pair must keep
# the shifted copy z of every SSC layer's input from the forward pass. The "GB/s achieved"
# lines show how close each version runs to the memory bandwidth.

# %%
x_bytes, y_bytes = x.nbytes, batch * out_channels * height * width * 4
traffic = {
    ("forward", "Numba unfused pair"): 3 * x_bytes + y_bytes,
    ("forward", "Numba fused"): x_bytes + y_bytes,
    ("backward", "Numba unfused pair"): 4 * x_bytes + y_bytes,
    ("backward", "Numba fused"): 2 * x_bytes + y_bytes,
}
print(f"x: {x_bytes / 1e6:.1f} MB, y: {y_bytes / 1e6:.1f} MB")
print(f"flops per byte moved (fused forward): {2 * macs / traffic['forward', 'Numba fused']:.2f}")
for key, moved in traffic.items():
    print(f"{key[0]:9s}{key[1]:20s} moves {moved / 1e6:7.1f} MB -> "
          f"{moved / steady[key] / 1e9:5.1f} GB/s achieved")

# %% [markdown]
# The memory the pair would hold in a whole network: `summarize` lists every layer's output
# shape, and an SSC layer's input is the output of the layer before it.

# %%
rows = summarize(models.create("sscresnet20", r=1))
shifted_copies = sum(4 * batch * int(np.prod(rows[index - 1].output_shape[1:]))
                     for index, row in enumerate(rows) if row.type == "SSCConv2d")
count = sum(row.type == "SSCConv2d" for row in rows)
print(f"sscresnet20 (r=1), batch {batch}: {count} SSC layers; the unfused pair would keep "
      f"{shifted_copies / 1e9:.2f} GB of shifted copies for the backward pass, the fused "
      f"kernel none")

# %%
figure, (traffic_ax, memory_ax, time_ax) = plt.subplots(
    1, 3, figsize=(15.5, 4.4), gridspec_kw=dict(width_ratios=[1, 0.55, 1.7]))
passes = ("forward", "backward")
bar = 0.38
for offset, method, color in ((-bar / 2, "Numba unfused pair", "C1"),
                              (bar / 2, "Numba fused", "C3")):
    values = [traffic[p, method] / 1e6 for p in passes]
    bars = traffic_ax.bar(np.arange(2) + offset, values, bar, color=color, label=method)
    traffic_ax.bar_label(bars, fmt="%.0f", fontsize=8.5)
traffic_ax.set_xticks(range(2), passes)
traffic_ax.set_ylabel("MB moved (model)")
traffic_ax.set_title(f"memory traffic of one pass, batch {batch}")
traffic_ax.legend(fontsize=8.5, loc="upper left")
traffic_ax.set_ylim(0, max(traffic.values()) / 1e6 * 1.2)

method_names = ["NumPy reference", "Numba unfused pair", "Numba fused", "dense 3x3 (im2col)"]
colors = ["C0", "C1", "C3", "0.5"]
groups_shown = ("forward", "backward", "forward + backward")
bar = 0.2
for index, (method, color) in enumerate(zip(method_names, colors)):
    values = [1000 * steady["forward", method], 1000 * steady["backward", method]]
    values.append(values[0] + values[1])
    bars = time_ax.bar(np.arange(3) + (index - 1.5) * bar, values, bar, color=color,
                       label=method)
    time_ax.bar_label(bars, fmt="%.0f", fontsize=8)
time_ax.set_xticks(range(3), groups_shown)
time_ax.set_ylabel("ms (median, steady state)")
time_ax.set_title(f"measured time, batch {batch}, 144 -> 144 channels, 32 x 32, "
                  f"{numba.get_num_threads()} threads")
time_ax.legend(fontsize=8.5, loc="upper left")
time_ax.set_ylim(0, 1000 * (steady["forward", "dense 3x3 (im2col)"]
                            + steady["backward", "dense 3x3 (im2col)"]) * 1.12)
bars = memory_ax.bar([0, 1], [shifted_copies / 1e9, 0], 0.6, color=["C1", "C3"])
memory_ax.bar_label(bars, fmt="%.2f GB", fontsize=8.5)
memory_ax.set_xticks([0, 1], ["unfused\npair", "fused"])
memory_ax.set_ylabel("GB")
memory_ax.set_ylim(0, shifted_copies / 1e9 * 1.2)
memory_ax.set_title(f"shifted copies kept for\nbackward, sscresnet20, batch {batch}",
                    fontsize=10.5)
for ax in (traffic_ax, memory_ax, time_ax):
    ax.grid(axis="y", alpha=0.3)
figure.tight_layout()
save(figure, "04_fusion.png")

# %% [markdown]
# ## One level up: the batch norm folded into the SSC's reads
#
# In an SSC module each SSC layer reads a = relu(batch_norm(x)), and a is the widest tensor
# of the block. Stored, it costs the batch norm a write of A bytes and the SSC a read of A,
# and the backward pass must keep it. `F.batch_norm_relu_ssc_conv2d` (what
# `layer(x, input_norm=bn)` calls, `layer` an `nn.SSCConv2d`) instead hands the kernels
# (mean, scale, bias) per channel, and they compute a = relu((x - mean) * scale + bias) as
# they load x, with the batch norm kernel's own rounding (`_normalised`), so a never exists
# and the result is the same to the bit. The batch statistics still need one read of x
# first: the forward moves 2X + Y (the statistics read X, the SSC reads X and writes Y)
# instead of 4X + Y (the statistics read X, the batch norm + ReLU reads X and writes
# A = X, the SSC reads A and writes Y).
#
# The backward pass follows from the chain rule through a. With g = da * [a > 0]:
#
#     da       = the SSC backward at a          (the kernel recomputes a from x as it reads)
#     dbias    = sum g,   dweight = inv_std * sum g * (x - mean)     (per channel)
#     dx       = weight * inv_std / M * (M g - dbias - xhat * dweight)
#
# The two sums need da and x, which the SSC backward kernel holds in cache at the moment it
# finishes a plane of da, so it adds that plane's share there (`_input_norm_grad_sums`, in
# float64, the batch norm's own loop). The batch norm's backward then makes one pass (read da
# and x, write dx) instead of two. The check below runs the fused op and the pair side by
# side: values and all four gradients agree to the bit.

# %%
bn_weight = rng.uniform(0.5, 1.5, channels).astype(np.float32)
bn_bias = (rng.standard_normal(channels) / 10).astype(np.float32)


def bn_relu_ssc(fused):
    """Forward + backward of BN + ReLU then SSC, as one op or as the two; the gradients."""
    leaves = [Tensor(a, requires_grad=True) for a in (x, bn_weight, bn_bias, weight)]
    x_in, gamma, beta, w = leaves
    stats = (np.zeros(channels, np.float32), np.ones(channels, np.float32))
    if fused:
        y = F.batch_norm_relu_ssc_conv2d(x_in, gamma, beta, *stats, w, k)
    else:
        y = F.ssc_conv2d(F.batch_norm_relu2d(x_in, gamma, beta, *stats), w, k)
    y.backward(grad_y)
    return [y.data] + [leaf.grad for leaf in leaves]


def compare_and_time(run, claim, names):
    """run(True), one op, against run(False), the ops it replaces: all their results equal to
    the bit, then the median time of each (names: the ops', then the one op's)."""
    results = {one_op: run(one_op) for one_op in (True, False)}  # also compiles
    print(f"{claim}, to the bit:",
          all(np.array_equal(a, b) for a, b in zip(results[True], results[False])))
    for one_op, name in zip((False, True), names):
        seconds = median_seconds(lambda: run(one_op))
        print(f"{name:30s} forward + backward: {1000 * seconds:6.1f} ms (median)")


compare_and_time(bn_relu_ssc, "fused op == the pair",
                 ("BN + ReLU, then SSC", "BN + ReLU folded into SSC"))

# %% [markdown]
# ### Two layers: the next batch norm's backward folded in as well
#
# An SSC module chains two such layers: y1 = SSC1(relu(bn1(x))), y = SSC2(relu(bn2(y1))).
# Going backward, SSC2's kernel gives da2 and bn2's sums, and bn2's grad_x pass then writes
# dy1 = weight2 * inv_std2 / M * (M g2 - dbias2 - xhat2 * dweight2), g2 = da2 * [a2 > 0],
# for SSC1's backward to read back: a write and a read of y1's size. But every term of
# dy1 is known once SSC2's backward is done (da2, y1 and the two sums), so SSC1's backward
# kernel can compute dy1 itself, for one group of outputs at a time, just before it reads
# them (``output_norm`` of `ssc.ssc_backward`, the helper `_fill_upstream_block`). It uses the
# batch norm kernel's own expression (`norm._input_grad`), so dy1 is rounded the same way.
#
# da2 itself need not be stored either. SSC2 is linear in its input, so its input gradient
# depends only on its weight and its upstream gradient: with one output per group (or a few)
# each plane of da2 is one or a few weighted, shifted copies of the small upstream planes,
# da2[n, c] = W2[o, i] * shift^-1(grad_y[n, o]): the inverse shift of section 1 of tutorial
# 3, grad_y first spread onto the input's grid when the stride is 2 (c the channel before
# the shuffle). So SSC2's backward skips writing it
# (``input_grad=False``) and SSC1's kernel recomputes each plane as it reads it, from
# grad_y (`ssc.NextLayerInputGrad`), with the same products summed in the same order.
# `F.batch_norm_relu_ssc_pair` is the two layers as one op with this backward; an SSC
# module uses it in training (`minissc.nn.ssc_pair`). Against the two ops:

# %%
pair_weight = (rng.standard_normal((groups, group_size)) / 3).astype(np.float32)
pair_grad_y = rng.standard_normal((batch, groups, height, width)).astype(np.float32)


def ssc_pair(as_one_op):
    """Forward + backward of BN + ReLU + SSC1 then BN + ReLU + SSC2; all the gradients."""
    leaves = [Tensor(a, requires_grad=True)
              for a in (x, bn_weight, bn_bias, weight, bn_weight, bn_bias, pair_weight)]
    x_in, gamma1, beta1, w1, gamma2, beta2, w2 = leaves
    stats = [np.zeros(channels, np.float32), np.ones(channels, np.float32)] * 2
    if as_one_op:
        y = F.batch_norm_relu_ssc_pair(x_in, (gamma1, beta1, *stats[:2], 0.1, 1e-5), w1,
                                       (gamma2, beta2, *stats[2:], 0.1, 1e-5), w2, k,
                                       shuffle_groups=groups)
    else:
        y1 = F.batch_norm_relu_ssc_conv2d(x_in, gamma1, beta1, *stats[:2], w1, k)
        y = F.batch_norm_relu_ssc_conv2d(y1, gamma2, beta2, *stats[2:], w2, k,
                                         shuffle_groups=groups)
    y.backward(pair_grad_y)
    return [y.data] + [leaf.grad for leaf in leaves]


compare_and_time(ssc_pair, "one op == the two ops",
                 ("two folded SSC ops", "one op, bn2's backward folded"))

# %% [markdown]
# ### And the first batch norm's backward folded into the 1x1 convolution's
#
# In front of SSC1 an SSC module has a 1x1 convolution, x = conv(x0) (16 -> 144 channels
# here). bn1's grad_x pass writes dx, for the convolution's backward to read it back twice
# (dW = dx x0^T and dx0 = W^T dx, two matrix products). The convolution's backward already
# runs a chunk of images at a time (`dense.conv2d_backward`), so with ``conv_weight`` the pair
# op runs the convolution too and hands its backward an object that computes dx for the
# chunk it asks for (`norm.InputGradByImages`): each chunk of dx is made in cache and used
# there, and dx never exists whole. Same formula, same chunks, so the same bits:

# %%
conv_x0 = rng.standard_normal((batch, 16, height, width)).astype(np.float32)
conv_weight = (rng.standard_normal((channels, 16, 1, 1)) / 4).astype(np.float32)


def conv_and_pair(as_one_op):
    """Forward + backward of the 1x1 convolution and the pair op; all the gradients."""
    leaves = [Tensor(a, requires_grad=True)
              for a in (conv_x0, conv_weight, bn_weight, bn_bias, weight, bn_weight, bn_bias,
                        pair_weight)]
    x0, w0, gamma1, beta1, w1, gamma2, beta2, w2 = leaves
    stats = [np.zeros(channels, np.float32), np.ones(channels, np.float32)] * 2
    norms = (gamma1, beta1, *stats[:2], 0.1, 1e-5), (gamma2, beta2, *stats[2:], 0.1, 1e-5)
    if as_one_op:
        y = F.batch_norm_relu_ssc_pair(x0, norms[0], w1, norms[1], w2, k, shuffle_groups=groups,
                                       conv_weight=w0)
    else:
        y = F.batch_norm_relu_ssc_pair(F.conv2d(x0, w0), norms[0], w1, norms[1], w2, k,
                                       shuffle_groups=groups)
    y.backward(pair_grad_y)
    return [y.data] + [leaf.grad for leaf in leaves]


compare_and_time(conv_and_pair, "one op == conv, then the pair",
                 ("1x1 conv, then the pair op", "one op, bn1's backward folded"))

# %% [markdown]
# ## Summary
#
# * The NumPy twin is the specification; the Numba kernel is the same loops, parallel over
#   output planes, each plane walked as one flat run with the bounds hoisted out of it.
# * Warm-up (compile or cache load) is paid once per process; report it apart from the
#   steady state.
# * An SSC layer does about 2 flops per byte moved. The fused kernel moves about half the
#   bytes of the shift + point-wise pair; in time that is worth the shift's pass minus the
#   fused loop's own overhead (on the machine of the committed figure the fused forward pass
#   ranged from slightly slower to ~2x faster than the pair over several runs), and it never
#   needs the shifted copies (a gigabyte for a whole network at batch 128).
# * Ignoring the sparsity (a dense 3x3 with the same kernel) costs 9x the arithmetic and is
#   several times slower.
#
# Tutorial 5 puts SSC layers into networks.
