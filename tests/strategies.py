"""Shared hypothesis strategies for NCHW shapes and SSC layer configurations."""
import numba
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st


@st.composite
def ssc_configs(draw, max_batch=3, max_side=9, kernel_sizes=(1, 3, 5), strides=(1, 2, 3)):
    """A valid SSC layer and input: dict with n, c, o, h, w, k, g (group size), stride, groups.

    C = groups * G, O = groups * r, so C is divisible by G and O by the number of groups.
    r reaches past 9, so the group backward kernel's pass of nine outputs is met partly
    filled, full, and followed by the outputs it takes one by one. chunks (1 to n) is a
    number of weight-gradient chunks for the batch (see `weight_grad_chunks` in
    test_ssc_kernels.py), so that chunks of several samples are met too."""
    k = draw(st.sampled_from(kernel_sizes))
    group_size = draw(st.integers(1, k * k))
    groups = draw(st.integers(1, 3))
    outputs_per_group = draw(st.integers(1, 12))
    n = draw(st.integers(1, max_batch))
    return dict(n=n, c=groups * group_size, o=groups * outputs_per_group,
                h=draw(st.integers(1, max_side)), w=draw(st.integers(1, max_side)), k=k,
                g=group_size, stride=draw(st.sampled_from(strides)), groups=groups,
                chunks=draw(st.integers(1, n)))


def arrays(seed, shape, dtype=np.float64, scale=1.0):
    """A reproducible standard-normal array (hypothesis draws the seed, NumPy the values)."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


seeds = st.integers(0, 2**32 - 1)


def on_one_thread(function, *args):
    """function(*args) with Numba (and so the dense kernels' chunk threads) on one thread."""
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        return function(*args)
    finally:
        numba.set_num_threads(threads)


@st.composite
def conv_configs(draw, max_batch=2, max_side=5):
    """A tiny dense grouped convolution: dict with n, c, o, h, w, kh, kw, stride, padding, groups.

    Kernels may be even or non-square; the padded image is at least as large as the kernel."""
    groups = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.integers(0, 2))
    return dict(n=draw(st.integers(1, max_batch)), c=groups * draw(st.integers(1, 2)),
                o=groups * draw(st.integers(1, 2)),
                h=draw(st.integers(max(1, kh - 2 * padding), max_side)),
                w=draw(st.integers(max(1, kw - 2 * padding), max_side)),
                kh=kh, kw=kw, stride=draw(st.integers(1, 3)), padding=padding, groups=groups)


@st.composite
def nchw_shapes(draw, max_batch=3, max_channels=4, max_side=5, min_values_per_channel=1):
    """An (N, C, H, W) shape with at least `min_values_per_channel` values N * H * W per channel
    (batch norm in training mode needs 2 to estimate a variance)."""
    n, h, w = (draw(st.integers(1, max_batch)), draw(st.integers(1, max_side)),
               draw(st.integers(1, max_side)))
    assume(n * h * w >= min_values_per_channel)
    return n, draw(st.integers(1, max_channels)), h, w
