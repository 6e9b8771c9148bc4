"""benchmarks/profile_step.py: its timers see every op call of a step and leave the ops as
they were (the profile of issue 4's closing note rests on both)."""
import sys
from pathlib import Path

from minissc import nn
from minissc.functional import BatchNormReLUSSCConv2d, SSCConv2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import profile_step  # noqa: E402


def test_profile_counts_every_op_call_and_removes_its_timers():
    original_forwards = SSCConv2d.forward, BatchNormReLUSSCConv2d.forward
    op_seconds, parts, calls, use = profile_step.profile("sscresnet20", {"r": 4}, batch=2,
                                                         steps=2)
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
