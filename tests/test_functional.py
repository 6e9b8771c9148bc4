"""The ops through the autograd graph: equal to the dense oracle, gradient-checked, and
strict about their arguments."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import arrays, seeds, ssc_configs

import minissc.functional as F
from minissc import Tensor, reference
from minissc.gradcheck import gradient_errors
from minissc.kernels import dense

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}


def rel_error(actual, expected):
    return float(np.abs(actual - expected).max(initial=0.0) / max(1.0, np.abs(expected).max(initial=0.0)))


def ssc_through_dense_oracle(x, weight, k, stride):
    """Forward and gradients of the dense sparse-kernel convolution, upstream R = ones*seeded."""
    kernel = reference.ssc_dense_kernel(weight, k)
    groups = x.shape[1] // weight.shape[1]
    y = reference.conv2d(x, kernel, stride=stride, padding=k // 2, groups=groups)
    return kernel, groups, y


@settings(max_examples=100)
@given(cfg=ssc_configs(), seed=seeds, dtype=st.sampled_from([np.float64, np.float32]))
def test_ssc_conv2d_equals_dense_sparse_kernel_convolution(cfg, seed, dtype):
    x64 = arrays(seed, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    w64 = arrays(seed + 1, (cfg["o"], cfg["g"]))
    k, stride = cfg["k"], cfg["stride"]
    kernel, groups, y_ref = ssc_through_dense_oracle(x64, w64, k, stride)
    upstream = arrays(seed + 2, y_ref.shape)
    dx_ref, dkernel_ref = reference.conv2d_backward(x64, kernel, upstream, stride=stride,
                                                    padding=k // 2, groups=groups)
    positions = np.arange(cfg["g"])
    dw_ref = dkernel_ref[:, positions, positions // k, positions % k]

    x = Tensor(x64.astype(dtype), requires_grad=True)
    w = Tensor(w64.astype(dtype), requires_grad=True)
    y = F.ssc_conv2d(x, w, kernel_size=k, stride=stride)
    y.backward(upstream.astype(dtype))
    assert y.dtype == dtype and y.shape == y_ref.shape
    for actual, expected in ((y.data, y_ref), (x.grad, dx_ref), (w.grad, dw_ref)):
        assert rel_error(actual, expected) < TOLERANCE[dtype]


@settings(max_examples=100)
@given(cfg=ssc_configs(), seed=seeds)
def test_unfused_shift_then_group_pointwise_equals_fused(cfg, seed):
    x_fused = Tensor(arrays(seed, (cfg["n"], cfg["c"], cfg["h"], cfg["w"])), requires_grad=True)
    w_fused = Tensor(arrays(seed + 1, (cfg["o"], cfg["g"])), requires_grad=True)
    x_pair = Tensor(x_fused.data.copy(), requires_grad=True)
    w_pair = Tensor(w_fused.data.copy(), requires_grad=True)
    fused = F.ssc_conv2d(x_fused, w_fused, cfg["k"], cfg["stride"])
    pair = F.group_pointwise_conv2d(F.shift(x_pair, cfg["k"], cfg["g"]), w_pair, cfg["stride"])
    upstream = arrays(seed + 2, fused.shape)
    fused.backward(upstream)
    pair.backward(upstream)
    assert rel_error(pair.data, fused.data) < 1e-12
    assert rel_error(x_pair.grad, x_fused.grad) < 1e-12
    assert rel_error(w_pair.grad, w_fused.grad) < 1e-12


@settings(max_examples=100)
@given(cfg=ssc_configs(), seed=seeds, data=st.data())
def test_shuffle_folded_into_ssc_equals_shuffle_then_ssc(cfg, seed, data):
    divisors = [d for d in range(1, cfg["c"] + 1) if cfg["c"] % d == 0]
    shuffle_groups = data.draw(st.sampled_from(divisors))
    x_fused = Tensor(arrays(seed, (cfg["n"], cfg["c"], cfg["h"], cfg["w"])), requires_grad=True)
    w_fused = Tensor(arrays(seed + 1, (cfg["o"], cfg["g"])), requires_grad=True)
    x_pair = Tensor(x_fused.data.copy(), requires_grad=True)
    w_pair = Tensor(w_fused.data.copy(), requires_grad=True)
    fused = F.ssc_conv2d(x_fused, w_fused, cfg["k"], cfg["stride"], shuffle_groups=shuffle_groups)
    pair = F.ssc_conv2d(F.channel_shuffle(x_pair, shuffle_groups), w_pair, cfg["k"], cfg["stride"])
    upstream = arrays(seed + 2, fused.shape)
    fused.backward(upstream)
    pair.backward(upstream)
    np.testing.assert_array_equal(fused.data, pair.data)
    np.testing.assert_array_equal(x_fused.grad, x_pair.grad)
    np.testing.assert_array_equal(w_fused.grad, w_pair.grad)


# -- gradient checks: float64, central differences on sum(f(x) * R) ------------------------

def leaf(seed, shape, scale=1.0):
    return Tensor(arrays(seed, shape, scale=scale), requires_grad=True)


def assert_gradients_match(fn, *inputs, tolerance=1e-6):
    errors = gradient_errors(fn, *inputs)
    checked = [e for e, t in zip(errors, inputs) if t.requires_grad]
    assert max(checked) < tolerance, errors


@settings(max_examples=25)
@given(cfg=ssc_configs(max_batch=2, max_side=5), seed=seeds)
def test_gradcheck_ssc_shift_and_group_pointwise(cfg, seed):
    x = leaf(seed, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    w = leaf(seed + 1, (cfg["o"], cfg["g"]))
    k, g, s = cfg["k"], cfg["g"], cfg["stride"]
    assert_gradients_match(lambda x, w: F.ssc_conv2d(x, w, k, s), x, w)
    if cfg["c"] % 2 == 0:
        assert_gradients_match(lambda x, w: F.ssc_conv2d(x, w, k, s, shuffle_groups=2), x, w)
    assert_gradients_match(lambda x: F.shift(x, k, g), x)
    assert_gradients_match(lambda x, w: F.group_pointwise_conv2d(x, w, s), x, w)


@settings(max_examples=25)
@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4),
       seed=seeds, training=st.booleans())
def test_gradcheck_batch_norm(n, c, h, w, seed, training):
    assume(n * h * w >= 2)
    x = leaf(seed, (n, c, h, w), scale=3.0)
    weight, bias = leaf(seed + 1, (c,)), leaf(seed + 2, (c,))
    running_mean = np.random.default_rng(seed).standard_normal(c)
    running_var = np.random.default_rng(seed).uniform(0.5, 2.0, c)
    assert_gradients_match(
        lambda x, weight, bias: F.batch_norm2d(x, weight, bias, running_mean.copy(),
                                               running_var.copy(), training=training),
        x, weight, bias, tolerance=1e-5)


@settings(max_examples=50)
@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(1, 5),
       seed=seeds, training=st.booleans())
def test_fused_batch_norm_relu_equals_batch_norm_then_relu(n, c, h, w, seed, training):
    assume(n * h * w >= 2)
    x_fused, x_pair = leaf(seed, (n, c, h, w)), leaf(seed, (n, c, h, w))
    params = [leaf(seed + 1, (c,)), leaf(seed + 2, (c,))]
    params_pair = [Tensor(p.data.copy(), requires_grad=True) for p in params]
    stats = [np.zeros(c), np.ones(c)]
    stats_pair = [a.copy() for a in stats]
    fused = F.batch_norm_relu2d(x_fused, *params, *stats, training=training)
    pair = F.relu(F.batch_norm2d(x_pair, *params_pair, *stats_pair, training=training))
    upstream = arrays(seed + 3, fused.shape)
    fused.backward(upstream)
    pair.backward(upstream)
    for a, b in [(fused.data, pair.data), (x_fused.grad, x_pair.grad)] + \
            [(p.grad, q.grad) for p, q in zip(params, params_pair)] + list(zip(stats, stats_pair)):
        assert rel_error(a, b) < 1e-12
    x = leaf(seed + 4, (n, c, h, w))
    normalised = F.batch_norm2d(x, *params, stats[0].copy(), stats[1].copy(), training=training)
    assume(np.abs(normalised.data).min() > 1e-3)  # away from the ReLU kink
    assert_gradients_match(lambda x, weight, bias: F.batch_norm_relu2d(
        x, weight, bias, stats[0].copy(), stats[1].copy(), training=training), x, *params,
        tolerance=1e-5)


@settings(max_examples=50)
@given(cfg=ssc_configs(max_batch=2, max_side=5), seed=seeds, training=st.booleans(),
       shuffle=st.booleans(), dtype=st.sampled_from([np.float64, np.float32]))
def test_batch_norm_relu_folded_into_ssc_equals_the_two_ops(cfg, seed, training, shuffle,
                                                            dtype):
    """batch_norm_relu_ssc_conv2d against batch_norm_relu2d then ssc_conv2d: the output, the
    four gradients and the running statistics, to the bit (both run the same kernels on
    values rounded the same way)."""
    n, c, h, w = cfg["n"], cfg["c"], cfg["h"], cfg["w"]
    assume(n * h * w >= 2)
    layer = dict(kernel_size=cfg["k"], stride=cfg["stride"],
                 shuffle_groups=cfg["groups"] if shuffle else 1)
    inputs = [arrays(seed, (n, c, h, w)), arrays(seed + 1, (c,)), arrays(seed + 2, (c,)),
              arrays(seed + 3, (cfg["o"], cfg["g"]))]
    fused_inputs = [Tensor(a.astype(dtype), requires_grad=True) for a in inputs]
    pair_inputs = [Tensor(a.astype(dtype), requires_grad=True) for a in inputs]
    stats = [np.zeros(c, dtype), np.ones(c, dtype)]
    pair_stats = [s.copy() for s in stats]
    x, bn_weight, bn_bias, weight = fused_inputs
    fused = F.batch_norm_relu_ssc_conv2d(x, bn_weight, bn_bias, *stats, weight, **layer,
                                         training=training)
    x, bn_weight, bn_bias, weight = pair_inputs
    pair = F.ssc_conv2d(F.batch_norm_relu2d(x, bn_weight, bn_bias, *pair_stats,
                                            training=training), weight, **layer)
    upstream = arrays(seed + 4, fused.shape).astype(dtype)
    fused.backward(upstream)
    pair.backward(upstream)
    np.testing.assert_array_equal(fused.data, pair.data)
    for a, b in zip(fused_inputs, pair_inputs):
        np.testing.assert_array_equal(a.grad, b.grad)
    for a, b in zip(stats, pair_stats):
        np.testing.assert_array_equal(a, b)


def ssc_pair_inputs(cfg, seed, dtype, out_channels):
    """x, then bn1 (weight, bias), weight1 (C, 9), bn2 (weight, bias), weight2, as tensors:
    an SSC module's two layers, C -> C and C -> out_channels, G = 9, k = 3."""
    n, c, h, w = cfg
    shapes = [(n, c, h, w), (c,), (c,), (c, 9), (c,), (c,), (out_channels, 9)]
    return [Tensor(arrays(seed + k, shape).astype(dtype), requires_grad=True)
            for k, shape in enumerate(shapes)]


def ssc_pair_call(inputs, stats, layer, training, as_one_op):
    x, bn1_weight, bn1_bias, weight1, bn2_weight, bn2_bias, weight2 = inputs
    if as_one_op:
        return F.batch_norm_relu_ssc_pair(
            x, (bn1_weight, bn1_bias, *stats[:2], 0.1, 1e-5), weight1,
            (bn2_weight, bn2_bias, *stats[2:], 0.1, 1e-5), weight2, **layer, training=training)
    middle = F.batch_norm_relu_ssc_conv2d(x, bn1_weight, bn1_bias, *stats[:2], weight1, 3, 1,
                                          training=training)
    return F.batch_norm_relu_ssc_conv2d(middle, bn2_weight, bn2_bias, *stats[2:], weight2,
                                        **layer, training=training)


@settings(max_examples=40)
@given(groups=st.integers(1, 3), n=st.integers(1, 2), side=st.integers(1, 5), seed=seeds,
       training=st.booleans(), r=st.sampled_from([1, 2, 9]), stride=st.sampled_from([1, 2]),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_ssc_pair_equals_the_two_folded_ops(groups, n, side, seed, training, r, stride, dtype):
    """batch_norm_relu_ssc_pair against two batch_norm_relu_ssc_conv2d calls: the output, the
    seven gradients and the four running statistics, to the bit. Its backward folds the
    second batch norm's grad_x pass into the first layer's kernel, rounded as the pass rounds
    it; r = 9 also runs the second layer on the group kernels."""
    c = 9 * groups
    assume(n * side * side >= 2)
    layer = dict(kernel_size=3, stride=stride, shuffle_groups=groups)
    results = []
    for as_one_op in (True, False):
        inputs = ssc_pair_inputs((n, c, side, side), seed, dtype, groups * r)
        stats = [np.zeros(c, dtype), np.ones(c, dtype), np.full(c, 0.5, dtype),
                 np.full(c, 2.0, dtype)]
        y = ssc_pair_call(inputs, stats, layer, training, as_one_op)
        y.backward(arrays(seed + 9, y.shape).astype(dtype))
        results.append([y.data] + [t.grad for t in inputs] + stats)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=30)
@given(groups=st.integers(1, 2), in_channels=st.integers(1, 4), n=st.integers(1, 5),
       side=st.integers(1, 4), seed=seeds, training=st.booleans(),
       stride=st.sampled_from([1, 2]), dtype=st.sampled_from([np.float64, np.float32]),
       chunk_bytes=st.sampled_from([1, 2000, 10**9]))
def test_ssc_pair_with_its_conv_equals_conv2d_then_the_pair(groups, in_channels, n, side, seed,
                                                            training, stride, dtype,
                                                            chunk_bytes):
    """batch_norm_relu_ssc_pair with conv_weight against conv2d, then the pair op: the output,
    the nine gradients and the running statistics, to the bit. The folded backward computes
    bn1's grad_x a chunk of images at a time for the convolution's backward; chunk_bytes sets
    the chunks to one image, a few, or the whole batch (both sides chunk alike)."""
    c = 9 * groups
    assume(n * side * side >= 2)
    layer = dict(kernel_size=3, stride=stride, shuffle_groups=groups)
    results = []
    chunk_bytes_before = dense.BACKWARD_CHUNK_BYTES
    dense.BACKWARD_CHUNK_BYTES = chunk_bytes
    try:
        for folded in (True, False):
            x0 = Tensor(arrays(seed + 20, (n, in_channels, side, side)).astype(dtype),
                        requires_grad=True)
            conv_weight = Tensor(arrays(seed + 21, (c, in_channels, 1, 1)).astype(dtype),
                                 requires_grad=True)
            inputs = ssc_pair_inputs((n, c, side, side), seed, dtype, groups)
            stats = [np.zeros(c, dtype), np.ones(c, dtype), np.full(c, 0.5, dtype),
                     np.full(c, 2.0, dtype)]
            x, bn1_weight, bn1_bias, weight1, bn2_weight, bn2_bias, weight2 = inputs
            norm1 = (bn1_weight, bn1_bias, *stats[:2], 0.1, 1e-5)
            norm2 = (bn2_weight, bn2_bias, *stats[2:], 0.1, 1e-5)
            if folded:
                y = F.batch_norm_relu_ssc_pair(x0, norm1, weight1, norm2, weight2, **layer,
                                               training=training, conv_weight=conv_weight)
            else:
                y = F.batch_norm_relu_ssc_pair(F.conv2d(x0, conv_weight), norm1, weight1,
                                               norm2, weight2, **layer, training=training)
            y.backward(arrays(seed + 9, y.shape).astype(dtype))
            results.append([y.data, x0.grad, conv_weight.grad]
                           + [t.grad for t in inputs[1:]] + stats)
    finally:
        dense.BACKWARD_CHUNK_BYTES = chunk_bytes_before
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=15)
@given(groups=st.integers(1, 2), side=st.integers(2, 4), seed=seeds, training=st.booleans(),
       stride=st.sampled_from([1, 2]))
def test_gradcheck_ssc_pair(groups, side, seed, training, stride):
    c = 9 * groups
    inputs = ssc_pair_inputs((2, c, side, side), seed, np.float64, groups)
    inputs[0] = Tensor(inputs[0].data * 3, requires_grad=True)
    stats = [np.random.default_rng(seed).standard_normal(c),
             np.random.default_rng(seed).uniform(0.5, 2.0, c)] * 2
    layer = dict(kernel_size=3, stride=stride, shuffle_groups=groups)
    x, bn1_weight, bn1_bias, weight1 = inputs[:4]
    first = F.batch_norm2d(x, bn1_weight, bn1_bias, *(s.copy() for s in stats[:2]),
                           training=training)
    assume(np.abs(first.data).min() > 1e-3)  # away from the first ReLU's kink
    middle = F.batch_norm_relu_ssc_conv2d(x, bn1_weight, bn1_bias,
                                          *(s.copy() for s in stats[:2]), weight1, 3, 1,
                                          training=training)
    second = F.batch_norm2d(middle, *inputs[4:6], *(s.copy() for s in stats[2:]),
                            training=training)
    assume(np.abs(second.data).min() > 1e-3)  # and from the second's
    assert_gradients_match(
        lambda *tensors: ssc_pair_call(tensors, [s.copy() for s in stats], layer, training,
                                       as_one_op=True), *inputs, tolerance=1e-5)


@settings(max_examples=25)
@given(cfg=ssc_configs(max_batch=2, max_side=4), seed=seeds, training=st.booleans())
def test_gradcheck_batch_norm_relu_ssc(cfg, seed, training):
    n, c, h, w = cfg["n"], cfg["c"], cfg["h"], cfg["w"]
    # With 2 values per channel the batch-normalised values are +-1 whatever x is, so the
    # gradient with respect to x is O(eps) and a relative error against it is only noise.
    assume(n * h * w >= 3)
    x = leaf(seed, (n, c, h, w), scale=3.0)
    bn_weight, bn_bias = leaf(seed + 1, (c,)), leaf(seed + 2, (c,))
    weight = leaf(seed + 3, (cfg["o"], cfg["g"]))
    stats = (np.random.default_rng(seed).standard_normal(c),
             np.random.default_rng(seed).uniform(0.5, 2.0, c))
    normalised = F.batch_norm2d(x, bn_weight, bn_bias, *(s.copy() for s in stats),
                                training=training)
    assume(np.abs(normalised.data).min() > 1e-3)  # away from the ReLU kink
    assert_gradients_match(lambda x, bn_weight, bn_bias, weight: F.batch_norm_relu_ssc_conv2d(
        x, bn_weight, bn_bias, *(s.copy() for s in stats), weight, cfg["k"], cfg["stride"],
        training=training), x, bn_weight, bn_bias, weight, tolerance=1e-5)


@settings(max_examples=25)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4),
                       st.integers(1, 4)), seed=seeds)
def test_gradcheck_relu_away_from_the_kink(shape, seed):
    x = leaf(seed, shape)
    assume(np.abs(x.data).min() > 1e-3)
    assert_gradients_match(F.relu, x)


@settings(max_examples=25)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4),
                       st.integers(1, 4)), seed=seeds)
def test_add_relu_is_relu_of_the_sum_and_its_gradients_match(shape, seed):
    a, b = leaf(seed, shape), leaf(seed + 1, shape)
    assume(np.abs(a.data + b.data).min() > 1e-3)
    np.testing.assert_array_equal(F.add_relu(a, b).data, F.relu(F.add(a, b)).data)
    assert_gradients_match(F.add_relu, a, b)


@pytest.mark.parametrize("stride,padding,groups,k,bias", [
    (1, 1, 1, 3, False), (2, 1, 1, 3, True), (1, 0, 1, 1, False), (2, 0, 2, 1, True),
    (1, 2, 3, 3, True)])
def test_gradcheck_conv2d(stride, padding, groups, k, bias):
    x = leaf(0, (2, 3 * groups, 5, 6))
    w = leaf(1, (2 * groups, 3, k, k))
    b = leaf(2, (2 * groups,)) if bias else Tensor(np.zeros(2 * groups))
    assert_gradients_match(lambda x, w, b: F.conv2d(x, w, b, stride, padding, groups), x, w, b)


def test_conv2d_on_data_computes_no_input_gradient(monkeypatch):
    """An input that needs no gradient (a network's image batch) gets none computed; the
    weight's gradient is the same to the bit."""
    x_data, w = leaf(0, (2, 3, 5, 6)).data, leaf(1, (4, 3, 3, 3))
    upstream = leaf(2, (2, 4, 5, 6)).data
    F.conv2d(Tensor(x_data, requires_grad=True), w, padding=1).backward(upstream)
    with_input_grad = w.grad.copy()
    asked = []
    backward = dense.conv2d_backward

    def recording_backward(*args, **options):
        asked.append(options["input_grad"])
        return backward(*args, **options)

    monkeypatch.setattr(dense, "conv2d_backward", recording_backward)
    w.grad = None
    F.conv2d(Tensor(x_data), w, padding=1).backward(upstream)
    assert asked == [False]
    np.testing.assert_array_equal(w.grad, with_input_grad)


def test_gradcheck_channel_shuffle_pool_linear_and_add():
    x = leaf(0, (2, 6, 3, 4))
    assert_gradients_match(lambda x: F.channel_shuffle(x, 3), x)
    assert_gradients_match(F.global_avg_pool2d, x)
    assert_gradients_match(lambda x, y: x + y, x, leaf(1, (1, 6, 1, 4)))
    assert_gradients_match(F.linear, leaf(2, (4, 5)), leaf(3, (3, 5)), leaf(4, (3,)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gradcheck_cross_entropy(smoothing):
    labels = np.array([0, 2, 1, 2])
    assert_gradients_match(lambda z: F.cross_entropy(z, labels, smoothing), leaf(0, (4, 3)))


# -- values the gradient check cannot see ------------------------------------------------------

def test_cross_entropy_value_and_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss = F.cross_entropy(logits, np.array([0, 1]))
    np.testing.assert_allclose(loss.item(), (0.0 + np.log(3)) / 2)
    smoothed = F.cross_entropy(np.zeros((1, 4)), np.array([3]), label_smoothing=0.2)
    np.testing.assert_allclose(smoothed.item(), np.log(4))


def test_batch_norm_running_statistics_follow_pytorch():
    x = arrays(0, (4, 3, 2, 2), dtype=np.float64) * 2 + 1
    running_mean, running_var = np.zeros(3), np.ones(3)
    y = F.batch_norm2d(x, None, None, running_mean, running_var, training=True, momentum=0.1)
    per_channel = x.transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(running_mean, 0.1 * per_channel.mean(axis=1))
    np.testing.assert_allclose(running_var, 0.9 + 0.1 * per_channel.var(axis=1, ddof=1))
    np.testing.assert_allclose(y.data.transpose(1, 0, 2, 3).reshape(3, -1).mean(axis=1), 0,
                               atol=1e-12)
    evaluated = F.batch_norm2d(x, None, None, running_mean, running_var, training=False)
    expected = (x - running_mean[:, None, None]) / np.sqrt(running_var[:, None, None] + 1e-5)
    np.testing.assert_allclose(evaluated.data, expected)


def test_eval_mode_reads_read_only_running_statistics():
    """Only training writes them: statistics loaded read-only (np.load with mmap_mode="r")
    serve inference."""
    x = arrays(0, (2, 18, 3, 3), dtype=np.float32)
    mean, var = np.zeros(18, np.float32), np.ones(18, np.float32)
    mean.flags.writeable = var.flags.writeable = False
    evaluated = F.batch_norm2d(x, None, None, mean, var, training=False)
    np.testing.assert_allclose(evaluated.data, x / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_channel_shuffle_interleaves_groups():
    x = np.arange(6, dtype=np.float64).reshape(1, 6, 1, 1)
    np.testing.assert_array_equal(F.channel_shuffle(x, 2).data.ravel(), [0, 3, 1, 4, 2, 5])


def test_empty_batch_and_non_contiguous_input():
    weight = arrays(1, (4, 9), dtype=np.float32)
    empty = Tensor(np.zeros((0, 18, 5, 5), np.float32), requires_grad=True)
    out = F.ssc_conv2d(empty, weight, 3, 2)
    assert out.shape == (0, 4, 3, 3)
    out.backward(np.zeros(out.shape, np.float32))
    assert empty.grad.shape == empty.shape
    for op in (lambda t: F.shift(t, 3), F.relu, lambda t: F.group_pointwise_conv2d(t, weight)):
        assert op(empty).shape[0] == 0
    wide = arrays(2, (2, 5, 7, 18), dtype=np.float64)
    x = wide.transpose(0, 3, 1, 2)  # (2, 18, 5, 7), not contiguous
    assert not x.flags.c_contiguous
    w64 = weight.astype(np.float64)
    expected = F.ssc_conv2d(np.ascontiguousarray(x), w64).data
    np.testing.assert_array_equal(F.ssc_conv2d(x, w64).data, expected)
    np.testing.assert_array_equal(F.relu(x).data, np.maximum(x, 0))


# -- bad input gets a clear error ----------------------------------------------------------------

X = np.zeros((2, 18, 6, 6), np.float32)
W = np.zeros((4, 9), np.float32)
READ_ONLY = np.zeros(18, np.float32)
READ_ONLY.flags.writeable = False
BAD_CALLS = [
    ("3-D input", lambda: F.ssc_conv2d(X[0], W), ValueError, r"x must have 4 dimensions.*\(18, 6, 6\)"),
    ("channels not divisible", lambda: F.ssc_conv2d(X[:, :16], W), ValueError, r"input channels \(16\).*9"),
    ("out not divisible by groups", lambda: F.ssc_conv2d(X, W[:3]), ValueError, r"weight.shape\[0\] = 3.*groups"),
    ("group_size > k*k", lambda: F.ssc_conv2d(X, W, kernel_size=1), ValueError, r"group_size must be <= kernel_size\*\*2 = 1.*got 9"),
    ("even kernel", lambda: F.ssc_conv2d(X, W, kernel_size=4), ValueError, r"kernel_size must be odd.*got 4"),
    ("zero kernel", lambda: F.shift(X, kernel_size=0), ValueError, r"kernel_size must be >= 1, got 0"),
    ("negative kernel", lambda: F.shift(X, kernel_size=-3), ValueError, r"kernel_size must be >= 1, got -3"),
    ("float kernel", lambda: F.shift(X, kernel_size=3.0), TypeError, r"kernel_size must be an integer, got 3.0"),
    ("stride 0", lambda: F.ssc_conv2d(X, W, stride=0), ValueError, r"stride must be >= 1, got 0"),
    ("stride 0 pointwise", lambda: F.group_pointwise_conv2d(X, W, stride=0), ValueError, r"stride must be >= 1, got 0"),
    ("integer input", lambda: F.ssc_conv2d(X.astype(np.int64), W), TypeError, r"x has dtype int64"),
    ("integer weight", lambda: F.ssc_conv2d(X, W.astype(np.int32)), TypeError, r"weight has dtype int32"),
    ("mixed dtypes", lambda: F.ssc_conv2d(X, W.astype(np.float64)), TypeError, r"x is float32, weight is float64"),
    ("1-D weight", lambda: F.ssc_conv2d(X, W.ravel()), ValueError, r"weight must have 2 dimensions.*\(36,\)"),
    ("shift group too big", lambda: F.shift(X, 3, group_size=10), ValueError, r"group_size must be <= kernel_size\*\*2 = 9.*got 10"),
    ("conv weight shape", lambda: F.conv2d(X, np.zeros((4, 5, 3, 3), np.float32)), ValueError, r"x has 18 channels but weight of shape \(4, 5, 3, 3\) expects 5"),
    ("bn weight shape", lambda: F.batch_norm2d(X, np.ones(3, np.float32)), ValueError, r"weight must have shape \(18,\), got \(3,\)"),
    ("bn one value per channel", lambda: F.batch_norm2d(X[:1, :, :1, :1]), ValueError, r"more than one value per channel"),
    ("bn momentum not a number", lambda: F.batch_norm2d(X, momentum="a"), TypeError, r"momentum must be a number, got 'a'"),
    ("bn read-only statistics", lambda: F.batch_norm2d(X, None, None, READ_ONLY, np.ones(18, np.float32)), ValueError, r"running_mean is read-only, but training updates it"),
    ("no channels", lambda: F.ssc_conv2d(X[:, :0], W), ValueError, r"x must have at least one channel, got shape \(2, 0, 6, 6\)"),
    ("label out of range", lambda: F.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 3])), ValueError, r"labels must be in \[0, 3\), got 3"),
    ("negative label", lambda: F.cross_entropy(np.zeros((2, 3), np.float32), np.array([-1, 0])), ValueError, r"got -1"),
    ("float labels", lambda: F.cross_entropy(np.zeros((2, 3), np.float32), np.array([0.0, 1.0])), TypeError, r"labels must be integer"),
    ("shuffle groups", lambda: F.channel_shuffle(X, 4), ValueError, r"channels \(18\) must be divisible by groups \(4\)"),
    ("linear features", lambda: F.linear(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32)), ValueError, r"5 input features but x has 3"),
    ("not an array", lambda: F.relu("abc"), TypeError, r"x must be a Tensor or a NumPy array, got str"),
    ("add_relu shapes", lambda: F.add_relu(X, X[:, :9]), ValueError, r"add_relu needs a and b of one shape, got \(2, 18, 6, 6\) and \(2, 9, 6, 6\)"),
    ("add_relu dtypes", lambda: F.add_relu(X, X.astype(np.float64)), TypeError, r"a is float32, b is float64"),
    ("bn + ssc: bn weight shape", lambda: F.batch_norm_relu_ssc_conv2d(X, np.ones(3, np.float32), None, None, None, W), ValueError, r"weight must have shape \(18,\), got \(3,\)"),
    ("bn + ssc: ssc stride", lambda: F.batch_norm_relu_ssc_conv2d(X, None, None, None, None, W, stride=0), ValueError, r"stride must be >= 1, got 0"),
    ("bn + ssc: eval without statistics", lambda: F.batch_norm_relu_ssc_conv2d(X, None, None, None, None, W, training=False), ValueError, r"eval mode .* needs running_mean"),
    ("ssc pair: norm not a tuple", lambda: F.batch_norm_relu_ssc_pair(X, None, np.zeros((18, 9), np.float32), (None,) * 4 + (0.1, 1e-5), W), TypeError, r"norm1 must be \(bn_weight, bn_bias, running_mean, running_var, momentum, eps\), got NoneType"),
    ("ssc pair: short norm", lambda: F.batch_norm_relu_ssc_pair(X, (None,) * 4 + (0.1, 1e-5), np.zeros((18, 9), np.float32), (None, None), W), TypeError, r"norm2 must be .* got tuple of length 2"),
    ("ssc pair: bn2 weight shape", lambda: F.batch_norm_relu_ssc_pair(X, (None,) * 4 + (0.1, 1e-5), np.zeros((18, 9), np.float32), (np.ones(3, np.float32),) + (None,) * 3 + (0.1, 1e-5), W), ValueError, r"weight must have shape \(18,\), got \(3,\)"),
    ("ssc pair: middle channels", lambda: F.batch_norm_relu_ssc_pair(X, (None,) * 4 + (0.1, 1e-5), W, (None,) * 4 + (0.1, 1e-5), W), ValueError, r"input channels \(4\) must be divisible"),
    ("ssc pair: conv weight shape", lambda: F.batch_norm_relu_ssc_pair(X, (None,) * 4 + (0.1, 1e-5), np.zeros((18, 9), np.float32), (None,) * 4 + (0.1, 1e-5), np.zeros((2, 9), np.float32), conv_weight=np.zeros((18, 5, 1, 1), np.float32)), ValueError, r"conv_weight must have shape \(out_channels, 18, 1, 1\) for x with 18 channels, got \(18, 5, 1, 1\)"),
    ("ssc pair: 3x3 conv weight", lambda: F.batch_norm_relu_ssc_pair(X, (None,) * 4 + (0.1, 1e-5), np.zeros((18, 9), np.float32), (None,) * 4 + (0.1, 1e-5), np.zeros((2, 9), np.float32), conv_weight=np.zeros((18, 18, 3, 3), np.float32)), ValueError, r"conv_weight must have shape \(out_channels, 18, 1, 1\)"),
    ("ssc pair: 2-D conv weight", lambda: F.batch_norm_relu_ssc_pair(X, (None,) * 4 + (0.1, 1e-5), np.zeros((18, 9), np.float32), (None,) * 4 + (0.1, 1e-5), np.zeros((2, 9), np.float32), conv_weight=np.zeros((18, 18), np.float32)), ValueError, r"conv_weight must have 4 dimensions"),
    ("ssc pair: conv weight dtype", lambda: F.batch_norm_relu_ssc_pair(X, (None,) * 4 + (0.1, 1e-5), np.zeros((18, 9), np.float32), (None,) * 4 + (0.1, 1e-5), np.zeros((2, 9), np.float32), conv_weight=np.zeros((18, 18, 1, 1))), TypeError, r"x is float32, conv_weight is float64"),
    ("ssc pair: conv channels for bn1", lambda: F.batch_norm_relu_ssc_pair(X, (np.ones(18, np.float32),) + (None,) * 3 + (0.1, 1e-5), np.zeros((9, 9), np.float32), (None,) * 4 + (0.1, 1e-5), np.zeros((1, 9), np.float32), conv_weight=np.zeros((9, 18, 1, 1), np.float32)), ValueError, r"weight must have shape \(9,\), got \(18,\)"),
]


@pytest.mark.parametrize("case,call,error,message", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_gets_a_clear_error(case, call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_reference_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        reference.ssc_dense_kernel(W, 4)
    with pytest.raises(ValueError, match="group"):
        reference.ssc_dense_kernel(np.zeros((4, 10)), 3)


# -- no JIT -------------------------------------------------------------------------------------

NO_JIT_SCRIPT = r"""
import numpy as np
import minissc.functional as F
from minissc import Tensor, reference
rng = np.random.default_rng(0)
for k, g, stride in [(3, 9, 1), (3, 5, 2), (5, 7, 2), (1, 1, 1)]:
    x = Tensor(rng.standard_normal((2, 2 * g, 6, 5)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, g)), requires_grad=True)
    y = F.ssc_conv2d(x, w, k, stride)
    kernel = reference.ssc_dense_kernel(w.data, k)
    expected = reference.conv2d(x.data, kernel, stride=stride, padding=k // 2, groups=2)
    assert np.allclose(y.data, expected, rtol=1e-10, atol=1e-10), "ssc forward"
    R = rng.standard_normal(y.shape)
    y.backward(R)
    dx, dk = reference.conv2d_backward(x.data, kernel, R, stride=stride, padding=k // 2, groups=2)
    p = np.arange(g)
    assert np.allclose(x.grad, dx, atol=1e-10) and np.allclose(w.grad, dk[:, p, p // k, p % k], atol=1e-10)
    pair = F.group_pointwise_conv2d(F.shift(x, k, g), w, stride)
    assert np.allclose(pair.data, y.data, atol=1e-12), "shift + pointwise"
z = rng.standard_normal((3, 4, 5, 5))
bn = F.batch_norm2d(z, None, None, np.zeros(4), np.ones(4))
assert np.allclose(bn.data.mean(axis=(0, 2, 3)), 0, atol=1e-12)
assert np.array_equal(F.relu(z).data, np.maximum(z, 0))
w = rng.standard_normal((2, 9))
for stride in (1, 2):
    fused = F.batch_norm_relu_ssc_conv2d(np.tile(z, (1, 9, 1, 1))[:, :18], None, None, None, None,
                                         w, 3, stride, shuffle_groups=2)
    pair = F.ssc_conv2d(F.batch_norm_relu2d(np.tile(z, (1, 9, 1, 1))[:, :18]), w, 3, stride,
                        shuffle_groups=2)
    assert np.allclose(fused.data, pair.data, atol=1e-12), "bn + relu folded into ssc"
import numba
assert numba.config.DISABLE_JIT
print("ok")
"""


def test_package_is_correct_without_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", NO_JIT_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
