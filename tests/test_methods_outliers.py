"""Dense-and-sparse outliers (lowbit.emulate.methods.outliers) against the
papers' definitions written here: LLM.int8's outlier feature columns
(|x| >= 6 in some row: those columns of x and W in fp16, the rest in the
spec's formats) and SpQR/SqueezeLLM's weight outliers (the largest |w|, or
|w| >= t, in fp16; the dense part rounded with them zeroed), each product
formed here in float64 from roundings made with lowbit.quantize along the
reduction axis (fp16 by numpy)."""

import math
import warnings

import numpy as np
import pytest
import torch

import lowbit
from lowbit.formats import ElementFormat
from lowbit.emulate import (Observer, QuantLinear, QuantSpec, calibrate, quantize_model, restore_model,
                            summary)
from lowbit.emulate.methods import OutlierLinear, changes, gptq, outliers
from lowbit.emulate.methods.costs import weight_bits
from lowbit.emulate.methods.outlier_split import Split

transformers = pytest.importorskip("transformers")

LLM_INT8 = QuantSpec(input="int8_rowwise", weight="int8_rowwise")
MX = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")


# -- the definitions ----------------------------------------------------------------------------------

def fp16(t):
    """t rounded to fp16 (numpy's correctly rounded cast), as float64."""
    return torch.from_numpy(t.detach().double().numpy().astype(np.float16).astype(np.float64))


def rounded(t, fmt, axis):
    """t rounded to fmt along ``axis`` (None: unrounded), float64."""
    t, fmt = t.detach().double(), fmt and lowbit.get_format(fmt)
    if fmt is None:
        return t
    return lowbit.quantize(t, fmt) if isinstance(fmt, ElementFormat) else lowbit.quantize(t, fmt, axis=axis)


def llm_int8(x, weight, bias, spec, threshold):
    """y = Q_in(x_D) Q_w(W_D)^T + fp16(x_C) fp16(W_C)^T + b with C the columns where some |x| >= threshold."""
    x, weight = x.double().reshape(-1, x.shape[-1]), weight.detach().double()
    columns = (x.abs() >= threshold).any(dim=0)
    x_dense, w_dense = x.clone(), weight.clone()
    x_dense[:, columns], w_dense[:, columns] = 0, 0
    y = rounded(x_dense, spec.input, -1) @ rounded(w_dense, spec.weight, 1).T
    y = y + fp16(x[:, columns]) @ fp16(weight[:, columns]).T
    return y + bias.detach().double(), columns


def weight_outliers(weight, fraction=None, threshold=None):
    """The outlier mask: the floor(fraction * n) largest |w| (ties to the lower row-major position), or |w| >= t."""
    magnitude = weight.detach().double().abs()
    if threshold is not None:
        return magnitude >= threshold
    order = np.argsort(-magnitude.numpy().reshape(-1), kind="stable")[:math.floor(fraction * magnitude.numel())]
    mask = np.zeros(magnitude.numel(), dtype=bool)
    mask[order] = True
    return torch.from_numpy(mask.reshape(magnitude.shape))


def spqr(x, weight, bias, spec, mask):
    """y = Q_in(x) Q_w(W_D)^T + fp16(x) fp16(W_M)^T + b, W_D = W with the outliers zeroed."""
    x, weight = x.double().reshape(-1, x.shape[-1]), weight.detach().double()
    dense, sparse = weight.clone(), torch.zeros_like(weight)
    dense[mask], sparse[mask] = 0, weight[mask]
    y = rounded(x, spec.input, -1) @ rounded(dense, spec.weight, 1).T + fp16(x) @ fp16(sparse).T
    return y + bias.detach().double()


def wide_layer(seed, inputs=96, outputs=40):
    torch.manual_seed(seed)
    return torch.nn.Linear(inputs, outputs).double()


def outlier_rows(seed, rows=24, features=96):
    """Rows with a few outlier feature columns: one at exactly 6.0 (an outlier: >=), one just below."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=generator, dtype=torch.float64)
    x[:, 7] *= 30
    x[3, features - 10] = -40.0
    x[:, 11] = x[:, 11].clamp(-1, 1)
    x[5, 11] = 6.0
    x[:, 12] = x[:, 12].clamp(-1, 1)
    x[2, 12] = np.nextafter(6.0, 0)
    return x


# -- LLM.int8: activation outlier columns ---------------------------------------------------------------

def test_activation_outliers_are_llm_int8():
    layer, x = wide_layer(0), outlier_rows(1)
    model = outliers(layer, LLM_INT8, [x], inplace=False)
    assert isinstance(model, OutlierLinear)
    with torch.no_grad():
        y = model(x)
    expected, columns = llm_int8(x, layer.weight, layer.bias, LLM_INT8, 6.0)
    assert columns.nonzero().reshape(-1).tolist() == [7, 11, 86]  # 6.0 is an outlier, 6.0 - ulp is not
    assert torch.allclose(y, expected, rtol=1e-12, atol=1e-12)
    rtn = QuantLinear(layer, LLM_INT8)(x).detach()
    reference = x @ layer.weight.detach().T + layer.bias.detach()
    assert (y - reference).norm() < 0.5 * (rtn - reference).norm()  # the outliers no longer stretch the rows


@pytest.mark.parametrize("threshold", [2.5, 100.0])
def test_activation_threshold_and_formats_of_each_part(threshold):
    layer, x = wide_layer(2, 64, 24), outlier_rows(3, 10, 64).reshape(2, 5, 64)
    spec = QuantSpec(input="mxfp8_e4m3", weight="mxfp4", output="bf16")
    model = outliers(layer, spec, [x], threshold=threshold, inplace=False)
    with torch.no_grad():
        y = model(x)
    expected, columns = llm_int8(x, layer.weight, layer.bias, spec, threshold)
    expected = rounded(expected, "bf16", -1).reshape(2, 5, 24)
    assert torch.equal(y, expected) or torch.allclose(y, expected, rtol=2 ** -8, atol=0)
    if not columns.any():  # nothing at the threshold: exactly the quantized Linear
        assert torch.equal(y, QuantLinear(layer, spec)(x).detach())


def test_the_columns_are_chosen_per_call():
    layer = wide_layer(4, 32, 8)
    model = outliers(layer, LLM_INT8, [outlier_rows(5, 8, 32)], inplace=False)
    for seed in (6, 7):
        x = torch.randn(6, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        x[0, seed] = 9.0
        with torch.no_grad():
            y = model(x)
        expected, columns = llm_int8(x, layer.weight, layer.bias, LLM_INT8, 6.0)
        assert columns.nonzero().reshape(-1).tolist() == [seed]
        assert torch.allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_input_observer_sees_the_dense_columns_only():
    layer, x = wide_layer(8, 48, 16), outlier_rows(9, 16, 48)
    observers = {"input": Observer(), "weight": Observer("absmax", "channel")}
    spec = QuantSpec(input="int8", weight="int8", observers=observers)
    model = outliers(layer, spec, [x], inplace=False)
    with pytest.raises(RuntimeError, match="calibrate"):
        model(x)
    calibrate(model, [x])
    with torch.no_grad():
        y = model(x)
    columns = (x.abs() >= 6).any(dim=0)
    x_dense, w_dense = x.clone(), layer.weight.detach().clone()
    x_dense[:, columns], w_dense[:, columns] = 0, 0
    s_x = (x_dense.abs().max().float() / 127).double()  # absmax scales (observers form them in float32)
    s_w = (w_dense.abs().amax(dim=1, keepdim=True).float() / 127).double()  # from the dense parts
    dense = (lowbit.quantize(x_dense / s_x, "int8") * s_x) @ (lowbit.quantize(w_dense / s_w, "int8") * s_w).T
    expected = dense + fp16(x[:, columns]) @ fp16(layer.weight[:, columns]).T + layer.bias.detach()
    assert torch.allclose(y, expected, rtol=1e-12, atol=1e-12)


# -- SpQR / SqueezeLLM: weight outliers --------------------------------------------------------------------

@pytest.mark.parametrize("fraction, threshold", [(0.01, None), (0.05, None), (None, 0.09), (0.0, None)])
def test_weight_outliers_are_spqr(fraction, threshold):
    layer, x = wide_layer(10), outlier_rows(11).float().double()
    model = outliers(layer, MX, [x], kind="weight", weight_fraction=fraction, threshold=threshold, inplace=False)
    with torch.no_grad():
        y = model(x)
    mask = weight_outliers(layer.weight, fraction, threshold)
    assert torch.equal(model.outlier_weights(), mask)
    expected_count = math.floor(fraction * 96 * 40) if fraction is not None else int(mask.sum())
    assert int(mask.sum()) == expected_count and (threshold is None or 0 < expected_count < 96 * 40)
    assert torch.allclose(y, spqr(x, layer.weight, layer.bias, MX, mask), rtol=1e-12, atol=1e-12)


def test_weight_outlier_ties_go_to_the_lower_position_and_follow_the_weight():
    layer = torch.nn.Linear(8, 4, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, -1.0] * 16).reshape(4, 8))
        layer.weight[2, 5] = 3.0
    x = torch.randn(3, 8, dtype=torch.float64)
    model = outliers(layer, QuantSpec(weight="int4"), [x], kind="weight", weight_fraction=0.1)
    mask = model.outlier_weights()
    assert mask.nonzero().tolist() == [[0, 0], [0, 1], [2, 5]]  # 3 = floor(0.1 * 32): 3.0, then the first ties
    assert torch.equal(mask, weight_outliers(layer.weight, 0.1))
    with torch.no_grad():
        layer.weight[3, 7] = -5.0  # the split follows the weight
        y = model(x)
    mask = weight_outliers(layer.weight, 0.1)
    assert mask[3, 7] and torch.equal(model.outlier_weights(), mask)
    assert torch.allclose(y, spqr(x, layer.weight, torch.zeros(4), QuantSpec(weight="int4"), mask), rtol=1e-12)


def spqr_sensitivity(weight, batches, spec, damp=0.01):
    """SpQR's s_ij = (w_ij - Q_w(W)_ij)^2 / [H^-1]_jj with H = 2 X^T X / rows damped as GPTQ damps it
    (a dead input's H_jj set to 1, then damp * mean(diag H) added), inverted by numpy in float64."""
    x = np.concatenate([b.detach().double().reshape(-1, b.shape[-1]).numpy() for b in batches])
    h = 2 * x.T @ x / len(x)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    inverse_diagonal = torch.from_numpy(np.diag(np.linalg.inv(h)).copy())
    error = weight.detach().double() - rounded(weight, spec.weight, 1)
    return error.square() / inverse_diagonal


def top(score, fraction):
    """The floor(fraction * n) largest scores (ties to the lower row-major position)."""
    order = np.argsort(-score.numpy().reshape(-1), kind="stable")[:math.floor(fraction * score.numel())]
    mask = np.zeros(score.numel(), dtype=bool)
    mask[order] = True
    return torch.from_numpy(mask.reshape(score.shape))


@pytest.mark.parametrize("spec", [MX, QuantSpec(weight="int4_g128_asym"), QuantSpec(weight="nvfp4")],
                         ids=["mxfp4", "int4_g128_asym", "nvfp4"])
@pytest.mark.parametrize("fraction, threshold", [(0.02, None), (None, 1e-4), (0.0, None)])
def test_sensitivity_outliers_are_spqr(spec, fraction, threshold):
    layer = wide_layer(30, inputs=128, outputs=24)
    batches = [outlier_rows(s, 40, 128) for s in (31, 32)]
    batches[0][:, 3] = 0  # a dead input: H_33 = 0 in one batch, not the other
    model = outliers(layer, spec, batches, kind="sensitivity", weight_fraction=fraction, threshold=threshold,
                     inplace=False)
    score = spqr_sensitivity(layer.weight, batches, spec)
    assert torch.allclose(model.sensitivity(), score, rtol=1e-9, atol=0)
    mask = top(score, fraction) if fraction is not None else score >= threshold
    assert torch.equal(model.outlier_weights(), mask)
    assert fraction == 0 or 0 < int(mask.sum()) < mask.numel()
    x = batches[1]
    with torch.no_grad():
        y = model(x)
    assert torch.allclose(y, spqr(x, layer.weight, layer.bias, spec, mask), rtol=1e-12, atol=1e-12)
    (change,) = changes(model)
    assert "sensitivity" in model.extra_repr() and change.format == f"{spec.weight.name} + fp16"


def test_sensitivity_picks_the_weights_of_loud_inputs_where_magnitude_does_not():
    """Inputs of very different scales: the weights that cost most output error are those of the loud
    input features, whatever their magnitude; keeping them apart lowers the error more than keeping
    the largest |w| at the same count."""
    layer = wide_layer(33, inputs=64, outputs=16)
    generator = torch.Generator().manual_seed(34)
    loudness = torch.ones(64, dtype=torch.float64)
    loudness[[2, 9, 30]] = 40.0
    batches = [torch.randn(64, 64, generator=generator, dtype=torch.float64) * loudness for _ in range(2)]
    spec = QuantSpec(weight="int4_g128")
    by_sensitivity = outliers(layer, spec, batches, kind="sensitivity", weight_fraction=0.05, inplace=False)
    by_magnitude = outliers(layer, spec, batches, kind="weight", weight_fraction=0.05, inplace=False)
    loud = torch.zeros(64, dtype=torch.bool)
    loud[[2, 9, 30]] = True
    assert by_sensitivity.outlier_weights()[:, loud].sum() > 3 * by_magnitude.outlier_weights()[:, loud].sum()
    assert changes(by_sensitivity)[0].error_after < changes(by_magnitude)[0].error_after


def test_sensitivity_is_said_to_need_an_unrounded_weight_and_survives_requantizing():
    torch.manual_seed(35)
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 8))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(64, 32) for _ in range(2)]
    gptq(model, MX, batches, rules={"2": None})
    with pytest.warns(UserWarning, match=r"outliers left these layers as they are: 0 \(its weight holds gptq's "
                                         r"rounding, which leaves no rounding error"):
        outliers(model, MX, batches, kind="sensitivity", weight_fraction=0.01)
    assert type(model[0]) is not OutlierLinear and type(model[2]) is OutlierLinear
    mask = model[2].outlier_weights()
    quantize_model(model, MX)  # the split and its calibration-derived ranking stay
    assert type(model[2]) is OutlierLinear and torch.equal(model[2].outlier_weights(), mask)
    restore_model(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="given with, and only with, sensitivity outliers"):
        OutlierLinear(torch.nn.Linear(4, 4), MX, Split("sensitivity", fraction=0.1))
    with pytest.raises(ValueError, match="damp must be a finite number >= 0"):
        outliers(torch.nn.Linear(4, 4), MX, batches, kind="sensitivity", weight_fraction=0.1, damp=-1)
    with pytest.raises(ValueError, match="exactly one of threshold and weight_fraction"):
        outliers(torch.nn.Linear(4, 4), MX, batches, kind="sensitivity")


def test_bits_per_weight_count_the_sparse_values_and_indices():
    layer, x = wide_layer(12), outlier_rows(13)
    model = outliers(layer, MX, [x], kind="weight", weight_fraction=0.02, inplace=False)
    count = math.floor(0.02 * 96 * 40)
    sparse = (count * (16 + 32) + (40 + 1) * 32) / (96 * 40)  # CSR: fp16 values, 32-bit columns, 32-bit row offsets
    assert model.sparse_bits() == pytest.approx(sparse, rel=1e-15)
    assert weight_bits(layer, MX) == 4.25
    (change,) = changes(model)
    assert f"{count} outlier weights" in change.detail
    assert f"4.25 + {sparse:.4g} = {4.25 + sparse:.4g} bits/weight" in change.detail

    model = outliers(layer, LLM_INT8, [x], sparse_format="bf16", inplace=False)
    columns = int((x.abs() >= 6).any(dim=0).sum())
    sparse = columns * (40 * 16 + 32) / (96 * 40)  # whole columns of W in bf16, a 32-bit index each
    dense = 8 + 32 / 96  # int8 with one fp32 scale per row
    (change,) = changes(model)
    assert f"{columns} of 96 input columns" in change.detail
    assert f"{dense:.4g} + {sparse:.4g} = {dense + sparse:.4g} bits/weight" in change.detail
    assert change.format == "int8_rowwise + bf16" and change.error_after < change.error_before


def test_unrounded_sparse_part_and_straight_through_gradients():
    torch.manual_seed(14)
    layer = torch.nn.Linear(64, 16)
    x = torch.randn(5, 64) * 3
    plain = torch.nn.Linear(64, 16)
    plain.load_state_dict(layer.state_dict())
    plain(x).square().sum().backward()
    for kind, options in (("weight", {"weight_fraction": 0.1}), ("activation", {"threshold": 4.0})):
        model = outliers(layer, QuantSpec(weight="mxfp4"), [x], kind=kind, sparse_format=None, inplace=False,
                         **options)
        y = model(x)  # the training path: gradients straight through each rounding
        model.weight.grad = None
        (y.square().sum()).backward()
        g = 2 * y.detach()
        assert torch.allclose(model.weight.grad, g.T @ x, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            assert torch.equal(model(x), y.detach())  # the inference path computes the same


# -- models, undo, composition -----------------------------------------------------------------------------

def test_restore_gives_back_the_model_bit_for_bit():
    torch.manual_seed(15)
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 8))
    first, state = model[0], {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(10, 32) * 4
    with torch.no_grad():
        before = model(x)
    quantize_model(model, MX)
    outliers(model, MX, [x], kind="weight", weight_fraction=0.02)
    outliers(model, LLM_INT8, [x], rules={"2": None})  # again: the first layer re-split
    assert [type(m).__name__ for m in model] == ["OutlierLinear", "GELU", "OutlierLinear"]
    assert model[0].split.kind == "activation" and model[2].split.kind == "weight"
    assert [row["weight"] for row in summary(model)] == ["int8_rowwise", "mxfp4"]
    assert set(model.state_dict()) == set(state)
    restored = restore_model(model)
    assert restored is model and model[0] is first and changes(model) == []
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_inplace_false_leaves_the_model():
    layer = wide_layer(16, 16, 4)
    copy = outliers(layer, MX, [torch.randn(3, 16, dtype=torch.float64)], inplace=False)
    assert type(layer) is torch.nn.Linear and copy.original is not layer and changes(layer) == []


def test_quantizing_again_keeps_the_split_and_summary_names_it():
    torch.manual_seed(17)
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 8))
    x = torch.randn(10, 32) * 4
    outliers(model, LLM_INT8, [x])
    quantize_model(model, MX, {"2": None})  # a new spec: the first layer keeps its split under it
    assert type(model[0]) is OutlierLinear and model[0].spec == MX and model[0].split.kind == "activation"
    assert type(model[2]) is torch.nn.Linear
    assert summary(model)[0]["type"] == "Linear (OutlierLinear)"


def test_a_copy_of_a_changed_model_says_it_carries_no_log():
    layer = wide_layer(18, 16, 4)
    x = torch.randn(3, 16, dtype=torch.float64)
    split = outliers(layer, MX, [x])
    with pytest.warns(UserWarning, match="undoes only the changes made to the copy"):
        outliers(split, LLM_INT8, [x], inplace=False)


def test_after_a_method_that_rounded_the_weight_the_dense_part_keeps_its_values():
    """Composed after GPTQ: a weight a method left on the format's grid (marked Prerounded) is used as it is
    (outliers zeroed), not rounded again; the activation split still moves the outlier columns to fp16."""
    from lowbit.emulate.changes import keep_parameter
    from lowbit.emulate.prerounded import Prerounded, fingerprint, mark

    layer, x = wide_layer(17, 64, 16), outlier_rows(18, 12, 64)
    original = layer.weight.detach().clone()
    keep_parameter(layer, layer, "weight")  # as GPTQ does: keep the original, write values on the grid
    with torch.no_grad():
        layer.weight.copy_(lowbit.quantize(original * 1.01, "nvfp4", axis=1))  # not nvfp4's own rounding of W
    spec = QuantSpec(weight="nvfp4")
    mark(layer, Prerounded("nvfp4", "gptq", fingerprint(layer.weight)), spec)
    model = outliers(layer, spec, [x])
    with torch.no_grad():
        y = model(x)
    columns = (x.abs() >= 6).any(dim=0)
    w_dense = layer.weight.detach().clone()
    w_dense[:, columns] = 0
    expected = x @ w_dense.T + fp16(x[:, columns]) @ fp16(layer.weight[:, columns]).T + layer.bias.detach()
    assert torch.allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert changes(model)[0].format == "nvfp4 (gptq) + fp16"
    assert torch.equal(restore_model(model).weight, original)


def test_composed_after_gptq():
    """gptq, then outliers: the dense part is GPTQ's weight as GPTQ left it (outlier columns zeroed, not
    rounded again), the input and the outlier columns as LLM.int8 takes them; restore undoes both."""
    torch.manual_seed(22)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [outlier_rows(s, 32, 64).float() for s in (23, 24)]
    spec = QuantSpec(input="mxfp8_e4m3", weight="nvfp4")
    gptq(model, spec, batches)
    with torch.no_grad():
        after_gptq = model(batches[1])
    gptq_weight = model[0].weight.detach().clone()
    outliers(model, spec, batches, threshold=1e9)  # no outlier column: exactly the GPTQ model
    with torch.no_grad():
        assert torch.equal(model(batches[1]), after_gptq)
    outliers(model, spec, batches)
    x = batches[1]
    with torch.no_grad():
        y = model[0](x)
    columns = (x.abs() >= 6).any(dim=0)
    x_dense, w_dense = x.double().clone(), gptq_weight.double().clone()
    x_dense[:, columns], w_dense[:, columns] = 0, 0
    expected = (rounded(x_dense, "mxfp8_e4m3", -1) @ w_dense.T + fp16(x[:, columns]) @ fp16(gptq_weight[:, columns]).T
                + model[0].bias.detach().double())
    assert columns.any() and torch.allclose(y.double(), expected, rtol=1e-5, atol=1e-5)
    assert [c.method for c in changes(model)] == ["gptq", "gptq", "outliers", "outliers", "outliers", "outliers"]
    restore_model(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def llama(seed):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # LLM.int8's emergent outlier features: a few hidden dimensions 50x the rest
        model.model.embed_tokens.weight[:, [5, 40]] *= 50
    return model


def test_llama_end_to_end():
    model = llama(19)
    tokens = [torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    with torch.no_grad():
        reference = model(tokens[1]).logits
        rtn = quantize_model(model, LLM_INT8, inplace=False)(tokens[1]).logits
    outliers(model, LLM_INT8, tokens[:1], forward=lambda m, batch: m(batch))
    layers = [m for m in model.modules() if isinstance(m, OutlierLinear)]
    assert len(layers) == 2 * 7 + 1 and len(changes(model)) == 15
    with torch.no_grad():
        split = model(tokens[1]).logits
    assert torch.isfinite(split).all()
    assert (split - reference).norm() < 0.5 * (rtn - reference).norm()
    by_layer = {c.layer: c for c in changes(model)}
    q_proj = by_layer["model.layers.0.self_attn.q_proj"]
    assert q_proj.error_after < q_proj.error_before and q_proj.detail.startswith("2 of 64 input columns")
    restore_model(model)
    with torch.no_grad():
        assert torch.equal(model(tokens[1]).logits, reference)
    outliers(model, MX, tokens[:1], kind="weight", weight_fraction=0.01, rules={"lm_head": None})
    with torch.no_grad():
        assert torch.isfinite(model(tokens[1]).logits).all()
    assert len(changes(model)) == 14
    restore_model(model)
    with torch.no_grad():
        assert torch.equal(model(tokens[1]).logits, reference)


# -- what it refuses, and says ------------------------------------------------------------------------

def test_clear_errors():
    layer, x = wide_layer(20, 16, 4), [torch.randn(2, 16, dtype=torch.float64)]
    with pytest.raises(ValueError, match="kind must be one of activation, weight"):
        outliers(layer, MX, x, kind="columns")
    with pytest.raises(ValueError, match="weight_fraction applies to kind='weight'"):
        outliers(layer, MX, x, weight_fraction=0.1)
    with pytest.raises(ValueError, match="exactly one of threshold and weight_fraction"):
        outliers(layer, MX, x, kind="weight")
    with pytest.raises(ValueError, match="exactly one"):
        outliers(layer, MX, x, kind="weight", threshold=1.0, weight_fraction=0.1)
    with pytest.raises(ValueError, match="threshold must be a positive finite number"):
        outliers(layer, MX, x, threshold=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        outliers(layer, MX, x, threshold=math.nan)
    with pytest.raises(TypeError, match="threshold must be a number"):
        outliers(layer, MX, x, threshold=True)
    with pytest.raises(ValueError, match=r"weight_fraction must be a number in \[0, 1\]"):
        outliers(layer, MX, x, kind="weight", weight_fraction=1.5)
    with pytest.raises(ValueError, match="sparse_format must be an element format"):
        outliers(layer, MX, x, sparse_format="mxfp8_e4m3")
    with pytest.raises(ValueError, match="samples"):
        outliers(layer, MX, x, samples=0)
    with pytest.raises(TypeError, match="spec must be a QuantSpec"):
        outliers(layer, "mxfp4", x)
    with pytest.raises(ValueError, match="empty"):
        outliers(layer, MX, [])
    with pytest.raises(ValueError, match="no linear layer"):
        outliers(layer, QuantSpec(input="fp8_e4m3"), x)
    assert type(layer) is torch.nn.Linear and changes(layer) == []


def test_layers_it_cannot_split_and_gradient_formats_are_said():
    conv = transformers.pytorch_utils.Conv1D(8, 16)  # GPT-2's Linear: a per-channel observer cannot apply
    model = torch.nn.Sequential(conv, torch.nn.Linear(8, 4))
    spec = QuantSpec(weight="int4", observers={"weight": Observer("absmax", "channel")})
    with pytest.warns(UserWarning, match=r"outliers left these layers as they are: 0 \(a Conv1D weight"):
        outliers(model, spec, [torch.randn(3, 16)])
    assert model[0] is conv and isinstance(model[1], OutlierLinear)
    restore_model(model)
    with pytest.warns(UserWarning, match="gradient formats of the spec do not apply in 0, 1"):
        outliers(model, QuantSpec(weight="mxfp4", grad_output="mxfp8_e5m2"), [torch.randn(3, 16)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outliers(restore_model(model), MX, [torch.randn(3, 16)])
    assert type(model[0]).__name__ == "OutlierConv1D"


def test_gpt2_conv1d_is_split_as_the_linear_it_is():
    conv = transformers.pytorch_utils.Conv1D(40, 96).double()  # weight (in, out)
    torch.nn.init.normal_(conv.bias)
    x = outlier_rows(21)
    for kind, options in (("activation", {}), ("weight", {"weight_fraction": 0.02})):
        model = outliers(conv, MX, [x], kind=kind, inplace=False, **options)
        assert type(model).__name__ == "OutlierConv1D"
        with torch.no_grad():
            y = model(x)
        if kind == "activation":
            expected, _ = llm_int8(x, conv.weight.T, conv.bias, MX, 6.0)
        else:
            expected = spqr(x, conv.weight.T, conv.bias, MX, weight_outliers(conv.weight.T, 0.02))
        assert torch.allclose(y, expected, rtol=1e-12, atol=1e-12)
