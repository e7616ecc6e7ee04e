"""The methods' models under torch.compile: a rotated, GPTQ'd and
quantized Llama traces in one graph (fullgraph) and gives eager's logits
bit for bit with inductor; outlier layers, which choose their outliers
from the data, run eagerly inside a compiled model (dynamo breaks the graph
around them, with lowbit's reason), giving eager's logits to inductor's
float32 reordering of torch's own reductions elsewhere in the model."""

import copy
import warnings

import pytest
import torch

from lowbit.emulate import QuantSpec, quantize_model
from lowbit.emulate.methods import gptq, outliers, rotate

from helpers import small_llama

SPEC = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")


@pytest.fixture(scope="module")
def data():
    calibration = [torch.randint(0, 100, (4, 32), generator=torch.Generator().manual_seed(s)) for s in range(4)]
    return calibration, torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(9))


def logits(model):
    return lambda tokens: model(tokens).logits


def test_a_rotated_gptq_model_compiles_in_one_graph_to_eager_results(data):
    calibration, tokens = data
    model = small_llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tied or unreached layers they leave are said elsewhere
        model = quantize_model(gptq(rotate(model, SPEC, calibration), SPEC, calibration), SPEC)
    with torch.no_grad():
        assert torch.equal(torch.compile(logits(model), fullgraph=True)(tokens), logits(model)(tokens))


@pytest.mark.parametrize("kind, options", [("activation", {}), ("weight", {"weight_fraction": 0.01})])
def test_outlier_layers_run_eagerly_inside_a_compiled_model(data, kind, options):
    calibration, tokens = data
    model = outliers(small_llama(), SPEC, calibration, kind=kind, rules={"lm_head": None}, **options)
    with torch.no_grad():
        eager = logits(model)(tokens)
        compiled = torch.compile(logits(model))(tokens)
        explanation = torch._dynamo.explain(logits(model))(tokens)
    assert torch.allclose(compiled, eager, rtol=0, atol=1e-6 * eager.abs().max().item())
    reasons = [str(b.reason) for b in explanation.break_reasons]
    assert reasons and all("OutlierSplit.forward" in r for r in reasons)
