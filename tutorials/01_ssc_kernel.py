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
# # Tutorial 1: the SSC kernel
#
# A convolution layer with C input and O output channels holds a kernel of shape
# (O, C / groups, k, k): for every filter o and every input channel c it reads, one small
# k x k **spatial kernel**. In a dense 3x3 layer each spatial kernel has 9 weights.
#
# The super sparse convolution (SSC) of Lu et al. (AAAI 2019) keeps exactly one of them:
#
# > "In a SSC kernel, every spatial kernel has only one non-zero parameter and these non-zero
# > spatial positions are all different."  **[paper]**
#
# The paper does not say *which* position each channel gets. minissc's choice is a
# **reconstruction [recon]**: with group size G (the number of input channels a filter reads,
# at most k*k), input channel j uses position
#
#     p(j) = j mod G,   row r = p // k,   column q = p % k        (row-major on the k x k grid)
#
# so inside a group of G consecutive channels all positions differ, as the paper requires.
# (It is also how Shift-Net's CUDA kernel assigns channel c the direction c mod 9.)
#
# This tutorial draws the kernel, explains why "one non-zero each, all at different
# positions" is the right kind of sparsity, and counts what it saves.
#
# Run it as a script (`python tutorials/01_ssc_kernel.py`) or open it as a notebook.

# %%
import sys

import minissc  # before NumPy, so that minissc can limit BLAS to one thread (see its __init__)
import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from minissc import nn, reference
from minissc.kernels.ssc import shift_offsets
from minissc.summary import layer_macs

from tutorial_setup import FIGURES, QUICK, save  # noqa: E402 (shared setup)


rng = np.random.default_rng(0)

# %% [markdown]
# ## The dense kernel of an SSC layer
#
# An SSC layer stores only a point-wise weight matrix W of shape (O, G): filter o has one
# weight per input channel of its group. `minissc.reference.ssc_dense_kernel` spreads it into
# the dense (O, G, k, k) kernel that a plain convolution would use:
#
#     K[o, i, r_i, q_i] = W[o, i],   0 elsewhere.
#
# Take 4 filters reading one group of G = 9 channels with a 3x3 kernel.

# %%
filters, group_size, k = 4, 9, 3
ssc_weight = rng.standard_normal((filters, group_size))
ssc_kernel = reference.ssc_dense_kernel(ssc_weight, k)         # (4, 9, 3, 3)
dense_kernel = rng.standard_normal((filters, group_size, k, k))  # a dense 3x3 grouped kernel

print("SSC kernel shape:", ssc_kernel.shape)
print("non-zeros per spatial kernel (filters x channels):")
print(np.count_nonzero(ssc_kernel, axis=(2, 3)))
print("filter 0, channel 5, its 3x3 spatial kernel (one non-zero, at position 5 = row 1, col 2):")
print(np.round(ssc_kernel[0, 5], 2))

# %% [markdown]
# The figure draws both kernels as a grid of small 3x3 heatmaps: one row per filter, one
# column per input channel of the group. The dense kernel is full; the SSC kernel has a single
# coloured cell per 3x3 block, and along a row that cell walks through all 9 positions.


# %%
def kernel_mosaic(kernel):
    """(O, G, k, k) -> one 2-D image of the k x k blocks with a NaN gap of 1 between them."""
    out_channels, in_channels, kh, kw = kernel.shape
    mosaic = np.full((out_channels * (kh + 1) - 1, in_channels * (kw + 1) - 1), np.nan)
    for o in range(out_channels):
        for c in range(in_channels):
            mosaic[o * (kh + 1):o * (kh + 1) + kh, c * (kw + 1):c * (kw + 1) + kw] = kernel[o, c]
    return mosaic


def draw_kernel(ax, kernel, title):
    out_channels, in_channels, kh, kw = kernel.shape
    limit = np.abs(kernel).max()
    mosaic = kernel_mosaic(kernel)
    # Underneath: light grey cells (the zeros show through), white gaps between the blocks.
    ax.imshow(np.where(np.isnan(mosaic), 1.0, 0.86), cmap="gray", vmin=0, vmax=1)
    cmap = plt.get_cmap("RdBu_r").copy()
    cmap.set_bad((0, 0, 0, 0))  # transparent where masked: the gaps and the exact zeros
    image = ax.imshow(np.ma.masked_where(~(mosaic != 0) | np.isnan(mosaic), mosaic),
                      cmap=cmap, vmin=-limit, vmax=limit)
    for o in range(out_channels):
        for c in range(in_channels):
            left, top = c * (kw + 1) - 0.5, o * (kh + 1) - 0.5
            ax.add_patch(plt.Rectangle((left, top), kw, kh, fill=False, edgecolor="0.4",
                                       linewidth=0.6, clip_on=False))
            if np.count_nonzero(kernel[o, c]) == 1:  # outline the one weight of an SSC kernel
                r, q = np.argwhere(kernel[o, c])[0]
                ax.add_patch(plt.Rectangle((left + q, top + r), 1, 1, fill=False,
                                           edgecolor="black", linewidth=1.2, clip_on=False))
    ax.set_xticks([c * (kw + 1) + kw // 2 for c in range(in_channels)],
                  [f"{c}" for c in range(in_channels)])
    ax.set_yticks([o * (kh + 1) + kh // 2 for o in range(out_channels)],
                  [f"{o}" for o in range(out_channels)])
    ax.set_xlabel("input channel j of the group")
    ax.set_ylabel("filter o")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=11)
    return image


figure, axes = plt.subplots(2, 1, figsize=(9, 7.6), gridspec_kw=dict(hspace=0.35))
draw_kernel(axes[0], dense_kernel, "dense 3x3 kernel: 9 weights per spatial kernel")
image = draw_kernel(axes[1], ssc_kernel, "SSC kernel: 1 weight (outlined) per spatial kernel, "
                                         "at p(j) = j mod 9 [recon]")
figure.colorbar(image, ax=axes, shrink=0.6, label="weight (grey: exactly 0)")
save(figure, "01_dense_vs_ssc_kernel.png")

# %% [markdown]
# ## Which position does channel j read?
#
# `minissc.kernels.ssc.shift_offsets` turns p(j) into the offset (dy, dx) = (r - k//2, q - k//2)
# from the centre. With 18 channels and G = 9 there are two groups, and the pattern repeats:

# %%
channels = 18
dy, dx = shift_offsets(channels, k, group_size)
print(" j  group  p=j mod G  (r, q)   (dy, dx)")
for j in range(channels):
    p = j % group_size
    print(f"{j:2d}  {j // group_size:5d}  {p:9d}  ({p // k}, {p % k})  ({dy[j]:+d}, {dx[j]:+d})")

# %% [markdown]
# ## Why one non-zero each, at all different positions?
#
# Write the output of filter o at pixel (Y, X) as a sum over the channels of its group:
#
#     y[o, Y, X] = sum_i sum_(r,q) K[o, i, r, q] * x[i, Y + r - 1, X + q - 1]
#                = sum_i W[o, i] * x[i, Y + dy_i, X + dx_i]                  (SSC)
#
# * **One non-zero per spatial kernel** means channel i contributes one neighbour pixel,
#   weighted by one number. Its position is fixed, not learned, so the layer is a fixed
#   **shift** of each channel followed by a **group point-wise (1x1) convolution**
#   (tutorial 2 shows this).
# * **All positions different** within a group means that the G channels together still
#   cover G different pixels of the k x k neighbourhood. With G = k*k the filter keeps the full
#   3x3 receptive field of a dense layer, with 1/9 of the weights: redundancy removed along
#   the spatial extent (one weight per spatial kernel) and along the channel extent (groups).
#   If two channels shared a position, the filter would read that neighbour twice and some
#   other neighbour never.
#
# The footprint of a filter, the positions where any of its spatial kernels is non-zero:

# %%
footprint = (ssc_kernel[0] != 0).any(axis=0)
print("filter 0 reads these 3x3 positions (1 = some channel reads it):")
print(footprint.astype(int))
positions = [tuple(int(v) for v in np.argwhere(ssc_kernel[0, i])[0]) for i in range(group_size)]
print("positions (r, q) of channels 0..8:", positions)
assert footprint.all() and len(set(positions)) == group_size

# %% [markdown]
# With a smaller group, G < k*k, only the first G positions of the grid are used
# (again p(j) = j mod G [recon]); the footprint shrinks accordingly:

# %%
small = reference.ssc_dense_kernel(rng.standard_normal((1, 4)), 3)
print("G = 4, footprint of the filter:")
print((small[0] != 0).any(axis=0).astype(int))

# %% [markdown]
# ## What it saves
#
# For a layer with C_in input and C_out output channels, a k x k kernel and an output of
# H x W pixels (MACs = multiply-accumulates; one per weight per output pixel):
#
# | layer | parameters | MACs per image |
# |---|---|---|
# | dense k x k | C_out * C_in * k^2 | C_out * C_in * k^2 * H * W |
# | grouped dense k x k, g = C_in / G groups | C_out * G * k^2 | C_out * G * k^2 * H * W |
# | SSC, group size G | C_out * G | C_out * G * H * W (the shift costs no MAC) |
#
# So SSC is k^2 = 9 times cheaper than the grouped dense layer with the same groups, and
# C_in * k^2 / G times cheaper than a dense one. A concrete layer: the SSC1 layer of the first
# stage of an SSC-Net with r = 1 (tutorial 5), 144 -> 144 channels at 32 x 32, G = 9.
# minissc's own modules and `minissc.summary.layer_macs` count it:

# %%
c_in = c_out = 144
height = width = 32
layers = {
    "dense 3x3": nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
    "grouped dense 3x3 (16 groups of 9)": nn.Conv2d(c_in, c_out, 3, padding=1,
                                                     groups=c_in // 9, bias=False),
    "SSC (G = 9)": nn.SSCConv2d(c_in, c_out, 3, group_size=9),
}
formulas = {
    "dense 3x3": c_out * c_in * 9,
    "grouped dense 3x3 (16 groups of 9)": c_out * 9 * 9,
    "SSC (G = 9)": c_out * 9,
}
output_shape = (1, c_out, height, width)
costs = {}
print(f"{'layer':36s} {'parameters':>11s} {'MACs / image':>14s}")
for name, layer in layers.items():
    params, macs = layer.num_parameters(), layer_macs(layer, output_shape)
    assert params == formulas[name] and macs == formulas[name] * height * width
    costs[name] = (params, macs)
    print(f"{name:36s} {params:11,d} {macs:14,d}")

ssc = layers["SSC (G = 9)"]
dense_equivalent = ssc.dense_weight()
print(f"\nthe SSC layer's dense equivalent has {dense_equivalent.size:,} entries, "
      f"{np.count_nonzero(dense_equivalent):,} of them non-zero (= its {ssc.num_parameters():,} "
      f"parameters)")
ssc_params = costs["SSC (G = 9)"][0]
print(f"dense / SSC = {costs['dense 3x3'][0] // ssc_params}x, grouped dense / SSC = "
      f"{costs['grouped dense 3x3 (16 groups of 9)'][0] // ssc_params}x")

# %%
figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
names = list(costs)
colors = ["0.45", "C0", "C3"]
for ax, index, title in ((axes[0], 0, "parameters"), (axes[1], 1, "MACs per image")):
    values = [costs[name][index] for name in names]
    bars = ax.barh(range(len(names)), values, color=colors)
    ax.set_xscale("log")
    ax.set_yticks(range(len(names)), ["dense 3x3", "grouped dense 3x3\n(16 groups of 9)",
                                      "SSC (G = 9)"])
    ax.invert_yaxis()
    ax.set_xlim(min(values) / 3, max(values) * 12)
    for bar, value in zip(bars, values):
        ax.text(value * 1.15, bar.get_y() + bar.get_height() / 2, f"{value:,}", va="center",
                fontsize=9)
    ax.set_title(f"{title} (log scale)")
    ax.grid(axis="x", alpha=0.3)
axes[1].set_yticklabels([])
figure.suptitle("one 144 -> 144 channel layer at 32 x 32", y=1.02)
figure.tight_layout()
save(figure, "01_layer_costs.png")

# %% [markdown]
# ## Summary
#
# * An SSC kernel has one non-zero weight per spatial kernel, at positions that differ within
#   a group **[paper]**; minissc places channel j at p(j) = j mod G, row-major **[recon]**.
# * A filter then still sees its whole k x k neighbourhood (for G = k*k), with one weight per
#   input channel of its group.
# * Parameters and MACs drop by k^2 against the grouped dense layer, by C_in * k^2 / G against
#   a dense one: 144x for the 144 -> 144 layer above.
#
# Next, tutorial 2 shows that this sparse kernel is exactly a shift followed by a group
# point-wise convolution.
