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
# # Tutorial 2: shift + group point-wise = a dense sparse-kernel convolution
#
# The paper says an SSC layer "can be entirely implemented by the shift and group point-wise
# convolutional operations without any spatial kernels (e.g. 3x3)" **[paper]**. This tutorial
# derives why on paper, checks it numerically with minissc's ops against its dense oracle, and
# shows what the shift does to a real image.
#
# ## The derivation
#
# Take an SSC layer with C input channels in g = C / G groups of G, O outputs, kernel size k,
# stride s, zero padding k//2. Filter o belongs to group g(o) = o // (O / g) and reads the
# channels c_i = g(o)*G + i, i < G. Channel c_i sits at kernel position p = i (minissc's
# p(j) = j mod G, row-major, is a **reconstruction [recon]**; the paper only says the positions
# differ), i.e. at row r_i = i // k and column q_i = i % k.
#
# 1. A dense grouped convolution with kernel K (O, G, k, k) and the zero-padded input xp reads
#
#        y[n, o, Y, X] = sum_i sum_(r,q) K[o, i, r, q] * xp[n, c_i, Y*s + r, X*s + q].
#
# 2. The SSC kernel is K[o, i, r, q] = W[o, i] if (r, q) = (r_i, q_i), else 0
#    (`reference.ssc_dense_kernel`), so the inner sum keeps one term:
#
#        y[n, o, Y, X] = sum_i W[o, i] * xp[n, c_i, Y*s + r_i, X*s + q_i].
#
# 3. Padding by k//2 means xp[.., a + k//2, b + k//2] = x[.., a, b] inside the image, 0 outside.
#    With the offsets dy_i = r_i - k//2 and dx_i = q_i - k//2:
#
#        xp[n, c_i, Y*s + r_i, X*s + q_i] = x[n, c_i, Y*s + dy_i, X*s + dx_i]   (0 outside)
#                                         = shift(x)[n, c_i, Y*s, X*s],
#
#    where shift(x)[n, j, y, x] = x[n, j, y + dy_j, x + dx_j] moves every channel by its own
#    offset and fills with zeros (`minissc.functional.shift`).
#
# 4. Hence
#
#        y[n, o, Y, X] = sum_i W[o, i] * shift(x)[n, g(o)*G + i, Y*s, X*s],
#
#    which is a group point-wise (1x1) convolution with stride s of the shifted input
#    (`minissc.functional.group_pointwise_conv2d`). No 3x3 kernel, no im2col: a memory move and
#    a small matrix product per group. The shift is taken at full resolution; the stride only
#    picks which shifted pixels the 1x1 convolution reads.

# %%
import os
import sys

import minissc  # before NumPy, so that minissc can limit BLAS to one thread (see its __init__)
import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import minissc.functional as F
from minissc import data, reference
from minissc.kernels.ssc import shift_offsets

from tutorial_setup import FIGURES, QUICK, save  # noqa: E402 (shared setup)


rng = np.random.default_rng(0)

# %% [markdown]
# ## Checking it numerically
#
# Three ways to compute the same layer:
#
# * `shift` then `group_pointwise_conv2d` (the readable pair, two Numba kernels),
# * `ssc_conv2d`, the fused kernel that never stores the shifted copy (tutorial 4),
# * `reference.conv2d` with `reference.ssc_dense_kernel(W, k)`: a plain dense grouped
#   convolution written in NumPy that shares no code with the other two (the oracle).
#
# We try several kernel sizes, group sizes (including G < k*k), strides and a non-square
# image, in float64 and float32.

# %%
configs = [  # (C, O, G, k, stride, H, W)
    (18, 12, 9, 3, 1, 9, 11),
    (18, 12, 9, 3, 2, 9, 11),
    (16, 8, 4, 3, 1, 7, 7),
    (50, 4, 25, 5, 2, 12, 10),
    (6, 6, 1, 3, 1, 5, 8),   # G = 1: depth-wise, every channel reads position 0 (-1, -1)
]
print(f"{'C':>3} {'O':>3} {'G':>3} {'k':>2} {'s':>2} {'H x W':>7}  {'dtype':8}"
      f"{'|pair - dense|':>16} {'|fused - dense|':>17}")
for channels, out_channels, group_size, k, stride, height, width in configs:
    for dtype in (np.float64, np.float32):
        x = rng.standard_normal((2, channels, height, width)).astype(dtype)
        weight = rng.standard_normal((out_channels, group_size)).astype(dtype)
        pair = F.group_pointwise_conv2d(F.shift(x, k, group_size), weight, stride).data
        fused = F.ssc_conv2d(x, weight, k, stride).data
        dense = reference.conv2d(x, reference.ssc_dense_kernel(weight, k), stride=stride,
                                 padding=k // 2, groups=channels // group_size)
        assert pair.shape == fused.shape == dense.shape
        pair_error, fused_error = np.abs(pair - dense).max(), np.abs(fused - dense).max()
        tolerance = 1e-12 if dtype == np.float64 else 1e-5
        assert pair_error < tolerance and fused_error < tolerance
        print(f"{channels:3d} {out_channels:3d} {group_size:3d} {k:2d} {stride:2d} "
              f"{height:3d} x {width:<3d} {np.dtype(dtype).name:8s}"
              f"{pair_error:16.2e} {fused_error:17.2e}")

# %% [markdown]
# The three agree to rounding: ~1e-15 in float64 and ~1e-6 in float32 where the fused
# kernel is the group kernel (the first shape: 6 outputs per group, stride 1), whose sums
# round once per multiply-add (`minissc.kernels.multiply_add`), and to the last bit in the
# other shapes, which happen to add the same products in the same order.
# The test suite checks the same identity, and the gradients too, on hundreds of random shapes.
#
# ## What the shift does to an image
#
# We load CIFAR-10 with `minissc.data.load_cifar` from the folder in the environment variable
# `MINISSC_DATA` (default `data`), without downloading. If it is not there, we fall back to a
# synthetic picture drawn below, and say so.


# %%
def synthetic_picture(size=32):
    """An RGB uint8 'house under the sun' with sharp edges, to stand in for a CIFAR image."""
    y, x = np.mgrid[0:size, 0:size]
    image = np.zeros((3, size, size))
    image[:] = np.array([70, 120, 200])[:, None, None] * (1 - 0.4 * y / size)  # sky
    image[:, y >= 22] = np.array([60, 150, 60])[:, None]                       # grass
    sun = (y - 7) ** 2 + (x - 24) ** 2 <= 16
    image[:, sun] = np.array([255, 230, 80])[:, None]
    wall = (y >= 14) & (y < 26) & (x >= 5) & (x < 17)
    image[:, wall] = np.array([230, 220, 200])[:, None]
    roof = (y >= 7) & (y < 14) & (np.abs(x - 10.5) <= (y - 7) + 1)
    image[:, roof] = np.array([170, 40, 40])[:, None]
    door = (y >= 19) & (y < 26) & (x >= 9) & (x < 12)
    image[:, door] = np.array([90, 60, 40])[:, None]
    return image.astype(np.uint8)


data_dir = os.environ.get("MINISSC_DATA", "data")
try:
    cifar = data.load_cifar("cifar10", data_dir, download=False)
    index = 13
    picture = cifar.test_images[index]
    picture_name = f"CIFAR-10 test image {index} ({cifar.classes[cifar.test_labels[index]]})"
    print(f"loaded {cifar.source}")
except (data.DatasetNotFoundError, data.DatasetError) as error:
    picture = synthetic_picture()
    picture_name = "a synthetic picture (CIFAR-10 not found)"
    print(f"CIFAR-10 is not in {os.path.abspath(data_dir)!r} ({type(error).__name__}), so this "
          f"tutorial uses a SYNTHETIC picture instead. Set MINISSC_DATA to the folder holding "
          f"cifar-10-batches-py/ (or the archive) to see a real one.")
print("picture:", picture_name)

# %% [markdown]
# Take the red plane of the picture and make 9 copies of it, channels j = 0..8 of one group.
# `F.shift(x, 3, 9)` moves channel j by the offset of position p = j: output pixel (y, x) reads
# the input pixel (y + dy, x + dx), so the picture content moves the *opposite* way, by
# (-dy, -dx), and the row or column that nothing moves into is filled with zeros. Shifting an
# image of ones the same way tells which pixels are that zero fill (drawn in cyan). The panel at
# row r, column q of the grid shows position p = 3r + q; the red square frames the same pixels
# in every panel, so you can watch the content slide by one pixel under it.

# %%
plane = picture[0].astype(np.float32) / 255.0
copies = np.repeat(plane[None, None], 9, axis=1)             # (1, 9, 32, 32)
shifted = F.shift(copies, kernel_size=3, group_size=9).data
inside = F.shift(np.ones_like(copies), kernel_size=3, group_size=9).data  # 0 where zero-filled
dy, dx = shift_offsets(9, 3, 9)

gray = plt.get_cmap("gray").copy()
gray.set_bad("cyan")
top, left = 7, 12  # the framed 6 x 6 pixels
figure, axes = plt.subplots(3, 3, figsize=(7.2, 8.0))
for p, ax in enumerate(axes.flat):
    ax.imshow(np.ma.masked_where(inside[0, p] == 0, shifted[0, p]), cmap=gray, vmin=0, vmax=1,
              interpolation="nearest")
    ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), 6, 6, fill=False, edgecolor="red",
                               linewidth=1.5))
    if p != 4:
        ax.annotate("", xytext=(24, 24), xy=(24 - 4 * dx[p], 24 - 4 * dy[p]),
                    arrowprops=dict(arrowstyle="->", color="yellow", linewidth=2))
    ax.set_title(f"p = {p}: reads (dy, dx) = ({dy[p]:+d}, {dx[p]:+d})", fontsize=9.5)
    ax.set_xticks([])
    ax.set_yticks([])
figure.suptitle(f"the 9 shifts of one channel of {picture_name}\n"
                "yellow arrow: the content moves by (-dy, -dx), one pixel; cyan: zero fill",
                fontsize=10.5)
figure.tight_layout()
save(figure, "02_shift_directions.png")

# %% [markdown]
# ## A dense 3x3 filter, written as shift + point-wise
#
# When all 9 channels of a group hold the *same* plane, one SSC filter is exactly a dense 3x3
# filter on that plane: its 9 weights are the 9 entries of the 3x3 kernel, one per shift. The
# Sobel edge filters, for instance. In a network the 9 channels of a group are different
# feature maps, so each filter mixes 9 channels, each seen through a different neighbour.

# %%
sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
sobel_y = sobel_x.T.copy()
ssc_weight = np.stack([sobel_x.reshape(9), sobel_y.reshape(9)])      # (O=2, G=9), row-major p
edges = F.ssc_conv2d(copies, ssc_weight, kernel_size=3).data[0]          # (2, 32, 32)
dense_edges = reference.conv2d(plane[None, None], np.stack([sobel_x, sobel_y])[:, None],
                               padding=1)[0]
print("max |SSC on 9 copies - dense 3x3 Sobel|:", float(np.abs(edges - dense_edges).max()))

figure, axes = plt.subplots(1, 3, figsize=(10, 3.4), layout="constrained")
axes[0].imshow(plane, cmap="gray", vmin=0, vmax=1)
axes[0].set_title("red plane")
limit = np.abs(edges).max()
for ax, edge, name in zip(axes[1:], edges, ("x", "y")):
    image = ax.imshow(edge, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_title(f"SSC, Sobel-{name} weights")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
figure.colorbar(image, ax=axes[1:], shrink=0.9)
save(figure, "02_ssc_sobel.png")

# %% [markdown]
# ## Summary
#
# * Zero padding by k//2 turns "read xp at (Y*s + r_i, X*s + q_i)" into "read the shifted
#   input at (Y*s, X*s)", so a convolution with an SSC kernel is a shift followed by a group
#   point-wise convolution **[paper]**; minissc checks both against its dense oracle.
# * The shift only moves memory: channel j reads its neighbour at (dy_j, dx_j), with
#   p(j) = j mod G **[recon]**, and costs no multiply-accumulate.
#
# Tutorial 3 derives the backward passes of these operations by hand and checks them.
