"""Array-level tests of the batch norm and ReLU kernels (`minissc.kernels.norm`) and of the
dense convolution (`minissc.kernels.dense`): every Numba kernel against its NumPy twin, every
backward against central finite differences of sum(f * R) for a random upstream gradient R,
and the convolution against a brute-force loop."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minissc.gradcheck import numerical_gradient
from minissc import reference
from minissc.kernels import dense, norm
from strategies import arrays, conv_configs, nchw_shapes, on_one_thread, seeds

dtypes = st.sampled_from([np.float32, np.float64])
TWIN_TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
ORACLE_TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}  # against a float64 oracle
GRADIENT_TOLERANCE = 1e-6  # float64 central differences, step 1e-6
EPS = 1e-5


def assert_close(actual, expected, tolerance):
    """Same shape, and max|actual - expected| / max(1, max|expected|) <= tolerance."""
    assert actual.shape == expected.shape
    error = np.max(np.abs(actual - expected), initial=0.0)
    scale = max(1.0, np.max(np.abs(expected), initial=0.0))
    assert error / scale <= tolerance, f"relative error {error / scale:.3g} > {tolerance:.3g}"


def assert_gradients_match(loss, inputs, gradients):
    """Each analytic gradient equals the central differences of `loss` w.r.t. its input."""
    for array, gradient in zip(inputs, gradients):
        assert_close(gradient, numerical_gradient(loss, array), GRADIENT_TOLERANCE)


# ----------------------------------------------------------------------------------------------
# Batch norm and ReLU
# ----------------------------------------------------------------------------------------------

def batch_norm_problem(shape, seed, dtype, batch_statistics):
    """x, weight, bias, an upstream gradient grad_y, and the (mean, var) batch norm uses:
    the batch statistics in training mode, made-up running statistics in eval mode."""
    channels = shape[1]
    x = arrays(seed, shape, dtype)
    weight, bias = arrays(seed + 1, channels, dtype), arrays(seed + 2, channels, dtype)
    grad_y = arrays(seed + 3, shape, dtype)
    if batch_statistics:
        mean, var = norm.batch_norm_statistics_reference(x)
    else:
        mean, var = arrays(seed + 4, channels, dtype), 0.5 + arrays(seed + 5, channels, dtype) ** 2
    return x, weight, bias, grad_y, mean, var


def inverse_std(var):
    return (1 / np.sqrt(var + EPS)).astype(var.dtype)


@settings(max_examples=100)
@given(nchw_shapes(), seeds, dtypes)
def test_batch_norm_statistics_match_reference(shape, seed, dtype):
    x = arrays(seed, shape, dtype, scale=3.0) + 2
    mean, var = norm.batch_norm_statistics(x)
    expected_mean, expected_var = norm.batch_norm_statistics_reference(x)
    assert mean.dtype == var.dtype == dtype
    assert_close(mean, expected_mean, TWIN_TOLERANCE[dtype])
    assert_close(var, expected_var, TWIN_TOLERANCE[dtype])


def test_batch_norm_variance_survives_a_large_mean():
    """float32 data of mean 1e4 and std 1: E[x^2] - mean^2 in float32 would lose every digit."""
    x = (1e4 + arrays(0, (8, 3, 6, 6))).astype(np.float32)
    _, var = norm.batch_norm_statistics(x)
    assert_close(var, x.astype(np.float64).var(axis=(0, 2, 3)), 1e-6)


@pytest.mark.parametrize("channels_per_block", [2, 3, 5])
def test_channel_blocks_do_not_change_the_sums(channels_per_block):
    """A channel's sums are the same whichever channels a thread sums with it."""
    x, weight, bias, grad_y, mean, var = batch_norm_problem((3, 5, 4, 3), 11, np.float32, True)
    x, grad_y = x.reshape(3, 5, 12), grad_y.reshape(3, 5, 12)
    inputs = grad_y, x, mean, inverse_std(var), weight, bias
    one_at_a_time = np.empty(5, np.float32), np.empty(5, np.float32)
    in_blocks = np.empty(5, np.float32), np.empty(5, np.float32)
    norm._batch_norm_parameter_grad_kernel(*inputs, 1, *one_at_a_time)
    norm._batch_norm_parameter_grad_kernel(*inputs, channels_per_block, *in_blocks)
    for expected, actual in zip(one_at_a_time, in_blocks):
        np.testing.assert_array_equal(actual, expected)


@settings(max_examples=50)
@given(nchw_shapes(), seeds, dtypes, st.data())
def test_plane_moments_of_some_images_equal_those_of_the_batch(shape, seed, dtype, data):
    """The one-thread moments kernel that the convolution's chunks call gives, for any run of
    images, the batch kernel's moments to the bit; so the statistics agree whoever took them."""
    x = arrays(seed, shape, dtype, scale=3.0) + 2
    whole = norm.plane_moments(x)
    start = data.draw(st.integers(0, shape[0] - 1))
    images = slice(start, data.draw(st.integers(start + 1, shape[0])))
    moments = np.empty_like(whole[images])
    norm.plane_moments_of_images(x[images].reshape(moments.shape[:2] + (-1,)), moments)
    np.testing.assert_array_equal(moments, whole[images])


@settings(max_examples=100)
@given(nchw_shapes(), seeds, dtypes, st.booleans(), st.booleans())
def test_batch_norm_forward_matches_reference(shape, seed, dtype, batch_statistics, fused):
    x, weight, bias, _, mean, var = batch_norm_problem(shape, seed, dtype, batch_statistics)
    arguments = (x, mean, inverse_std(var), weight, bias)
    if fused:
        y = norm.batch_norm_relu_forward(*arguments)
        expected = norm.batch_norm_relu_forward_reference(*arguments)
    else:
        y = norm.batch_norm_forward(*arguments)
        expected = norm.batch_norm_forward_reference(*arguments)
    assert y.dtype == dtype
    assert_close(y, expected, TWIN_TOLERANCE[dtype])


@settings(max_examples=100)
@given(nchw_shapes(), seeds, dtypes, st.booleans(), st.booleans())
def test_batch_norm_backward_matches_reference(shape, seed, dtype, batch_statistics, fused):
    x, weight, bias, grad_y, mean, var = batch_norm_problem(shape, seed, dtype, batch_statistics)
    inv_std = inverse_std(var)
    if fused:
        arguments = (grad_y, x, mean, inv_std, weight, bias, batch_statistics)
        gradients = norm.batch_norm_relu_backward(*arguments)
        expected = norm.batch_norm_relu_backward_reference(*arguments)
    else:
        arguments = (grad_y, x, mean, inv_std, weight, batch_statistics)
        gradients = norm.batch_norm_backward(*arguments)
        expected = norm.batch_norm_backward_reference(*arguments)
    for gradient, expected_gradient in zip(gradients, expected):
        assert gradient.dtype == dtype
        assert_close(gradient, expected_gradient, TWIN_TOLERANCE[dtype])


@pytest.mark.parametrize("batch_statistics", [True, False], ids=["training", "eval"])
@settings(max_examples=100)
@given(shape=nchw_shapes(min_values_per_channel=2), seed=seeds, fused=st.booleans())
def test_batch_norm_backward_matches_finite_differences(shape, seed, fused, batch_statistics):
    """Gradients w.r.t. x, weight and bias of sum(batch_norm(x) * R) (of relu(batch_norm(x)) *
    R when fused); in training mode the batch statistics move with x."""
    x, weight, bias, upstream, mean, var = batch_norm_problem(shape, seed, np.float64,
                                                              batch_statistics)
    inv_std = inverse_std(var)
    if fused:
        # Difference steps move a pre-activation by ~1e-5: keep every one clear of the kink.
        pre_activation = norm.batch_norm_forward(x, mean, inv_std, weight, bias)
        assume(np.abs(pre_activation).min() > 1e-3)
        gradients = norm.batch_norm_relu_backward(upstream, x, mean, inv_std, weight, bias,
                                                  batch_statistics)
        forward = norm.batch_norm_relu_forward_reference
    else:
        gradients = norm.batch_norm_backward(upstream, x, mean, inv_std, weight,
                                             batch_statistics)
        forward = norm.batch_norm_forward_reference

    def loss():
        statistics = norm.batch_norm_statistics_reference(x) if batch_statistics else (mean, var)
        return np.sum(forward(x, statistics[0], inverse_std(statistics[1]), weight, bias)
                      * upstream)

    assert_gradients_match(loss, (x, weight, bias), gradients)


@pytest.mark.parametrize("fused", [False, True])
def test_batch_norm_in_eval_mode_takes_an_empty_batch(fused):
    x, weight, bias, _, mean, var = batch_norm_problem((0, 3, 4, 4), 0, np.float32, False)
    forward, backward = ((norm.batch_norm_relu_forward, norm.batch_norm_relu_backward) if fused
                         else (norm.batch_norm_forward, norm.batch_norm_backward))
    y = forward(x, mean, inverse_std(var), weight, bias)
    assert y.shape == x.shape
    relu_bias = (bias,) if fused else ()
    grad_x, grad_weight, grad_bias = backward(x, x, mean, inverse_std(var), weight, *relu_bias,
                                              False)
    assert grad_x.shape == x.shape
    np.testing.assert_array_equal(grad_weight, np.zeros(3))
    np.testing.assert_array_equal(grad_bias, np.zeros(3))


@settings(max_examples=100)
@given(nchw_shapes(), seeds, dtypes)
def test_relu_matches_reference(shape, seed, dtype):
    x, grad_y = arrays(seed, shape, dtype), arrays(seed + 1, shape, dtype)
    y = norm.relu_forward(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, norm.relu_forward_reference(x))
    grad_x = norm.relu_backward(grad_y, y)
    assert grad_x.dtype == dtype
    np.testing.assert_array_equal(grad_x, norm.relu_backward_reference(grad_y, y))


@pytest.mark.parametrize("shape", [(2, 16, 128, 128), (3, 5), (norm.PARALLEL_ADD_MIN_SIZE,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_arrays_is_numpys_add(shape, dtype):
    """The parallel kernel (large arrays) and NumPy's add (small ones) give a + b, to the bit;
    shapes that broadcast, mixed dtypes and non-contiguous views go to NumPy."""
    a, b = arrays(0, shape, dtype), arrays(1, shape, dtype)
    np.testing.assert_array_equal(norm.add_arrays(a, b), a + b)
    big = arrays(2, (4, 512, 256), dtype)
    for left, right in ((big, big[:1]), (big, big.astype(np.float16)), (big[:, ::2], big[:, 1::2])):
        np.testing.assert_array_equal(norm.add_arrays(left, right), left + right)


@settings(max_examples=100)
@given(nchw_shapes(), seeds, dtypes)
def test_add_relu_matches_reference(shape, seed, dtype):
    a, b = arrays(seed, shape, dtype), arrays(seed + 1, shape, dtype)
    a.reshape(-1)[:: 7] = np.nan  # NaN stays NaN, as in relu_forward
    y = norm.add_relu_forward(a, b)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, norm.add_relu_forward_reference(a, b))
    np.testing.assert_array_equal(y, norm.relu_forward(a + b))


@settings(max_examples=100)
@given(nchw_shapes(), seeds)
def test_relu_backward_matches_finite_differences(shape, seed):
    """Inputs are pushed at least 0.1 away from the kink at 0."""
    x = arrays(seed, shape)
    x += 0.1 * np.sign(x)
    upstream = arrays(seed + 1, shape)
    grad_x = norm.relu_backward(upstream, norm.relu_forward(x))
    assert_gradients_match(lambda: np.sum(norm.relu_forward_reference(x) * upstream), (x,),
                           (grad_x,))


def test_relu_of_an_empty_batch_is_empty():
    x = np.zeros((0, 3, 4, 4), np.float32)
    y = norm.relu_forward(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert norm.relu_backward(x, y).shape == x.shape


def test_kernel_outputs_do_not_depend_on_the_inputs_layout():
    """Outputs are new C-contiguous arrays: one allocated like a transposed input would be
    filled through a copy and lost."""
    x = arrays(1, (2, 3, 6, 5)).transpose(0, 1, 3, 2)  # (2, 3, 5, 6), not C-contiguous
    contiguous = np.ascontiguousarray(x)
    statistics = [arrays(seed, (3,)) for seed in (2, 3, 4, 5)]
    weight, grad_y = arrays(6, (4, 3, 3, 3)), arrays(7, (2, 4, 6, 5)).transpose(0, 1, 3, 2)
    for call in (lambda x: norm.batch_norm_forward(x, *statistics),
                 lambda x: norm.batch_norm_relu_forward(x, *statistics),
                 norm.relu_forward, lambda x: norm.add_relu_forward(x, x),
                 lambda x: dense.conv2d_backward(x, weight, grad_y, 1, 1, 1)[0]):
        np.testing.assert_array_equal(call(x), call(contiguous))


def test_relu_keeps_nan():
    """A NaN must reach the loss, not hide behind a ReLU (PyTorch behaves the same)."""
    y = norm.relu_forward(np.array([np.nan, -1.0, 2.0]))
    np.testing.assert_array_equal(y, [np.nan, 0.0, 2.0])


# ----------------------------------------------------------------------------------------------
# Dense convolution
# ----------------------------------------------------------------------------------------------

def im2col_problem(config, seed, dtype):
    """x and the columns' shape (N, C, kh, kw, Ho, Wo) of a convolution layout."""
    x = arrays(seed, (config["n"], config["c"], config["h"], config["w"]), dtype)
    out_h = (config["h"] + 2 * config["padding"] - config["kh"]) // config["stride"] + 1
    out_w = (config["w"] + 2 * config["padding"] - config["kw"]) // config["stride"] + 1
    return x, (config["n"], config["c"], config["kh"], config["kw"], out_h, out_w)


def check_im2col_twins(config, seed, dtype):
    """`_im2col` and `_col2im` equal their NumPy twins to the bit: the same values copied, and
    the same sums added in the same (i, j) order."""
    x, columns_shape = im2col_problem(config, seed, dtype)
    args = config["kh"], config["kw"], config["stride"], config["padding"], *columns_shape[4:]
    np.testing.assert_array_equal(dense._im2col(x, *args), dense.im2col_reference(x, *args))
    grad_columns = arrays(seed + 1, columns_shape, dtype)
    expected = dense.col2im_reference(grad_columns, x.shape, config["stride"], config["padding"])
    grad_x = np.full_like(x, np.nan)  # every entry must be written
    dense._col2im(grad_columns.copy(), config["stride"], config["padding"], grad_x)
    np.testing.assert_array_equal(grad_x, expected)


@settings(max_examples=100)
@given(conv_configs(max_side=9), seeds, dtypes)
def test_im2col_and_col2im_match_their_twins(config, seed, dtype):
    check_im2col_twins(config, seed, dtype)


@pytest.mark.parametrize("h, w, kh, kw, stride, padding", [
    (32, 32, 3, 3, 1, 1),  # resnet20's layers: the flat path, rows of 32
    (8, 8, 3, 3, 1, 1),
    (7, 9, 5, 5, 1, 2),    # flat path, odd sizes, offsets up to 2
    (1, 1, 3, 3, 1, 1),    # a single pixel: only the centre tap reads the image
    (2, 1, 5, 5, 1, 2),    # offsets larger than the image
    (6, 5, 3, 1, 1, 1),    # the output is taller: the row path
    (9, 8, 3, 3, 2, 1),    # stride 2
    (5, 5, 1, 1, 2, 0),    # 1x1 stride 2 (a view forward, the row path backward)
])
def test_im2col_and_col2im_match_their_twins_on_edge_layouts(h, w, kh, kw, stride, padding):
    config = dict(n=2, c=3, h=h, w=w, kh=kh, kw=kw, stride=stride, padding=padding)
    check_im2col_twins(config, 7, np.float32)


def brute_force_conv2d(x, weight, stride, padding, groups):
    """y[n, o, Y, X] = sum_{c, i, j} weight[o, c, i, j] * xpad[n, g*C/groups + c, Y*s + i, X*s + j]
    with g = o // (O/groups), one output value at a time."""
    batch, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    y = np.zeros((batch, out_channels, out_h, out_w))
    for n, o, row, column in np.ndindex(y.shape):
        first_channel = o // (out_channels // groups) * group_channels
        for c, i, j in np.ndindex(group_channels, kh, kw):
            y[n, o, row, column] += (weight[o, c, i, j]
                                     * padded[n, first_channel + c, row * stride + i,
                                              column * stride + j])
    return y


def conv_problem(config, seed, dtype):
    """x (N, C, H, W), weight (O, C/groups, kh, kw) and an upstream gradient for the output."""
    x = arrays(seed, (config["n"], config["c"], config["h"], config["w"]), dtype)
    weight = arrays(seed + 1, (config["o"], config["c"] // config["groups"], config["kh"],
                               config["kw"]), dtype)
    out_h = (config["h"] + 2 * config["padding"] - config["kh"]) // config["stride"] + 1
    out_w = (config["w"] + 2 * config["padding"] - config["kw"]) // config["stride"] + 1
    grad_y = arrays(seed + 2, (config["n"], config["o"], out_h, out_w), dtype)
    return x, weight, grad_y


def layout(config):
    return config["stride"], config["padding"], config["groups"]


@pytest.mark.parametrize("rows_min_channels", [dense.ROWS_MIN_CHANNELS, 1])
@settings(max_examples=100)
@given(conv_configs(), seeds, dtypes)
def test_conv2d_forward_matches_brute_force(rows_min_channels, config, seed, dtype):
    """With rows_min_channels 1, the forward by `_im2row` on every layout with one group."""
    x, weight, _ = conv_problem(config, seed, dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dense, "ROWS_MIN_CHANNELS", rows_min_channels)
        y = dense.conv2d_forward(x, weight, *layout(config))
    assert y.dtype == dtype and y.flags.c_contiguous
    expected = brute_force_conv2d(x.astype(np.float64), weight.astype(np.float64),
                                  *layout(config))
    assert_close(y, expected, ORACLE_TOLERANCE[dtype])


@settings(max_examples=100)
@given(conv_configs(), seeds)
def test_conv2d_backward_matches_finite_differences(config, seed):
    x, weight, upstream = conv_problem(config, seed, np.float64)
    gradients = dense.conv2d_backward(x, weight, upstream, *layout(config))
    assert all(gradient.flags.c_contiguous for gradient in gradients)
    assert_gradients_match(
        lambda: np.sum(dense.conv2d_forward(x, weight, *layout(config)) * upstream),
        (x, weight), gradients)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, c, o, h, w, kh, kw, stride, padding, groups", [
    (2, 4, 6, 5, 7, 1, 1, 1, 0, 2),   # 1x1: the columns are x itself
    (2, 4, 6, 5, 7, 1, 1, 2, 0, 1),   # 1x1 stride 2 on odd sizes: a strided slice
    (2, 3, 3, 6, 5, 3, 3, 2, 1, 3),   # depthwise 3x3, stride 2, padding 1
    (1, 2, 4, 1, 1, 3, 3, 1, 1, 1),   # a single pixel: only the centre tap sees the image
    (2, 3, 16, 8, 8, 3, 3, 1, 1, 1),  # the CIFAR stem's layout
    (2, 16, 8, 6, 5, 3, 3, 1, 1, 1),  # resnet20's layers: the forward by rows (_im2row)
    (2, 16, 8, 7, 6, 3, 3, 2, 1, 1),  # the same with stride 2
])
def test_conv2d_edge_shapes(n, c, o, h, w, kh, kw, stride, padding, groups, dtype):
    config = dict(n=n, c=c, o=o, h=h, w=w, kh=kh, kw=kw, stride=stride, padding=padding,
                  groups=groups)
    x, weight, upstream = conv_problem(config, 5, dtype)
    y = dense.conv2d_forward(x, weight, *layout(config))
    x64, weight64 = x.astype(np.float64), weight.astype(np.float64)
    assert_close(y, brute_force_conv2d(x64, weight64, *layout(config)), ORACLE_TOLERANCE[dtype])
    grad_x, grad_weight = dense.conv2d_backward(x, weight, upstream, *layout(config))
    assert grad_x.dtype == grad_weight.dtype == dtype
    upstream64 = upstream.astype(np.float64)
    expected = [numerical_gradient(
        lambda: np.sum(dense.conv2d_forward(x64, weight64, *layout(config)) * upstream64), array)
        for array in (x64, weight64)]
    tolerance = max(ORACLE_TOLERANCE[dtype], GRADIENT_TOLERANCE)
    assert_close(grad_x, expected[0], tolerance)
    assert_close(grad_weight, expected[1], tolerance)
    no_grad_x, same_grad_weight = dense.conv2d_backward(x, weight, upstream, *layout(config),
                                                        input_grad=False)
    assert no_grad_x is None
    np.testing.assert_array_equal(same_grad_weight, grad_weight)


@settings(max_examples=100)
@given(conv_configs(max_side=9).filter(lambda config: config["groups"] == 1), seeds, dtypes)
def test_im2row_holds_the_im2col_columns_as_rows(config, seed, dtype):
    """`_im2row` (pixel rows, entries (i, j, c)) is `im2col_reference` transposed, to the bit."""
    x, columns_shape = im2col_problem(config, seed, dtype)
    args = config["kh"], config["kw"], config["stride"], config["padding"], *columns_shape[4:]
    columns = dense.im2col_reference(x, *args)  # (N, C, kh, kw, Ho, Wo)
    np.testing.assert_array_equal(dense._im2row(x, *args),
                                  columns.transpose(0, 4, 5, 2, 3, 1).reshape(
                                      -1, np.prod(columns_shape[1:4])))


def test_conv2d_of_an_empty_batch_is_empty():
    x, weight = np.zeros((0, 4, 5, 5), np.float32), np.ones((6, 2, 3, 3), np.float32)
    y = dense.conv2d_forward(x, weight, 2, 1, 2)
    assert y.shape == (0, 6, 3, 3) and y.dtype == np.float32
    grad_x, grad_weight = dense.conv2d_backward(x, weight, y, 2, 1, 2)
    assert grad_x.shape == x.shape
    np.testing.assert_array_equal(grad_weight, np.zeros_like(weight))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_over_several_chunks_matches_the_oracle_on_any_thread_count(dtype):
    """37 images: two full chunks of IMAGES_PER_CHUNK and a partial one, run on the chunk
    threads and on one thread; the weight gradient is the same to the bit."""
    assert 2 * dense.IMAGES_PER_CHUNK < 37 < 3 * dense.IMAGES_PER_CHUNK
    x, weight = arrays(1, (37, 4, 9, 7), dtype), arrays(2, (6, 2, 3, 3), dtype)
    y = dense.conv2d_forward(x, weight, 2, 1, 2)
    upstream = arrays(3, y.shape, dtype)
    tolerance = ORACLE_TOLERANCE[dtype]
    assert_close(y, reference.conv2d(x.astype(np.float64), weight.astype(np.float64), stride=2,
                                     padding=1, groups=2), tolerance)
    gradients = dense.conv2d_backward(x, weight, upstream, 2, 1, 2)
    expected = reference.conv2d_backward(x.astype(np.float64), weight.astype(np.float64),
                                         upstream.astype(np.float64), stride=2, padding=1,
                                         groups=2)
    for actual, oracle, single_thread in zip(
            gradients, expected, on_one_thread(dense.conv2d_backward, x, weight, upstream, 2, 1, 2)):
        assert_close(actual, oracle, tolerance)
        np.testing.assert_array_equal(actual, single_thread)


@settings(max_examples=60)
@given(nchw_shapes(min_values_per_channel=2), seeds, dtypes, st.booleans(), st.data())
def test_input_grad_by_images_equals_the_whole_pass(shape, seed, dtype, batch_statistics, data):
    """InputGradByImages[images] is batch_norm_relu_input_grad's grad_x[images], to the bit,
    for any run of images: the statistics' count is the whole batch's, not the chunk's."""
    x, grad_y = arrays(seed, shape, dtype), arrays(seed + 1, shape, dtype)
    channels = shape[1]
    mean = arrays(seed + 2, (channels,), dtype)
    inv_std = np.abs(arrays(seed + 3, (channels,), dtype)) + dtype(0.5)
    weight, bias = arrays(seed + 4, (channels,), dtype), arrays(seed + 5, (channels,), dtype)
    sums = arrays(seed + 6, (channels,)), arrays(seed + 7, (channels,))
    arguments = (grad_y, x, mean, inv_std, weight, bias, *sums, batch_statistics)
    whole = norm.batch_norm_relu_input_grad(*arguments)[0]
    start = data.draw(st.integers(0, shape[0] - 1))
    images = slice(start, data.draw(st.integers(start + 1, shape[0])))
    np.testing.assert_array_equal(norm.InputGradByImages(*arguments)[images], whole[images])


@pytest.mark.parametrize("chunk_bytes", [1, 3000, 10**9])
def test_conv2d_backward_reads_an_upstream_computed_by_chunks(chunk_bytes, monkeypatch):
    """conv2d_backward with its upstream gradient computed a chunk of images at a time
    (InputGradByImages) equals the same call on the whole array, to the bit, whether a chunk
    holds one image, a few or all 37."""
    monkeypatch.setattr(dense, "BACKWARD_CHUNK_BYTES", chunk_bytes)
    x, weight = arrays(1, (37, 3, 5, 4)), arrays(2, (8, 3, 1, 1))
    y = dense.conv2d_forward(x, weight, 1, 0, 1)
    channels = np.ones(8), np.zeros(8)
    arguments = (arrays(3, y.shape), y, *channels, *channels, arrays(4, (8,)), arrays(5, (8,)),
                 True)
    by_chunks = dense.conv2d_backward(x, weight, norm.InputGradByImages(*arguments), 1, 0, 1)
    whole = dense.conv2d_backward(x, weight, norm.batch_norm_relu_input_grad(*arguments)[0],
                                  1, 0, 1)
    for a, b in zip(by_chunks, whole):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape,dtype,images", [
    ((128, 144, 32, 32), np.float32, 4), ((128, 576, 8, 8), np.float32, 16),
    ((128, 288, 32, 32), np.float32, 2), ((128, 288, 32, 32), np.float64, 1),
    ((2, 16, 4, 4), np.float64, dense.IMAGES_PER_CHUNK)])
def test_backward_chunks_hold_about_backward_chunk_bytes(shape, dtype, images):
    assert dense._images_per_backward_chunk(shape, dtype) == images


@settings(max_examples=50)
@given(conv_configs(), seeds, dtypes)
def test_conv2d_forward_moments_equal_those_of_its_output(config, seed, dtype):
    """conv2d_forward's plane moments, taken chunk by chunk, are norm.plane_moments(y) to the
    bit."""
    x = arrays(seed, (config["n"], config["c"], config["h"], config["w"]), dtype)
    weight = arrays(seed + 1, (config["o"], config["c"] // config["groups"], config["kh"],
                               config["kw"]), dtype)
    layout = config["stride"], config["padding"], config["groups"]
    moments = np.empty((config["n"], config["o"], 3))
    y = dense.conv2d_forward(x, weight, *layout, moments=moments)
    np.testing.assert_array_equal(y, dense.conv2d_forward(x, weight, *layout))
    np.testing.assert_array_equal(moments, norm.plane_moments(y))
