"""Dense 2-D convolution as im2col + matrix product (BLAS), with its backward.

Shapes and semantics are PyTorch's: x (N, C, H, W), weight (O, C/groups, kh, kw), zero
padding p on every side, stride s, output y (N, O, Ho, Wo) with Ho = (H + 2p - kh) // s + 1
(Wo alike). Output channel o belongs to group g = o // (O/groups), which reads input
channels g*C/groups ... (g+1)*C/groups - 1. With xpad the padded input and c the channel
within the group:

    y[n, o, Y, X] = sum_{c, i, j} weight[o, c, i, j] * xpad[n, g*C/groups + c, Y*s + i, X*s + j].

im2col gathers, for every output pixel (Y, X), the values it reads into one column:

    cols[n, g, (c, i, j), (Y, X)] = xpad[n, g*C/groups + c, Y*s + i, X*s + j],

so the convolution of group g is one matrix product per image, y[n, g] = W[g] @ cols[n, g],
of W[g], the group's weights reshaped to (O/groups, K), and cols[n, g] of shape (K, L), where
K = C/groups * kh * kw and L = Ho * Wo. NumPy's matmul runs these products in BLAS. A 1x1
convolution without padding needs no gather: its columns are x itself, or the strided slice
x[:, :, ::s, ::s].

Both passes run over chunks of IMAGES_PER_CHUNK images, on as many Python threads as Numba
has (NumPy's copies and BLAS release the GIL, and BLAS itself runs one thread per call, see
`minissc.runtime`). Chunks keep the im2col columns small (a chunk's columns, not the whole
batch's, exist at once) and give each thread its share of the batch. The weight gradient is
the sum of per-chunk partials added in chunk order, so it does not depend on the number of
threads.

Inputs are C-contiguous float32 or float64 arrays of one dtype, already checked by
`minissc.functional`; outputs have the input's dtype. Linear layers need no kernel here:
y = x @ weight.T, grad_x = grad_y @ weight, grad_weight = grad_y.T @ x are single matmuls.
"""
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

IMAGES_PER_CHUNK = 16
_pools = {}


def conv2d_forward(x, weight, stride, padding, groups):
    """y = conv2d(x, weight) with the given stride, zero padding and groups (see above)."""
    batch = x.shape[0]
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = _output_size(x.shape, kh, kw, stride, padding)
    weight_groups = _group_matrices(weight, groups)  # (G, O/G, K)
    y = np.empty((batch, out_channels, out_h, out_w), x.dtype)

    def forward_chunk(images):
        columns = _group_columns(_im2col(x[images], kh, kw, stride, padding, out_h, out_w), groups)
        y_chunk = y[images].reshape(columns.shape[0], groups, -1, out_h * out_w)
        np.matmul(weight_groups, columns, out=y_chunk)  # (G, O/G, K) @ (n, G, K, L)

    _run_in_chunks(forward_chunk, batch)
    return y


def conv2d_backward(x, weight, grad_y, stride, padding, groups):
    """Gradients (grad_x, grad_weight) of y = conv2d_forward(x, weight, ...).

    Per image n and group g, y[n, g] = W[g] @ cols[n, g] is a matrix product, so
        grad_W[g] = sum_n grad_y[n, g] @ cols[n, g]^T,
        grad_cols[n, g] = W[g]^T @ grad_y[n, g].
    cols copies values of xpad (each one to up to kh*kw columns), so grad_xpad is the sum of
    the grad_cols entries that copied it (col2im): for every kernel position (i, j),
        grad_xpad[:, :, i + Y*s, j + X*s] += grad_cols[:, :, i, j, Y, X],
    and grad_x is grad_xpad without its padding border.
    """
    batch, channels = x.shape[:2]
    kh, kw = weight.shape[2:]
    out_h, out_w = grad_y.shape[2:]
    weight_groups_transposed = _group_matrices(weight, groups).transpose(0, 2, 1)
    grad_x = np.empty_like(x)

    def backward_chunk(images):
        columns = _group_columns(_im2col(x[images], kh, kw, stride, padding, out_h, out_w), groups)
        images_in_chunk = columns.shape[0]
        grad_y_groups = grad_y[images].reshape(images_in_chunk, groups, -1, out_h * out_w)
        grad_columns = weight_groups_transposed @ grad_y_groups
        grad_x[images] = _col2im(grad_columns.reshape(images_in_chunk, channels, kh, kw,
                                                      out_h, out_w), x[images].shape, stride,
                                 padding)
        return (grad_y_groups @ columns.transpose(0, 1, 3, 2)).sum(axis=0)

    grad_weight = np.zeros((groups, weight.shape[0] // groups, weight[0].size), x.dtype)
    for partial in _run_in_chunks(backward_chunk, batch):  # in chunk order: deterministic
        grad_weight += partial
    return grad_x, grad_weight.reshape(weight.shape)


def _run_in_chunks(job, batch):
    """[job(images) for images in consecutive slices of IMAGES_PER_CHUNK images], computed on
    numba.get_num_threads() threads, in slice order."""
    chunks = [slice(start, min(start + IMAGES_PER_CHUNK, batch))
              for start in range(0, batch, IMAGES_PER_CHUNK)]
    threads = min(numba.get_num_threads(), len(chunks))
    if threads <= 1:
        return [job(images) for images in chunks]
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="minissc-dense")
    floating_point_errors = np.geterr()  # the caller's np.errstate, which threads don't inherit

    def job_as_caller(images):
        with np.errstate(**floating_point_errors):
            return job(images)

    return list(_pools[threads].map(job_as_caller, chunks))


def _output_size(x_shape, kh, kw, stride, padding):
    height, width = x_shape[2:]
    return (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1


def _im2col(x, kh, kw, stride, padding, out_h, out_w):
    """cols (N, C, kh, kw, Ho, Wo) with cols[n, c, i, j, Y, X] = xpad[n, c, Y*s + i, X*s + j].

    One strided slice copy per kernel position; for a 1x1 kernel without padding a view."""
    if kh == kw == 1 and padding == 0:
        return x[:, :, None, None, ::stride, ::stride]
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    columns = np.empty(x.shape[:2] + (kh, kw, out_h, out_w), x.dtype)
    for i in range(kh):
        for j in range(kw):
            columns[:, :, i, j] = padded[:, :, i:i + stride * out_h:stride,
                                         j:j + stride * out_w:stride]
    return columns


def _col2im(grad_columns, x_shape, stride, padding):
    """Adjoint of `_im2col`: add every column entry back onto the input pixel it came from."""
    batch, channels, kh, kw, out_h, out_w = grad_columns.shape
    height, width = x_shape[2:]
    if kh == kw == 1 and padding == 0 and stride == 1:
        return grad_columns.reshape(x_shape)
    grad_padded = np.zeros((batch, channels, height + 2 * padding, width + 2 * padding),
                           grad_columns.dtype)
    for i in range(kh):
        for j in range(kw):
            grad_padded[:, :, i:i + stride * out_h:stride,
                        j:j + stride * out_w:stride] += grad_columns[:, :, i, j]
    return np.ascontiguousarray(grad_padded[:, :, padding:padding + height,
                                            padding:padding + width])


def _group_columns(columns, groups):
    """(N, C, kh, kw, Ho, Wo) -> (N, groups, C/groups * kh * kw, Ho * Wo), a view when possible."""
    batch, channels, kh, kw, out_h, out_w = columns.shape
    return columns.reshape(batch, groups, channels // groups * kh * kw, out_h * out_w)


def _group_matrices(weight, groups):
    """(O, C/groups, kh, kw) -> (groups, O/groups, C/groups * kh * kw)."""
    return weight.reshape(groups, weight.shape[0] // groups, -1)
