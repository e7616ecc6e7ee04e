"""Observers and calibration: scales against their definitions, layers
against scaled rounding written out with lowbit.quantize."""

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.emulate import (
    Observer, QuantConv, QuantEmbedding, QuantLinear, QuantSpec, calibrate, quantize_model, summary_table,
)


def rounder(fmt):
    return lambda t: lowbit.quantize(t, fmt)


def test_absmax_scales_per_tensor_channel_and_group():
    w = torch.randn(6, 8)
    int4 = lowbit.get_format("int4")
    assert torch.equal(Observer().scale(w, int4, rounder(int4)), w.abs().max() / 7)
    channel = Observer(granularity="channel").scale(w, int4, rounder(int4))
    assert channel.shape == (6, 1) and torch.equal(channel[:, 0], w.abs().amax(dim=1) / 7)
    group = Observer(granularity="group", group_size=4).scale(w, int4, rounder(int4))
    assert group.shape == (6, 8)
    assert torch.equal(group[:, :4], (w[:, :4].abs().amax(dim=1, keepdim=True) / 7).expand(6, 4))
    zero = torch.zeros(2, 4)
    assert torch.equal(Observer(granularity="channel").scale(zero, int4, rounder(int4)), torch.ones(2, 1))


def test_percentile_scale_clips_the_top():
    x = torch.arange(1.0, 10001.0)
    scale = Observer("percentile", percentile=99.0).scale(x, lowbit.get_format("int8"), rounder("int8"))
    assert scale == 9900.0 / 127


def test_mse_scale_is_the_best_candidate():
    torch.manual_seed(0)
    x = torch.randn(4096)
    x[0] = 40.0  # one outlier: clipping it pays
    int4 = lowbit.get_format("int4")
    observer = Observer("mse", candidates=25)
    chosen = observer.scale(x, int4, rounder(int4))

    def error(scale):
        return (lowbit.quantize(x / scale, int4) * scale - x).square().sum()

    candidates = [x.abs().max() / 7 * r for r in torch.linspace(0.3, 1.0, 25)]
    assert error(chosen) == min(error(c) for c in candidates)
    assert chosen < x.abs().max() / 7


def test_a_layer_with_observed_scales():
    torch.manual_seed(1)
    layer = torch.nn.Linear(64, 16)
    spec = QuantSpec(input="int8", weight="int4", observers={"input": Observer(),
                                                             "weight": Observer(granularity="channel")})
    quantized = QuantLinear(layer, spec)
    batches = [torch.randn(8, 64), 3 * torch.randn(8, 64)]
    with pytest.raises(RuntimeError, match="calibrate"):
        quantized(batches[0])
    calibrate(torch.nn.Sequential(quantized), batches)
    s_in = torch.cat(batches).abs().max() / 127
    s_w = layer.weight.detach().abs().amax(dim=1, keepdim=True) / 7
    x = torch.randn(5, 64)
    expected = F.linear(lowbit.quantize(x / s_in, "int8") * s_in,
                        lowbit.quantize(layer.weight.detach() / s_w, "int4") * s_w, layer.bias)
    with torch.no_grad():
        assert torch.equal(quantized(x), expected)
    xg = x.clone().requires_grad_()
    out = quantized(xg)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert xg.grad is not None and layer.weight.grad is not None
    with torch.no_grad():  # a new weight gets a new scale
        layer.weight.mul_(2)
        assert torch.equal(quantized(x), F.linear(lowbit.quantize(x / s_in, "int8") * s_in,
                                                  lowbit.quantize(layer.weight / (2 * s_w), "int4") * (2 * s_w),
                                                  layer.bias))


def test_calibrating_a_model():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    x = torch.randn(256, 32)
    reference = model(x)
    spec = QuantSpec(input="fp8_e4m3", weight="int8",
                     observers={"input": Observer("mse"), "weight": Observer("absmax", "group", group_size=32)})
    quantize_model(model, spec)
    calibrate(model, x.split(64), forward=lambda m, batch: m(batch))
    error = (model(x) - reference).square().mean() / reference.square().mean()
    # each E4M3 rounding errs by at most 2**-4 relative (mean square <= 2**-8), the weights' int8 less
    assert error < 2 * 2.0 ** -8
    assert "int8 [absmax/group]" in summary_table(model)


def test_calibration_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        Observer("max")
    with pytest.raises(ValueError, match="granularity must be one of"):
        Observer(granularity="row")
    with pytest.raises(ValueError, match="percentile must lie in"):
        Observer("percentile", percentile=0)
    with pytest.raises(ValueError, match="observers apply to the input and weight roles"):
        QuantSpec(output="int8", observers={"output": Observer()})
    with pytest.raises(ValueError, match="sets the scale of an element format"):
        QuantSpec(weight="mxfp4", observers={"weight": Observer()})
    with pytest.raises(TypeError, match="must be an Observer"):
        QuantSpec(weight="int4", observers={"weight": "absmax"})
    per_channel_input = QuantSpec(input="int8", observers={"input": Observer("absmax", "channel")})
    layer = QuantLinear(torch.nn.Linear(8, 8), per_channel_input)
    with pytest.raises(ValueError, match="activation scales are per tensor"):
        calibrate(torch.nn.Sequential(layer), [torch.randn(2, 8)])
    with pytest.raises(ValueError, match="no quantized layer"):
        calibrate(torch.nn.Linear(2, 2), [torch.randn(1, 2)])
    good = torch.nn.Sequential(QuantLinear(torch.nn.Linear(8, 8),
                                           QuantSpec(input="int8", observers={"input": Observer()})))
    with pytest.raises(ValueError, match="batches is empty"):
        calibrate(good, [])
    with pytest.raises(ValueError, match="groups of 128"):
        grouped = QuantSpec(weight="int4", observers={"weight": Observer(granularity="group")})
        QuantLinear(torch.nn.Linear(100, 4), grouped)(torch.randn(1, 100))
    with pytest.raises(ValueError, match="per-tensor scale"):
        per_channel = QuantSpec(weight="int8", observers={"weight": Observer(granularity="channel")})
        QuantConv(torch.nn.ConvTranspose1d(4, 4, 3), per_channel)
    with pytest.raises(ValueError, match="takes no input observer"):
        observed_input = QuantSpec(input="int8", weight="int8", observers={"input": Observer()})
        QuantEmbedding(torch.nn.Embedding(4, 4), observed_input)
