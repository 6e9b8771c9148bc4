"""The operations of minissc: the one bridge between the autograd graph and the kernels.

Each op is a `Function` (forward and hand-derived backward on plain arrays, see
`minissc.tensor`) plus a public function that checks its arguments, names any bad one in
the error, and applies the `Function`. The heavy maths lives in `minissc.kernels`; the
docstrings of the `Function`s give the equations of their backward passes.

Shapes are NCHW. Inputs may be `Tensor`s or float arrays (float32 or float64, never mixed).
"""
from __future__ import annotations

import numbers

import numpy as np

from minissc.checks import (as_tensor, check_group_size, check_grouped_weight, check_int,
                            check_kernel_size, check_ndim, check_same_dtype)
from minissc.kernels import dense as dense_kernels
from minissc.kernels import norm as norm_kernels
from minissc.kernels import ssc as ssc_kernels
from minissc.tensor import Function, Tensor


def _reduce_to_shape(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Undo NumPy broadcasting: sum `grad` over the axes along which an operand was expanded."""
    if grad.shape == shape:
        return grad
    leading = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(leading))) if leading else grad
    expanded = tuple(axis for axis, size in enumerate(shape) if size == 1 and grad.shape[axis] != 1)
    return grad.sum(axis=expanded, keepdims=True) if expanded else grad


# --------------------------------------------------------------------------------------------
# Elementwise arithmetic and reductions (used by residual connections, biases and losses).
# --------------------------------------------------------------------------------------------


class Add(Function):
    """out = a + b (broadcasting); d/da = grad summed over a's broadcast axes, same for b."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return norm_kernels.add_arrays(a, b)

    @staticmethod
    def backward(ctx, grad_out):
        shape_a, shape_b = ctx.shapes
        return _reduce_to_shape(grad_out, shape_a), _reduce_to_shape(grad_out, shape_b)


class Mul(Function):
    """out = a * b (broadcasting); d/da = grad * b, d/db = grad * a (reduced to shape)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad_out):
        a, b = ctx.saved_arrays
        grad_a = _reduce_to_shape(grad_out * b, a.shape) if ctx.needs_input_grad[0] else None
        grad_b = _reduce_to_shape(grad_out * a, b.shape) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


class Sum(Function):
    """out = sum of all elements; d/dx = grad (a scalar) broadcast to x's shape."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return np.asarray(x.sum(), dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        return np.broadcast_to(grad_out, ctx.shape).copy()


class Reshape(Function):
    """out = x viewed with a new shape; the gradient is reshaped back."""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out.reshape(ctx.shape)


def _operands(a, b) -> tuple[Tensor, Tensor]:
    """Both as tensors; a Python number takes the dtype of the other operand (as in NumPy)."""
    if isinstance(a, Tensor) and isinstance(b, (int, float)):
        return a, Tensor(np.asarray(b, dtype=a.dtype))
    if isinstance(b, Tensor) and isinstance(a, (int, float)):
        return Tensor(np.asarray(a, dtype=b.dtype)), b
    return as_tensor(a, "a"), as_tensor(b, "b")


def add(a, b) -> Tensor:
    """a + b with NumPy broadcasting."""
    return Add.apply(*_operands(a, b))


def mul(a, b) -> Tensor:
    """a * b with NumPy broadcasting."""
    return Mul.apply(*_operands(a, b))


def sum(x) -> Tensor:  # noqa: A001 (mirrors torch.sum)
    """The sum of all elements, as a tensor of shape ()."""
    return Sum.apply(as_tensor(x, "x"))


def reshape(x, shape) -> Tensor:
    return Reshape.apply(as_tensor(x, "x"), shape=tuple(shape))


# --------------------------------------------------------------------------------------------
# Shift, group point-wise convolution and their fusion, the SSC convolution.
# --------------------------------------------------------------------------------------------


class Shift(Function):
    """out[n, j, y, x] = x[n, j, y + dy_j, x + dx_j] (zero outside the image).

    Channel j moves by the offset of kernel position p = j mod G. Each input pixel lands in
    at most one output pixel, so the backward is the inverse shift:
    dx[n, j, y, x] = dout[n, j, y - dy_j, x - dx_j] (zero where that falls outside).
    """

    @staticmethod
    def forward(ctx, x, kernel_size, group_size):
        ctx.kernel_size, ctx.group_size = kernel_size, group_size
        return ssc_kernels.shift_forward(np.ascontiguousarray(x), kernel_size, group_size)

    @staticmethod
    def backward(ctx, grad_out):
        return ssc_kernels.shift_backward(np.ascontiguousarray(grad_out),
                                          ctx.kernel_size, ctx.group_size)


class GroupPointwiseConv2d(Function):
    """y[n, o, Y, X] = sum_i W[o, i] * x[n, g(o) G + i, sY, sX], g(o) = o // (O / groups).

    Backward (a grouped matrix product and its transposes):
      dW[o, i] = sum_{n,Y,X} dy[n, o, Y, X] x[n, g(o) G + i, sY, sX]
      dx[n, g G + i, sY, sX] = sum_{o in group g} W[o, i] dy[n, o, Y, X]  (0 off the stride grid)
    """

    @staticmethod
    def forward(ctx, x, weight, stride):
        x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
        ctx.stride = stride
        ctx.save_for_backward(x, weight)
        return ssc_kernels.group_pointwise_forward(x, weight, stride)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_arrays
        return ssc_kernels.group_pointwise_backward(x, weight, np.ascontiguousarray(grad_out),
                                                    ctx.stride)


class SSCConv2d(Function):
    """The fused SSC convolution: shift and group point-wise in one pass, no shifted copy.

      y[n, o, Y, X] = sum_i W[o, i] x[n, c, sY + dy_c, sX + dx_c],  c = g(o) G + i.
    Backward (chain rule through the shift, whose transpose is the inverse shift):
      dW[o, i] = sum_{n,Y,X} dy[n, o, Y, X] x[n, c, sY + dy_c, sX + dx_c]
      dx[n, c, sY + dy_c, sX + dx_c] = sum_{o in group g(c)} W[o, i] dy[n, o, Y, X]
    (terms whose input pixel falls in the zero padding are dropped). With a channel shuffle
    folded in front, x[n, c] reads x[n, perm(c)] and dx is written back through perm.
    """

    @staticmethod
    def forward(ctx, x, weight, kernel_size, stride, shuffle_groups):
        x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
        ctx.kernel_size, ctx.stride, ctx.shuffle_groups = kernel_size, stride, shuffle_groups
        ctx.save_for_backward(x, weight)
        return ssc_kernels.ssc_forward(x, weight, kernel_size, stride, shuffle_groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_arrays
        return ssc_kernels.ssc_backward(x, weight, np.ascontiguousarray(grad_out),
                                        ctx.kernel_size, ctx.stride, ctx.shuffle_groups)


def shift(x, kernel_size: int = 3, group_size: int | None = None) -> Tensor:
    """Shift channel j of x by the offset of kernel position j mod group_size.

    Positions are row-major on the kernel_size x kernel_size grid, centred, with zero fill
    (spec section 2). group_size defaults to kernel_size**2 (all positions used).
    """
    x = as_tensor(x, "x")
    check_ndim(x, 4, "x", "N, C, H, W")
    kernel_size = check_kernel_size(kernel_size)
    group_size = kernel_size * kernel_size if group_size is None else group_size
    group_size = check_group_size(group_size, kernel_size)
    return Shift.apply(x, kernel_size=kernel_size, group_size=group_size)


def group_pointwise_conv2d(x, weight, stride: int = 1) -> Tensor:
    """Grouped 1x1 convolution with weight of shape (O, G); groups = C // G."""
    x, weight = as_tensor(x, "x"), as_tensor(weight, "weight")
    check_ndim(x, 4, "x", "N, C, H, W")
    check_same_dtype(x=x, weight=weight)
    check_grouped_weight(x, weight)
    stride = check_int(stride, "stride", 1)
    return GroupPointwiseConv2d.apply(x, weight, stride=stride)


def ssc_conv2d(x, weight, kernel_size: int = 3, stride: int = 1, *,
               shuffle_groups: int = 1) -> Tensor:
    """Super sparse convolution: weight (O, G), G <= kernel_size**2, groups = C // G.

    Equals ``group_pointwise_conv2d(shift(x, kernel_size, G), weight, stride)`` and the dense
    convolution with ``reference.ssc_dense_kernel(weight, kernel_size)``, padding k // 2.
    ``shuffle_groups=g`` computes ``ssc_conv2d(channel_shuffle(x, g), ...)`` without the
    shuffled copy (the SSC module's shuffle, folded into the second SSC layer's reads).
    """
    x, weight, layer = _ssc_arguments(x, weight, kernel_size, stride, shuffle_groups)
    return SSCConv2d.apply(x, weight, **layer)


def _ssc_arguments(x, weight, kernel_size, stride, shuffle_groups):
    """x and weight as tensors and the layer's settings as `SSCConv2d.apply` takes them,
    after checking them all."""
    x, weight = as_tensor(x, "x"), as_tensor(weight, "weight")
    check_ndim(x, 4, "x", "N, C, H, W")
    check_same_dtype(x=x, weight=weight)
    kernel_size = check_kernel_size(kernel_size)
    check_grouped_weight(x, weight)
    check_group_size(weight.shape[1], kernel_size)
    stride = check_int(stride, "stride", 1)
    shuffle_groups = check_int(shuffle_groups, "shuffle_groups", 1)
    if x.shape[1] % shuffle_groups:
        raise ValueError(f"channels ({x.shape[1]}) must be divisible by shuffle_groups "
                         f"({shuffle_groups})")
    return x, weight, dict(kernel_size=kernel_size, stride=stride, shuffle_groups=shuffle_groups)


# --------------------------------------------------------------------------------------------
# Batch norm and ReLU.
# --------------------------------------------------------------------------------------------


class BatchNorm2d(Function):
    """y = (x - mean_c) * inv_std_c * weight_c + bias_c, inv_std = 1 / sqrt(var + eps).

    Training: mean and (biased) var are the batch statistics over the M = N H W values of a
    channel, so they depend on x; with xhat = (x - mean) inv_std,
      dbias = sum dy,  dweight = sum dy xhat,
      dx = weight inv_std / M * (M dy - dbias - xhat dweight).
    Eval: mean and var are the running statistics (constants): dx = dy weight inv_std.
    With apply_relu the output is relu(y), computed in the same pass; its backward first
    masks dy by y > 0 (the ReLU's backward, with y recomputed from x) and then is the batch
    norm's.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps,
                apply_relu):
        x, weight, bias = (np.ascontiguousarray(a) for a in (x, weight, bias))
        mean, inv_std = _normalisation(x, running_mean, running_var, training, momentum, eps)
        ctx.training = training
        if not apply_relu:
            ctx.save_for_backward(x, weight, mean, inv_std, None)
            return norm_kernels.batch_norm_forward(x, mean, inv_std, weight, bias)
        ctx.save_for_backward(x, weight, mean, inv_std, bias)  # bias: for the ReLU mask
        return norm_kernels.batch_norm_relu_forward(x, mean, inv_std, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, inv_std, relu_bias = ctx.saved_arrays
        grad_out = np.ascontiguousarray(grad_out)
        if relu_bias is None:
            return norm_kernels.batch_norm_backward(grad_out, x, mean, inv_std, weight,
                                                    ctx.training)
        return norm_kernels.batch_norm_relu_backward(grad_out, x, mean, inv_std, weight,
                                                     relu_bias, ctx.training)


def _normalisation(x, running_mean, running_var, training, momentum, eps, moments=None):
    """(mean, inv_std) of a batch norm, shape (C,) in x's dtype: the batch statistics in
    training, which also move the running ones (if given) in place, else the running ones.
    moments: x's plane moments, if the kernel that wrote x took them (the same statistics
    without a pass over x, see `norm.batch_norm_statistics`)."""
    if training:
        mean, var = (norm_kernels.batch_norm_statistics(x) if moments is None else
                     norm_kernels.statistics_from_moments(moments, x.shape[2] * x.shape[3],
                                                          x.dtype))
        if running_mean is not None:
            count = x.size // x.shape[1]
            unbiased_var = var * (count / (count - 1))
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += momentum * unbiased_var
    else:
        mean, var = running_mean, running_var
    return np.asarray(mean, dtype=x.dtype), (1.0 / np.sqrt(var + eps)).astype(x.dtype)


def _folded_ssc_forward(x, weight, bn_weight, bn_bias, layer, running_mean, running_var,
                        training, momentum, eps, moments=None, output_moments=None):
    """y = SSC(relu(batch_norm(x))) with the batch norm applied by the SSC kernel as it reads
    x (layer = kernel_size, stride, shuffle_groups); also inv_std and the kernels' input norm
    (mean, scale, bias), which the backward needs. moments: x's plane moments, if known;
    output_moments: an array for y's, or None."""
    mean, inv_std = _normalisation(x, running_mean, running_var, training, momentum, eps,
                                   moments)
    input_norm = (mean, inv_std * bn_weight, bn_bias)
    y = ssc_kernels.ssc_forward(x, weight, *layer, input_norm=input_norm, moments=output_moments)
    return y, inv_std, input_norm


class BatchNormReLUSSCConv2d(Function):
    """y = SSC(a) with a = relu(batch_norm(x)), a computed by the SSC kernel as it reads x.

    The forward is `BatchNorm2d`'s (statistics, running statistics) and `SSCConv2d`'s, with
    the normalise + ReLU pass folded into the SSC's reads, so a is never written: one write
    and one read of the activation less, and one activation fewer kept for the backward. By
    the chain rule through a:
      (da, dW) = SSCConv2d's backward at a (its kernel recomputes a from x as it reads),
      (dx, dweight_bn, dbias_bn) = BatchNorm2d's backward with ReLU, for the upstream da.
    The SSC backward kernel also sums the batch norm's parameter gradients (sum of da * [a > 0]
    and of da * [a > 0] * (x - mean)) as it finishes each plane of da, so the batch norm's
    backward is left with its grad_x pass: two reads of the activation's size less. a is
    rounded as the batch norm + ReLU kernel rounds it and the sums are taken plane by plane
    as its kernel takes them, so the results equal the unfused pair's.
    """

    @staticmethod
    def forward(ctx, x, weight, bn_weight, bn_bias, running_mean, running_var, training,
                momentum, eps, kernel_size, stride, shuffle_groups):
        x, weight, bn_weight, bn_bias = (np.ascontiguousarray(a)
                                         for a in (x, weight, bn_weight, bn_bias))
        ctx.training, ctx.layer = training, (kernel_size, stride, shuffle_groups)
        y, inv_std, ctx.input_norm = _folded_ssc_forward(
            x, weight, bn_weight, bn_bias, ctx.layer, running_mean, running_var, training,
            momentum, eps)
        ctx.save_for_backward(x, bn_weight, inv_std, weight)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, bn_weight, inv_std, weight = ctx.saved_arrays
        mean, _, bn_bias = ctx.input_norm
        grad_activation, grad_weight, sum_grad, sum_grad_centred = ssc_kernels.ssc_backward(
            x, weight, np.ascontiguousarray(grad_out), *ctx.layer, input_norm=ctx.input_norm)
        grad_x, grad_bn_weight, grad_bn_bias = norm_kernels.batch_norm_relu_input_grad(
            grad_activation, x, mean, inv_std, bn_weight, bn_bias, sum_grad, sum_grad_centred,
            ctx.training)
        return grad_x, grad_weight, grad_bn_weight, grad_bn_bias


class BatchNormReLUSSCPair(Function):
    """y = SSC2(a2), a2 = relu(bn2(SSC1(a1))), a1 = relu(bn1(x)): two `BatchNormReLUSSCConv2d`
    in one Function, so that the second batch norm's backward is folded as well as its
    forward.

    Forward: exactly the two ops' forwards (y1 = SSC1(a1) is kept for the backward, as the
    second op keeps its input), except that bn2's batch statistics come from SSC1's kernel,
    which takes each plane's moments as it writes y1 (`norm.plane_moments`), instead of from
    a pass that reads y1 again: the same numbers. Backward, by the chain rule from the top:
      (da2, dW2, the sums of bn2) = SSC2's backward at a2, as in the second op, except that
        where SSC2 runs on the flat kernels (fewer than 4 outputs per group) da2 is not
        written: it depends on SSC2's weight and upstream only, and SSC1's kernel recomputes
        each plane of it as it reads it (`minissc.kernels.ssc.NextLayerInputGrad`);
      dy1 = bn2 + ReLU's grad_x for the upstream da2: in the second op a pass of its own that
        writes dy1 to memory, for SSC1's backward to read it back. Here SSC1's backward kernel
        computes it from da2 and y1 group by group as it reads it (``output_norm`` in
        `minissc.kernels.ssc.ssc_backward`), with the same rounding;
      (da1, dW1, the sums of bn1), then dx = bn1 + ReLU's grad_x, as in the first op.
    Same values and gradients as the two ops, to the bit (tested), and the same running
    statistics.

    With a bias-free 1x1 convolution in front, x = conv(x0) (the SSC module's first layer),
    the op runs it too. bn1's statistics then come from the convolution's chunks, while
    each is in cache, and bn1's grad_x need not exist whole either: the convolution's
    backward (`minissc.kernels.dense.conv2d_backward`) reads its upstream dx a chunk of
    images at a time, and here each chunk is computed when asked (`norm.InputGradByImages`),
    in cache, instead of being written to memory by a pass of its own and read back twice.
    Same values and gradients as conv2d followed by the pair, to the bit (tested).
    """

    @staticmethod
    def forward(ctx, x, conv_weight, weight1, bn1_weight, bn1_bias, weight2, bn2_weight,
                bn2_bias, norm1, norm2, kernel_size, stride, shuffle_groups):
        """norm1, norm2: each batch norm's running_mean, running_var, training, momentum and
        eps, as a dict of `_normalisation`'s arguments (both in the same mode). conv_weight:
        None, or the weight of a 1x1 convolution in front (then ``x`` is its input)."""
        x, weight1, bn1_weight, bn1_bias, weight2, bn2_weight, bn2_bias = (
            np.ascontiguousarray(a)
            for a in (x, weight1, bn1_weight, bn1_bias, weight2, bn2_weight, bn2_bias))
        ctx.training = norm1["training"]
        ctx.conv, moments1 = None, None
        if conv_weight is not None:
            ctx.conv = x, np.ascontiguousarray(conv_weight)
            moments1 = np.empty((x.shape[0], conv_weight.shape[0], 3)) if ctx.training else None
            x = dense_kernels.conv2d_forward(*ctx.conv, 1, 0, 1, moments=moments1)
        ctx.layers = (kernel_size, 1, 1), (kernel_size, stride, shuffle_groups)
        moments2 = np.empty((x.shape[0], weight1.shape[0], 3)) if ctx.training else None
        y1, inv_std1, input_norm1 = _folded_ssc_forward(
            x, weight1, bn1_weight, bn1_bias, ctx.layers[0], **norm1, moments=moments1,
            output_moments=moments2)
        y, inv_std2, input_norm2 = _folded_ssc_forward(y1, weight2, bn2_weight, bn2_bias,
                                                       ctx.layers[1], **norm2, moments=moments2)
        ctx.input_norms = input_norm1, input_norm2
        ctx.save_for_backward(x, weight1, bn1_weight, inv_std1, y1, weight2, bn2_weight,
                              inv_std2)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight1, bn1_weight, inv_std1, y1, weight2, bn2_weight, inv_std2 = ctx.saved_arrays
        (mean1, _, bn1_bias), (mean2, _, bn2_bias) = input_norm1, input_norm2 = ctx.input_norms
        layer1, layer2 = ctx.layers
        grad_out = np.ascontiguousarray(grad_out)
        fold = ssc_kernels.folds_next_layer(x.shape[1], weight1, layer1[1], weight2, layer2[1])
        grad_a2, grad_weight2, *sums2 = ssc_kernels.ssc_backward(
            y1, weight2, grad_out, *layer2, input_norm=input_norm2, input_grad=not fold)
        if fold:  # SSC1's kernel computes da2 from grad_out as it reads it
            grad_a2 = ssc_kernels.NextLayerInputGrad(grad_out, weight2, *layer2)
        output_norm = (y1, mean2, inv_std2, bn2_weight, bn2_bias, *sums2, ctx.training)
        grad_a1, grad_weight1, *sums1 = ssc_kernels.ssc_backward(
            x, weight1, grad_a2, *layer1, input_norm=input_norm1, output_norm=output_norm)
        grad_bn1_weight, grad_bn1_bias = norm_kernels.parameter_grads(*sums1, inv_std1,
                                                                      bn1_weight.dtype)
        grad_bn2_weight, grad_bn2_bias = norm_kernels.parameter_grads(*sums2, inv_std2,
                                                                      bn2_weight.dtype)
        bn1 = grad_a1, x, mean1, inv_std1, bn1_weight, bn1_bias, *sums1, ctx.training
        grad_conv_weight = None
        if ctx.conv is None:
            grad_x = norm_kernels.batch_norm_relu_input_grad(*bn1)[0]
        else:  # the convolution's backward asks for bn1's grad_x a chunk at a time, in cache
            grad_x, grad_conv_weight = dense_kernels.conv2d_backward(
                *ctx.conv, norm_kernels.InputGradByImages(*bn1), 1, 0, 1)
        return (grad_x, grad_conv_weight, grad_weight1, grad_bn1_weight, grad_bn1_bias,
                grad_weight2, grad_bn2_weight, grad_bn2_bias)


class ReLU(Function):
    """y = max(x, 0); dx = dy where y > 0, else 0 (the subgradient 0 at x = 0)."""

    @staticmethod
    def forward(ctx, x):
        y = norm_kernels.relu_forward(np.ascontiguousarray(x))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        (y,) = ctx.saved_arrays
        return norm_kernels.relu_backward(np.ascontiguousarray(grad_out), y)


class AddReLU(Function):
    """y = relu(a + b), a and b of one shape, in one pass (the end of a residual block).
    Backward: g = dy where y > 0, else 0 (ReLU's backward), and the sum passes g to both:
    da = db = g."""

    @staticmethod
    def forward(ctx, a, b):
        y = norm_kernels.add_relu_forward(np.ascontiguousarray(a), np.ascontiguousarray(b))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        (y,) = ctx.saved_arrays
        grad = norm_kernels.relu_backward(np.ascontiguousarray(grad_out), y)
        return grad, grad


def batch_norm2d(x, weight=None, bias=None, running_mean=None, running_var=None,
                 training: bool = True, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation of NCHW input over N, H, W per channel.

    In training mode the batch statistics normalise x and, when given, `running_mean` and
    `running_var` (float arrays of shape (C,)) are updated in place:
    ``running = (1 - momentum) * running + momentum * batch`` (unbiased batch variance, as
    PyTorch). In eval mode the running statistics normalise x. `weight`/`bias` default to 1/0.
    """
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps,
                       apply_relu=False)


def batch_norm_relu2d(x, weight=None, bias=None, running_mean=None, running_var=None,
                      training: bool = True, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``relu(batch_norm2d(x, ...))`` in one pass, without storing the batch norm's output."""
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps,
                       apply_relu=True)


def batch_norm_relu_ssc_conv2d(x, bn_weight, bn_bias, running_mean, running_var, weight,
                               kernel_size: int = 3, stride: int = 1, *, shuffle_groups: int = 1,
                               training: bool = True, momentum: float = 0.1,
                               eps: float = 1e-5) -> Tensor:
    """``ssc_conv2d(batch_norm_relu2d(x, bn_weight, bn_bias, running_mean, running_var,
    training, momentum, eps), weight, kernel_size, stride, shuffle_groups=...)``, with the
    batch norm + ReLU applied by the SSC kernel as it reads x: the activation between the two
    is never stored. Same values and gradients as the two calls; the running statistics move
    as in `batch_norm2d`. `bn_weight`/`bn_bias` may be None (1/0)."""
    x, bn_weight, bn_bias, norm = _batch_norm_arguments(x, bn_weight, bn_bias, running_mean,
                                                        running_var, training, momentum, eps)
    x, weight, layer = _ssc_arguments(x, weight, kernel_size, stride, shuffle_groups)
    return BatchNormReLUSSCConv2d.apply(x, weight, bn_weight, bn_bias, **norm, **layer)


def batch_norm_relu_ssc_pair(x, norm1, weight1, norm2, weight2, kernel_size: int = 3,
                             stride: int = 1, *, shuffle_groups: int = 1, training: bool = True,
                             conv_weight=None) -> Tensor:
    """Two folded SSC layers in one op, the first stride 1 without shuffle:

        y1 = batch_norm_relu_ssc_conv2d(x, *norm1[:4], weight1, kernel_size, 1, ...)
        y = batch_norm_relu_ssc_conv2d(y1, *norm2[:4], weight2, kernel_size, stride,
                                       shuffle_groups=shuffle_groups, ...)

    where norm1 and norm2 are (bn_weight, bn_bias, running_mean, running_var, momentum, eps)
    of the batch norm in front of each layer (bn_weight/bn_bias may be None: 1/0). With
    conv_weight (m, C, 1, 1), the op first applies that 1x1 convolution without bias,
    conv2d(x, conv_weight), and x is its input. Same values, gradients and running statistics
    as the separate calls; the backward folds the second batch norm's grad_x pass into the
    first layer's kernel, and the first's into the convolution's backward (see
    `BatchNormReLUSSCPair`)."""
    (bn1_weight, bn1_bias, *running1, momentum1, eps1), \
        (bn2_weight, bn2_bias, *running2, momentum2, eps2) = _norm_tuple(norm1, "norm1"), \
        _norm_tuple(norm2, "norm2")
    conv_input = None
    if conv_weight is not None:
        conv_input, conv_weight = _conv1x1_arguments(x, conv_weight)
        x = np.broadcast_to(np.zeros((), conv_input.dtype),  # stands for conv(x) in the checks
                            (x.shape[0], conv_weight.shape[0]) + tuple(x.shape[2:]))
    x, bn1_weight, bn1_bias, settings1 = _batch_norm_arguments(
        x, bn1_weight, bn1_bias, *running1, training, momentum1, eps1)
    x, weight1, _ = _ssc_arguments(x, weight1, kernel_size, 1, 1)
    middle = np.broadcast_to(np.zeros((), x.dtype), (x.shape[0], weight1.shape[0])
                             + tuple(x.shape[2:]))  # stands for y1 in the checks
    _, bn2_weight, bn2_bias, settings2 = _batch_norm_arguments(
        middle, bn2_weight, bn2_bias, *running2, training, momentum2, eps2)
    _, weight2, layer2 = _ssc_arguments(middle, weight2, kernel_size, stride, shuffle_groups)
    return BatchNormReLUSSCPair.apply(x if conv_input is None else conv_input, conv_weight,
                                      weight1, bn1_weight, bn1_bias, weight2, bn2_weight,
                                      bn2_bias, norm1=settings1, norm2=settings2, **layer2)


def _conv1x1_arguments(x, weight):
    """x and the weight (m, C, 1, 1) of a bias-free 1x1 convolution, checked, as tensors."""
    x, weight = as_tensor(x, "x"), as_tensor(weight, "conv_weight")
    check_ndim(x, 4, "x", "N, C, H, W")
    check_ndim(weight, 4, "conv_weight", "out_channels, in_channels, 1, 1")
    check_same_dtype(x=x, conv_weight=weight)
    if weight.shape[1:] != (x.shape[1], 1, 1):
        raise ValueError(f"conv_weight must have shape (out_channels, {x.shape[1]}, 1, 1) for "
                         f"x with {x.shape[1]} channels, got {tuple(weight.shape)}")
    return x, weight


def _norm_tuple(norm, name):
    if not isinstance(norm, (tuple, list)) or len(norm) != 6:
        raise TypeError(f"{name} must be (bn_weight, bn_bias, running_mean, running_var, "
                        f"momentum, eps), got {type(norm).__name__} of length "
                        f"{len(norm) if isinstance(norm, (tuple, list)) else '-'}")
    return norm


def _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps,
                apply_relu):
    x, weight, bias, norm = _batch_norm_arguments(x, weight, bias, running_mean, running_var,
                                                  training, momentum, eps)
    return BatchNorm2d.apply(x, weight, bias, **norm, apply_relu=apply_relu)


def _batch_norm_arguments(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """x, weight and bias as tensors (weight 1 and bias 0 when None) and the other settings as
    `BatchNorm2d.apply` takes them, after checking them all."""
    x = as_tensor(x, "x")
    check_ndim(x, 4, "x", "N, C, H, W")
    channels = x.shape[1]
    weight = Tensor(np.ones(channels, x.dtype)) if weight is None else as_tensor(weight, "weight")
    bias = Tensor(np.zeros(channels, x.dtype)) if bias is None else as_tensor(bias, "bias")
    check_same_dtype(x=x, weight=weight, bias=bias)
    for name, param in (("weight", weight), ("bias", bias)):
        if param.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {tuple(param.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is not None and (not isinstance(stat, np.ndarray) or stat.shape != (channels,)
                                 or stat.dtype.kind != "f"):
            raise ValueError(f"{name} must be a float array of shape ({channels},) updated in "
                             f"place, got {type(stat).__name__} {getattr(stat, 'shape', '')}")
        if stat is not None and training and not stat.flags.writeable:
            raise ValueError(f"{name} is read-only, but training updates it in place")
    for name, value in (("momentum", momentum), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if training:
        values_per_channel = x.size // max(channels, 1)
        if values_per_channel < 2:
            raise ValueError(f"batch norm in training mode needs more than one value per channel "
                             f"to estimate a variance, got input shape {tuple(x.shape)}")
    elif running_mean is None:
        raise ValueError("eval mode (training=False) needs running_mean and running_var")
    return x, weight, bias, dict(running_mean=running_mean, running_var=running_var,
                                 training=bool(training), momentum=float(momentum),
                                 eps=float(eps))


def relu(x) -> Tensor:
    """max(x, 0), elementwise."""
    return ReLU.apply(as_tensor(x, "x"))


def add_relu(a, b) -> Tensor:
    """``relu(a + b)`` in one pass, for a and b of one shape and dtype (no broadcasting): the
    sum is never stored, and the backward is ReLU's alone."""
    a, b = as_tensor(a, "a"), as_tensor(b, "b")
    check_same_dtype(a=a, b=b)
    if a.shape != b.shape:
        raise ValueError(f"add_relu needs a and b of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return AddReLU.apply(a, b)


# --------------------------------------------------------------------------------------------
# The rest of an SSC-Net: channel shuffle, dense convolution, pooling, linear, loss.
# --------------------------------------------------------------------------------------------


class ChannelShuffle(Function):
    """ShuffleNet's shuffle: view C as (groups, C / groups), swap the two, flatten.

    It is a permutation of channels, so the backward applies the inverse permutation, which
    is the same shuffle with groups and C / groups exchanged.
    """

    @staticmethod
    def forward(ctx, x, groups):
        ctx.groups = groups
        return ssc_kernels.channel_shuffle(x, groups)

    @staticmethod
    def backward(ctx, grad_out):
        return ssc_kernels.channel_shuffle(grad_out, grad_out.shape[1] // ctx.groups)


def channel_shuffle(x, groups: int) -> Tensor:
    """Interleave the channels of `groups` groups (ShuffleNet), so each next group mixes all."""
    x = as_tensor(x, "x")
    check_ndim(x, 4, "x", "N, C, H, W")
    groups = check_int(groups, "groups", 1)
    if x.shape[1] % groups:
        raise ValueError(f"channels ({x.shape[1]}) must be divisible by groups ({groups})")
    return ChannelShuffle.apply(x, groups=groups)


class Conv2d(Function):
    """Dense convolution (im2col + matrix product); see `minissc.kernels.dense` for the maths."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, groups):
        x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
        ctx.stride, ctx.padding, ctx.groups = stride, padding, groups
        ctx.save_for_backward(x, weight)
        return dense_kernels.conv2d_forward(x, weight, stride, padding, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_arrays
        return dense_kernels.conv2d_backward(x, weight, np.ascontiguousarray(grad_out),
                                             ctx.stride, ctx.padding, ctx.groups,
                                             input_grad=ctx.needs_input_grad[0])


def conv2d(x, weight, bias=None, stride: int = 1, padding: int = 0, groups: int = 1) -> Tensor:
    """Dense 2-D convolution, weight (O, C // groups, kh, kw), as torch.nn.functional.conv2d."""
    x, weight = as_tensor(x, "x"), as_tensor(weight, "weight")
    check_ndim(x, 4, "x", "N, C, H, W")
    check_ndim(weight, 4, "weight", "out_channels, in_channels // groups, kh, kw")
    bias = None if bias is None else as_tensor(bias, "bias")
    check_same_dtype(x=x, weight=weight, bias=bias)
    stride = check_int(stride, "stride", 1)
    padding = check_int(padding, "padding", 0)
    groups = check_int(groups, "groups", 1)
    channels, out_channels = x.shape[1], weight.shape[0]
    if channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({channels}) and out_channels ({out_channels}) must be "
                         f"divisible by groups ({groups})")
    if weight.shape[1] != channels // groups:
        raise ValueError(f"x has {channels} channels but weight of shape {tuple(weight.shape)} "
                         f"expects {weight.shape[1] * groups} (weight.shape[1] * groups = "
                         f"in_channels)")
    kh, kw = weight.shape[2:]
    if x.shape[2] + 2 * padding < kh or x.shape[3] + 2 * padding < kw:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input "
                         f"{x.shape[2] + 2 * padding}x{x.shape[3] + 2 * padding}")
    out = Conv2d.apply(x, weight, stride=stride, padding=padding, groups=groups)
    if bias is not None:
        if bias.shape != (out_channels,):
            raise ValueError(f"bias must have shape ({out_channels},), got {tuple(bias.shape)}")
        out = add(out, reshape(bias, (1, out_channels, 1, 1)))
    return out


class GlobalAvgPool2d(Function):
    """y[n, c] = mean over (H, W) of x[n, c]; dx[n, c, h, w] = dy[n, c] / (H W)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.mean(axis=(2, 3))

    @staticmethod
    def backward(ctx, grad_out):
        n, c, h, w = ctx.shape
        return np.broadcast_to((grad_out / (h * w))[:, :, None, None], ctx.shape).copy()


def global_avg_pool2d(x) -> Tensor:
    """Average over the spatial axes: (N, C, H, W) -> (N, C)."""
    x = as_tensor(x, "x")
    check_ndim(x, 4, "x", "N, C, H, W")
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"global_avg_pool2d needs a non-empty image, got shape {tuple(x.shape)}")
    return GlobalAvgPool2d.apply(x)


class Linear(Function):
    """y = x W^T + b; dx = dy W, dW = dy^T x, db = sum_n dy."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        y = x @ weight.T
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_arrays
        grad_bias = grad_out.sum(axis=0) if ctx.needs_input_grad[2] else None
        return grad_out @ weight, grad_out.T @ x, grad_bias


def linear(x, weight, bias=None) -> Tensor:
    """Fully connected layer, weight (out_features, in_features), as torch's F.linear."""
    x, weight = as_tensor(x, "x"), as_tensor(weight, "weight")
    bias = None if bias is None else as_tensor(bias, "bias")
    check_ndim(x, 2, "x", "N, in_features")
    check_ndim(weight, 2, "weight", "out_features, in_features")
    check_same_dtype(x=x, weight=weight, bias=bias)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input features but x has {x.shape[1]}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return Linear.apply(x, weight, bias)


class CrossEntropy(Function):
    """Mean over the batch of -sum_k t[n, k] log softmax(z[n])_k.

    t is one-hot with label smoothing eps: t = (1 - eps) onehot + eps / K. With
    log softmax(z)_k = z_k - logsumexp(z) (computed after subtracting max z, so no overflow),
    the gradient is dz[n] = (softmax(z[n]) - t[n]) / N, since sum_k t[n, k] = 1.
    """

    @staticmethod
    def forward(ctx, logits, labels, label_smoothing):
        n, k = logits.shape
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        target = np.full_like(logits, label_smoothing / k)
        target[np.arange(n), labels] += 1.0 - label_smoothing
        ctx.save_for_backward(log_probs, target)
        # A class with target 0 adds nothing, even where its log-probability is -inf (logits
        # spanning the float32 range): 0 * -inf would be NaN.
        terms = np.where(target > 0, target * log_probs, 0)
        return np.asarray(-terms.sum() / n + 0.0, dtype=logits.dtype)  # + 0.0: no -0.0

    @staticmethod
    def backward(ctx, grad_out):
        log_probs, target = ctx.saved_arrays
        return grad_out * (np.exp(log_probs) - target) / len(target)


def cross_entropy(logits, labels, label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy averaged over the batch; labels are class indices (N,)."""
    logits = as_tensor(logits, "logits")
    check_ndim(logits, 2, "logits", "N, classes")
    labels = np.asarray(getattr(labels, "data", labels))
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match logits "
                         f"{tuple(logits.shape)}, got {labels.shape}")
    if logits.shape[0] == 0:
        raise ValueError("cross_entropy needs at least one sample, got an empty batch")
    classes = logits.shape[1]
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise ValueError(f"labels must be in [0, {classes}), got {bad[0]}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return CrossEntropy.apply(logits, labels=labels.astype(np.int64),
                              label_smoothing=float(label_smoothing))
