"""What every method of lowbit.emulate.methods builds on: the log of
changes that restore_model undoes bit for bit, the calibration inputs of
the linear layers, the layers chosen by rules, and the output error."""

import pytest
import torch

from lowbit.emulate import QuantSpec, quantize_model, restore_model
from lowbit.emulate.changes import Change, keep_parameter, on_undo, record
from lowbit.emulate.methods import changes, changes_table
from lowbit.emulate.methods.inputs import layer_inputs
from lowbit.emulate.methods.layers import linear_layers, output_error, rounded_matrix

SPEC = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))


def test_restore_model_undoes_method_changes_bit_for_bit():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, norm = model[0].weight, model[1]
    keep_parameter(model, model[0], "weight")
    keep_parameter(model, model[0], "weight")  # the second call keeps the first values
    with torch.no_grad():
        model[0].weight.mul_(3)
    model[0].weight = torch.nn.Parameter(torch.zeros(32, 64))  # a method may replace the object too
    keep_parameter(model, model[1], "weight")
    model[1].weight.data = torch.randn(32)
    undone = []
    on_undo(model, lambda: undone.append(True))
    record(model, Change("0", "test", "mxfp4", 0.5, 0.25))
    assert "0      test" in changes_table(model) and len(changes(model)) == 1
    quantized = quantize_model(model, SPEC)  # quantize_model keeps the methods' changes
    assert torch.equal(quantized[0].weight, torch.zeros(32, 64))
    assert restore_model(quantized) is model and undone == [True]
    assert model[0].weight is first and model[1] is norm
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert changes(model) == [] and changes_table(model) == "no changes by lowbit.emulate.methods"


def test_layer_inputs_are_the_statistics_of_every_row():
    model = net()
    batches = [torch.randn(3, 5, 64), torch.randn(2, 64)]
    layers = {name: layer for name, layer in linear_layers(model, SPEC).items()}
    stats = layer_inputs(model, {name: layer for name, (layer, _) in layers.items()}, batches, gram=True, samples=7)
    x = torch.cat([b.reshape(-1, 64) for b in batches]).double()
    first = stats["0"]
    assert first.rows == 17 and torch.equal(first.absmax, x.abs().amax(0))
    assert torch.allclose(first.absmean(), x.abs().mean(0), rtol=1e-12)
    assert torch.allclose(first.hessian(), 2 * x.T @ x / 17, rtol=1e-12)
    assert torch.equal(first.samples, x[:7].float())
    second = torch.nn.functional.layer_norm(model[0](x.float()), (32,), model[1].weight, model[1].bias)
    assert torch.allclose(stats["2"].absmax, second.double().abs().amax(0))
    with pytest.raises(ValueError, match="empty"):
        layer_inputs(model, {"0": model[0]}, [])


def test_layers_follow_rules_and_errors_are_relative():
    model = net()
    assert list(linear_layers(model, SPEC)) == ["0", "2"]
    assert list(linear_layers(model, SPEC, {"2": None})) == ["0"]
    assert list(linear_layers(model, None, {"2": SPEC})) == ["2"]
    with pytest.raises(ValueError, match="no linear layer"):
        linear_layers(model, QuantSpec(input="mxfp8_e4m3"))
    with pytest.raises(TypeError, match="spec"):
        linear_layers(model, "mxfp4")
    with pytest.warns(UserWarning, match="matches no module"):
        linear_layers(model, SPEC, {"lm_head": None})
    w = model[0].weight
    rounded = rounded_matrix(model[0], SPEC)
    assert torch.equal(rounded, quantize_model(torch.nn.Linear(64, 32), SPEC).round_weight(w.detach()))
    x = torch.randn(10, 64)
    expected = ((x.double() @ (w - rounded).double().T).norm() / (x.double() @ w.double().T).norm()).item()
    assert output_error(x, w, rounded) == pytest.approx(expected, rel=1e-12)
    assert output_error(x, w, w) == 0


def test_conv1d_class_does_not_take_a_linear():
    from lowbit.emulate import QuantConv1D

    assert not QuantConv1D.accepts(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="QuantConv1D wraps"):
        QuantConv1D(torch.nn.Linear(4, 4), SPEC)


def test_changes_logged_on_a_part_are_undone_from_the_whole_in_reverse_order():
    model = net()
    first = model[0].weight.detach().clone()
    keep_parameter(model[0], model[0], "weight")  # a method applied to the part
    with torch.no_grad():
        model[0].weight.add_(1)
    keep_parameter(model, model[0], "weight")  # then one applied to the whole
    with torch.no_grad():
        model[0].weight.mul_(2)
    record(model[0], Change("", "part", "mxfp4"))
    record(model, Change("0", "whole", "mxfp4"))
    assert [c.method for c in changes(model)] == ["part", "whole"]
    with pytest.warns(UserWarning, match="undoes only the changes made to the copy"):
        quantize_model(model, SPEC, inplace=False)
    restore_model(model)
    assert torch.equal(model[0].weight, first) and changes(model) == [] and changes(model[0]) == []


def test_calibration_inputs_reach_layers_called_with_keywords_and_mappings():
    class Keyworded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 4)

        def forward(self, features):
            return self.fc(input=features)

    model = Keyworded()
    batches = [{"features": torch.randn(3, 16)}, {"features": torch.randn(2, 16)}]  # run as model(**batch)
    stats = layer_inputs(model, {"fc": model.fc}, batches)
    assert stats["fc"].rows == 5
    assert torch.equal(stats["fc"].absmax, torch.cat([b["features"] for b in batches]).double().abs().amax(0))


def test_a_method_that_would_undo_an_earlier_ones_work_says_so():
    from lowbit.emulate.methods import awq, gptq, outliers, rotate, smoothquant

    torch.manual_seed(1)
    batches = [torch.randn(8, 64) for _ in range(2)]
    model = gptq(net(), SPEC, batches)
    for method in (smoothquant, awq, rotate):  # they change weights in full precision: GPTQ's rounding would go
        with pytest.raises(ValueError, match="holds gptq's rounding"):
            method(model, SPEC, batches)
    model = outliers(model, SPEC, batches)  # the documented order
    with pytest.raises(ValueError, match="OutlierLinear, which gptq would replace"):
        gptq(model, SPEC, batches)
