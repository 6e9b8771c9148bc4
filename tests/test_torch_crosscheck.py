"""Optional cross-checks against PyTorch, skipped when torch is not installed.

minissc's ops (forward and gradients, float64) equal PyTorch's on random shapes; the SSC is
compared with torch's conv2d of the dense sparse kernel (`reference.ssc_dense_kernel`). The
PyTorch twins of the zoo in benchmarks/torch_models.py, loaded with minissc's weights, give
the same logits, loss, gradients and running statistics in training mode: the benchmark's
equivalence check rests on these twins, and the last test shows that it catches a mismatch.
"""
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import arrays, conv_configs, nchw_shapes, seeds, ssc_configs

import minissc.functional as F
from minissc import Tensor, reference

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

# One torch thread: these arrays are tiny, and torch's OpenMP pool beside Numba's makes small
# ops wait for each other (the tests ran 2x slower with torch's default threads on 2 cores).
torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run as benchmark  # noqa: E402
import torch_models  # noqa: E402

TOLERANCE = 1e-10  # float64
EXAMPLES = settings(max_examples=12)
FUSED_SHUFFLE = "shuffle_groups" in inspect.signature(F.ssc_conv2d).parameters


def rel_error(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max(initial=0.0)
                 / max(1.0, np.abs(expected).max(initial=0.0)))


def leaf(array):
    """A float64 torch leaf tensor that requires grad (its own copy of the data)."""
    return torch.tensor(array, dtype=torch.float64, requires_grad=True)


def assert_close(pairs):
    for name, actual, expected in pairs:
        error = rel_error(actual, expected)
        assert error < TOLERANCE, f"{name}: relative error {error:.3g}"


# ----------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------

@EXAMPLES
@given(cfg=ssc_configs(), seed=seeds, data=st.data())
def test_ssc_conv2d_equals_torch_conv2d_of_the_dense_sparse_kernel(cfg, seed, data):
    c, k, stride, groups = cfg["c"], cfg["k"], cfg["stride"], cfg["groups"]
    shuffle = 1
    if FUSED_SHUFFLE:
        shuffle = data.draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
    x = arrays(seed, (cfg["n"], c, cfg["h"], cfg["w"]))
    weight = arrays(seed + 1, (cfg["o"], cfg["g"]))
    xm, wm = Tensor(x, requires_grad=True), Tensor(weight, requires_grad=True)
    extra = {"shuffle_groups": shuffle} if shuffle > 1 else {}
    y = F.ssc_conv2d(xm, wm, kernel_size=k, stride=stride, **extra)
    upstream = arrays(seed + 2, y.shape)
    y.backward(upstream)

    xt, kernel = leaf(x), leaf(reference.ssc_dense_kernel(weight, k))
    shuffled = torch_models.channel_shuffle(xt, shuffle) if shuffle > 1 else xt
    yt = TF.conv2d(shuffled, kernel, stride=stride, padding=k // 2, groups=groups)
    yt.backward(torch.from_numpy(upstream))
    positions = np.arange(cfg["g"])
    grad_weight = kernel.grad.numpy()[:, positions, positions // k, positions % k]
    assert_close([("y", y.data, yt.detach().numpy()), ("dx", xm.grad, xt.grad.numpy()),
                  ("dW", wm.grad, grad_weight)])


@EXAMPLES
@given(cfg=ssc_configs(), seed=seeds)
def test_shift_equals_torch_one_hot_depthwise_conv(cfg, seed):
    c, k = cfg["c"], cfg["k"]
    x = arrays(seed, (cfg["n"], c, cfg["h"], cfg["w"]))
    xm = Tensor(x, requires_grad=True)
    y = F.shift(xm, k, cfg["g"])
    upstream = arrays(seed + 1, y.shape)
    y.backward(upstream)
    xt = leaf(x)
    one_hot = torch_models.one_hot_shift_kernel(c, k, cfg["g"], dtype=torch.float64)
    yt = TF.conv2d(xt, one_hot, padding=k // 2, groups=c)
    yt.backward(torch.from_numpy(upstream))
    assert_close([("y", y.data, yt.detach().numpy()), ("dx", xm.grad, xt.grad.numpy())])


@EXAMPLES
@given(cfg=ssc_configs(), seed=seeds)
def test_group_pointwise_conv2d_equals_torch_grouped_1x1_conv(cfg, seed):
    x = arrays(seed, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    weight = arrays(seed + 1, (cfg["o"], cfg["g"]))
    xm, wm = Tensor(x, requires_grad=True), Tensor(weight, requires_grad=True)
    y = F.group_pointwise_conv2d(xm, wm, stride=cfg["stride"])
    upstream = arrays(seed + 2, y.shape)
    y.backward(upstream)
    xt, wt = leaf(x), leaf(weight[:, :, None, None])
    yt = TF.conv2d(xt, wt, stride=cfg["stride"], groups=cfg["groups"])
    yt.backward(torch.from_numpy(upstream))
    assert_close([("y", y.data, yt.detach().numpy()), ("dx", xm.grad, xt.grad.numpy()),
                  ("dW", wm.grad, wt.grad.numpy()[:, :, 0, 0])])


@EXAMPLES
@given(cfg=conv_configs(), seed=seeds)
def test_conv2d_equals_torch(cfg, seed):
    x = arrays(seed, (cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    weight = arrays(seed + 1, (cfg["o"], cfg["c"] // cfg["groups"], cfg["kh"], cfg["kw"]))
    bias = arrays(seed + 2, (cfg["o"],))
    xm, wm, bm = (Tensor(a, requires_grad=True) for a in (x, weight, bias))
    options = dict(stride=cfg["stride"], padding=cfg["padding"], groups=cfg["groups"])
    y = F.conv2d(xm, wm, bm, **options)
    upstream = arrays(seed + 3, y.shape)
    y.backward(upstream)
    xt, wt, bt = leaf(x), leaf(weight), leaf(bias)
    yt = TF.conv2d(xt, wt, bt, **options)
    yt.backward(torch.from_numpy(upstream))
    assert_close([("y", y.data, yt.detach().numpy()), ("dx", xm.grad, xt.grad.numpy()),
                  ("dW", wm.grad, wt.grad.numpy()), ("db", bm.grad, bt.grad.numpy())])


@EXAMPLES
@given(shape=nchw_shapes(min_values_per_channel=2), seed=seeds, training=st.booleans(),
       momentum=st.sampled_from([0.1, 0.5]))
def test_batch_norm2d_equals_torch_with_running_statistics(shape, seed, training, momentum):
    channels = shape[1]
    x = arrays(seed, shape, scale=2.0) + 0.5
    weight, bias = arrays(seed + 1, (channels,)), arrays(seed + 2, (channels,))
    running_mean = arrays(seed + 3, (channels,))
    running_var = np.random.default_rng(seed).uniform(0.5, 2.0, channels)
    xm, wm, bm = (Tensor(a, requires_grad=True) for a in (x, weight, bias))
    mean_m, var_m = running_mean.copy(), running_var.copy()
    y = F.batch_norm2d(xm, wm, bm, mean_m, var_m, training=training, momentum=momentum,
                       eps=1e-5)
    upstream = arrays(seed + 4, shape)
    y.backward(upstream)
    xt, wt, bt = leaf(x), leaf(weight), leaf(bias)
    mean_t, var_t = torch.tensor(running_mean), torch.tensor(running_var)
    yt = TF.batch_norm(xt, mean_t, var_t, wt, bt, training=training, momentum=momentum, eps=1e-5)
    yt.backward(torch.from_numpy(upstream))
    assert_close([("y", y.data, yt.detach().numpy()), ("dx", xm.grad, xt.grad.numpy()),
                  ("dweight", wm.grad, wt.grad.numpy()), ("dbias", bm.grad, bt.grad.numpy()),
                  ("running_mean", mean_m, mean_t.numpy()), ("running_var", var_m, var_t.numpy())])


@EXAMPLES
@given(n=st.integers(1, 6), classes=st.integers(2, 12), seed=seeds,
       label_smoothing=st.sampled_from([0.0, 0.1, 0.35]))
def test_cross_entropy_equals_torch(n, classes, seed, label_smoothing):
    logits = arrays(seed, (n, classes), scale=3.0)
    labels = np.random.default_rng(seed).integers(0, classes, n)
    upstream = float(arrays(seed + 1, ()))  # a random upstream gradient, not 1
    logits_m = Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(logits_m, labels, label_smoothing=label_smoothing)
    loss.backward(np.asarray(upstream))
    logits_t = leaf(logits)
    loss_t = TF.cross_entropy(logits_t, torch.from_numpy(labels),
                              label_smoothing=label_smoothing)
    loss_t.backward(torch.tensor(upstream, dtype=torch.float64))
    assert_close([("loss", loss.data, loss_t.detach().numpy()),
                  ("dlogits", logits_m.grad, logits_t.grad.numpy())])


# ----------------------------------------------------------------------------------------------
# The zoo's torch twins (used by benchmarks/run.py)
# ----------------------------------------------------------------------------------------------

TWIN_MODELS = [("sscresnet20", {"r": 1}), ("shiftresnet20", {"e": 3}), ("resnet20", {})]


@pytest.mark.parametrize("name, options", TWIN_MODELS)
def test_torch_twin_matches_minissc_in_training_mode(name, options):
    """Same logits, loss, parameter gradients and running statistics on a (4, 3, 32, 32) batch,
    in float64 so that any difference of wiring or formula shows above rounding (the
    benchmark checks its float32 copies itself)."""
    images, labels = benchmark.random_batch(4, seed=3)
    model, twin = benchmark.paired_models(torch, name, options, float64=True)
    assert sum(p.numel() for p in twin.parameters()) == model.num_parameters()
    ours, theirs = benchmark.train_pass(torch, model, twin, images.astype(np.float64), labels)
    assert rel_error(ours[0], theirs[0]) < TOLERANCE, "logits"
    assert rel_error(ours[1], theirs[1]) < TOLERANCE, "loss"
    twin_buffers = dict(twin.named_buffers())
    for buffer_name, buffer in model.named_buffers():
        assert rel_error(buffer, twin_buffers[buffer_name].numpy()) < TOLERANCE, buffer_name
    twin_grads = torch_models.gradients_in_minissc_layout(twin, model)
    scale = max(float(np.abs(g).max()) for g in twin_grads.values())
    for parameter_name, parameter in model.named_parameters():
        difference = np.abs(parameter.grad - twin_grads[parameter_name]).max()
        assert difference < TOLERANCE * scale, parameter_name


def test_weight_transfer_refuses_a_different_model():
    model = benchmark.build_minissc("sscresnet20", {"r": 2})
    with pytest.raises(ValueError, match="does not fit"):
        torch_models.load_minissc_weights(torch_models.create("sscresnet20", r=1), model)
    with pytest.raises(KeyError):
        torch_models.load_minissc_weights(torch_models.create("resnet20"), model)


def test_the_benchmark_check_catches_a_wrong_twin(monkeypatch):
    """A twin whose shift uses the wrong kernel positions must stop the benchmark (the right
    twin passes the same check: the test above)."""
    right = torch_models.one_hot_shift_kernel

    def rolled(channels, *args, **kwargs):
        return torch.roll(right(channels, *args, **kwargs), 1, dims=0)

    monkeypatch.setattr(torch_models, "one_hot_shift_kernel", rolled)
    with pytest.raises(benchmark.EquivalenceError):
        benchmark.check_network(torch, "shiftresnet20", {"e": 1})
