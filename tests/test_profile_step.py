"""benchmarks/profile_step.py: its timers see every op call of a step and leave the ops as
they were, its products per op add up to the model's multiply-adds, and its wide-tensor
traffic to ten passes of every SSC module's SSC1 output (the profile of issue 4's closing
note rests on all four)."""
import json
import math
import sys
from pathlib import Path

import pytest

from minissc import nn
from minissc.functional import BatchNormReLUSSCConv2d, SSCConv2d
from minissc.kernels import dense, ssc
from minissc.summary import summarize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import profile_step  # noqa: E402


def test_profile_counts_every_op_call_and_removes_its_timers():
    original_forwards = SSCConv2d.forward, BatchNormReLUSSCConv2d.forward
    original_kernels = ssc.ssc_forward, dense.conv2d_forward, ssc.shift_masks
    ssc._cached_shift_masks.cache_clear()  # so that the SSC kernels compute their masks here
    op_seconds, parts, calls, use, _, kernels = profile_step.profile("sscresnet20", {"r": 4},
                                                                     batch=2, steps=2)
    model = profile_step.run.build_minissc("sscresnet20", {"r": 4})
    ssc_layers = sum(isinstance(m, nn.SSCConv2d) for _, m in model.named_modules())
    assert ssc_layers > 0
    # BN + ReLU folded into one SSC layer, or into a pair of them (an SSC module's two)
    layers_per_op = {"SSCConv2d ": 1, "BatchNormReLUSSCConv2d ": 1, "BatchNormReLUSSCPair ": 2}
    assert sum(n * layers for label, n in calls.items() for op, layers in layers_per_op.items()
               if label.startswith(op)) == ssc_layers
    assert any(label.startswith("BatchNormReLUSSCPair ") for label in calls)
    assert sum(n for label, n in calls.items() if label.startswith("CrossEntropy ")) == 1
    assert all(seconds >= 0 for seconds in op_seconds.values())
    assert {phase for _, phase in op_seconds} == {"forward", "backward"}
    ops_forward = sum(s for (_, phase), s in op_seconds.items() if phase == "forward")
    assert 0 < ops_forward <= parts["forward"]
    assert (SSCConv2d.forward, BatchNormReLUSSCConv2d.forward) == original_forwards
    assert use["cores"] > 0
    # every SSC layer's forward is one outermost kernel call; the calls that kernel functions
    # make to others (here the SSC kernels' masks) are not counted again
    assert sum(k["calls"] for label, k in kernels.items()
               if label.startswith("ssc.ssc_forward ")) == ssc_layers
    assert any(label.startswith("dense.conv2d_forward ") for label in kernels)
    assert not any(label.startswith("ssc.shift_masks") for label in kernels)
    assert 0 < sum(k["seconds"] for k in kernels.values()) <= sum(op_seconds.values())
    assert (ssc.ssc_forward, dense.conv2d_forward, ssc.shift_masks) == original_kernels


@pytest.mark.parametrize("name, options", [("sscresnet20", {"r": 4}), ("sscresnet20", {"r": 1}),
                                           ("shiftresnet20", {"e": 3}), ("resnet20", {})])
def test_the_ops_products_are_the_models_multiply_adds(name, options):
    """A training step's products, op by op, are 3 x 2 FLOPs per multiply-add of the model's
    layers as `minissc summary` counts them module by module (forward, and a backward of
    twice the forward's), so the profile's GFLOP/s column rests on the same count."""
    batch = 2
    _, _, calls, _, work, _ = profile_step.profile(name, options, batch=batch, steps=1)
    model = profile_step.run.build_minissc(name, options)
    macs = sum(row.macs for row in summarize(model))
    assert sum(3 * n * work[label]["flops"] for label, n in calls.items()) == 6 * batch * macs
    assert any(work[label]["flops"] for label in calls
               if label.startswith("BatchNormReLUSSCPair ")) == (name == "sscresnet20")


@pytest.mark.parametrize("name, options", [("sscresnet20", {"r": 1}), ("sscresnet20", {"r": 4}),
                                           ("shiftresnet20", {"e": 3}), ("resnet20", {})])
def test_the_wide_tensor_traffic_is_ten_passes_of_every_ssc1_output(name, options):
    """The floor that the profile prints rests on this count: per training step, 7 reads and
    3 writes of a tensor of the size of each SSC module's SSC1 output (at the module's input
    positions, also where SSC2 has stride 2), as `minissc summary` gives its shape; no
    traffic counted for the other ops."""
    batch = 2
    _, _, calls, _, work, _ = profile_step.profile(name, options, batch=batch, steps=1)
    model = profile_step.run.build_minissc(name, options)
    wide_values = sum(math.prod(row.output_shape[1:]) for row in summarize(model)
                      if row.type == "SSCConv2d" and row.name.endswith(".ssc1"))
    assert (wide_values > 0) == (name == "sscresnet20")
    wide_bytes = 4 * batch * wide_values  # float32
    assert sum(n * work[label]["read"] for label, n in calls.items()) == 7 * wide_bytes
    assert sum(n * work[label]["written"] for label, n in calls.items()) == 3 * wide_bytes


def test_the_printed_profile_and_its_json_give_each_ops_rate(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert profile_step.main(["--model", "sscresnet20", "--r", "4", "--batch", "2",
                              "--steps", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GFLOP a step" in printed and "GB written a step" in printed
    header = next(line for line in printed.splitlines() if line.startswith("op and input"))
    assert "floor" in printed and header.split()[-2:] == ["GFLOP/s", "GB/s"]
    saved = json.loads(out.read_text())
    assert saved["gflop"] == pytest.approx(sum(row["gflop"] for row in saved["rows"]))
    assert saved["gflop"] > 0 and saved["matmul_gflop_per_s"] > 0
    pair = next(row for row in saved["rows"] if row["kind"] == "BatchNormReLUSSCPair")
    assert pair["gflop"] > 0 and pair["read_gb"] > 0 and pair["written_gb"] > 0
    assert saved["read_gb"] == pytest.approx(sum(row["read_gb"] for row in saved["rows"]))
    assert saved["read_gb_per_s"] > 0 and saved["write_gb_per_s"] > 0
    assert saved["module_conv_gflop"] > 0 and min(saved["module_conv_gflop_per_s"]) > 0
    assert saved["floor_at_shapes_ms"] > saved["floor_ms"]["memory"]
    assert "kernel functions the ops called" in printed
    assert any(row["kernel"].startswith("ssc.ssc_backward ") for row in saved["kernels"])
    assert all(row["cores"] > 0 for row in saved["kernels"])  # CPU seconds per second
    assert saved["floor_ms"]["memory"] == pytest.approx(
        1000 * (saved["read_gb"] / saved["read_gb_per_s"]
                + saved["written_gb"] / saved["write_gb_per_s"]))
    assert all(row["gflop"] == 0 for row in saved["rows"] if row["kind"] == "BatchNorm2d")
