"""Array-level tests of the SSC kernels (`minissc.kernels.ssc`) and of the dense oracle
(`minissc.reference`): every Numba kernel against its NumPy twin, the fused SSC against the
dense sparse-kernel convolution, and the oracle itself against brute force and finite
differences."""
import contextlib
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numba import njit
from numba.core.errors import TypingError

from minissc import reference
from minissc.gradcheck import numerical_gradient
from minissc.kernels import multiply_add, norm, ssc
from strategies import arrays, conv_configs, on_one_thread, seeds, ssc_configs

dtypes = st.sampled_from([np.float32, np.float64])
TWIN_TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
ORACLE_TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}


def assert_close(actual, expected, tolerance):
    """Same shape, and max|actual - expected| / max(1, max|expected|) <= tolerance."""
    assert actual.shape == expected.shape
    error = np.max(np.abs(actual - expected), initial=0.0)
    scale = max(1.0, np.max(np.abs(expected), initial=0.0))
    assert error / scale <= tolerance, f"relative error {error / scale:.3g} > {tolerance:.3g}"


STRIDE_1_KERNELS = ["flat", "group"]
# and the group forward with three outputs a pass, which it takes on large planes only
FORWARD_KERNELS = STRIDE_1_KERNELS + ["group, three outputs a pass"]


@contextlib.contextmanager
def stride_1_kernel(name):
    """Run stride-1 layers on the flat kernels (a masked shifted read per output) or on the
    group kernels (one shifted copy per group), whatever the layer's outputs per group; the
    group forward with one output a pass, or with three whatever the plane's size."""
    saved = ssc.GROUP_KERNEL_MIN_OUTPUTS, ssc.THREE_OUTPUTS_MIN_PLANE_SIZE
    ssc.GROUP_KERNEL_MIN_OUTPUTS = np.iinfo(np.int64).max if name == "flat" else 1
    ssc.THREE_OUTPUTS_MIN_PLANE_SIZE = 0 if "three" in name else np.iinfo(np.int64).max
    try:
        yield
    finally:
        ssc.GROUP_KERNEL_MIN_OUTPUTS, ssc.THREE_OUTPUTS_MIN_PLANE_SIZE = saved


def weight_grad_chunks(config):
    """Sum the weight gradient over the config's number of chunks of consecutive samples
    (`ssc.WEIGHT_GRAD_CHUNKS`, which caps them at the batch size): with fewer chunks than
    samples, the group backward takes a chunk's samples two at a time, with a partner."""
    return mock.patch.object(ssc, "WEIGHT_GRAD_CHUNKS", config["chunks"])


def ssc_problem(config, seed, dtype):
    """x (N, C, H, W), weight (O, G) and an upstream gradient grad_y (N, O, Ho, Wo)."""
    out_height = ssc.output_size(config["h"], config["stride"])
    out_width = ssc.output_size(config["w"], config["stride"])
    x = arrays(seed, (config["n"], config["c"], config["h"], config["w"]), dtype)
    weight = arrays(seed + 1, (config["o"], config["g"]), dtype)
    grad_y = arrays(seed + 2, (config["n"], config["o"], out_height, out_width), dtype)
    return x, weight, grad_y


def dense_oracle(x, weight, grad_y, kernel_size, stride):
    """SSC forward and gradients through `reference.conv2d` with the dense sparse kernel."""
    group_size = weight.shape[1]
    kernel = reference.ssc_dense_kernel(weight, kernel_size)
    layout = dict(stride=stride, padding=kernel_size // 2, groups=x.shape[1] // group_size)
    y = reference.conv2d(x, kernel, **layout)
    grad_x, grad_kernel = reference.conv2d_backward(x, kernel, grad_y, **layout)
    inputs = np.arange(group_size)
    grad_weight = grad_kernel[:, inputs, inputs // kernel_size, inputs % kernel_size]
    return y, grad_x, grad_weight


# ----------------------------------------------------------------------------------------------
# Numba kernels against their NumPy twins
# ----------------------------------------------------------------------------------------------

@settings(max_examples=100)
@given(ssc_configs(), seeds, dtypes)
def test_shift_matches_reference(config, seed, dtype):
    x, _, _ = ssc_problem(config, seed, dtype)
    k, group_size = config["k"], config["g"]
    shifted = ssc.shift_forward(x, k, group_size)
    assert shifted.dtype == dtype
    np.testing.assert_array_equal(shifted, ssc.shift_forward_reference(x, k, group_size))
    np.testing.assert_array_equal(ssc.shift_backward(x, k, group_size),
                                  ssc.shift_backward_reference(x, k, group_size))


@pytest.mark.parametrize("kernel", FORWARD_KERNELS)
@settings(max_examples=100)
@given(ssc_configs(), seeds, dtypes)
def test_group_pointwise_matches_reference(kernel, config, seed, dtype):
    with stride_1_kernel(kernel), weight_grad_chunks(config):
        x, weight, grad_y = ssc_problem(config, seed, dtype)
        stride, tolerance = config["stride"], TWIN_TOLERANCE[dtype]
        y = ssc.group_pointwise_forward(x, weight, stride)
        assert y.dtype == dtype
        assert_close(y, ssc.group_pointwise_forward_reference(x, weight, stride), tolerance)
        grad_x, grad_weight = ssc.group_pointwise_backward(x, weight, grad_y, stride)
        expected_grad_x, expected_grad_weight = ssc.group_pointwise_backward_reference(
            x, weight, grad_y, stride)
        assert grad_x.dtype == grad_weight.dtype == dtype
        assert_close(grad_x, expected_grad_x, tolerance)
        assert_close(grad_weight, expected_grad_weight, tolerance)


@pytest.mark.parametrize("kernel", FORWARD_KERNELS)
@settings(max_examples=100)
@given(ssc_configs(), seeds, dtypes)
def test_ssc_matches_reference(kernel, config, seed, dtype):
    with stride_1_kernel(kernel), weight_grad_chunks(config):
        x, weight, grad_y = ssc_problem(config, seed, dtype)
        k, stride, tolerance = config["k"], config["stride"], TWIN_TOLERANCE[dtype]
        y = ssc.ssc_forward(x, weight, k, stride)
        assert y.dtype == dtype
        assert_close(y, ssc.ssc_forward_reference(x, weight, k, stride), tolerance)
        grad_x, grad_weight = ssc.ssc_backward(x, weight, grad_y, k, stride)
        expected_grad_x, expected_grad_weight = ssc.ssc_backward_reference(x, weight, grad_y, k,
                                                                           stride)
        assert grad_x.dtype == grad_weight.dtype == dtype
        assert_close(grad_x, expected_grad_x, tolerance)
        assert_close(grad_weight, expected_grad_weight, tolerance)


def input_norm_problem(channels, seed, dtype):
    """A random input norm (mean, scale, bias), arrays (C,), with scales of both signs."""
    return tuple(arrays(seed + k, (channels,), dtype) for k in range(3))


@pytest.mark.parametrize("kernel", FORWARD_KERNELS)
@settings(max_examples=100)
@given(ssc_configs(), seeds, dtypes, st.data())
def test_input_norm_equals_the_kernels_on_the_stored_activation(kernel, config, seed, dtype,
                                                                data):
    """An SSC that normalises x as it reads it computes, to the bit, what the same kernels
    compute on a = relu(batch_norm(x)) stored by the batch norm + ReLU kernel, gradients
    included (its grad_x is the gradient with respect to a); and it equals its NumPy twin."""
    divisors = [d for d in range(1, config["c"] + 1) if config["c"] % d == 0]
    shuffle_groups = data.draw(st.sampled_from(divisors))
    with stride_1_kernel(kernel), weight_grad_chunks(config):
        x, weight, grad_y = ssc_problem(config, seed, dtype)
        mean, scale, bias = input_norm = input_norm_problem(config["c"], seed + 3, dtype)
        activation = norm.batch_norm_relu_forward(x, mean, np.ones_like(scale), scale, bias)
        layer = (config["k"], config["stride"], shuffle_groups)
        y = ssc.ssc_forward(x, weight, *layer, input_norm=input_norm)
        np.testing.assert_array_equal(y, ssc.ssc_forward(activation, weight, *layer))
        grads = ssc.ssc_backward(x, weight, grad_y, *layer, input_norm=input_norm)
        for actual, expected in zip(grads, ssc.ssc_backward(activation, weight, grad_y, *layer)):
            np.testing.assert_array_equal(actual, expected)
        tolerance = TWIN_TOLERANCE[dtype]
        assert_close(y, ssc.ssc_forward_reference(x, weight, *layer, input_norm), tolerance)
        twins = ssc.ssc_backward_reference(x, weight, grad_y, *layer, input_norm)
        assert len(grads) == len(twins) == 4  # grad_x, grad_W, the batch norm's two sums
        for actual, expected in zip(grads, twins):
            assert_close(actual, expected, tolerance)


@pytest.mark.parametrize("kernel", FORWARD_KERNELS)
@settings(max_examples=60)
@given(ssc_configs(), seeds, dtypes, st.booleans())
def test_forward_moments_equal_those_of_the_stored_output(kernel, config, seed, dtype,
                                                          with_norm):
    """ssc_forward's plane moments of y (taken by the group kernel as it writes each plane,
    by a pass of their own otherwise) equal norm.plane_moments(y) to the bit, so the next
    batch norm's statistics are the same whoever took them; y itself is unchanged."""
    with stride_1_kernel(kernel):
        x, weight, _ = ssc_problem(config, seed, dtype)
        input_norm = input_norm_problem(config["c"], seed + 3, dtype) if with_norm else None
        layer = (config["k"], config["stride"])
        moments = np.empty((config["n"], config["o"], 3))
        y = ssc.ssc_forward(x, weight, *layer, input_norm=input_norm, moments=moments)
        np.testing.assert_array_equal(y, ssc.ssc_forward(x, weight, *layer,
                                                         input_norm=input_norm))
        np.testing.assert_array_equal(moments, norm.plane_moments(y))


@settings(max_examples=60)
@given(ssc_configs(strides=(1,)), seeds, dtypes, st.booleans())
def test_group_forward_gives_the_same_bits_with_one_or_three_outputs_a_pass(config, seed, dtype,
                                                                            with_norm):
    """Three outputs a pass (large planes) computes each output's sum as one output a pass
    does, so y and its plane moments are the same to the bit, whatever the outputs per group
    (a last pass partly past the group's end) and inputs per group (past nine)."""
    x, weight, _ = ssc_problem(config, seed, dtype)
    input_norm = input_norm_problem(config["c"], seed + 3, dtype) if with_norm else None
    results = []
    for kernel in ("group", "group, three outputs a pass"):
        with stride_1_kernel(kernel):
            moments = np.empty((config["n"], config["o"], 3))
            y = ssc.ssc_forward(x, weight, config["k"], 1, input_norm=input_norm,
                                moments=moments)
            results.append((y, moments))
    (y_one, moments_one), (y_three, moments_three) = results
    np.testing.assert_array_equal(y_three, y_one)
    np.testing.assert_array_equal(moments_three, moments_one)


@pytest.mark.parametrize("kernel", STRIDE_1_KERNELS)
@settings(max_examples=100)
@given(ssc_configs(strides=(1,)), seeds, dtypes, st.booleans(), st.booleans())
def test_output_norm_equals_the_batch_norm_pass_then_the_kernels(kernel, config, seed, dtype,
                                                                 training, with_input_norm):
    """An SSC backward given the gradient with respect to relu(batch_norm(y)) of its output y
    (output_norm) computes, to the bit, what the batch norm + ReLU's grad_x pass followed by
    the same backward computes; and it equals its NumPy twin. The group kernels fold the pass
    into their reads, the flat kernels run it first: both are checked."""
    with stride_1_kernel(kernel), weight_grad_chunks(config):
        x, weight, grad_a = ssc_problem(config, seed, dtype)
        input_norm = input_norm_problem(config["c"], seed + 3, dtype) if with_input_norm else None
        y = ssc.ssc_forward(x, weight, config["k"], 1, input_norm=input_norm)
        assume(y.size // y.shape[1] >= 2)
        mean, var = norm.batch_norm_statistics(y)
        inv_std = (1 / np.sqrt(var + 1e-5)).astype(dtype)
        bn_weight, bn_bias = (arrays(seed + 6 + k, (config["o"],), dtype) for k in range(2))
        sums = tuple(arrays(seed + 8 + k, (config["o"],)) for k in range(2))
        output_norm = (y, mean, inv_std, bn_weight, bn_bias, *sums, training)
        grads = ssc.ssc_backward(x, weight, grad_a, config["k"], 1, input_norm=input_norm,
                                 output_norm=output_norm)
        grad_y = norm.batch_norm_relu_input_grad(grad_a, *output_norm)[0]
        expected = ssc.ssc_backward(x, weight, grad_y, config["k"], 1, input_norm=input_norm)
        assert len(grads) == len(expected)
        for actual, wanted in zip(grads, expected):
            np.testing.assert_array_equal(actual, wanted)
        twins = ssc.ssc_backward_reference(x, weight, grad_a, config["k"], 1, 1, input_norm,
                                           output_norm)
        for actual, wanted in zip(grads, twins):
            assert_close(actual, wanted, TWIN_TOLERANCE[dtype] * 10)


@settings(max_examples=100)
@given(ssc_configs(strides=(1,)), seeds, dtypes, st.data())
def test_upstream_from_the_next_layer_equals_that_layers_input_grad(config, seed, dtype, data):
    """An SSC backward given a NextLayerInputGrad (the next SSC layer's upstream gradient and
    weight) computes, to the bit, what it computes given that layer's grad_x, with and
    without input and output norms, and so does its NumPy twin, within rounding. The next
    layer's backward with input_grad=False gives None for grad_x and the same rest."""
    assume(config["o"] // config["groups"] >= ssc.GROUP_KERNEL_MIN_OUTPUTS)  # group kernels
    channels, k = config["o"], config["k"]  # the next layer's input: this layer's output
    next_group_size = data.draw(st.sampled_from(
        [d for d in range(1, min(channels, k * k) + 1) if channels % d == 0]))
    next_groups = channels // next_group_size
    next_outputs = next_groups * data.draw(st.integers(1, ssc.GROUP_KERNEL_MIN_OUTPUTS - 1))
    next_layer = (k, data.draw(st.sampled_from([1, 2])), data.draw(st.sampled_from(
        [d for d in range(1, channels + 1) if channels % d == 0])))
    x, weight, _ = ssc_problem(config, seed, dtype)
    input_norm = input_norm_problem(config["c"], seed + 3, dtype) if data.draw(st.booleans()) \
        else None
    y = ssc.ssc_forward(x, weight, k, 1, input_norm=input_norm)
    next_weight = arrays(seed + 4, (next_outputs, next_group_size), dtype)
    side = [ssc.output_size(size, next_layer[1]) for size in y.shape[2:]]
    next_grad = arrays(seed + 5, (config["n"], next_outputs, *side), dtype)
    output_norm = None
    if data.draw(st.booleans()) and y.size // y.shape[1] >= 2:
        mean, var = norm.batch_norm_statistics(y)
        inv_std = (1 / np.sqrt(var + 1e-5)).astype(dtype)
        bn_weight, bn_bias = (arrays(seed + 6 + j, (channels,), dtype) for j in range(2))
        sums = tuple(arrays(seed + 8 + j, (channels,)) for j in range(2))
        output_norm = (y, mean, inv_std, bn_weight, bn_bias, *sums, data.draw(st.booleans()))
    assert ssc.folds_next_layer(config["c"], weight, 1, next_weight, next_layer[1])

    upstream = ssc.NextLayerInputGrad(next_grad, next_weight, *next_layer)
    with weight_grad_chunks(config):
        next_grads = ssc.ssc_backward(y, next_weight, next_grad, *next_layer)
        without_grad_x = ssc.ssc_backward(y, next_weight, next_grad, *next_layer,
                                          input_grad=False)
        grads = ssc.ssc_backward(x, weight, upstream, k, 1, input_norm=input_norm,
                                 output_norm=output_norm)
        expected = ssc.ssc_backward(x, weight, next_grads[0], k, 1, input_norm=input_norm,
                                    output_norm=output_norm)
    assert without_grad_x[0] is None
    np.testing.assert_array_equal(without_grad_x[1], next_grads[1])
    assert len(grads) == len(expected)
    for actual, wanted in zip(grads, expected):
        np.testing.assert_array_equal(actual, wanted)
    twins = ssc.ssc_backward_reference(x, weight, upstream, k, 1, 1, input_norm, output_norm)
    for actual, wanted in zip(grads, twins):
        assert_close(actual, wanted, TWIN_TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("kernel", STRIDE_1_KERNELS)
def test_backward_without_input_grad_gives_the_same_rest(kernel):
    x, weight, grad_y = arrays(1, (2, 18, 5, 5)), arrays(2, (12, 9)), arrays(3, (2, 12, 5, 5))
    input_norm = input_norm_problem(18, 4, np.float64)
    with stride_1_kernel(kernel):
        full = ssc.ssc_backward(x, weight, grad_y, 3, 1, 1, input_norm)
        partial = ssc.ssc_backward(x, weight, grad_y, 3, 1, 1, input_norm, input_grad=False)
    assert partial[0] is None and len(partial) == len(full) == 4
    for actual, wanted in zip(partial[1:], full[1:]):
        np.testing.assert_array_equal(actual, wanted)


@pytest.mark.parametrize("weight_shape, stride, next_weight_shape", [
    ((18, 9), 1, (8, 9)),   # the next layer has 4 outputs per group: group kernels
    ((18, 9), 2, (2, 9)),   # this layer has stride 2: not the group kernels
    ((2, 9), 1, (2, 2)),    # this layer has one output per group: flat kernels
])
def test_upstream_from_the_next_layer_is_refused_where_it_does_not_fold(
        weight_shape, stride, next_weight_shape):
    x = arrays(1, (1, 18, 4, 4))
    upstream = ssc.NextLayerInputGrad(arrays(2, (1, next_weight_shape[0], 4, 4)),
                                      arrays(3, next_weight_shape), 3, 1)
    with pytest.raises(ValueError, match="a NextLayerInputGrad needs a stride-1 layer"):
        ssc.ssc_backward(x, arrays(4, weight_shape), upstream, 3, stride)


# ----------------------------------------------------------------------------------------------
# The fused SSC against the dense oracle, and against the unfused pair
# ----------------------------------------------------------------------------------------------

def check_against_dense_oracle(x, weight, grad_y, kernel_size, stride):
    """Fused forward, grad_x and grad_weight against the float64 dense oracle."""
    as_float64 = [array.astype(np.float64) for array in (x, weight, grad_y)]
    expected_y, expected_grad_x, expected_grad_weight = dense_oracle(*as_float64, kernel_size,
                                                                     stride)
    tolerance = ORACLE_TOLERANCE[x.dtype.type]
    assert_close(ssc.ssc_forward(x, weight, kernel_size, stride), expected_y, tolerance)
    grad_x, grad_weight = ssc.ssc_backward(x, weight, grad_y, kernel_size, stride)
    assert_close(grad_x, expected_grad_x, tolerance)
    assert_close(grad_weight, expected_grad_weight, tolerance)


@pytest.mark.parametrize("kernel", FORWARD_KERNELS)
@settings(max_examples=100)
@given(ssc_configs(), seeds, dtypes)
def test_ssc_matches_dense_oracle(kernel, config, seed, dtype):
    with stride_1_kernel(kernel), weight_grad_chunks(config):
        x, weight, grad_y = ssc_problem(config, seed, dtype)
        check_against_dense_oracle(x, weight, grad_y, config["k"], config["stride"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, c, o, h, w, k, g, stride", [
    (2, 9, 6, 1, 1, 3, 9, 1),      # a single pixel: only the centre tap sees the image
    (2, 9, 3, 1, 7, 3, 9, 2),      # one row
    (2, 9, 3, 6, 1, 3, 9, 1),      # one column
    (3, 8, 6, 7, 5, 3, 4, 2),      # G < k*k, stride 2 on odd, non-square sizes
    (2, 18, 4, 5, 8, 3, 9, 2),     # the 3x3 stride-2 kernel, odd height, even width
    (1, 50, 4, 6, 9, 5, 25, 2),    # k = 5, two groups of 25
    (2, 3, 6, 4, 5, 1, 1, 2),      # k = 1: a strided grouped 1x1 convolution
])
@pytest.mark.parametrize("kernel", FORWARD_KERNELS)
def test_edge_shapes_match_dense_oracle(n, c, o, h, w, k, g, stride, dtype, kernel):
    config = dict(n=n, c=c, o=o, h=h, w=w, k=k, g=g, stride=stride)
    x, weight, grad_y = ssc_problem(config, seed=7, dtype=dtype)
    with stride_1_kernel(kernel):
        check_against_dense_oracle(x, weight, grad_y, k, stride)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_norm", [False, True])
@pytest.mark.parametrize("h, w", [(1, 1), (1, 4), (3, 1), (2, 2), (5, 3), (7, 8), (9, 9), (6, 6)])
def test_3x3_stride2_kernel_gives_the_general_strided_kernels_values(h, w, with_norm, dtype):
    """The stride-2 kernel for a full 3x3 grid (nine taps per output row in one pass) adds the
    same terms in the same order as `_strided_forward_kernel`, for every size parity, with and
    without an input norm, on inputs with signed zeros and whole rows of infinities (the taps
    outside the image must add nothing: 0 * inf would be NaN)."""
    c, o = 18, 4
    x = arrays(1, (3, c, h, w)).astype(dtype)
    x[0, :, 0, 0] = -0.0
    x[1, ::2, 0, :] = np.inf
    x[2, 1::2, -1, :] = -np.inf
    weight = arrays(2, (o, 9)).astype(dtype)
    row_offsets, col_offsets = ssc.shift_offsets(9, 3, 9)
    assert ssc._uses_3x3_stride2_kernel(weight, row_offsets, col_offsets, 2)
    input_norm = tuple(array.astype(dtype) for array in (
        arrays(3, (c,)), np.abs(arrays(4, (c,))) + 0.5, arrays(5, (c,)))) if with_norm \
        else ssc._no_input_norm(dtype)
    input_channels = ssc.shuffled_channels(c, 2)
    out_shape = (3, o, ssc.output_size(h, 2), ssc.output_size(w, 2))
    general, fast = np.full(out_shape, np.nan, dtype), np.full(out_shape, np.nan, dtype)
    ssc._strided_forward_kernel(x, weight, row_offsets, col_offsets, 2, input_channels,
                                input_norm, general)
    ssc._3x3_stride2_forward_kernel(x, weight, input_channels, input_norm, fast)
    np.testing.assert_array_equal(fast, general)  # NaN where both have NaN; -0.0 == 0.0


def test_only_a_full_3x3_grid_at_stride_2_takes_the_3x3_stride2_kernel():
    nine, eight = np.zeros((4, 9)), np.zeros((4, 8))
    assert ssc._uses_3x3_stride2_kernel(nine, *ssc.shift_offsets(9, 3, 9), 2)
    assert not ssc._uses_3x3_stride2_kernel(nine, *ssc.shift_offsets(9, 3, 9), 1)
    assert not ssc._uses_3x3_stride2_kernel(nine, *ssc.shift_offsets(9, 3, 9), 3)
    assert not ssc._uses_3x3_stride2_kernel(eight, *ssc.shift_offsets(8, 3, 8), 2)
    assert not ssc._uses_3x3_stride2_kernel(nine, np.zeros(9, np.int64), np.zeros(9, np.int64), 2)
    assert not ssc._uses_3x3_stride2_kernel(nine, *ssc.shift_offsets(9, 5, 9), 2)


def test_shared_shift_masks_are_computed_once_per_set_of_arguments():
    dy, dx = ssc.shift_offsets(9, 3, 9)
    first = ssc._shared_shift_masks(-dy, -dx, 5, 7, np.float32, 2)
    np.testing.assert_array_equal(first, ssc.shift_masks(-dy, -dx, 5, 7, np.float32, 2))
    assert first.dtype == np.float32
    assert ssc._shared_shift_masks(-dy.copy(), -dx.copy(), 5, 7, np.float32, 2) is first
    for other in [(dy, dx, 5, 7, np.float32, 2), (-dy, -dx, 7, 5, np.float32, 2),
                  (-dy, -dx, 5, 7, np.float64, 2), (-dy, -dx, 5, 7, np.float32, 1)]:
        masks = ssc._shared_shift_masks(*other)
        assert masks is not first
        np.testing.assert_array_equal(masks, ssc.shift_masks(*other))


@pytest.mark.parametrize("kernel", STRIDE_1_KERNELS)
@pytest.mark.parametrize("shuffle_groups", [2, 3, 6])
def test_shuffle_folded_into_the_kernels_equals_a_shuffled_copy(shuffle_groups, kernel):
    """The kernels read channel_shuffle(x) through an index map; the results and grad_W must
    be those of the shuffled copy, and grad_x the copy's gradient shuffled back."""
    x, weight, grad_y = arrays(1, (2, 18, 6, 5)), arrays(2, (12, 9)), arrays(3, (2, 12, 6, 5))
    shuffled = ssc.channel_shuffle(x, shuffle_groups)
    unshuffle = x.shape[1] // shuffle_groups  # shuffling by C / g undoes a shuffle by g
    with stride_1_kernel(kernel):
        np.testing.assert_allclose(ssc.ssc_forward(x, weight, 3, 1, shuffle_groups),
                                   ssc.ssc_forward(shuffled, weight, 3, 1), rtol=1e-12)
        grad_x, grad_weight = ssc.ssc_backward(x, weight, grad_y, 3, 1, shuffle_groups)
        grad_shuffled, expected_grad_weight = ssc.ssc_backward(shuffled, weight, grad_y, 3, 1)
    np.testing.assert_allclose(grad_x, ssc.channel_shuffle(grad_shuffled, unshuffle),
                               rtol=1e-12)
    np.testing.assert_allclose(grad_weight, expected_grad_weight, rtol=1e-12)


@settings(max_examples=100)
@given(ssc_configs(), seeds, dtypes)
def test_shift_then_group_pointwise_equals_fused_ssc(config, seed, dtype):
    x, weight, grad_y = ssc_problem(config, seed, dtype)
    k, group_size, stride = config["k"], config["g"], config["stride"]
    tolerance = TWIN_TOLERANCE[dtype]
    shifted = ssc.shift_forward(x, k, group_size)
    assert_close(ssc.group_pointwise_forward(shifted, weight, stride),
                 ssc.ssc_forward(x, weight, k, stride), tolerance)
    grad_shifted, grad_weight = ssc.group_pointwise_backward(shifted, weight, grad_y, stride)
    fused_grad_x, fused_grad_weight = ssc.ssc_backward(x, weight, grad_y, k, stride)
    assert_close(ssc.shift_backward(grad_shifted, k, group_size), fused_grad_x, tolerance)
    assert_close(grad_weight, fused_grad_weight, tolerance)


@settings(max_examples=100)
@given(ssc_configs(), seeds)
def test_shift_backward_is_adjoint_of_shift_forward(config, seed):
    x, _, _ = ssc_problem(config, seed, np.float64)
    upstream = arrays(seed + 3, x.shape)
    k, group_size = config["k"], config["g"]
    forward_pairing = np.sum(ssc.shift_forward(x, k, group_size) * upstream)
    backward_pairing = np.sum(x * ssc.shift_backward(upstream, k, group_size))
    scale = max(1.0, np.sum(np.abs(x)) * np.max(np.abs(upstream)))  # bounds every partial sum
    assert abs(forward_pairing - backward_pairing) <= 1e-13 * scale


# ----------------------------------------------------------------------------------------------
# Explicit cases: empty batch, k = 1, determinism
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch(dtype):
    x = np.zeros((0, 18, 5, 7), dtype=dtype)
    weight = arrays(0, (4, 9), dtype)
    grad_y = np.zeros((0, 4, 3, 4), dtype=dtype)
    for shifted in (ssc.shift_forward(x, 3, 9), ssc.shift_backward(x, 3, 9)):
        assert shifted.shape == x.shape and shifted.dtype == dtype
    for y in (ssc.group_pointwise_forward(x, weight, 2), ssc.ssc_forward(x, weight, 3, 2)):
        assert y.shape == (0, 4, 3, 4) and y.dtype == dtype
    for grad_x, grad_weight in (ssc.group_pointwise_backward(x, weight, grad_y, 2),
                                ssc.ssc_backward(x, weight, grad_y, 3, 2)):
        assert grad_x.shape == x.shape and grad_x.dtype == dtype
        assert grad_weight.dtype == dtype
        np.testing.assert_array_equal(grad_weight, np.zeros((4, 9)))


@pytest.mark.parametrize("kernel", STRIDE_1_KERNELS)
@pytest.mark.parametrize("outputs_per_group", [1, 9, 10])
@pytest.mark.parametrize("stride", [1, 2])
def test_an_infinite_input_that_no_output_reads_leaves_the_gradients_finite(
        kernel, outputs_per_group, stride):
    """Channel 0 reads x[y - 1, x - 1] (position 0 of the 3 x 3 grid), so on a 5 x 5 plane no
    output reads its pixel (4, 4), at stride 1 or 2; at stride 2 no output reads pixel (1, 1)
    of channel 4 (the centre, unshifted) either: off the grid, inside the image. An inf
    there must add nothing (the exact sums skip it), not 0 * inf = NaN. Outputs past nine
    take the group backward's one-by-one loop; stride 2 runs the flat kernel on the
    upsampled upstream (both parametrisations: the group kernels need stride 1)."""
    x, weight = arrays(1, (3, 9, 5, 5)), arrays(2, (outputs_per_group, 9))
    x[1, 0, 4, 4] = np.inf
    if stride == 2:
        x[2, 4, 1, 1] = -np.inf
    side = ssc.output_size(5, stride)
    grad_y = arrays(3, (3, outputs_per_group, side, side))
    with stride_1_kernel(kernel):
        y = ssc.ssc_forward(x, weight, 3, stride)
        grads = ssc.ssc_backward(x, weight, grad_y, 3, stride)
    assert np.isfinite(y).all() and all(np.isfinite(grad).all() for grad in grads)
    twins = ssc.ssc_backward_reference(x, weight, grad_y, 3, stride)
    for actual, expected in zip(grads, twins):
        assert_close(actual, expected, TWIN_TOLERANCE[np.float64])


@pytest.mark.parametrize("kernel", STRIDE_1_KERNELS)
def test_non_contiguous_arrays_give_what_their_contiguous_copies_give(kernel):
    """The kernels' outputs are new C-contiguous arrays, whatever the inputs' layout: an output
    allocated like a transposed input would be filled through a copy and lost."""
    x = arrays(1, (2, 9, 6, 5)).transpose(0, 1, 3, 2)  # (2, 9, 5, 6), not C-contiguous
    weight, grad_y = arrays(2, (18, 9)).T.copy().T, arrays(3, (2, 18, 6, 5)).transpose(0, 1, 3, 2)
    assert not (x.flags.c_contiguous or weight.flags.c_contiguous or grad_y.flags.c_contiguous)
    contiguous = [np.ascontiguousarray(array) for array in (x, weight, grad_y)]
    with stride_1_kernel(kernel):
        for call in (lambda x, w, g: [ssc.shift_forward(x, 3, 9), ssc.shift_backward(x, 3, 9)],
                     lambda x, w, g: [ssc.ssc_forward(x, w, 3, 1), *ssc.ssc_backward(x, w, g, 3, 1)],
                     lambda x, w, g: ssc.group_pointwise_backward(x, w, g, 1)):
            for actual, expected in zip(call(x, weight, grad_y), call(*contiguous)):
                np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_size_one_is_plain_group_pointwise(dtype):
    x = arrays(1, (2, 6, 5, 4), dtype)
    weight = arrays(2, (12, 1), dtype)
    grad_y = arrays(3, (2, 12, 3, 2), dtype)
    np.testing.assert_array_equal(ssc.shift_forward(x, 1, 1), x)
    np.testing.assert_array_equal(ssc.shift_backward(x, 1, 1), x)
    np.testing.assert_array_equal(ssc.ssc_forward(x, weight, 1, 2),
                                  ssc.group_pointwise_forward(x, weight, 2))
    for fused, unfused in zip(ssc.ssc_backward(x, weight, grad_y, 1, 2),
                              ssc.group_pointwise_backward(x, weight, grad_y, 2)):
        np.testing.assert_array_equal(fused, unfused)


@njit
def _multiply_add_loop(a, b, c, out):
    for k in range(a.size):
        out[k] = multiply_add(a[k], b[k], c[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multiply_add_rounds_a_times_b_plus_c_once_or_twice(dtype):
    """multiply_add(a, b, c) is a * b + c rounded once (a fused multiply-add) or twice: within
    one rounding of the exact value, computed in higher precision, in a loop LLVM vectorises;
    and it takes only three floats of one type."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(1000).astype(dtype) for _ in range(3))
    out = np.empty_like(a)
    _multiply_add_loop(a, b, c, out)
    exact = a.astype(np.longdouble) * b + c
    twice = (a * b + c).astype(np.longdouble)
    assert np.all(np.abs(out - exact) <= np.abs(twice - exact) + np.spacing(np.abs(out)))
    with pytest.raises(TypingError):
        _multiply_add_loop(a, b.astype(np.int64), c, out)


def test_shift_offsets_follow_row_major_positions():
    dy, dx = ssc.shift_offsets(12, 3, 9)
    np.testing.assert_array_equal(dy, [-1, -1, -1, 0, 0, 0, 1, 1, 1, -1, -1, -1])
    np.testing.assert_array_equal(dx, [-1, 0, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1])
    assert [ssc.output_size(size, 2) for size in (1, 2, 7, 8)] == [1, 1, 4, 4]


@pytest.mark.parametrize("kernel", STRIDE_1_KERNELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_is_deterministic_across_thread_counts(dtype, kernel):
    x = arrays(4, (16, 18, 12, 12), dtype)
    weight = arrays(5, (12, 9), dtype)
    grad_y = arrays(6, (16, 12, 12, 12), dtype)
    input_norm = input_norm_problem(18, 7, dtype)
    y = ssc.ssc_forward(x, weight, 3, 1)
    mean, var = norm.batch_norm_statistics(y)
    output_norm = (y, mean, (1 / np.sqrt(var + 1e-5)).astype(dtype), arrays(8, (12,), dtype),
                   arrays(9, (12,), dtype), arrays(10, (12,)), arrays(11, (12,)), True)
    for normalise, through_norm in ((None, None), (input_norm, None), (input_norm, output_norm)):
        with stride_1_kernel(kernel):
            first = ssc.ssc_backward(x, weight, grad_y, 3, 1, 1, normalise, through_norm)
            second = ssc.ssc_backward(x, weight, grad_y, 3, 1, 1, normalise, through_norm)
            single_thread = on_one_thread(ssc.ssc_backward, x, weight, grad_y, 3, 1, 1,
                                          normalise, through_norm)
        for a, b, c in zip(first, second, single_thread):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("kernel, stride", [("flat", 1), ("group", 1), ("flat", 2)])
@pytest.mark.parametrize("chunks", [1, 3, 11])
def test_weight_grad_from_chunks_of_several_samples_matches_the_reference(kernel, stride, chunks,
                                                                         monkeypatch):
    """The backward kernels add each chunk's weight sums into a partial of its own, for
    min(batch, WEIGHT_GRAD_CHUNKS) chunks of consecutive samples. Over 11 samples in one chunk,
    in three uneven ones (3, 4, 4) and one a chunk, on two threads and on one, the gradients
    are the NumPy twin's, and the same bits whatever the number of threads."""
    monkeypatch.setattr(ssc, "WEIGHT_GRAD_CHUNKS", chunks)
    x, weight = arrays(12, (11, 18, 6, 7)), arrays(13, (12, 9))
    grad_y = arrays(14, (11, 12, ssc.output_size(6, stride), ssc.output_size(7, stride)))
    expected = ssc.ssc_backward_reference(x, weight, grad_y, 3, stride)
    with stride_1_kernel(kernel):
        grads = ssc.ssc_backward(x, weight, grad_y, 3, stride)
        single_thread = on_one_thread(ssc.ssc_backward, x, weight, grad_y, 3, stride)
    for actual, on_one, twin in zip(grads, single_thread, expected):
        np.testing.assert_array_equal(actual, on_one)
        assert_close(actual, twin, TWIN_TOLERANCE[np.float64])


@pytest.mark.parametrize("chunks", [1, 3, 11])
def test_group_backward_in_pairs_of_samples_with_norms_matches_the_reference(chunks,
                                                                             monkeypatch):
    """The group backward takes two samples a pass, and a chunk's odd last sample alone. With
    everything the SSC module's first layer folds in (an input norm, an output norm, and the
    next layer's upstream instead of grad_y), over 11 samples in one chunk (five pairs and
    one alone), in three uneven ones (3, 4, 4) and one a chunk, on two threads and on one, its
    gradients and sums are the NumPy twin's, and the same bits whatever the number of
    threads."""
    monkeypatch.setattr(ssc, "WEIGHT_GRAD_CHUNKS", chunks)
    x, weight = arrays(15, (11, 18, 6, 7)), arrays(16, (18, 9))  # 9 outputs a group
    upstream = ssc.NextLayerInputGrad(arrays(17, (11, 2, 6, 7)), arrays(18, (2, 9)), 3, 1,
                                      shuffle_groups=2)  # one output a group: flat kernels
    input_norm = input_norm_problem(18, 19, np.float64)
    y = ssc.ssc_forward(x, weight, 3, 1)
    mean, var = norm.batch_norm_statistics(y)
    output_norm = (y, mean, 1 / np.sqrt(var + 1e-5), arrays(22, (18,)), arrays(23, (18,)),
                   arrays(24, (18,)), arrays(25, (18,)), True)
    arguments = (x, weight, upstream, 3, 1, 1, input_norm, output_norm)
    expected = ssc.ssc_backward_reference(*arguments)
    grads = ssc.ssc_backward(*arguments)
    single_thread = on_one_thread(ssc.ssc_backward, *arguments)
    assert len(grads) == len(expected) == 4  # grad_a, grad_W, the input norm's two sums
    for actual, on_one, twin in zip(grads, single_thread, expected):
        np.testing.assert_array_equal(actual, on_one)
        assert_close(actual, twin, TWIN_TOLERANCE[np.float64])


@pytest.mark.parametrize("family", ["one output per group", "nine per group", "stride 2"])
def test_backward_does_not_depend_on_where_arrays_lie_in_memory(family):
    """The same call twice on copies of its inputs gives the same bits, over thousands of tiny
    layers. A loop that both stores and sums can be vectorised behind a run-time check that
    its arrays do not overlap, which conservatively fails when one array happens to start
    just after another: the loop then runs scalar and its reassociated sums come out in
    another order. A weight sum in the flat kernel's grad_x loop did so about once in 1000
    calls on planes of a few values; its sums now run in a loop of their own, without
    stores."""
    rng = np.random.default_rng(0)
    for trial in range(8000 if family == "one output per group" else 3000):
        group_size, groups = int(rng.integers(1, 10)), int(rng.integers(1, 3))
        outputs = groups * (int(rng.integers(4, 12)) if family == "nine per group"
                            else int(rng.integers(1, 4)))
        stride = 2 if family == "stride 2" else 1
        batch, height, width = int(rng.integers(1, 3)), int(rng.integers(1, 8)), \
            int(rng.integers(1, 10))
        x = arrays(trial, (batch, group_size * groups, height, width))
        weight = arrays(trial + 1, (outputs, group_size))
        grad_y = arrays(trial + 2, (batch, outputs, ssc.output_size(height, stride),
                                    ssc.output_size(width, stride)))
        first = ssc.ssc_backward(x, weight, grad_y, 3, stride)
        again = ssc.ssc_backward(x.copy(), weight.copy(), grad_y.copy(), 3, stride)
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b, err_msg=f"trial {trial}")


@pytest.mark.parametrize("kernel", STRIDE_1_KERNELS)
def test_backward_with_norms_does_not_depend_on_where_arrays_lie_in_memory(kernel):
    """As above, with an input norm and an output norm (the paths an SSC module's layers
    take): the same call twice on copies of its inputs gives the same bits, and so does the
    call with the output norm's pass run first, over thousands of tiny layers. Compiled for
    512-bit vectors (NUMBA_CPU_FEATURES with -prefer-256-bit) the group kernels fail this
    test (a scratch loop like it: 6 mismatches in 2,940 calls), which is why minissc keeps
    Numba's default vector width."""
    rng = np.random.default_rng(1)
    with stride_1_kernel(kernel):
        for trial in range(3000):
            channels, k = int(rng.integers(1, 3)), int(rng.choice([1, 3]))
            outputs = channels * int(rng.integers(1, 10))
            batch, height, width = (int(rng.integers(1, 3)), int(rng.integers(1, 4)),
                                    int(rng.integers(1, 9)))
            x = arrays(trial, (batch, channels, height, width), np.float32)
            weight = arrays(trial + 1, (outputs, 1), np.float32)
            grad_a = arrays(trial + 2, (batch, outputs, height, width), np.float32)
            input_norm = input_norm_problem(channels, trial + 3, np.float32)
            y = ssc.ssc_forward(x, weight, k, 1, input_norm=input_norm)
            if y.size // y.shape[1] < 2:
                continue
            mean, var = norm.batch_norm_statistics(y)
            inv_std = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
            bn_weight, bn_bias = (arrays(trial + 6 + i, (outputs,), np.float32) for i in range(2))
            sums = tuple(arrays(trial + 8 + i, (outputs,)) for i in range(2))
            output_norm = (y, mean, inv_std, bn_weight, bn_bias, *sums, True)
            first = ssc.ssc_backward(x, weight, grad_a, k, 1, input_norm=input_norm,
                                     output_norm=output_norm)
            again = ssc.ssc_backward(x.copy(), weight.copy(), grad_a.copy(), k, 1,
                                     input_norm=tuple(a.copy() for a in input_norm),
                                     output_norm=(y.copy(),) + output_norm[1:])
            grad_y = norm.batch_norm_relu_input_grad(grad_a, *output_norm)[0]
            unfolded = ssc.ssc_backward(x, weight, grad_y, k, 1, input_norm=input_norm)
            for a, b, c in zip(first, again, unfolded):
                np.testing.assert_array_equal(a, b, err_msg=f"trial {trial}")
                np.testing.assert_array_equal(a, c, err_msg=f"trial {trial}, unfolded")


# ----------------------------------------------------------------------------------------------
# The oracle itself
# ----------------------------------------------------------------------------------------------

def brute_force_conv2d(x, kernel, stride, padding, groups):
    """Seven nested loops straight from the definition of a grouped convolution."""
    batch, channels, height, width = x.shape
    out_channels, channels_per_group, kernel_height, kernel_width = kernel.shape
    out_height = (height + 2 * padding - kernel_height) // stride + 1
    out_width = (width + 2 * padding - kernel_width) // stride + 1
    outputs_per_group = out_channels // groups
    y = np.zeros((batch, out_channels, out_height, out_width))
    for n in range(batch):
        for o in range(out_channels):
            first_channel = (o // outputs_per_group) * channels_per_group
            for row in range(out_height):
                for col in range(out_width):
                    for c in range(channels_per_group):
                        for r in range(kernel_height):
                            for q in range(kernel_width):
                                in_row = row * stride + r - padding
                                in_col = col * stride + q - padding
                                if 0 <= in_row < height and 0 <= in_col < width:
                                    y[n, o, row, col] += (kernel[o, c, r, q]
                                                          * x[n, first_channel + c, in_row, in_col])
    return y


def conv_problem(config, seed):
    """x and kernel (float64) and the layout keywords of a `conv_configs` example."""
    x = arrays(seed, (config["n"], config["c"], config["h"], config["w"]))
    kernel = arrays(seed + 1, (config["o"], config["c"] // config["groups"],
                               config["kh"], config["kw"]))
    layout = dict(stride=config["stride"], padding=config["padding"], groups=config["groups"])
    return x, kernel, layout


@settings(max_examples=100)
@given(conv_configs(), seeds)
def test_oracle_conv2d_matches_brute_force(config, seed):
    x, kernel, layout = conv_problem(config, seed)
    assert_close(reference.conv2d(x, kernel, **layout),
                 brute_force_conv2d(x, kernel, **layout), 1e-12)


@settings(max_examples=100)
@given(conv_configs(), seeds)
def test_oracle_conv2d_backward_matches_finite_differences(config, seed):
    x, kernel, layout = conv_problem(config, seed)
    upstream = arrays(seed + 2, reference.conv2d(x, kernel, **layout).shape)

    def loss():
        return np.sum(reference.conv2d(x, kernel, **layout) * upstream)

    grad_x, grad_kernel = reference.conv2d_backward(x, kernel, upstream, **layout)
    assert_close(grad_x, numerical_gradient(loss, x, 1e-3), 1e-7)
    assert_close(grad_kernel, numerical_gradient(loss, kernel, 1e-3), 1e-7)


def test_ssc_dense_kernel_places_each_weight_at_its_position():
    weight = np.arange(1.0, 9.0).reshape(2, 4)          # O = 2, G = 4 < k*k = 9
    kernel = reference.ssc_dense_kernel(weight, 3)
    assert kernel.shape == (2, 4, 3, 3)
    for o in range(2):
        for i in range(4):
            expected = np.zeros((3, 3))
            expected[i // 3, i % 3] = weight[o, i]
            np.testing.assert_array_equal(kernel[o, i], expected)


def test_ssc_dense_kernel_accepts_objects_holding_data():
    class Holder:
        data = np.ones((3, 9))

    np.testing.assert_array_equal(reference.ssc_dense_kernel(Holder()),
                                  reference.ssc_dense_kernel(np.ones((3, 9))))


@pytest.mark.parametrize("weight, kernel_size, error, message", [
    (np.ones(9), 3, ValueError, "weight"),
    (np.ones((2, 10)), 3, ValueError, "kernel_size=3"),
    (np.ones((2, 4)), 2, ValueError, "kernel_size"),
    (np.ones((2, 1)), 0, ValueError, "kernel_size"),
    (np.ones((2, 4)), 3.0, TypeError, "kernel_size"),
    (np.ones((2, 4)), True, TypeError, "kernel_size"),
])
def test_ssc_dense_kernel_rejects_bad_arguments(weight, kernel_size, error, message):
    with pytest.raises(error, match=message):
        reference.ssc_dense_kernel(weight, kernel_size)
