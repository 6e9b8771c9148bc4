"""Dense 2-D convolution as im2col (or im2row) + matrix product (BLAS), with its backward.

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
x[:, :, ::s, ::s]. The gather (`_im2col_kernel`) and its adjoint (`_col2im_kernel`) are Numba
loops that write each entry once, with no padded copy of x; their NumPy twins
`im2col_reference` and `col2im_reference` pad and slice.

The forward of a convolution with one group and at least ROWS_MIN_CHANNELS input channels
uses the same products the other way round, one pixel per row: y^T = rows @ W^T, with
rows (n * Ho * Wo, K) the columns of a chunk's images stacked as rows (`_im2row`, entries in
the order (i, j, c)). OpenBLAS runs W @ cols slowly when W has few rows (16 at 16 -> 16 3x3,
16 GFLOP/s on one thread), and one tall product of a chunk at about twice that.

Both passes run over chunks of images (IMAGES_PER_CHUNK in the forward; in the backward as
many as keep a chunk of grad_y in cache, `_images_per_backward_chunk`), on as many Python
threads as Numba has (the Numba kernels are `nogil`, NumPy's copies and BLAS release the GIL,
and BLAS itself runs one thread per call, see `minissc.runtime`). Chunks keep the im2col
columns small (a chunk's columns, not the whole batch's, exist at once) and give each thread
its share of the batch. The weight gradient is the sum of per-chunk partials added in chunk
order, so it does not depend on the number of threads.

Inputs are C-contiguous float32 or float64 arrays of one dtype, already checked by
`minissc.functional`; outputs have the input's dtype. Linear layers need no kernel here:
y = x @ weight.T, grad_x = grad_y @ weight, grad_weight = grad_y.T @ x are single matmuls.
"""
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit
from numpy.lib.stride_tricks import as_strided

from minissc.kernels import (copy_shifted_plane, flat_run, norm, plane_columns, planes,
                             valid_range, zero_wrapped_columns)

IMAGES_PER_CHUNK = 16
# Forward by rows (see above) from this many input channels. Measured against the forward by
# columns (a scratch A/B in one process, batch 128, 2 threads, median ratio of 21 alternating
# calls): 3x3 16->16 at 32x32 0.88x the time, 32->32 at 16x16 0.85x, 64->64 at 8x8 0.74x,
# stride 2 16->32 and 32->64 1.08x and 0.96x (0.85x both in a run of 15); whole resnet20
# steps 0.938x (`ssc_versions_ab.py --steps-against 9d551e6 --steps-model resnet20 --rounds
# 96`). At 3 channels (the CIFAR stem) a prototype took 2.1x the time: its runs are 9 values.
ROWS_MIN_CHANNELS = 16
BACKWARD_CHUNK_BYTES = 2_500_000
_pools = {}


def conv2d_forward(x, weight, stride, padding, groups, moments=None):
    """y = conv2d(x, weight) with the given stride, zero padding and groups (see above).

    With moments, an array (N, O, 3), also the moments of every plane of y for its batch
    statistics (`minissc.kernels.norm.plane_moments`), taken chunk by chunk while the chunk
    is in cache."""
    batch, channels = x.shape[:2]
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = _output_size(x.shape, kh, kw, stride, padding)
    weight_groups = _group_matrices(weight, groups)  # (G, O/G, K)
    y = np.empty((batch, out_channels, out_h, out_w), x.dtype)
    by_rows = (groups == 1 and channels >= ROWS_MIN_CHANNELS
               and not (kh == kw == 1 and padding == 0))
    # (K, O), K in _im2row's order (i, j, c): a copy of the weights, so only when used
    weight_rows = weight.transpose(2, 3, 1, 0).reshape(-1, out_channels) if by_rows else None

    def forward_chunk(images):
        if by_rows:
            rows = _im2row(x[images], kh, kw, stride, padding, out_h, out_w)
            y[images] = (rows @ weight_rows).reshape(-1, out_h, out_w, out_channels).transpose(
                0, 3, 1, 2)
        else:
            columns = _group_columns(_im2col(x[images], kh, kw, stride, padding, out_h, out_w),
                                     groups)
            y_chunk = y[images].reshape(columns.shape[0], groups, -1, out_h * out_w)
            np.matmul(weight_groups, columns, out=y_chunk)  # (G, O/G, K) @ (n, G, K, L)
        if moments is not None:
            norm.plane_moments_of_images(planes(y[images]), moments[images])

    _run_in_chunks(forward_chunk, batch)
    return y


def conv2d_backward(x, weight, grad_y, stride, padding, groups, input_grad=True):
    """Gradients (grad_x, grad_weight) of y = conv2d_forward(x, weight, ...); grad_x is None
    with ``input_grad=False`` (a network's first layer, whose input is data), which skips
    its product and col2im.

    Per image n and group g, y[n, g] = W[g] @ cols[n, g] is a matrix product, so
        grad_W[g] = sum_n grad_y[n, g] @ cols[n, g]^T,
        grad_cols[n, g] = W[g]^T @ grad_y[n, g].
    cols copies values of xpad (each one to up to kh*kw columns), so grad_xpad is the sum of
    the grad_cols entries that copied it (col2im): for every kernel position (i, j),
        grad_xpad[:, :, i + Y*s, j + X*s] += grad_cols[:, :, i, j, Y, X],
    and grad_x is grad_xpad without its padding border.

    grad_W[g] (O/G, K) is computed as its transpose, sum_n cols[n, g] @ grad_y[n, g]^T (K, O/G),
    when K > O/G: OpenBLAS runs these thin products faster with the long side as the rows of
    the result. Each entry is the same dot product over the Ho * Wo pixels either way, and it
    came out the same to the bit. Measured (a scratch A/B of the two orders in one process,
    batch 128, 2 threads, median of 15 alternating calls, whole backward): 3x3 16->16 at
    32x32 0.86x the time, 32->32 at 16x16 0.91x, 64->64 at 8x8 1.00x, 16->32 stride 2 0.93x;
    whole resnet20 training steps 0.934x (`benchmarks/ssc_versions_ab.py --steps-against
    dbcb93e --steps-model resnet20 --rounds 96`). A 1x1 convolution 16->144 keeps the other
    order (K = 16 < 144), which was the faster one there: one thread, 4 images, 0.46-0.57
    against 0.80-0.95 ms.

    grad_y is read a chunk of images at a time, ``grad_y[images]``: an array, or an object
    with a ``shape`` that computes each chunk when asked
    (`minissc.kernels.norm.InputGradByImages`).
    """
    batch, channels = x.shape[:2]
    kh, kw = weight.shape[2:]
    out_h, out_w = grad_y.shape[2:]
    images_per_chunk = _images_per_backward_chunk(grad_y.shape, x.dtype)
    weight_groups_transposed = _group_matrices(weight, groups).transpose(0, 2, 1)
    grad_x = np.empty(x.shape, x.dtype) if input_grad else None
    outputs_per_group, weights_per_output = weight.shape[0] // groups, weight[0].size
    transposed = weights_per_output > outputs_per_group  # grad_W's rows: the longer side

    def backward_chunk(images):
        columns = _group_columns(_im2col(x[images], kh, kw, stride, padding, out_h, out_w), groups)
        images_in_chunk = columns.shape[0]
        grad_y_groups = grad_y[images].reshape(images_in_chunk, groups, -1, out_h * out_w)
        if input_grad and kh == kw == 1 and padding == 0 and stride == 1:  # grad_x = grad_cols
            np.matmul(weight_groups_transposed, grad_y_groups,
                      out=grad_x[images].reshape(images_in_chunk, groups, -1, out_h * out_w))
        elif input_grad:
            grad_columns = weight_groups_transposed @ grad_y_groups
            _col2im(grad_columns.reshape(images_in_chunk, channels, kh, kw, out_h, out_w),
                    stride, padding, grad_x[images])
        if transposed:
            return (columns @ grad_y_groups.transpose(0, 1, 3, 2)).sum(axis=0)
        return (grad_y_groups @ columns.transpose(0, 1, 3, 2)).sum(axis=0)

    grad_weight = np.zeros((groups, outputs_per_group, weights_per_output), x.dtype)
    sum_of_partials = grad_weight.transpose(0, 2, 1) if transposed else grad_weight
    for partial in _run_in_chunks(backward_chunk, batch, images_per_chunk):  # in chunk order
        sum_of_partials += partial
    return grad_x, grad_weight.reshape(weight.shape)


def _images_per_backward_chunk(grad_y_shape, dtype):
    """Images per chunk of the backward: as many as keep a chunk of grad_y near
    BACKWARD_CHUNK_BYTES, 1 to IMAGES_PER_CHUNK. A chunk of grad_y is read twice (by both
    products), so it should stay in cache; when grad_y is computed chunk by chunk
    (`minissc.kernels.norm.InputGradByImages`) it is never in memory at all. It depends on
    the shapes only, never on the number of threads, so the weight gradient's chunk sums
    are the same on any machine. Measured on the 1x1 convolution 16 -> 144 at 32x32 with a
    batch norm's grad_x computed by chunks (a scratch script, median of 9 alternating calls,
    batch 128, 2 threads): 16 images a chunk 28.5 ms, 4 images 25.0 ms, 2 images 26.6 ms;
    64 -> 576 at 8x8: 14.7, 15.2, 18.0 ms."""
    bytes_per_image = np.dtype(dtype).itemsize * int(np.prod(grad_y_shape[1:]))
    return max(1, min(IMAGES_PER_CHUNK, BACKWARD_CHUNK_BYTES // bytes_per_image))


def _run_in_chunks(job, batch, images_per_chunk=IMAGES_PER_CHUNK):
    """[job(images) for images in consecutive slices of `images_per_chunk` images], computed
    on numba.get_num_threads() threads, in slice order."""
    chunks = [slice(start, min(start + images_per_chunk, batch))
              for start in range(0, batch, images_per_chunk)]
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
    """cols (N, C, kh, kw, Ho, Wo) with cols[n, c, i, j, Y, X] = xpad[n, c, Y*s + i, X*s + j];
    for a 1x1 kernel without padding a view of x."""
    if kh == kw == 1 and padding == 0:
        return x[:, :, None, None, ::stride, ::stride]
    batch, channels, height, width = x.shape
    columns = np.empty((batch, channels, kh, kw, out_h, out_w), x.dtype)
    _im2col_kernel(planes(x), width, plane_columns(width, height), stride, padding, out_w,
                   columns.reshape(batch, channels, kh, kw, out_h * out_w))
    return columns


def _im2row(x, kh, kw, stride, padding, out_h, out_w):
    """rows (N * Ho * Wo, kh * kw * C), one row per output pixel (n, Y, X), its entries in the
    order (i, j, c): rows[(n, Y, X), (i, j, c)] = xpad[n, c, Y*s + i, X*s + j]. x is copied
    once, channels last and padded; the rows are then a window view of that copy, copied.
    A window's kw * C values for one i are one contiguous run of the channels-last copy."""
    batch, channels, height, width = x.shape
    padded = np.zeros((batch, height + 2 * padding, width + 2 * padding, channels), x.dtype)
    padded[:, padding:padding + height, padding:padding + width] = x.transpose(0, 2, 3, 1)
    image, row, column, channel = padded.strides
    windows = as_strided(padded, (batch, out_h, out_w, kh, kw * channels),
                         (image, stride * row, stride * column, row, channel), writeable=False)
    return np.ascontiguousarray(windows).reshape(batch * out_h * out_w, -1)


def _col2im(grad_columns, stride, padding, grad_x):
    """Adjoint of `_im2col`: grad_x (N, C, H, W) = every column entry added back onto the input
    pixel it came from. Overwrites grad_columns (see `_col2im_kernel`)."""
    batch, channels, kh, kw, out_h, out_w = grad_columns.shape
    if kh == kw == 1 and padding == 0 and stride == 1:
        grad_x[...] = grad_columns.reshape(grad_x.shape)
    else:
        _col2im_kernel(grad_columns.reshape(batch, channels, kh, kw, out_h * out_w),
                       grad_x.shape[3], stride, padding, out_w, planes(grad_x))


@njit(cache=True, nogil=True)
def _im2col_kernel(x, width, column_index, stride, padding, out_w, columns):
    """columns[n, c, i, j, Y, X] = x[n, c, Y*s + i - p, X*s + j - p], 0 where that is outside x;
    planes flat: x (N, C, H * W), columns (N, C, kh, kw, Ho * Wo); column_index[k] is the
    column of flat position k of a plane of x (`plane_columns`).

    Every column entry is written once, with no padded copy of x. When the output has x's
    size (stride 1, padding (k - 1) / 2) each column plane (i, j) is x's plane shifted by
    (i - p, j - p), one flat copy (`copy_shifted_plane`); otherwise the loops go row by row.
    `nogil`: the chunk threads of `_run_in_chunks` run it side by side.
    """
    batch, channels, plane_size = x.shape
    kh, kw, out_size = columns.shape[2:]
    height, out_h = plane_size // width, out_size // out_w
    same_size = stride == 1 and out_size == plane_size and out_w == width
    for n in range(batch):
        for c in range(channels):
            x_plane = x[n, c]
            for i in range(kh):
                first_row, first_in_row, rows = valid_range(i - padding, stride, height, out_h)
                for j in range(kw):
                    column = columns[n, c, i, j]
                    if same_size:
                        copy_shifted_plane(x_plane, i - padding, j - padding, width, column_index,
                                           column)
                        continue
                    first_col, first_in_col, cols = valid_range(j - padding, stride, width,
                                                                out_w)
                    column[:] = 0
                    for row_step in range(rows):
                        # max(0, .): both are >= 0 anyway; see valid_range
                        out_start = max(0, (first_row + row_step) * out_w + first_col)
                        in_start = max(0, (first_in_row + row_step * stride) * width
                                       + first_in_col)
                        for step in range(cols):
                            column[out_start + step] = x_plane[in_start + step * stride]


@njit(cache=True, nogil=True)
def _col2im_kernel(grad_columns, width, stride, padding, out_w, grad_x):
    """grad_x[n, c, y, x] = sum of grad_columns[n, c, i, j, Y, X] over Y*s + i - p = y and
    X*s + j - p = x; planes flat as in `_im2col_kernel`. Each plane of grad_x is zeroed (in
    cache) and the columns are added onto it.

    When grad_x has the columns' plane size (stride 1, padding (k - 1) / 2) each column plane
    is added as one flat run, after its entries that belong to the zero padding (the ones a
    flat shift would carry across a row edge) are zeroed in place: grad_columns is scratch.
    """
    batch, channels, plane_size = grad_x.shape
    kh, kw, out_size = grad_columns.shape[2:]
    height, out_h = plane_size // width, out_size // out_w
    same_size = stride == 1 and out_size == plane_size and out_w == width
    for n in range(batch):
        for c in range(channels):
            grad_plane = grad_x[n, c]
            grad_plane[:] = 0
            for i in range(kh):
                first_row, first_in_row, rows = valid_range(i - padding, stride, height, out_h)
                for j in range(kw):
                    column = grad_columns[n, c, i, j]
                    if same_size:
                        zero_wrapped_columns(column, j - padding, width)
                        first_out, first_in, count = flat_run(i - padding, j - padding, height,
                                                              width)
                        for step in range(count):
                            grad_plane[first_in + step] += column[first_out + step]
                        continue
                    first_col, first_in_col, cols = valid_range(j - padding, stride, width,
                                                                out_w)
                    for row_step in range(rows):
                        # max(0, .): both are >= 0 anyway; see valid_range
                        out_start = max(0, (first_row + row_step) * out_w + first_col)
                        in_start = max(0, (first_in_row + row_step * stride) * width
                                       + first_in_col)
                        for step in range(cols):
                            grad_plane[in_start + step * stride] += column[out_start + step]


def im2col_reference(x, kh, kw, stride, padding, out_h, out_w):
    """NumPy twin of `_im2col_kernel`: pad x, then one strided slice copy per kernel position."""
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    columns = np.empty(x.shape[:2] + (kh, kw, out_h, out_w), x.dtype)
    for i in range(kh):
        for j in range(kw):
            columns[:, :, i, j] = padded[:, :, i:i + stride * out_h:stride,
                                         j:j + stride * out_w:stride]
    return columns


def col2im_reference(grad_columns, x_shape, stride, padding):
    """NumPy twin of `_col2im_kernel`: add each kernel position's columns onto a zero padded
    gradient through the same strided slices, then drop the padding."""
    batch, channels, kh, kw, out_h, out_w = grad_columns.shape
    height, width = x_shape[2:]
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
