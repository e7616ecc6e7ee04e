"""Emulation never silently misses: every product spelling is rounded or
reported, roles mean what users expect, and quantize_model / restore_model
hold up on models built here and on random-init transformers models.

References are written from the definitions (operands rounded with
``lowbit.quantize`` along the reduction axis, then multiplied), never by
calling the code under test."""

import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.emulate import (
    QuantConv1D, QuantLinear, QuantMultiheadAttention, QuantRNN, QuantSpec, emulating, full_precision,
    quantize_model, restore_model, summary, summary_table,
)

SPEC = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")


def q(t, fmt, axis=-1):
    """t (detached) rounded to fmt, blocked along axis."""
    fmt = lowbit.get_format(fmt)
    t = t.detach()
    return lowbit.quantize(t, fmt) if isinstance(fmt, lowbit.formats.ElementFormat) else lowbit.quantize(t, fmt, axis=axis)


def act_product(a, b):
    """a @ b for two activations: both in the input format."""
    return q(a, SPEC.input) @ q(b, SPEC.input, -2)


# -- quantize_model: the reproducers --------------------------------------------------------------

def test_a_bare_layer_is_quantized_and_returned():
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(64, 8), torch.randn(3, 64)
    quantized = quantize_model(layer, SPEC)
    assert isinstance(quantized, QuantLinear) and "" not in dict(quantized.named_children())
    assert torch.equal(quantized(x), q(x, SPEC.input) @ q(layer.weight, SPEC.weight).T + layer.bias)
    assert summary(quantized)[0]["layer"] == "(model)"
    assert restore_model(quantized) is layer


def test_transformer_encoder_fast_path_is_turned_off_and_said():
    torch.manual_seed(1)
    encoder = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2,
                                          enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        plain = encoder(x)
        with pytest.warns(UserWarning, match="fast path"):
            quantized = quantize_model(encoder, SPEC, inplace=False)
        fast = quantized(x)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            slow = quantized(x)  # the same model with torch's fast path off everywhere
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    assert not torch.equal(fast, plain)
    assert torch.equal(fast, slow)
    assert torch.backends.mha.get_fastpath_enabled()  # the hooks put the flag back
    assert isinstance(quantized.layers[0].self_attn, QuantMultiheadAttention)
    with torch.no_grad():
        assert torch.equal(restore_model(quantized)(x), plain)


def test_multihead_attention_module_rounds_its_products():
    torch.manual_seed(2)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(2, 6, 32)
    quantized = quantize_model(torch.nn.Sequential(mha), SPEC, inplace=False)[0]
    assert isinstance(quantized, QuantMultiheadAttention)
    out, _ = quantized(x, x, x, need_weights=False)
    with emulating(SPEC):
        expected, _ = mha(x, x, x, need_weights=False)  # emulating computes the same products
    assert torch.equal(out, expected)
    w_q, w_k, w_v = mha.in_proj_weight.detach().chunk(3)
    b_q = mha.in_proj_bias.detach().chunk(3)[0]
    assert torch.equal(mha.in_proj_weight, quantized.in_proj_weight)
    q_proj = q(x, SPEC.input) @ q(w_q, SPEC.weight).T + b_q
    assert not torch.equal(q_proj, x @ w_q.T + b_q)  # a sanity check of the reference's rounding


def test_quantizing_again_applies_the_new_spec():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    x = torch.randn(4, 64)
    quantize_model(net, SPEC)
    quantize_model(net, QuantSpec(weight="mxfp8_e4m3"), rules={"2": None})
    assert isinstance(net[0], QuantLinear) and net[0].spec.weight.name == "mxfp8_e4m3"
    assert type(net[2]) is torch.nn.Linear
    assert [row["reason"] for row in full_precision(net)] == ["excluded by a rule"]
    assert torch.equal(net[0](x), x @ q(net[0].weight, "mxfp8_e4m3").T + net[0].bias)


def test_restore_after_assign_load_and_meta_init_brings_back_current_parameters():
    torch.manual_seed(4)
    fresh = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 4))
    x = torch.randn(2, 32)
    quantized = quantize_model(torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 4)), SPEC)
    quantized.load_state_dict(fresh.state_dict(), assign=True)
    assert torch.equal(restore_model(quantized)(x), fresh(x))

    with torch.device("meta"):
        on_meta = quantize_model(torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 4)), SPEC)
    on_meta.to_empty(device="cpu")
    on_meta.load_state_dict(fresh.state_dict())
    assert torch.equal(on_meta[1](on_meta[0](x)), quantize_model(fresh, SPEC, inplace=False)(x))
    restored = restore_model(on_meta)
    assert restored[0].weight.device.type == "cpu" and torch.equal(restored(x), fresh(x))


def test_a_whole_quantized_module_saves_and_loads():
    torch.manual_seed(5)
    net = quantize_model(torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)), SPEC)
    x = torch.randn(3, 32)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # a whole module is a pickle: weights_only=False
    assert torch.equal(loaded(x), net(x))
    assert list(loaded.state_dict()) == list(net.state_dict())


def test_full_precision_lists_what_quantize_model_cannot_see():
    class RawProduct(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(32, 32))

        def forward(self, x):
            return x @ self.w

    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LayerNorm(32), RawProduct(),
                              torch.nn.RNN(32, 32, batch_first=True))
    with pytest.warns(UserWarning, match=r"may enter products: 2 \(RawProduct: lowbit cannot see"):
        quantize_model(net, SPEC)
    assert isinstance(net[3], QuantRNN)  # recurrent layers run step by step, their products rounded
    reasons = {row["layer"]: row["reason"] for row in full_precision(net)}
    assert reasons["1"] == "elementwise (no product)"
    assert "cannot see" in reasons["2"] and "RawProduct" in reasons["2"]
    assert "full precision:" in summary_table(net)


def test_layers_lowbit_cannot_quantize_stay_listed_and_rule_typos_are_said():
    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LSTM(32, 64, proj_size=16),
                              torch.nn.Embedding(10, 32, max_norm=1.0),
                              torch.nn.MultiheadAttention(32, 4, add_bias_kv=True))
    with pytest.warns(UserWarning) as caught:
        quantize_model(net, SPEC, rules={"lm_haed": None})
    messages = " ".join(str(w.message) for w in caught)
    assert "rule 'lm_haed' matches no module name" in messages
    assert "1 (LSTM: lowbit cannot quantize it" in messages and "proj_size" in messages
    assert isinstance(net[0], QuantLinear) and type(net[1]) is torch.nn.LSTM
    reasons = {row["layer"]: row["reason"] for row in full_precision(net)}
    assert "max_norm" in reasons["2"] and "add_bias_kv" in reasons["3"]
    assert full_precision(torch.nn.Sequential(torch.nn.Linear(4, 4)))[0]["reason"] == \
        "not quantized (quantize_model has not seen it)"


def test_autocast_training_runs_backward_in_the_autocast_dtype():
    torch.manual_seed(6)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    x = torch.randn(4, 16, 64)
    quantized = quantize_model(net, QuantSpec(input="mxfp8_e4m3", weight="mxfp4", grad_output="mxfp8_e5m2"),
                               inplace=False)
    for model, run in ((quantized, lambda: quantized(x)), (net, lambda: _under_emulating(net, x))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = run()
        assert y.dtype == torch.bfloat16
        y.float().square().mean().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def _under_emulating(net, x):
    with emulating(SPEC):
        return net(x)


# -- emulating: every spelling, roles, report -----------------------------------------------------

def test_every_spelling_of_a_product_is_rounded():
    torch.manual_seed(7)
    a, b = torch.randn(4, 64), torch.randn(64, 8)
    v, batch_a, batch_b = torch.randn(64), torch.randn(3, 4, 64), torch.randn(3, 64, 8)
    expected = act_product(a, b)
    out = torch.empty(4, 8)
    base = torch.ones(4, 8)
    with emulating(SPEC) as report:
        spellings = {
            "mm": torch.mm(a, b), "Tensor.mm": a.mm(b), "linalg.matmul": torch.linalg.matmul(a, b),
            "tensordot": torch.tensordot(a, b, dims=1), "einsum": torch.einsum("mk,kn->mn", a, b),
            "multi_dot": torch.linalg.multi_dot([a, b]), "out=": torch.matmul(a, b, out=out),
        }
        in_place = base.clone().addmm_(a, b)
        mv = torch.mv(a, v)
        dot = torch.dot(v, v)
        addbmm = torch.addbmm(torch.zeros(4, 8), batch_a, batch_b)
    for name, result in spellings.items():
        assert torch.equal(result, expected), name
    assert spellings["out="] is out
    assert torch.equal(in_place, base + expected)
    assert torch.equal(mv, (q(a, SPEC.input) @ q(v[:, None], SPEC.input, 0))[:, 0])
    assert torch.equal(dot, (q(v[None], SPEC.input) @ q(v[:, None], SPEC.input, 0))[0, 0])
    flat_a, flat_b = batch_a.transpose(0, 1).flatten(1), batch_b.flatten(0, 1)  # the batch joins K
    assert torch.equal(addbmm, act_product(flat_a, flat_b))
    assert report.rounded["torch.mm"] == 1 and report.rounded["Tensor.addmm_"] == 1
    assert not report.full_precision


@pytest.mark.parametrize("equation, shapes", [
    ("bhqd,bhkd->bhqk", [(2, 3, 5, 32), (2, 3, 7, 32)]),
    ("ij,jk", [(4, 6), (6, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 4, 6), (3, 6, 5)]),
    ("bij,bjk,bkl->bil", [(2, 4, 6), (2, 6, 3), (2, 3, 5)]),
    ("abc,cd->ad", [(2, 3, 4), (4, 5)]),  # b is summed out before the product
    ("i,j->ij", [(4,), (5,)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
])
def test_einsum_contractions_equal_torch_with_nothing_rounded(equation, shapes):
    torch.manual_seed(8)
    operands = [torch.randn(shape) for shape in shapes]
    with emulating(QuantSpec()) as report:
        result = torch.einsum(equation, *operands)
    assert torch.allclose(result, torch.einsum(equation, *operands), atol=1e-5)
    assert report.rounded["torch.einsum"] == 1


def test_einsum_and_tensordot_block_along_the_contracted_dimensions():
    torch.manual_seed(9)
    queries, keys = torch.randn(2, 3, 5, 64), torch.randn(2, 3, 7, 64)
    a, b = torch.randn(4, 2, 32), torch.randn(2, 32, 6)
    with emulating(SPEC):
        scores = torch.einsum("bhqd,bhkd->bhqk", queries, keys)
        dotted = torch.tensordot(a, b, dims=([1, 2], [0, 1]))
        diagonal = torch.einsum("ii->i", torch.randn(4, 4))  # not a product
    # equal to the rounded operands' product up to float32 summation order (BLAS takes other paths for
    # other shapes), and far from the unrounded one
    for result, rounded, plain in ((scores, q(queries, SPEC.input) @ q(keys, SPEC.input).mT, queries @ keys.mT),
                                   (dotted, act_product(a.reshape(4, 64), b.reshape(64, 6)),
                                    a.reshape(4, 64) @ b.reshape(64, 6))):
        assert torch.allclose(result, rounded, rtol=0, atol=1e-5)
        assert (result - plain).abs().max() > 1e-2
    assert diagonal.shape == (4,)


def test_roles_parameters_take_the_weight_format_activations_the_input_format():
    torch.manual_seed(10)
    w = torch.nn.Parameter(torch.randn(8, 64))
    x = torch.randn(4, 64)
    with emulating(SPEC):
        right = x @ w.T  # a view of a parameter
        left = w @ x.T
        computed = F.linear(x, w * 1.0)  # F.linear's second argument is the weight, parameter or not
    assert torch.equal(right, q(x, SPEC.input) @ q(w, SPEC.weight).T)
    assert torch.equal(left, q(w, SPEC.weight) @ q(x, SPEC.input).T)
    assert torch.equal(computed, right)


def test_rounded_weights_are_kept_across_blocks_until_the_weight_changes():
    torch.manual_seed(13)
    layer, x = torch.nn.Linear(64, 8), torch.randn(4, 64)

    def expected(spec):
        return q(x, spec.input) @ q(layer.weight, spec.weight).T + layer.bias

    def emulated(spec):
        with emulating(spec):
            return layer(x)

    with torch.no_grad():
        for spec in (SPEC, QuantSpec(input="mxfp8_e4m3", weight="mxfp6_e2m3"), SPEC):  # each spec its own
            assert torch.equal(emulated(spec), expected(spec))
        layer.weight.mul_(-2)  # in place: a new version
        assert torch.equal(emulated(SPEC), expected(SPEC))
        layer.weight.data = torch.randn(8, 64)  # new storage
        assert torch.equal(emulated(SPEC), expected(SPEC))
        layer.weight = torch.nn.Parameter(torch.randn(8, 64))  # a new parameter
        assert torch.equal(emulated(SPEC), expected(SPEC))


def test_integer_empty_and_nested_products_under_emulating():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a rounding matter: no warning
        with emulating(SPEC) as report:
            integers = torch.ones(2, 3, dtype=torch.long) @ torch.ones(3, 2, dtype=torch.long)
            empty = torch.einsum("ij,jk->ik", torch.randn(0, 64), torch.randn(64, 8))
    assert integers.tolist() == [[3, 3], [3, 3]] and empty.shape == (0, 8)
    assert report.full_precision == {("Tensor.matmul", "torch.int64 and torch.int64 operands: not a real "
                                                       "floating-point product"): 1}
    x, w = torch.randn(4, 64), torch.nn.Parameter(torch.randn(8, 64))
    with emulating(QuantSpec(input="mxfp4", weight="mxfp4")) as outer:
        with emulating(SPEC) as inner:  # the innermost mode rounds; the outer one lets its calls through
            nested = F.linear(x, w)
    assert torch.equal(nested, q(x, SPEC.input) @ q(w, SPEC.weight).T)
    assert inner.rounded == {"F.linear": 1} and not outer.rounded


def test_attention_operands_take_their_own_formats():
    torch.manual_seed(11)
    spec = QuantSpec(input="mxfp8_e4m3", weight="mxfp4", key="mxfp4", value="mxfp6_e3m2", probabilities="fp32")
    qh, k, v = (torch.randn(1, 2, 8, 32) for _ in range(3))
    with emulating(spec):
        out = F.scaled_dot_product_attention(qh, k, v)
    scores = q(qh, "mxfp8_e4m3") @ q(k, "mxfp4").mT * (1 / math.sqrt(32))
    assert torch.equal(out, torch.softmax(scores, dim=-1) @ q(v, "mxfp6_e3m2", -2))


def test_rules_and_min_reduction_choose_what_emulating_rounds():
    torch.manual_seed(12)
    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 4))
    x = torch.randn(2, 32)
    positions, frequencies = torch.arange(6.0)[:, None], torch.rand(1, 16)
    with emulating(SPEC, rules={"1": None}, model=net, min_reduction=2) as report:
        y = net(x)
        angles = positions @ frequencies  # K = 1: RoPE's outer product stays exact
    hidden = q(x, SPEC.input) @ q(net[0].weight, SPEC.weight).T + net[0].bias
    assert torch.equal(y, net[1](hidden))
    assert torch.equal(angles, positions @ frequencies)
    assert report.rounded == {"F.linear": 1}
    assert report.full_precision == {("F.linear", "excluded by a rule"): 1,
                                     ("Tensor.matmul", "K = 1 below min_reduction"): 1}
    assert report.unrounded_parameters == ["1.weight", "1.bias"]
    with pytest.raises(ValueError, match="need model="):
        with emulating(SPEC, rules={"1": None}):
            pass
    with emulating(SPEC, rules={torch.nn.Linear: None}):
        assert torch.equal(net(x), net[1](net[0](x)))


def test_recurrent_kernels_under_emulating_are_counted_and_warned():
    lstm = torch.nn.LSTM(32, 32, batch_first=True)
    with pytest.warns(UserWarning, match=r"torch.lstm \(a fused recurrent kernel"):
        with emulating(SPEC) as report:
            lstm(torch.randn(2, 5, 32))
    assert report.full_precision[("torch.lstm", next(iter(report.full_precision))[1])] == 1
    assert "full precision  torch.lstm: 1" in str(report)


# -- models the tests did not write: transformers' GPT-2 and Llama -------------------------------

transformers = pytest.importorskip("transformers")


def _gpt2():
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=100)
    return transformers.GPT2LMHeadModel(config).eval()


def test_gpt2_conv1d_layers_are_swapped_and_rounded():
    torch.manual_seed(13)
    model = _gpt2()
    tokens = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        plain = model(tokens).logits
        quantized = quantize_model(model, SPEC, inplace=False)
        rounded = quantized(tokens).logits
    attention = quantized.transformer.h[0].attn
    assert isinstance(attention.c_attn, QuantConv1D)
    x = torch.randn(3, 64)
    conv = model.transformer.h[0].attn.c_attn
    assert torch.equal(attention.c_attn(x), q(x, SPEC.input) @ q(conv.weight, SPEC.weight, 0) + conv.bias)
    assert not torch.equal(rounded, plain) and torch.isfinite(rounded).all()
    assert {row["type"] for row in summary(quantized)} == {"Conv1D", "Linear", "Embedding"}
    with torch.no_grad(), emulating(SPEC, model=model) as report:  # unswapped, under the mode: addmm
        model(tokens)
    assert report.rounded == {"torch.addmm": 2 * 4, "F.scaled_dot_product_attention": 2, "F.linear": 1,
                              "F.embedding": 2}
    assert all("ln_" in name for name in report.unrounded_parameters)  # only the norms' parameters


def test_llama_under_emulating_rounds_every_product_and_reports():
    torch.manual_seed(14)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = transformers.LlamaForCausalLM(config).eval()
    tokens = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        plain = model(tokens).logits
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing left in full precision: no warning
            with emulating(SPEC, rules={"lm_head": None}, model=model, min_reduction=2) as report:
                rounded = model(tokens).logits
    assert report.rounded["F.linear"] == 2 * 7
    assert report.rounded["F.scaled_dot_product_attention"] == 2
    assert report.full_precision[("F.linear", "excluded by a rule")] == 1
    assert "lm_head.weight" in report.unrounded_parameters
    assert not torch.equal(rounded, plain) and torch.isfinite(rounded).all()


# -- dynamic activation scales ---------------------------------------------------------------------

def _int8_dynamic(x, dim):
    """x rounded to int8 with scale fp32(amax / 127) over ``dim`` (None: the whole tensor), from the
    definition: the quotient formed in float64 (exact enough for the rounding decision), half to even."""
    amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = (amax.double() / 127).float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q8 = torch.round(x.double() / scale.double()).clamp(-128, 127)
    return (q8 * scale.double()).float()


@pytest.mark.parametrize("fmt, dim", [("int8_rowwise", -1), ("int8_tensor", None)])
def test_dynamic_per_token_and_per_tensor_scales_in_the_input_role(fmt, dim):
    """W8A8 as SmoothQuant and ZeroQuant run it: activations with a scale per token (or per tensor)
    computed from the tensor at run time, weights per output channel."""
    torch.manual_seed(15)
    layer = torch.nn.Linear(96, 16)
    x = torch.randn(2, 5, 96) * torch.logspace(-2, 1, 5)[:, None]  # tokens of very different magnitudes
    quantized = quantize_model(layer, QuantSpec(input=fmt, weight="int8_rowwise"), inplace=False)
    with torch.no_grad():
        y = quantized(x)
    expected = _int8_dynamic(x, dim) @ _int8_dynamic(layer.weight.detach(), -1).T + layer.bias.detach()
    assert torch.allclose(y, expected, rtol=0, atol=1e-5)
    assert torch.equal(lowbit.quantize(x, fmt, axis=-1), _int8_dynamic(x, dim))


def test_embedding_under_emulating_rounds_the_table_as_quantize_model_does():
    torch.manual_seed(16)
    table = torch.nn.Embedding(50, 64)
    ids = torch.randint(0, 50, (3, 7))
    with emulating(SPEC):
        rows = table(ids)
    assert torch.equal(rows, q(table.weight, SPEC.weight)[ids])
    assert torch.equal(rows, quantize_model(table, SPEC, inplace=False)(ids))


def test_checkpointed_code_under_emulating_is_said_or_recomputed_rounded():
    from torch.utils.checkpoint import checkpoint

    from lowbit.emulate import checkpoint_context

    spec = QuantSpec(input="mxfp8_e4m3", weight="mxfp4", grad_output="mxfp8_e5m2")
    torch.manual_seed(17)
    block = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    x = torch.randn(4, 64, requires_grad=True)

    def weight_grad(run):
        block.zero_grad()
        with emulating(spec):
            run().square().sum().backward()
        return block[0].weight.grad.clone()

    plain = weight_grad(lambda: block(x))
    with pytest.warns(UserWarning, match="recomputes checkpointed code"):
        weight_grad(lambda: checkpoint(block, x, use_reentrant=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recomputed = weight_grad(lambda: checkpoint(block, x, use_reentrant=False,
                                                    context_fn=checkpoint_context(spec)))
    assert torch.equal(recomputed, plain)


def test_quantized_layers_take_their_input_by_keyword_as_torch_layers_do():
    torch.manual_seed(19)
    linear, conv, x = torch.nn.Linear(64, 8), torch.nn.Conv1d(8, 4, 3), torch.randn(2, 5, 64)
    quantized_linear, quantized_conv = quantize_model(linear, SPEC, inplace=False), quantize_model(conv, SPEC, inplace=False)
    y = quantized_linear(input=x)
    assert torch.equal(y, quantized_linear(x))
    assert torch.equal(quantized_conv(input=y.transpose(1, 2)), quantized_conv(y.transpose(1, 2)))
