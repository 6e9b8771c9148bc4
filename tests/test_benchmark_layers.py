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
