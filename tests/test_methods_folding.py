"""Per-input-channel scales folded into the op that produces a group's
input (lowbit.emulate.methods.folding): groups and producers found by
object identity, folds into norms and linear layers, the check that sends
a fold that would change the model to an explicit pre-hook, and hooks
that survive quantize_model."""


import pytest
import torch
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.pytorch_utils import Conv1D

from helpers import small_gpt2, small_llama
from lowbit.emulate import Observer, QuantSpec, calibrate, quantize_model, restore_model
from lowbit.emulate.methods import changes
from lowbit.emulate.methods.folding import Folder, Scale, unquantized
from lowbit.emulate.methods.layers import linear_layers, weight_matrix

SPEC = QuantSpec(input="int8_rowwise", weight="int8_rowwise")


def llama():
    return small_llama()


def gpt2():
    return small_gpt2()


def tokens(n=2):
    torch.manual_seed(1)
    return [torch.randint(0, 100, (2, 12)) for _ in range(n)]


def linears(model):
    return {name: layer for name, (layer, _) in linear_layers(model, SPEC).items()}


def test_weight_matrix_is_out_by_in_for_linear_and_conv1d():
    linear, conv = torch.nn.Linear(8, 4), Conv1D(4, 8)  # Conv1D(nf=out, nx=in) stores (in, out)
    assert weight_matrix(linear) is linear.weight
    assert weight_matrix(conv).shape == (4, 8) and torch.equal(weight_matrix(conv), conv.weight.T)
    assert weight_matrix(quantize_model(torch.nn.Linear(8, 4), SPEC)).shape == (4, 8)


def test_llama_groups_share_their_norm():
    model = llama()
    groups = Folder(model, linears(model), tokens()[0]).groups
    found = {tuple(n.split(".")[-1] for n in g.names): (g.producer, g.why_explicit) for g in groups[:4]}
    assert found[("q_proj", "k_proj", "v_proj")] == ("model.layers.0.input_layernorm", "")
    assert found[("gate_proj", "up_proj")] == ("model.layers.0.post_attention_layernorm", "")
    assert found[("o_proj",)][0] is None and "not the output" in found[("o_proj",)][1]
    assert found[("down_proj",)][0] is None
    assert [g.names for g in groups][-1] == ["lm_head"] and len(groups) == 9  # 4 per layer, in the order they run


def test_gpt2_conv1d_groups_fold_into_layernorms():
    model = gpt2()
    groups = {g.names[0]: g.producer for g in Folder(model, linears(model), tokens()[0]).groups}
    assert groups == {"h.0.attn.c_attn": "h.0.ln_1", "h.0.attn.c_proj": None, "h.0.mlp.c_fc": "h.0.ln_2",
                      "h.0.mlp.c_proj": None, "h.1.attn.c_attn": "h.1.ln_1", "h.1.attn.c_proj": None,
                      "h.1.mlp.c_fc": "h.1.ln_2", "h.1.mlp.c_proj": None}


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_a_scale_folds_into_a_preceding_linear(kind):
    torch.manual_seed(0)
    make = (lambda i, o: torch.nn.Linear(i, o)) if kind == "linear" else (lambda i, o: Conv1D(o, i))
    model = torch.nn.Sequential(make(16, 32), make(32, 8))
    x = torch.randn(5, 16)
    y = model(x)
    w0, b0, w1 = weight_matrix(model[0]).detach().clone(), model[0].bias.detach().clone(), weight_matrix(model[1]).detach().clone()
    folder = Folder(model, linears(model), x)
    first, second = folder.groups
    assert first.producer is None and second.producer == "0"
    s = torch.rand(32, dtype=torch.float64) * 4 + 0.25
    assert folder.apply(second, Scale(s, torch.float32)) == f"1/s folded into 0 ({type(model[0]).__name__})"
    s32 = s.float()
    assert torch.equal(weight_matrix(model[1]), w1 * s32)
    assert torch.equal(weight_matrix(model[0]), w0 / s32[:, None]) and torch.equal(model[0].bias, b0 / s32)
    assert not model[1]._forward_pre_hooks
    assert torch.allclose(model(x), y, rtol=1e-5, atol=1e-6)
    restore_model(model)
    assert torch.equal(weight_matrix(model[0]), w0) and torch.equal(weight_matrix(model[1]), w1)


class Residual(torch.nn.Module):
    """A norm whose output feeds a layer and the residual sum (post-norm style)."""

    def __init__(self, norm):
        super().__init__()
        self.norm, self.fc = norm, torch.nn.Linear(16, 16)

    def forward(self, x):
        h = self.norm(x)
        return h + self.fc(h)


@pytest.mark.parametrize("norm", [torch.nn.LayerNorm(16), GemmaRMSNorm(16)], ids=["residual", "gemma_1_plus_w"])
def test_a_fold_that_changes_the_model_is_undone_and_the_input_scaled_explicitly(norm):
    torch.manual_seed(0)
    if isinstance(norm, GemmaRMSNorm):  # computes x (1 + w): dividing w by s is no fold
        model = torch.nn.Sequential(norm, torch.nn.Linear(16, 16))
    else:
        model = Residual(norm)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16) + 0.5)
    x = torch.randn(4, 16)
    y = model(x)
    norm_weight = norm.weight.detach().clone()
    folder = Folder(model, linears(model), x)
    (group,) = folder.groups
    assert group.producer is not None and not group.why_explicit  # a norm produces the input: a fold is tried
    how = folder.apply(group, Scale(torch.linspace(0.5, 4, 16), torch.float32))
    assert how.startswith("input divided by s in a forward pre-hook: folding into") and "feeds more" in how
    assert torch.equal(norm.weight, norm_weight)  # the failed fold is put back on the spot
    assert torch.allclose(model(x), y, rtol=1e-5, atol=1e-6)
    restore_model(model)
    assert not group.layers[0]._forward_pre_hooks and torch.equal(model(x), y)


def test_hooks_on_a_layer_run_once_in_its_quantized_module_and_while_calibrating():
    layer = torch.nn.Linear(8, 4)
    calls = []
    layer.register_forward_pre_hook(lambda m, args: calls.append("pre") or (args[0] * 2,))
    layer.register_forward_hook(lambda m, args, out: calls.append("post"))
    spec = QuantSpec(input="int8", weight="int8", observers={"input": Observer()})
    quantized = quantize_model(layer, spec)
    x = torch.randn(3, 8)
    calibrate(quantized, [x])
    assert calls == ["pre", "post"]
    assert float(quantized._input_scale) == pytest.approx(float((2 * x).abs().max()) / 127, rel=1e-6)
    calls.clear()
    quantized(x)
    handle = quantized.register_forward_pre_hook(lambda m, args: calls.append("late"))
    assert restore_model(quantized) is layer
    layer(x)
    assert calls == ["pre", "post", "pre", "late", "post"]
    handle.remove()


def test_folds_are_checked_on_the_unquantized_model_in_eval_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 8), torch.nn.Dropout(0.5)).train()
    model = quantize_model(model, SPEC)
    swapped = model[1]
    with unquantized(model) as plain:
        assert plain[1] is swapped.original and not plain.training and not plain[2].training
    assert model[1] is swapped and model.training and model[2].training
    x = torch.randn(4, 16)
    folder = Folder(model, linears(model), x)
    (group,) = folder.groups
    assert group.producer == "0"  # and the dropout in training mode does not fail the check:
    assert folder.apply(group, Scale(torch.linspace(0.5, 2, 16), torch.float32)).startswith("1/s folded into 0")
    assert model[1] is swapped and model.training


def test_tied_weights_are_left_alone_and_said():
    from lowbit.emulate.methods import smoothquant

    model = llama()
    model.lm_head.weight = model.model.embed_tokens.weight
    with pytest.warns(UserWarning, match="lm_head alone"):
        smoothquant(model, SPEC, tokens())
    rows = {c.layer: c for c in changes(model)}
    assert rows["lm_head"].detail.startswith("left alone") and rows["lm_head"].error_after is None
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_smoothquant_rotation_and_awq_compose_and_undo_bit_for_bit():
    from lowbit.emulate.methods import awq, rotate, smoothquant

    model = llama()
    batches = tokens(3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        reference = model(batches[2]).logits
    smoothquant(model, SPEC, batches[:2])
    rotate(model, SPEC, batches[:2])
    awq(model, QuantSpec(weight="mxfp4"), batches[:2])  # sees the rotated inputs: every group is explicit now
    with torch.no_grad():
        assert float((model(batches[2]).logits - reference).norm() / reference.norm()) < 1e-5
    awq_rows = [c for c in changes(model) if c.method == "awq"]
    assert all("folded into" not in c.detail for c in awq_rows)
    assert len(changes(model)) == 3 * 15
    quantized = quantize_model(model, QuantSpec(input="mxfp8_e4m3", weight="mxfp4"))
    with torch.no_grad():
        assert float((quantized(batches[2]).logits - reference).norm() / reference.norm()) < 0.3
    model = restore_model(quantized)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(batches[2]).logits, reference)


def test_a_forward_that_returns_nothing_gives_explicit_scales():
    from lowbit.emulate.methods import smoothquant

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 8))
    x = torch.randn(4, 16)
    y = model(x)

    def forward(m, batch):  # runs the model, returns nothing to compare
        m(batch)

    smoothquant(model, SPEC, [x], forward=forward)
    (row,) = changes(model)
    assert row.detail.split("; ")[1] == ("input divided by s in a forward pre-hook: the calibration forward returns "
                                         "no floating tensor to check a fold against")
    assert torch.allclose(model(x), y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_fold_into_a_norm_that_feeds_a_residual_is_refused_where_the_outputs_hide_it(dtype):
    # post-norm layers: norm1's output feeds linear1 and the residual around the MLP; a fold into it
    # changes the layer's output, which the final norm partly hides (in bfloat16 within sqrt(eps))
    from lowbit.emulate.methods import awq

    torch.manual_seed(0)
    encoder = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0),
                                          2, enable_nested_tensor=False).eval()
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[:3] *= 20  # outlier channels: large scales
    encoder = encoder.to(dtype)
    batches = [torch.randn(2, 32, 64, dtype=dtype) for _ in range(4)]
    with pytest.warns(UserWarning):  # the attention projections stay
        changed = awq(encoder, QuantSpec(input="mxfp8_e4m3", weight="mxfp4"), batches, inplace=False)
    assert not [c.layer for c in changes(changed) if "folded into layers.0.norm1" in c.detail
                or "folded into layers.1.norm1" in c.detail]
    x = batches[0].double()
    with torch.no_grad():  # the same computation in float64: a valid fold differs by the rounding of s only
        moved = float((changed.double()(x) - encoder.double()(x)).norm() / encoder.double()(x).norm())
    assert moved < torch.finfo(dtype).eps  # a fold into norm1 moved them by 0.049 in bfloat16
