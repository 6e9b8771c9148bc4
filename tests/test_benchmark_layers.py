"""benchmarks/run.py's layer list: the eval-mode pass that finds the layers to time sees every
SSC layer call, including those that apply the batch norm in front of them (``input_norm``)."""
import sys
from pathlib import Path

from minissc import models, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run as benchmark  # noqa: E402


def test_distinct_layers_record_every_ssc_layer_of_the_models():
    layers = benchmark.distinct_layers(batch=2)
    for model_name, options in benchmark.LAYER_MODELS:
        model = models.create(model_name, **options)
        expected = sum(isinstance(m, nn.SSCConv2d) for _, m in model.named_modules())
        prefix = benchmark.model_label(model_name, options) + ": "
        recorded = sum(use.startswith(prefix) for layer in layers if layer["kind"] == "ssc"
                       for use in layer["uses"])
        assert recorded == expected
    assert all(layer["input_shape"][0] == 2 for layer in layers)


def test_layers_section_without_torch_has_minissc_and_twin_timings_only(monkeypatch):
    """--no-torch: no torch worker runs, so the layers carry minissc's and the NumPy twin's
    timings and no ratios (the workers and the checks are stubbed: this is the merge)."""
    specs = benchmark.distinct_layers(batch=2)[:3]
    timing = {"forward_s": [0.001], "backward_s": [0.002], "first_call_s": 0.01}
    monkeypatch.setattr(benchmark, "check_layers", lambda specs, torch, config: [{}] * len(specs))
    monkeypatch.setattr(benchmark, "alternate_workers", lambda name, frameworks, *rest: {
        framework: [[{framework: timing, "reference": timing}] * len(specs)]
        for framework in frameworks})
    results = benchmark.bench_layers(specs, None, benchmark.MODES["quick"], threads=2)
    assert [sorted(set(layer) & {"minissc", "reference", "torch", "torch_kept"})
            for layer in results] == [["minissc", "reference"]] * 3
    assert not any("speedup_vs_torch" in layer for layer in results)
