"""The oracle: a plain dense grouped convolution, and the dense kernel of an SSC layer.

An SSC layer is a dense convolution whose kernel is almost all zeros: filter o keeps one weight
per input channel of its group, each at a different position of the k x k grid. This module
builds that dense kernel (`ssc_dense_kernel`) and convolves with it (`conv2d`,
`conv2d_backward`), so the fast SSC kernels can be checked against a computation that shares no
code with them and that a reader can verify at a glance:

    conv2d(x, ssc_dense_kernel(weight, k), stride=s, padding=k // 2, groups=C // G)

equals the SSC layer's output, and `conv2d_backward` gives its gradients.
It is slow (a Python loop over groups and kernel positions) and meant for tests and tutorials.
"""
import numbers

import numpy as np


def _as_array(value):
    """An ndarray from an array-like, or from an object holding one in `.data` (a Tensor)."""
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(getattr(value, "data", value))


def ssc_dense_kernel(weight, kernel_size=3):
    """The dense (O, G, k, k) kernel of an SSC layer with point-wise weights `weight` (O, G).

    Input i of a group sits at position p = i of the k x k grid, row r = p // k, column q = p % k:
        K[o, i, r_i, q_i] = W[o, i],  and K is 0 elsewhere.
    """
    weight = _as_array(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_channels, group_size), "
                         f"got shape {weight.shape}")
    if not isinstance(kernel_size, numbers.Integral) or isinstance(kernel_size, bool):
        raise TypeError(f"kernel_size must be an int, got {kernel_size!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
    out_channels, group_size = weight.shape
    if group_size > kernel_size * kernel_size:
        raise ValueError(f"weight has group size {group_size}, more than the "
                         f"{kernel_size * kernel_size} positions of a {kernel_size}x{kernel_size} "
                         f"kernel (kernel_size={kernel_size})")
    kernel = np.zeros((out_channels, group_size, kernel_size, kernel_size), dtype=weight.dtype)
    inputs = np.arange(group_size)
    kernel[:, inputs, inputs // kernel_size, inputs % kernel_size] = weight
    return kernel


def _conv_geometry(x, kernel, stride, padding, groups):
    """Check the shapes and return the output size (Ho, Wo) and the slices of each group."""
    _, channels, height, width = x.shape
    out_channels, channels_per_group, kernel_height, kernel_width = kernel.shape
    if channels != groups * channels_per_group or out_channels % groups != 0:
        raise ValueError(f"x has {channels} channels and kernel shape {kernel.shape}: need "
                         f"channels == groups * kernel.shape[1] and out_channels divisible by "
                         f"groups (groups={groups})")
    out_height = (height + 2 * padding - kernel_height) // stride + 1
    out_width = (width + 2 * padding - kernel_width) // stride + 1
    if out_height < 1 or out_width < 1:
        raise ValueError(f"kernel {kernel.shape[2:]} does not fit image {x.shape[2:]} "
                         f"with padding={padding}")
    outputs_per_group = out_channels // groups
    group_slices = [(slice(g * channels_per_group, (g + 1) * channels_per_group),
                     slice(g * outputs_per_group, (g + 1) * outputs_per_group))
                    for g in range(groups)]
    return out_height, out_width, group_slices


def _window(padded, r, q, stride, out_height, out_width):
    """The input pixels that kernel position (r, q) meets: padded[..., r + Y*s, q + X*s]."""
    return padded[:, :, r:r + stride * (out_height - 1) + 1:stride,
                  q:q + stride * (out_width - 1) + 1:stride]


def conv2d(x, kernel, stride=1, padding=0, groups=1):
    """Dense grouped 2-D convolution (cross-correlation, zero padding; PyTorch's conv2d).

    x (N, C, H, W), kernel (O, C/groups, kh, kw); with xp = x zero-padded by `padding`,
        y[n, o, Y, X] = sum_{c in group(o), r, q} K[o, c, r, q] * xp[n, c, Y*s + r, X*s + q],
    output size (H + 2p - kh) // s + 1 by (W + 2p - kw) // s + 1.
    """
    x, kernel = _as_array(x), _as_array(kernel)
    out_height, out_width, group_slices = _conv_geometry(x, kernel, stride, padding, groups)
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    y = np.zeros((x.shape[0], kernel.shape[0], out_height, out_width),
                 dtype=np.result_type(x, kernel))
    for inputs, outputs in group_slices:
        for r in range(kernel.shape[2]):
            for q in range(kernel.shape[3]):
                window = _window(padded[:, inputs], r, q, stride, out_height, out_width)
                y[:, outputs] += np.einsum("oc,ncyx->noyx", kernel[outputs, :, r, q], window)
    return y


def conv2d_backward(x, kernel, grad_out, stride=1, padding=0, groups=1):
    """Gradients (grad_x, grad_kernel) of `conv2d` given grad_out = dL/dy.

    y is a sum of terms K[o, c, r, q] * xp[n, c, Y*s + r, X*s + q], linear in each factor, so
        grad_K[o, c, r, q] = sum_{n, Y, X} grad_out[n, o, Y, X] * xp[n, c, Y*s + r, X*s + q],
        grad_xp[n, c, Y*s + r, X*s + q] += sum_{o in group(c)} K[o, c, r, q] * grad_out[n, o, Y, X]
    (the += collects every (r, q, Y, X) that reads the same input pixel), and grad_x is grad_xp
    without the padding border.
    """
    x, kernel, grad_out = _as_array(x), _as_array(kernel), _as_array(grad_out)
    out_height, out_width, group_slices = _conv_geometry(x, kernel, stride, padding, groups)
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    grad_padded = np.zeros_like(padded)
    grad_kernel = np.zeros_like(kernel)
    for inputs, outputs in group_slices:
        for r in range(kernel.shape[2]):
            for q in range(kernel.shape[3]):
                window = _window(padded[:, inputs], r, q, stride, out_height, out_width)
                grad_window = _window(grad_padded[:, inputs], r, q, stride, out_height, out_width)
                grad_group = grad_out[:, outputs]
                grad_kernel[outputs, :, r, q] = np.einsum("noyx,ncyx->oc", grad_group, window)
                grad_window += np.einsum("oc,noyx->ncyx", kernel[outputs, :, r, q], grad_group)
    height, width = x.shape[2:]
    return grad_padded[:, :, padding:padding + height, padding:padding + width], grad_kernel
