"""The model zoo and its summary: exact sizes, MACs, shapes, errors, state round trips."""
import numpy as np
import pytest

from minissc import manual_seed, models, no_grad
from minissc.nn import BatchNorm2d, GroupPointwiseConv2d, SSCConv2d
from minissc.summary import format_summary, summarize, summary_text
from minissc.tensor import Tensor

# Spec section 5: parameters on CIFAR-10, this backbone with 1x1-conv projection shortcuts.
SPEC_PARAMETERS = [
    ("resnet20", {}, 272_474),
    ("resnet56", {}, 855_770),
    ("resnet110", {}, 1_730_714),
    ("shiftresnet20", {"e": 1}, 34_906),
    ("shiftresnet20", {"e": 3}, 95_642),
    ("shiftresnet20", {"e": 6}, 186_746),
    ("shiftresnet20", {"e": 9}, 277_850),
    ("sscresnet20", {"r": 1}, 168_986),
    ("sscresnet56", {"r": 1}, 545_306),
]
SMALL_MODELS = [("resnet20", {}), ("shiftresnet20", {"e": 3}), ("sscresnet20", {"r": 4})]


def images(n=2, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32))


@pytest.mark.parametrize("name, options, expected", SPEC_PARAMETERS)
def test_parameter_counts_match_the_spec(name, options, expected):
    assert models.create(name, **options).num_parameters() == expected


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_cifar100_changes_only_the_classifier(name):
    # fc is Linear(64, K): 64 K weights + K biases, so 90 more classes add 90 * 65 parameters.
    small, large = models.create(name, num_classes=10), models.create(name, num_classes=100)
    assert large.num_parameters() - small.num_parameters() == 90 * 65
    assert large.fc.weight.shape == (100, 64)


def test_zoo_names_and_defaults():
    assert models.MODEL_NAMES == ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                                  "shiftresnet20", "shiftresnet56", "shiftresnet110",
                                  "sscresnet20", "sscresnet56", "sscresnet110")
    assert len(models.resnet110().layer2) == 18
    assert models.shiftresnet20().num_parameters() == 186_746  # default e=6
    assert models.sscresnet20().num_parameters() == 168_986  # default r=1


def _conv_macs(c_in, c_out, kernel_size, side):
    """Dense convolution MACs per image: every output pixel of every filter reads c_in k k."""
    return c_out * c_in * kernel_size * kernel_size * side * side


def test_resnet20_macs_equal_the_closed_form():
    stem = _conv_macs(3, 16, 3, 32)
    stage1 = 6 * _conv_macs(16, 16, 3, 32)
    stage2 = _conv_macs(16, 32, 3, 16) + 5 * _conv_macs(32, 32, 3, 16) + _conv_macs(16, 32, 1, 16)
    stage3 = _conv_macs(32, 64, 3, 8) + 5 * _conv_macs(64, 64, 3, 8) + _conv_macs(32, 64, 1, 8)
    expected = stem + stage1 + stage2 + stage3 + 64 * 10
    assert expected == 40_813_184
    assert sum(row.macs for row in summarize(models.resnet20())) == expected


def test_sscresnet20_macs_equal_the_closed_form():
    # SSC layer: each output reads G = 9 inputs per pixel; m = 9 c_out (r = 1).
    def block(c_in, c_out, side_in, stride):
        m, side = 9 * c_out, side_in // stride
        macs = _conv_macs(c_in, m, 1, side_in) + m * 9 * side_in**2 + c_out * 9 * side**2
        return macs + (_conv_macs(c_in, c_out, 1, side) if c_in != c_out else 0)

    stages = [block(16, 16, 32, 1) * 3,
              block(16, 32, 32, 2) + 2 * block(32, 32, 16, 1),
              block(32, 64, 16, 2) + 2 * block(64, 64, 8, 1)]
    expected = _conv_macs(3, 16, 3, 32) + sum(stages) + 64 * 10
    assert sum(row.macs for row in summarize(models.sscresnet20())) == expected


@pytest.mark.parametrize("name, options", SMALL_MODELS)
def test_summary_rows_add_up(name, options):
    model = models.create(name, **options)
    rows = summarize(model)
    assert sum(row.parameters for row in rows) == model.num_parameters()
    assert rows[0].name == "conv1" and rows[0].output_shape == (1, 16, 32, 32)
    assert rows[-1].name == "fc" and rows[-1].output_shape == (1, 10)
    assert all(row.macs == 0 for row in rows if row.type in
               ("BatchNorm2d", "ReLU", "Shift", "ChannelShuffle", "GlobalAvgPool2d"))
    text = format_summary(rows)
    assert f"Total parameters: {model.num_parameters():,}" in text
    assert "layer3.2" in text


def test_summary_text_names_the_model():
    text = summary_text("sscresnet20", num_classes=100, r=2)
    assert text.startswith("sscresnet20 (num_classes=100, r=2)")
    assert f"{models.sscresnet20(100, r=2).num_parameters():,}" in text


@pytest.mark.parametrize("name, options", SMALL_MODELS)
def test_forward_gives_one_logit_row_per_image(name, options):
    model = models.create(name, num_classes=7, **options).eval()
    with no_grad():
        logits = model(images())
    assert logits.shape == (2, 7)
    assert np.all(np.isfinite(logits.data))


def test_blocks_downsample_and_widen():
    x = Tensor(np.zeros((1, 16, 8, 8), np.float32))
    for block in (models.BasicBlock(16, 32, 2), models.ShiftBlock(16, 32, 2, e=1),
                  models.SSCBlock(16, 32, 2, r=2)):
        with no_grad():
            assert block.eval()(x).shape == (1, 32, 4, 4)
        assert block.shortcut is not None
    assert models.SSCBlock(16, 16).shortcut is None


def test_unknown_name_lists_valid_names_and_suggests_one():
    with pytest.raises(ValueError, match="SSCResNet20.*Did you mean 'sscresnet20'.*sscresnet110"):
        models.create("SSCResNet20")


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: models.create("sscresnet20", r=3), ValueError, "r must be one of"),
    (lambda: models.sscresnet56(r=3), ValueError, "r must be one of"),
    (lambda: models.create("shiftresnet20", e=2), ValueError, "e must be one of"),
    (lambda: models.create("resnet20", r=1), TypeError, "resnet20 does not take 'r'"),
    (lambda: models.create("shiftresnet20", r=1), TypeError, "only e"),
    (lambda: models.resnet20(r=1), TypeError, "'r'"),
    (lambda: models.create("resnet20", num_classes=1), ValueError, "num_classes must be >= 2"),
    (lambda: models.create("resnet20", num_classes=2.5), TypeError, "num_classes"),
    (lambda: models.SSCBlock(16, 16, r=3), ValueError, r"r \(3\) must divide"),
    (lambda: SSCConv2d(18, 18)(np.zeros((1, 18, 4, 4), np.float32), input_norm=BatchNorm2d(18)),
     TypeError, "input_norm must be a BatchNormReLU2d or None, got BatchNorm2d"),
    # two groups of 9 channels would run, as another layer: the weight would mean other sums
    (lambda: SSCConv2d(9, 4)(np.zeros((1, 18, 4, 4), np.float32)), ValueError,
     r"SSCConv2d expects input \(N, C, H, W\) with C = 9 channels, got shape \(1, 18, 4, 4\)"),
    (lambda: GroupPointwiseConv2d(9, 4)(np.zeros((1, 18, 4, 4), np.float32)), ValueError,
     r"GroupPointwiseConv2d expects .* C = 9 channels, got shape \(1, 18, 4, 4\)"),
])
def test_bad_options_raise_errors_naming_them(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_state_dict_round_trip_gives_the_same_output():
    manual_seed(0)
    trained = models.sscresnet20(r=4)
    with no_grad():  # training-mode passes move the batch-norm running statistics
        trained(images(4, seed=1))
        trained(images(4, seed=2))
    manual_seed(1)
    fresh = models.sscresnet20(r=4)
    fresh.load_state_dict(trained.state_dict())
    x = images()
    with no_grad():
        expected, actual = trained.eval()(x), fresh.eval()(x)
    np.testing.assert_array_equal(actual.data, expected.data)


def test_summarize_leaves_the_model_unchanged():
    model = models.shiftresnet20(e=1)
    model.layer2.eval()  # mixed training flags must come back as they were
    state = model.state_dict()
    flags = {name: m.training for name, m in model.named_modules()}
    attributes = {name: set(vars(m)) for name, m in model.named_modules()}
    summarize(model)
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(np.array_equal(state[key], after[key]) for key in state)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert {name: set(vars(m)) for name, m in model.named_modules()} == attributes
    assert all("forward" not in vars(m) for _, m in model.named_modules())


def test_summarize_restores_the_model_when_the_forward_fails():
    model = models.resnet20()
    with pytest.raises(ValueError):
        summarize(model, input_shape=(1, 4, 32, 32))  # the stem expects 3 channels
    assert all("forward" not in vars(m) for _, m in model.named_modules())
    assert model.training and model.layer1.training


@pytest.mark.parametrize("r", [1, 2])
def test_ssc_module_runs_its_two_ssc_layers_as_one_op_with_the_same_results(r, monkeypatch):
    """A training step of an SSC module through `ssc_pair` (one op for the 1x1 conv, SSC1 and
    SSC2, the batch norms' backwards folded) gives, to the bit, the outputs, gradients and
    running statistics of the three separate calls it replaces; under no_grad it makes those
    calls."""
    def run_block(pair):
        monkeypatch.setattr(models, "ssc_pair", pair)
        manual_seed(0)
        block = models.SSCBlock(16, 32, stride=2, r=r)
        x = Tensor(np.random.default_rng(1).standard_normal((2, 16, 6, 6)).astype(np.float32),
                   requires_grad=True)
        out = block(x)
        out.backward(np.random.default_rng(2).standard_normal(out.shape).astype(np.float32))
        state = block.state_dict()
        return [out.data, x.grad] + [p.grad for p in block.parameters()] + \
            [state[key] for key in sorted(state)]

    def separate_calls(x, bn1, ssc1, bn2, ssc2, conv):
        return ssc2(ssc1(conv(x), input_norm=bn1), input_norm=bn2)

    import minissc.functional as F
    from minissc.nn import ssc_pair
    one_op, ops = F.batch_norm_relu_ssc_pair, []

    def counting(*args, **kwargs):
        ops.append(1)
        return one_op(*args, **kwargs)

    monkeypatch.setattr(F, "batch_norm_relu_ssc_pair", counting)
    as_one_op = run_block(ssc_pair)
    assert len(ops) == 1
    for a, b in zip(as_one_op, run_block(separate_calls)):
        np.testing.assert_array_equal(a, b)
    block = models.SSCBlock(16, 32, stride=2, r=r).eval()
    with no_grad():
        block(Tensor(np.zeros((1, 16, 6, 6), np.float32)))
    assert len(ops) == 1  # no backward follows: the separate calls
