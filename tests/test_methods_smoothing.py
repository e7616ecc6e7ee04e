"""SmoothQuant (lowbit.emulate.methods.smoothquant) against the paper's
equation computed here in float64 from activations this test gathers
itself; the unquantized model's outputs unchanged (Sequential, Llama,
GPT-2 with Conv1D); lower W8A8 error on outlier channels; exact undo."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM

from lowbit.emulate import Observer, QuantSpec, calibrate, quantize_model, restore_model
from lowbit.emulate.methods import changes, smoothquant

W8A8 = QuantSpec(input="int8_rowwise", weight="int8_rowwise")
W8A8_TENSOR = QuantSpec(input="int8_tensor", weight="int8_rowwise")
W8A8_STATIC = QuantSpec(input="int8", weight="int8", observers={"input": Observer(), "weight": Observer("absmax", "channel")})


def paper_scales(absmax, weights, alpha):
    """s_j = max(max|X_j|^a / max(max_i |W_ij|, 1e-5)^(1-a), 1e-5) over the group's weights (out, in), float64."""
    wmax = torch.stack([w.double().abs().max(dim=0).values for w in weights]).max(dim=0).values
    return torch.clamp(absmax.double() ** alpha / torch.clamp(wmax, min=1e-5) ** (1 - alpha), min=1e-5)


def outlier_batches(n=3, seed=0, features=64):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        x = torch.randn(4, 8, features, generator=generator)
        x[..., :3] *= 30  # a few outlier channels, as LLM activations have
        batches.append(x)
    return batches


def sequential():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    with torch.no_grad():
        model[0].weight.copy_(torch.rand(64) * 2 + 0.1)
        model[0].weight[:4] *= 25
        model[0].bias.copy_(torch.randn(64) * 0.1)
    return model


def relative(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.85, 1.0])
def test_scales_are_the_papers_and_fold_into_the_layernorm(alpha):
    model = sequential()
    original = copy.deepcopy(model)
    batches = outlier_batches()
    smoothquant(model, W8A8, batches, alpha=alpha)
    # the activations, computed here in float64
    x = torch.cat([b.reshape(-1, 64) for b in batches]).double()
    norm, first, second = original[0], original[1], original[3]
    h1 = F.layer_norm(x, (64,), norm.weight.double(), norm.bias.double(), norm.eps)
    h3 = torch.relu(h1 @ first.weight.double().T + first.bias.double())
    s1 = paper_scales(h1.abs().max(0).values, [first.weight], alpha)
    s3 = paper_scales(h3.abs().max(0).values, [second.weight], alpha)
    assert torch.allclose(model[1].weight.double(), first.weight.double() * s1, rtol=2e-6, atol=0)
    assert torch.allclose(model[0].weight.double(), norm.weight.double() / s1, rtol=2e-6, atol=0)
    assert torch.allclose(model[0].bias.double(), norm.bias.double() / s1, rtol=2e-6, atol=0)
    assert torch.allclose(model[3].weight.double(), second.weight.double() * s3, rtol=2e-6, atol=0)
    assert len(model[3]._forward_pre_hooks) == 1 and not model[1]._forward_pre_hooks  # a ReLU feeds layer 3
    test = outlier_batches(1, seed=5)[0]
    assert relative(model(test), original(test)) < 1e-6
    rows = {c.layer: c for c in changes(model)}
    assert "folded into 0 (LayerNorm)" in rows["1"].detail
    assert "forward pre-hook: its input is not the output of a norm or linear layer" in rows["3"].detail


def test_group_scales_take_the_column_maxima_over_q_k_and_v():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # salient channels in the norm, as trained LLMs have
        for layer in model.model.layers:
            layer.input_layernorm.weight.mul_(torch.rand(64) * 2).data[:2] *= 20
    batches = [torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    attention = model.model.layers[1].self_attn
    kept = {n: getattr(attention, n).weight.detach().clone() for n in ("q_proj", "k_proj", "v_proj")}
    seen = []
    handle = model.model.layers[1].input_layernorm.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        reference = [model(b).logits for b in batches]
    handle.remove()
    absmax = torch.cat([h.reshape(-1, 64) for h in seen]).double().abs().max(0).values
    smoothquant(model, W8A8, batches, alpha=0.6)
    s = paper_scales(absmax, list(kept.values()), 0.6)
    for name, weight in kept.items():
        assert torch.allclose(getattr(attention, name).weight.double(), weight.double() * s, rtol=2e-6, atol=0)
    with torch.no_grad():
        assert max(relative(model(b).logits, r) for b, r in zip(batches, reference)) < 1e-5
    folded = [c for c in changes(model) if "folded into" in c.detail]
    assert len(folded) == 2 * 5  # q/k/v and gate/up of both layers


def test_gpt2_conv1d_outputs_unchanged_and_restored_bit_for_bit():
    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = GPT2Model(config).eval()
    batches = [torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = dict(model.named_parameters())
    ln_1 = model.h[0].ln_1.weight.detach().clone()
    c_attn = model.h[0].attn.c_attn.weight.detach().clone()  # Conv1D: (in, out)
    with torch.no_grad():
        reference = model(batches[0]).last_hidden_state
    smoothquant(model, W8A8, batches)
    with torch.no_grad():
        assert relative(model(batches[0]).last_hidden_state, reference) < 1e-5
    s = model.h[0].attn.c_attn.weight.double() / c_attn.double()  # one s per input feature: the rows
    assert torch.allclose(s, s[:, :1].expand_as(s), rtol=1e-6)
    assert torch.allclose(model.h[0].ln_1.weight.double(), ln_1.double() / s[:, 0], rtol=2e-6)
    model = restore_model(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p is parameters[n] for n, p in model.named_parameters())
    assert not any(m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(batches[0]).last_hidden_state, reference)


def quantized_error(model, spec, batches, test):
    quantized = quantize_model(model, spec, inplace=False)
    if spec.observer("input") is not None:
        calibrate(quantized, batches)
    with torch.no_grad():
        return relative(quantized(test), model(test))


@pytest.mark.parametrize("spec", [W8A8, W8A8_TENSOR, W8A8_STATIC], ids=["per_token", "per_tensor", "static"])
def test_smoothing_lowers_the_w8a8_error_on_outlier_channels(spec):
    model = sequential()[:2]  # the norm with outlier channels, and the layer it feeds
    batches, test = outlier_batches(4), outlier_batches(1, seed=9)[0]
    plain = quantized_error(model, spec, batches, test)
    smoothed = smoothquant(model, spec, batches, inplace=False)
    assert not changes(model) and smoothed is not model
    after = quantized_error(smoothed, spec, batches, test)
    assert after < 0.6 * plain, (plain, after)
    (row,) = changes(smoothed)
    assert row.error_after < row.error_before  # the log says so too, on the calibration rows


def test_the_logged_errors_are_the_quantized_layers():
    model = sequential()[:2]
    batches = outlier_batches(2)
    original = copy.deepcopy(model)
    smoothquant(model, W8A8_STATIC, batches, samples=40)
    (row,) = changes(model)
    x = original[0](torch.cat(batches).reshape(-1, 64)[:40]).detach()  # the first 40 input rows of layer 1
    bare = torch.nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        bare.weight.copy_(original[1].weight)
    layer = quantize_model(bare, W8A8_STATIC)
    calibrate(layer, [x])
    with torch.no_grad():
        assert row.error_before == pytest.approx(relative(layer(x), x @ original[1].weight.T), rel=1e-6)
    assert row.format == "int8" and row.detail.endswith("errors with inputs int8")


def test_explicit_scales_run_in_the_quantized_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    batches = [torch.randn(8, 16) * torch.linspace(0.1, 20, 16)]
    smoothquant(model, W8A8, batches)
    (hook,) = model[2]._forward_pre_hooks.values()  # a GELU feeds layer 2: its input is scaled explicitly
    quantized = quantize_model(model, W8A8)
    with torch.no_grad():
        h = model[1](model[0](batches[0]))
        (scaled,) = hook(model[2], (h,))
        assert not torch.equal(scaled, h)
        bare = quantize_model(copy.deepcopy(model[2]), W8A8)
        bare._forward_pre_hooks.clear()  # the copy's shared table: emptied, the swapped layer keeps its own
        assert len(quantized[2]._forward_pre_hooks) == 1
        assert torch.equal(quantized[2](h), bare(scaled))  # the hook ran, once, before the input was rounded


def test_bad_arguments_are_refused():
    model = sequential()
    batches = outlier_batches(1)
    for alpha in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="alpha"):
            smoothquant(model, W8A8, batches, alpha=alpha)
    with pytest.raises(TypeError, match="spec"):
        smoothquant(model, "int8", batches)
    with pytest.raises(ValueError, match="empty"):
        smoothquant(model, W8A8, [])
    with pytest.raises(ValueError, match="samples"):
        smoothquant(model, W8A8, batches, samples=0)
    bad = [batches[0].clone()]
    bad[0][0, 0, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        smoothquant(model, W8A8, bad)
    assert torch.equal(model[1].weight, sequential()[1].weight)  # nothing changed by refused calls
