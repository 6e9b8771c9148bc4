"""Batch normalisation and ReLU kernels on NCHW arrays, in Numba, each with a NumPy twin.

Batch norm normalises each channel c over its M = N * H * W values:

    y = (x - mean_c) * inv_std_c * weight_c + bias_c,    inv_std = 1 / sqrt(var + eps).

The Numba kernels view x as (N, C, H * W): an innermost loop walks the contiguous H * W
values of one (n, c) plane.
- Elementwise passes run in `prange` over the (n, c) planes, in memory order.
- The parameter-gradient sums run in `prange` over blocks of consecutive channels, so each
  thread owns whole channels (no two threads add into one sum) and reads one contiguous run
  of its block's planes per image: 2-3x faster than one channel at a time for 8x8 planes,
  whose runs are too short for the hardware prefetcher. A channel's sum is its plane sums
  added in image order, in float64, whatever the block size or the number of threads.
- The batch statistics are taken plane by plane, in memory order (`plane_moments`), and
  the planes' sums are added per channel in image order (`statistics_from_moments`), so
  that a kernel that writes the planes can take their moments instead.
- The sum kernels may reassociate (fastmath "reassoc"): LLVM then vectorises a plane sum
  into several partial sums, ~10x faster than one sequential chain, in an order fixed when
  the kernel is compiled.
- Accumulators start as np.float64(0), not 0.0, so that they stay float64 under
  NUMBA_DISABLE_JIT=1 too (plain Python computes 0.0 + np.float32 in float32).

The public functions allocate the outputs and call the kernels; `<name>_reference` is the
NumPy twin that reads like the maths and that the tests hold the kernel to.

Inputs are C-contiguous float32 or float64 arrays of one dtype, already checked by
`minissc.functional`; outputs have the input's dtype.
"""
import numba
import numpy as np
from numba import njit, prange

from minissc.kernels import planes


def _per_channel(values):
    """Shape (C,) -> (C, 1, 1), which broadcasts against (N, C, H, W)."""
    return values[:, None, None]


# --------------------------------------------------------------------------------------------
# Batch statistics.
# --------------------------------------------------------------------------------------------


def batch_norm_statistics(x):
    """Per-channel mean and biased variance of x (N, C, H, W) over N, H, W; shapes (C,).

    One pass over x, plane by plane (`plane_moments`): each plane's sums S1 = sum d and
    S2 = sum d^2 of d = x - K about its own first value K, in float64, in which a product of
    two float32 values is exact. `statistics_from_moments` then moves them to one shift per
    channel, K_c = x[0, c, 0, 0] (a value of the channel, so near its mean), adds them in
    image order and returns mean_c = K_c + S1 / M and var_c = S2 / M - (S1 / M)^2, in x's
    dtype. The shift keeps S2 / M and (S1 / M)^2 from being two large, nearly equal numbers
    when the mean is far from 0. A kernel that writes x can take its plane moments while
    each plane is in cache (the SSC group forward, the 1x1 convolution): the same numbers
    without reading x again.
    """
    return statistics_from_moments(plane_moments(x), x.shape[2] * x.shape[3], x.dtype)


def plane_moments(x):
    """(K, S1, S2) of every plane of x (N, C, H, W), float64, shape (N, C, 3): see
    `batch_norm_statistics`."""
    moments = np.empty(x.shape[:2] + (3,))
    _plane_moments_kernel(planes(x), moments)
    return moments


def statistics_from_moments(moments, plane_size, dtype):
    """(mean, var) per channel, in `dtype`, from the plane moments (N, C, 3) of planes of
    `plane_size` values (`plane_moments`): each plane's sums moved from its own shift K to the
    channel's, K_c = the first image's K (with e = K - K_c, sum (x - K_c) = S1 + m e and
    sum (x - K_c)^2 = S2 + e (2 S1 + m e)), added in image order."""
    mean = np.empty(moments.shape[1], dtype)
    var = np.empty(moments.shape[1], dtype)
    _statistics_from_moments_kernel(moments, plane_size, mean, var)
    return mean, var


def _channels_per_block(x):
    """Channels one thread sums together: enough for runs of about 4096 values per image, few
    enough that every thread gets a block. It changes the speed, never the result."""
    channels, plane = x.shape[1], x.shape[2] * x.shape[3]
    for_long_runs = -(-4096 // max(plane, 1))
    for_all_threads = -(-channels // numba.get_num_threads())
    return max(1, min(for_long_runs, for_all_threads))


@njit(cache=True, fastmath={"reassoc"})
def _plane_moments(values, out):
    """out[:] = (K, S1, S2) of one plane: its first value K and, in float64, the sums of
    d = value - K and of d^2. One function for every kernel that takes them (`reassoc`:
    vectorised in lanes, in an order fixed at compile time), so they agree to the bit."""
    shift = np.float64(values[0]) if values.size else np.float64(0)
    total = np.float64(0)
    squares = np.float64(0)
    for i in range(values.size):
        deviation = np.float64(values[i]) - shift
        total += deviation
        squares += deviation * deviation
    out[0], out[1], out[2] = shift, total, squares


@njit(cache=True, parallel=True)
def _plane_moments_kernel(x, moments):
    batch, channels = x.shape[:2]
    for index in prange(batch * channels):
        n, c = index // channels, index % channels
        _plane_moments(x[n, c], moments[n, c])


@njit(cache=True, nogil=True)
def plane_moments_of_images(x, moments):
    """`_plane_moments_kernel` in one thread: `nogil`, for the chunk threads of
    `minissc.kernels.dense`; x (n, C, H * W), moments (n, C, 3)."""
    batch, channels = x.shape[:2]
    for n in range(batch):
        for c in range(channels):
            _plane_moments(x[n, c], moments[n, c])


@njit(cache=True)
def _statistics_from_moments_kernel(moments, plane_size, mean, var):
    """One thread: a few operations per plane, too little to wake a second. Over channels in
    `prange` the same call took 111 us, in one thread 29 us (144 channels, 128 images, with
    the loop order before the one below, on moments in cache).

    Images in the outer loop, channels in the inner one, so that moments is read in memory
    order: each channel's sums still add its planes in image order (the same bits as a loop
    over images per channel), but without a jump of C * 3 values between two reads. Measured
    with moments just rewritten by two threads (a scratch script, median of 31 calls):
    576 channels of 8x8 planes 356 -> 208 us, 288 of 16x16 198 -> 102 us, 144 of 32x32 75
    -> 53 us."""
    batch, channels = moments.shape[:2]
    count = batch * plane_size
    totals = np.zeros(channels)
    squares = np.zeros(channels)
    for n in range(batch):
        for c in range(channels):
            plane_shift, plane_total, plane_squares = moments[n, c]
            offset = plane_shift - moments[0, c, 0]  # the channel's shift: the first image's
            totals[c] += plane_total + plane_size * offset
            squares[c] += plane_squares + offset * (2 * plane_total + plane_size * offset)
    for c in range(channels):
        shifted_mean = totals[c] / count
        mean[c] = moments[0, c, 0] + shifted_mean
        var[c] = max(0.0, squares[c] / count - shifted_mean * shifted_mean)


def batch_norm_statistics_reference(x):
    """NumPy twin of `batch_norm_statistics`."""
    x64 = x.astype(np.float64)
    return x64.mean(axis=(0, 2, 3)).astype(x.dtype), x64.var(axis=(0, 2, 3)).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Forward: batch norm, and batch norm followed by ReLU in one pass.
# --------------------------------------------------------------------------------------------


def batch_norm_forward(x, mean, inv_std, weight, bias):
    """y = (x - mean_c) * inv_std_c * weight_c + bias_c for x (N, C, H, W), the rest (C,).

    Training passes the batch statistics, eval the running ones; the caller computes
    inv_std = 1 / sqrt(var + eps).
    """
    y = np.empty(x.shape, x.dtype)
    _batch_norm_forward_kernel(planes(x), mean, inv_std, weight, bias, False, planes(y))
    return y


def batch_norm_relu_forward(x, mean, inv_std, weight, bias):
    """relu(batch_norm_forward(x, ...)) in one pass over memory."""
    y = np.empty(x.shape, x.dtype)
    _batch_norm_forward_kernel(planes(x), mean, inv_std, weight, bias, True, planes(y))
    return y


@njit(cache=True)
def _normalised(x, mean, scale, bias):
    """(x - mean) * scale + bias, scale = inv_std * weight: the one expression of the forward
    pass, which the ReLU's backward recomputes and the SSC kernels apply as they read their
    input (`minissc.kernels.ssc`, ``input_norm``); a separate function without fastmath, so
    that every kernel rounds it the same way and the ReLU's mask is the forward's. Numba's
    cache does not see an edit here from the kernels that inline it: delete the cache then
    (see `minissc.kernels`)."""
    return (x - mean) * scale + bias


@njit(cache=True, parallel=True)
def _batch_norm_forward_kernel(x, mean, inv_std, weight, bias, apply_relu, y):
    batch, channels, plane = x.shape
    zero = y.dtype.type(0)
    for index in prange(batch * channels):
        n, c = index // channels, index % channels
        channel_mean, channel_bias = mean[c], bias[c]
        scale = inv_std[c] * weight[c]
        for i in range(plane):
            value = _normalised(x[n, c, i], channel_mean, scale, channel_bias)
            if apply_relu and value < 0:
                value = zero
            y[n, c, i] = value


def batch_norm_forward_reference(x, mean, inv_std, weight, bias):
    """NumPy twin of `batch_norm_forward`, rounded in the same order (scale = inv_std * weight)."""
    return (x - _per_channel(mean)) * _per_channel(inv_std * weight) + _per_channel(bias)


def batch_norm_relu_forward_reference(x, mean, inv_std, weight, bias):
    """NumPy twin of `batch_norm_relu_forward`."""
    return relu_forward_reference(batch_norm_forward_reference(x, mean, inv_std, weight, bias))


# --------------------------------------------------------------------------------------------
# Backward: batch norm, and ReLU-after-batch-norm.
# --------------------------------------------------------------------------------------------


def batch_norm_backward(grad_y, x, mean, inv_std, weight, batch_statistics):
    """Gradients (grad_x, grad_weight, grad_bias) of y = xhat * weight + bias.

    With xhat = (x - mean) * inv_std and g = grad_y, sums over the M values of a channel:

        grad_bias = sum g,    grad_weight = sum g * xhat.

    Eval mode (batch_statistics=False): mean and inv_std are constants, so
        grad_x = g * weight * inv_std.
    Training mode: mean = (1/M) sum x and inv_std = (var + eps)^(-1/2) depend on x. From
        d mean / d x_i = 1/M,   d var / d x_i = 2 (x_i - mean) / M,
        d inv_std / d x_i = -inv_std^3 (x_i - mean) / M,
    follows d xhat_j / d x_i = inv_std * (delta_ij - 1/M - xhat_i xhat_j / M), and summing
    g_j * weight * d xhat_j / d x_i over j:
        grad_x = weight * inv_std / M * (M g - grad_bias - xhat * grad_weight).
    """
    return _batch_norm_backward(grad_y, x, mean, inv_std, weight, None, batch_statistics)


def batch_norm_relu_backward(grad_y, x, mean, inv_std, weight, bias, batch_statistics):
    """Gradients (grad_x, grad_weight, grad_bias) of y = relu(batch_norm(x)).

    The ReLU passes the gradient where y > 0 (the subgradient 0 at the kink), so this is
    `batch_norm_backward` of g = grad_y * [y > 0], without writing g to memory. y > 0 exactly
    where the batch norm's value (x - mean) * inv_std * weight + bias is, and the kernels
    recompute that value from x, which they read anyway, rather than read y: one pass over
    memory less in each of the two kernels.
    """
    return _batch_norm_backward(grad_y, x, mean, inv_std, weight, bias, batch_statistics)


def batch_norm_relu_input_grad(grad_y, x, mean, inv_std, weight, bias, sum_grad,
                               sum_grad_centred, batch_statistics):
    """`batch_norm_relu_backward`, given its parameter-gradient sums (float64, shape (C,)),
    computed elsewhere with g = grad_y * [y > 0]:
        sum_grad = sum g,    sum_grad_centred = sum g * (x - mean).
    An SSC layer that reads y = relu(batch_norm(x)) as its input computes them in its backward
    kernel (`minissc.kernels.ssc.ssc_backward` with an input norm), so only the grad_x pass is
    left here: grad_bias = sum_grad, grad_weight = inv_std * sum_grad_centred.
    """
    grad_weight, grad_bias = parameter_grads(sum_grad, sum_grad_centred, inv_std, weight.dtype)
    return _with_input_grad(grad_y, x, mean, inv_std, weight, bias, grad_weight, grad_bias,
                            batch_statistics)


def parameter_grads(sum_grad, sum_grad_centred, inv_std, dtype):
    """(grad_weight, grad_bias) of a batch norm from its float64 sums (see
    `batch_norm_relu_input_grad`): grad_bias = sum_grad, grad_weight = inv_std *
    sum_grad_centred, in `dtype`."""
    return (sum_grad_centred * inv_std).astype(dtype), sum_grad.astype(dtype)


def _batch_norm_backward(grad_y, x, mean, inv_std, weight, relu_bias, batch_statistics):
    """relu_bias: the batch norm's bias when a ReLU follows it, else None."""
    grad_weight = np.empty_like(weight)
    grad_bias = np.empty_like(weight)
    _batch_norm_parameter_grad_kernel(planes(grad_y), planes(x), mean, inv_std, weight,
                                      relu_bias, _channels_per_block(x), grad_weight, grad_bias)
    return _with_input_grad(grad_y, x, mean, inv_std, weight, relu_bias, grad_weight, grad_bias,
                            batch_statistics)


def _with_input_grad(grad_y, x, mean, inv_std, weight, relu_bias, grad_weight, grad_bias,
                     batch_statistics):
    """(grad_x, grad_weight, grad_bias): the parameter gradients, and grad_x computed from them."""
    grad_x = np.empty(x.shape, x.dtype)
    rules = input_grad_rules(mean, inv_std, weight, grad_weight, grad_bias, batch_statistics,
                             x.size // x.shape[1])
    _batch_norm_input_grad_kernel(planes(grad_y), planes(x), rules, relu_bias, planes(grad_x))
    return grad_x, grad_weight, grad_bias


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def _batch_norm_parameter_grad_kernel(grad_y, x, mean, inv_std, weight, relu_bias,
                                      channels_per_block, grad_weight, grad_bias):
    """grad_bias = sum g, grad_weight = inv_std * sum g * (x - mean), per channel.

    g is grad_y masked by relu(batch norm) > 0 when `relu_bias` (the bias of a batch norm
    followed by a ReLU) is given; for None, Numba compiles the kernel without the mask.
    """
    batch, channels = x.shape[:2]
    for block in prange(-(-channels // channels_per_block)):
        first = block * channels_per_block
        block_size = min(channels_per_block, channels - first)
        sum_grad = np.zeros(block_size)
        sum_grad_centred = np.zeros(block_size)
        for n in range(batch):
            for k in range(block_size):
                c = first + k
                plane_grad, plane_grad_centred = _plane_grad_sums(
                    grad_y[n, c], x[n, c], c, mean[c], inv_std[c] * weight[c], relu_bias)
                sum_grad[k] += plane_grad
                sum_grad_centred[k] += plane_grad_centred
        for k in range(block_size):
            grad_bias[first + k] = sum_grad[k]
            grad_weight[first + k] = sum_grad_centred[k] * inv_std[first + k]


@njit(cache=True, fastmath={"reassoc"})
def _plane_grad_sums(grads, values, c, channel_mean, scale, relu_bias):
    """(sum g, sum g * (x - mean_c)) over one plane of channel c, summed in the plane's dtype
    (in vector lanes, `reassoc`) and returned as float64: g = grads, masked by
    relu(batch norm) > 0 when `relu_bias` (the biases, shape (C,)) is given (None: no mask,
    compiled without it). `_batch_norm_parameter_grad_kernel` adds these plane by plane in
    float64, and so do the SSC backward kernels that compute a batch norm's sums while a
    plane is in cache (`minissc.kernels.ssc._input_norm_grad_sums`): one loop, so the sums
    agree to the bit. Plane sums in float32 rather than float64, as for the SSC weight sums,
    took the SSC backward kernels with an input norm 0.87-0.99x the time
    (`benchmarks/ssc_versions_ab.py --against 907b6cf --norm --rounds 15`)."""
    zero = grads.dtype.type(0)
    plane_grad = zero
    plane_grad_centred = zero
    for i in range(values.size):
        grad = grads[i]
        if relu_bias is not None:
            grad = grad if _normalised(values[i], channel_mean, scale, relu_bias[c]) > 0 else zero
        plane_grad += grad
        plane_grad_centred += grad * (values[i] - channel_mean)
    return np.float64(plane_grad), np.float64(plane_grad_centred)


@njit(cache=True, parallel=True)
def _batch_norm_input_grad_kernel(grad_y, x, rules, relu_bias, grad_x):
    """grad_x = weight * inv_std * (g - grad_bias / M - xhat * grad_weight / M) in training
    mode, where the two corrections come from the statistics' dependence on x; in eval mode
    they vanish (see `_input_grad`). rules: `input_grad_rules`."""
    batch, channels, plane = x.shape
    for index in prange(batch * channels):
        n, c = index // channels, index % channels
        _plane_input_grad(grad_y[n, c], x[n, c], c, rules, relu_bias, grad_x[n, c])


@njit(cache=True, nogil=True)
def _batch_norm_input_grad_images_kernel(grad_y, x, rules, relu_bias, grad_x):
    """`_batch_norm_input_grad_kernel` for some of the batch's images, in one thread: `nogil`,
    for the threads of `minissc.kernels.dense`, which ask for grad_x a chunk of images at a
    time (`InputGradByImages`)."""
    batch, channels = x.shape[:2]
    for n in range(batch):
        for c in range(channels):
            _plane_input_grad(grad_y[n, c], x[n, c], c, rules, relu_bias, grad_x[n, c])


@njit(cache=True, inline="always")
def _plane_input_grad(grads, values, c, rules, relu_bias, out):
    """out = grad_x of one plane of channel c (see `_batch_norm_input_grad_kernel`), from its
    upstream `grads` masked by the ReLU (relu_bias given) and the input `values`."""
    rule = channel_rule(rules, c)
    channel_mean, scale = rule[0], rule[1]
    zero = out.dtype.type(0)
    for i in range(values.size):
        grad = grads[i]
        if relu_bias is not None:
            grad = grad if _normalised(values[i], channel_mean, scale, relu_bias[c]) > 0 else zero
        out[i] = _input_grad(grad, values[i], rule)


class InputGradByImages:
    """grad_x of a batch norm + ReLU (`batch_norm_relu_input_grad`), computed only for the
    images asked for: ``grads[images]`` is grad_x[images], the same values. A consumer that
    reads grad_x a chunk of images at a time (`minissc.kernels.dense.conv2d_backward`) then
    gets each chunk while it is in cache, and grad_x is never written whole to memory nor
    read back from it."""

    def __init__(self, grad_y, x, mean, inv_std, weight, bias, sum_grad, sum_grad_centred,
                 batch_statistics):
        self.shape, self.dtype = x.shape, x.dtype
        rules = relu_input_grad_rules(x, mean, inv_std, weight, sum_grad, sum_grad_centred,
                                      batch_statistics)
        self.arguments = grad_y, x, rules, bias

    def __getitem__(self, images):
        grad_y, x, rules, bias = self.arguments
        x_images = x[images]
        grad_x = np.empty(x_images.shape, x.dtype)
        _batch_norm_input_grad_images_kernel(planes(grad_y[images]), planes(x_images), rules,
                                             bias, planes(grad_x))
        return grad_x


@njit(cache=True)
def input_grad_rules(mean, inv_std, weight, grad_weight, grad_bias, batch_statistics, count):
    """rules (C, 4) in x's dtype (mean's): per channel c, (mean_c, scale_c, mean_grad_c,
    centred_coefficient_c) for `_input_grad`, with scale = inv_std * weight, and in training
    mode mean_grad = grad_bias / M and centred_coefficient = grad_weight * inv_std / M (0 in
    eval mode); count = M.

    Computed once per call, not once per plane in the kernels: the chunk kernel of
    `InputGradByImages` took 102 ns a plane with the rule computed per plane and 23 ns with
    it read from here (8x8 planes, one thread; a scratch timing, same bits), though the rule
    alone costs 2 ns."""
    as_dtype = mean.dtype.type
    rules = np.zeros((mean.size, 4), mean.dtype)
    for c in range(mean.size):
        rules[c, 0], rules[c, 1] = mean[c], inv_std[c] * weight[c]
        if batch_statistics:
            rules[c, 2] = as_dtype(grad_bias[c] / count)
            rules[c, 3] = as_dtype(grad_weight[c] * inv_std[c] / count)
    return rules


def relu_input_grad_rules(x, mean, inv_std, weight, sum_grad, sum_grad_centred,
                          batch_statistics):
    """`input_grad_rules` of a batch norm + ReLU on x from its two float64 parameter-gradient
    sums, as `batch_norm_relu_input_grad` takes them."""
    grad_weight, grad_bias = parameter_grads(sum_grad, sum_grad_centred, inv_std, weight.dtype)
    return input_grad_rules(mean, inv_std, weight, grad_weight, grad_bias, batch_statistics,
                            x.size // x.shape[1])


@njit(cache=True, inline="always")
def channel_rule(rules, c):
    """Channel c's row of `input_grad_rules`, as the tuple `_input_grad` takes."""
    return rules[c, 0], rules[c, 1], rules[c, 2], rules[c, 3]


@njit(cache=True)
def _input_grad(grad, value, rule):
    """One entry of the batch norm's grad_x, for upstream `grad` (masked by the ReLU, if any)
    at input `value`, with `rule` from `channel_rule`:

        scale * (grad - mean_grad - (value - mean) * centred_coefficient),

    where (value - mean) * centred_coefficient stands for xhat * grad_weight / M. A separate
    function without fastmath, as `_normalised` is, because the SSC group backward computes it
    too as it reads its upstream gradient (``output_norm`` in `minissc.kernels.ssc`) and must
    round it as this kernel does."""
    channel_mean, scale, mean_grad, centred_coefficient = rule
    return scale * (grad - mean_grad - (value - channel_mean) * centred_coefficient)


def batch_norm_backward_reference(grad_y, x, mean, inv_std, weight, batch_statistics):
    """NumPy twin of `batch_norm_backward`."""
    xhat = (x - _per_channel(mean)) * _per_channel(inv_std)
    grad_bias = grad_y.sum(axis=(0, 2, 3), dtype=np.float64).astype(x.dtype)
    grad_weight = (grad_y * xhat).sum(axis=(0, 2, 3), dtype=np.float64).astype(x.dtype)
    scale = _per_channel(weight * inv_std)
    if not batch_statistics:
        return grad_y * scale, grad_weight, grad_bias
    count = x.size // x.shape[1]
    grad_x = scale / count * (count * grad_y - _per_channel(grad_bias)
                              - xhat * _per_channel(grad_weight))
    return grad_x, grad_weight, grad_bias


def batch_norm_relu_backward_reference(grad_y, x, mean, inv_std, weight, bias, batch_statistics):
    """NumPy twin of `batch_norm_relu_backward`: the ReLU's backward on the recomputed output."""
    y = batch_norm_relu_forward_reference(x, mean, inv_std, weight, bias)
    return batch_norm_backward_reference(relu_backward_reference(grad_y, y), x, mean, inv_std,
                                         weight, batch_statistics)


# --------------------------------------------------------------------------------------------
# ReLU, and a sum followed by ReLU, on arrays of any shape.
# --------------------------------------------------------------------------------------------


def relu_forward(x):
    """y = max(x, 0) elementwise (NaN stays NaN, as in PyTorch)."""
    y = np.empty(x.shape, x.dtype)
    _relu_forward_kernel(x.reshape(-1), y.reshape(-1))
    return y


@njit(cache=True, parallel=True)
def _relu_forward_kernel(x, y):
    # prange splits the flat range into one contiguous block per thread.
    zero = y.dtype.type(0)
    for i in prange(x.size):
        value = x[i]
        y[i] = zero if value < 0 else value


def relu_forward_reference(x):
    """NumPy twin of `relu_forward`."""
    return np.maximum(x, 0)


PARALLEL_ADD_MIN_SIZE = 1 << 19


def add_arrays(a, b):
    """a + b. For C-contiguous arrays of one shape and dtype with at least
    PARALLEL_ADD_MIN_SIZE values, in a parallel kernel (NumPy's add runs in one thread): the
    autograd engine's sum of the gradients of a value used twice (a residual block's input)
    and `minissc.functional.Add` on two activations; else NumPy's. The same values either way.
    The kernel's fixed cost (waking the second thread) is about 60 us: float32, 2 threads,
    median of 200 calls, NumPy against the kernel, 131,072 values 25 / 82 us, 393,216 values
    159 / 156 us, 524,288 values 224 / 198 us, 2,097,152 values 846 / 539 us."""
    if (a.shape != b.shape or a.dtype != b.dtype or a.size < PARALLEL_ADD_MIN_SIZE
            or not (a.flags.c_contiguous and b.flags.c_contiguous)):
        return a + b
    return _elementwise(_add_kernel, a, b)


def _elementwise(kernel, a, b):
    """A new array (a's shape and dtype) filled by an elementwise kernel(a, b, out) of two
    arrays of one shape, run on their flat views."""
    out = np.empty(a.shape, a.dtype)
    kernel(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out


@njit(cache=True, parallel=True)
def _add_kernel(a, b, out):
    for i in prange(a.size):
        out[i] = a[i] + b[i]


def add_relu_forward(a, b):
    """y = max(a + b, 0) elementwise for a and b of one shape, in one pass: the end of a
    residual block, whose sum is never written on its own (NaN stays NaN)."""
    return _elementwise(_add_relu_forward_kernel, a, b)


@njit(cache=True, parallel=True)
def _add_relu_forward_kernel(a, b, y):
    zero = y.dtype.type(0)
    for i in prange(a.size):
        value = a[i] + b[i]
        y[i] = zero if value < 0 else value


def add_relu_forward_reference(a, b):
    """NumPy twin of `add_relu_forward`."""
    return relu_forward_reference(a + b)


def relu_backward(grad_y, y):
    """grad_x = grad_y where y > 0, else 0: d max(x, 0) / dx is 1 for x > 0 and 0 for x < 0,
    and the subgradient 0 is taken at x = 0."""
    return _elementwise(_relu_backward_kernel, grad_y, y)


@njit(cache=True, parallel=True)
def _relu_backward_kernel(grad_y, y, grad_x):
    zero = grad_x.dtype.type(0)
    for i in prange(grad_y.size):
        grad_x[i] = grad_y[i] if y[i] > 0 else zero


def relu_backward_reference(grad_y, y):
    """NumPy twin of `relu_backward`."""
    return np.where(y > 0, grad_y, 0)
