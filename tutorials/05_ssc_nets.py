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
# # Tutorial 5: building SSC-Nets
#
# The paper builds networks from an **SSC module**: "a point-wise convolutional layer, two SSC
# layers with a shuffle-channel operation, and identity mapping, akin to ResNets" **[paper]**.
# It does not give the exact wiring, so minissc's module is a **reconstruction [recon]**:
#
#     x -> 1x1 conv (c_in -> m) -> BN -> ReLU
#       -> SSC1 (m -> m, G = 9)               -> BN -> ReLU
#       -> channel shuffle (m / 9 groups)
#       -> SSC2 (m -> c_out, G = 9, stride s) -> BN
#       -> + shortcut (identity, or 1x1 conv with stride s + BN) -> ReLU
#
# with inner width m = 9 * c_out / r [recon]: r is the number of outputs per SSC2 group
# (r = 1, 2, 4 in the zoo). The placement of BN/ReLU, the shuffle with m / 9 groups, m and the
# 1x1-conv projection shortcuts are minissc's choices where the paper is silent.
#
# This tutorial takes the module apart (what the channel shuffle connects to what), then
# compares three networks on the same CIFAR backbone (He et al. 2016): `resnet20` (3x3 dense
# convolutions), `shiftresnet20` (Shift-Net's shift + 1x1 module, Wu et al. 2018) and
# `sscresnet20`, layer by layer, with `minissc.summary.summarize`.

# %%
import sys
from collections import defaultdict

import minissc  # before NumPy, so that minissc can limit BLAS to one thread (see its __init__)
import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import minissc.functional as F
from minissc import models
from minissc.kernels.ssc import shuffled_channels
from minissc.summary import format_summary, summarize

from tutorial_setup import FIGURES, QUICK, save  # noqa: E402 (shared setup)


rng = np.random.default_rng(0)

# %% [markdown]
# ## One SSC module
#
# The first block of stage 1 of `sscresnet20` (r = 1): c_in = c_out = 16, so m = 144.
# minissc fuses steps into single layers, for speed and memory only: `BatchNormReLU2d` is
# BN followed by ReLU in one pass; each SSC layer applies the BN + ReLU in front of it while
# reading its input (`block.ssc1(out, input_norm=block.bn1)`), so that activation, the
# widest tensor of the block, is never stored; and SSC2 performs the channel shuffle while
# reading its input (`shuffle_groups`), so the shuffled copy is never stored either. In
# training the block runs its 1x1 convolution and two SSC layers as one op
# (`minissc.nn.ssc_pair`), whose backward also hands SSC2's batch norm gradient to SSC1's
# kernel, which applies it as it reads, and SSC1's to the convolution's backward, a chunk
# of images at a time (tutorial 4 derives both); the results are the same to the bit.

# %%
network = models.create("sscresnet20", r=1)
block = network.layer1[0]
print(block)

# %% [markdown]
# Those fused reads are exactly "shuffle, then SSC2" and "BN + ReLU, then SSC1": check them
# against the shuffle done explicitly with `F.channel_shuffle` and the BN + ReLU layer called
# on its own (in eval mode, so that the running statistics stay put).

# %%
x = rng.standard_normal((2, 144, 8, 8)).astype(np.float32)
fused = block.ssc2(x).data
explicit = F.ssc_conv2d(F.channel_shuffle(x, 144 // 9), block.ssc2.weight.data, 3, 1).data
print("max |ssc2(x) - ssc_conv2d(channel_shuffle(x, 16))| =", float(np.abs(fused - explicit).max()))
block.eval()
fused = block.ssc1(x, input_norm=block.bn1).data
explicit = block.ssc1(block.bn1(x)).data
print("max |ssc1(x, input_norm=bn1) - ssc1(bn1(x))| =", float(np.abs(fused - explicit).max()))
block.train()

# %% [markdown]
# ## What the shuffle connects
#
# SSC1 is grouped: each of its m / 9 groups maps 9 channels to 9 channels and never mixes with
# another group. Without a shuffle, SSC2's group j would read exactly SSC1's group j, and the
# network would split into m / 9 independent paths. ShuffleNet's channel shuffle views the m
# channels as an (m/9) x 9 table (SSC1 group, channel within the group), transposes it and
# flattens it: shuffled channel c comes from SSC1 channel
# `shuffled_channels(m, m / 9)[c]` (a helper of `minissc.kernels.ssc`). SSC2's group j reads the
# shuffled channels 9j .. 9j+8, and its input i sits at kernel position i (p = i mod 9 [recon]).
#
# The printout and the figure show, for every SSC2 group, which SSC1 groups it reads, and at
# which of its kernel positions.


# %%
def wiring(mid):
    """counts[j, b]: channels SSC2 group j reads from SSC1 group b; positions[j][b]: at which p."""
    groups = mid // 9
    source = shuffled_channels(mid, groups)  # SSC1 channel behind each shuffled channel
    counts = np.zeros((groups, groups), dtype=int)
    positions = defaultdict(list)
    for c, s in enumerate(source):
        j, p, b = c // 9, c % 9, s // 9
        counts[j, b] += 1
        positions[j, b].append(p)
    return counts, positions


for r in (1, 4):
    mid = 9 * 16 // r
    counts, positions = wiring(mid)
    print(f"r = {r}: m = {mid}, {mid // 9} SSC1 groups -> {mid // 9} SSC2 groups")
    for j in range(min(3, mid // 9)):
        reads = ", ".join(f"SSC1 group {b} at p={','.join(map(str, positions[j, b]))}"
                          for b in np.flatnonzero(counts[j]))
        print(f"  SSC2 group {j} reads: {reads}")
    distinct = sorted(set(int(n) for n in (counts > 0).sum(axis=1)))
    print(f"  every SSC2 group reads {' or '.join(map(str, distinct))} distinct SSC1 groups")

# %% [markdown]
# With r = 1 every SSC2 group reads one channel from each of 9 different SSC1 groups, each at
# a different kernel position: information crosses groups at every block. With r = 4 there are
# only 4 groups, so each SSC2 group reads 2 or 3 channels from every SSC1 group.

# %%
figure, axes = plt.subplots(1, 2, figsize=(13, 6.2), gridspec_kw=dict(width_ratios=[16, 7.5]))
for ax, r in zip(axes, (1, 4)):
    mid = 9 * 16 // r
    counts, positions = wiring(mid)
    groups = mid // 9
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=5)  # shade: channels read (1, 2 or 3)
    for j in range(groups):
        for b in range(groups):
            if counts[j, b]:
                ax.text(b, j, ",".join(map(str, positions[j, b])), ha="center", va="center",
                        fontsize=8.5 if r == 1 else 11)
    ax.set_xticks(range(groups))
    ax.set_yticks(range(groups))
    ax.set_xlabel("SSC1 group (9 channels each)")
    ax.set_ylabel("SSC2 group (reads 9 channels)")
    ax.set_title(f"r = {r}: m = {mid}, {groups} groups\n"
                 f"in a cell: SSC2 kernel position(s) p of the channel(s) read", fontsize=10.5)
figure.suptitle("sscresnet20, stage 1 (c_out = 16): which SSC1 groups feed each SSC2 group "
                "through the channel shuffle [recon wiring]", fontsize=11.5)
figure.tight_layout()
save(figure, "05_shuffle_wiring.png")

# %% [markdown]
# ## Three networks, layer by layer
#
# `summarize(model)` runs one 32x32 image through a model and lists, for every layer it calls,
# the output shape, the parameters and the multiply-accumulates (MACs). Here are the rows of
# `sscresnet20`'s first block:

# %%
families = {
    "resnet20": models.create("resnet20"),
    "shiftresnet20 (e=6)": models.create("shiftresnet20", e=6),
    "sscresnet20 (r=1)": network,
}
summaries = {name: summarize(model) for name, model in families.items()}
print(format_summary([row for row in summaries["sscresnet20 (r=1)"]
                      if row.name.startswith("layer1.0.")]))

# %% [markdown]
# Grouping the rows by stage, and by kind of layer (the kernel size of a convolution comes
# from its weight):

# %%
STAGES = ("stem", "stage 1 (16 ch, 32x32)", "stage 2 (32 ch, 16x16)", "stage 3 (64 ch, 8x8)",
          "head")
KINDS = ("3x3 conv", "1x1 conv", "1x1 shortcut conv", "SSC", "batch norm", "linear")


def stage_of(name):
    for index in (1, 2, 3):
        if name.startswith(f"layer{index}."):
            return STAGES[index]
    return "head" if name in ("fc", "pool") else "stem"


def kind_of(model, row):
    module = dict(model.named_modules())[row.name]
    if row.type == "Conv2d":
        if module.weight.shape[-1] == 3:
            return "3x3 conv"
        return "1x1 shortcut conv" if ".shortcut." in row.name else "1x1 conv"
    if row.type == "SSCConv2d":
        return "SSC"
    if "BatchNorm" in row.type:
        return "batch norm"
    return "linear" if row.type == "Linear" else None


by_stage = {name: defaultdict(lambda: np.zeros(2)) for name in families}
by_kind = {name: defaultdict(lambda: np.zeros(2)) for name in families}
for name, rows in summaries.items():
    for row in rows:
        by_stage[name][stage_of(row.name)] += (row.parameters, row.macs)
        kind = kind_of(families[name], row)
        if kind:
            by_kind[name][kind] += (row.parameters, row.macs)

def cell(parameters, macs):
    return f"{int(parameters):>9,d} / {macs / 1e6:5.2f} M"


for title, table, keys in (("by stage", by_stage, STAGES), ("by kind of layer", by_kind, KINDS)):
    print(f"\nparameters / MACs per image, {title}")
    print(f"{'':24s}" + "".join(f"{name:>23s}" for name in families))
    for key in keys:
        print(f"{key:24s}" + "".join(f"{cell(*table[name][key]):>23s}" for name in families))
    print(f"{'total':24s}" + "".join(
        f"{cell(sum(r.parameters for r in rows), sum(r.macs for r in rows)):>23s}"
        for rows in summaries.values()))

# %% [markdown]
# Reading the tables:
#
# * In `sscresnet20` the SSC layers themselves are cheap; most parameters and MACs sit in the
#   dense 1x1 convolutions that widen c_in to m = 9 c_out (and in BN, which has 2 parameters
#   per channel of the wide tensors). r = 2 or 4 shrinks m and with it nearly everything.
# * `resnet20` spends everything on 3x3 convolutions; `shiftresnet20` replaces them by a shift
#   and two 1x1 convolutions around a width of e * c_out.
# * MACs follow the resolution: stage 1 runs at 32x32, so a layer there costs 4x the MACs of
#   the same layer in stage 2 and 16x in stage 3, while the parameters grow with the width.
#   A stage's row counts its first block whole, and in an SSC module the stride sits in SSC2:
#   the first block of stage 2 runs its 1x1 convolution and SSC1 at 32x32, which is why
#   sscresnet20's stage 2 has more MACs than its stage 1.

# %%
colors = {stage: color for stage, color in zip(STAGES, ("0.55", "C0", "C1", "C2", "C4"))}
colors.update(zip(KINDS, ("0.45", "C0", "C9", "C3", "C8", "C4")))
figure, axes = plt.subplots(2, 2, figsize=(12, 8.4))
names = list(families)
for row_index, (table, keys, title) in enumerate(((by_stage, STAGES, "by stage"),
                                                  (by_kind, KINDS, "by kind of layer"))):
    for column, (measure, scale, unit) in enumerate((("parameters", 1e3, "thousands"),
                                                     ("MACs per image", 1e6, "millions"))):
        ax = axes[row_index, column]
        bottom = np.zeros(len(names))
        for key in keys:
            values = np.array([table[name][key][column] for name in names]) / scale
            ax.bar(range(len(names)), values, 0.6, bottom=bottom, color=colors[key], label=key)
            bottom += values
        for index, total in enumerate(bottom):
            ax.text(index, total * 1.01, f"{total:,.0f}" if column == 0 else f"{total:.1f}",
                    ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(len(names)), names, fontsize=9)
        ax.set_ylim(0, bottom.max() * 1.12)
        ax.set_ylabel(f"{measure} ({unit})")
        ax.set_title(f"{measure}, {title}", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    axes[row_index, 1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9,
                              reverse=True)
figure.suptitle("three 20-layer CIFAR networks on one backbone (counted by minissc.summary, "
                "one 32x32 image)", fontsize=11.5)
figure.tight_layout()
save(figure, "05_zoo_costs.png")

# %% [markdown]
# ## The whole zoo at depth 20
#
# The other variants: Shift-Net's expansions e = 1, 3, 6, 9 **[paper: Wu et al.]** and SSC
# modules with r = 1, 2, 4 outputs per SSC2 group **[recon]**.

# %%
variants = [("resnet20", {})] + [("shiftresnet20", {"e": e}) for e in (1, 3, 6, 9)] \
    + [("sscresnet20", {"r": r}) for r in (1, 2, 4)]
print(f"{'model':22s}{'parameters':>12s}{'MACs / image':>15s}")
for name, options in variants:
    model = network if (name, options) == ("sscresnet20", {"r": 1}) else \
        models.create(name, **options)
    rows = summarize(model)
    label = name + "".join(f" {key}={value}" for key, value in options.items())
    print(f"{label:22s}{sum(r.parameters for r in rows):12,d}"
          f"{sum(r.macs for r in rows) / 1e6:13.1f} M")

# %% [markdown]
# ## Summary
#
# * The SSC module [paper] as minissc wires it [recon]: 1x1 widening, SSC1, channel shuffle,
#   SSC2, residual; the shuffle makes each SSC2 group read 9 different SSC1 groups (r = 1).
# * `sscresnet20` (r = 1) has ~62% of `resnet20`'s parameters and ~92% of its MACs; the SSC
#   layers are a small part of that, the 1x1 convolutions a large one. Lighter r lowers both.
#
# Tutorial 6 trains the three networks.
