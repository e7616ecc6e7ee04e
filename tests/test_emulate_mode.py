"""quantized_matmul and the emulating function mode, down to a tiny
transformer trained with quantized operands."""

import math

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.emulate import QuantLinear, QuantSpec, emulating, quantize_model, quantized_matmul
from lowbit.emulate import mode as mode_module

SPEC = QuantSpec(input="mxfp8_e4m3", weight="mxfp4", grad_output="mxfp8_e5m2", grad_input="fp8_e5m2",
                 grad_weight="mxfp8_e4m3")


def q(t, fmt, axis=-1):
    """t rounded to fmt; scaled formats blocked along axis."""
    if isinstance(fmt, lowbit.formats.ElementFormat):
        return lowbit.quantize(t, fmt)
    return lowbit.quantize(t, fmt, axis=axis)


def test_matmul_forward_and_backward_follow_the_spec():
    torch.manual_seed(0)
    a = torch.randn(3, 1, 5, 64, requires_grad=True)  # broadcast over b's batch of 2
    b = torch.randn(2, 64, 40, requires_grad=True)
    upstream = torch.randn(3, 2, 5, 40)
    y = quantized_matmul(a, b, SPEC)
    y.backward(upstream)
    ad, bd = a.detach(), b.detach()
    assert torch.equal(y, q(ad, SPEC.input) @ q(bd, SPEC.weight, -2))
    grad_a = (q(upstream, SPEC.grad_output) @ q(bd, SPEC.weight).mT).sum(dim=1, keepdim=True)
    grad_b = (q(ad, SPEC.input, -2).mT @ q(upstream, SPEC.grad_output, -2)).sum(dim=0)
    assert torch.equal(a.grad, q(grad_a, SPEC.grad_input))
    assert torch.equal(b.grad, q(grad_b, SPEC.grad_weight, -2))


def test_vector_operands():
    v, m = torch.randn(64), torch.randn(64, 8)
    assert torch.equal(quantized_matmul(v, m, SPEC), (q(v[None], SPEC.input) @ q(m, SPEC.weight, -2))[0])
    assert quantized_matmul(m.T, v, SPEC).shape == (8,)
    with pytest.raises(ValueError, match="at least one dimension"):
        quantized_matmul(torch.tensor(1.0), v, SPEC)


def test_the_mode_quantizes_every_spelling_of_matmul():
    torch.manual_seed(1)
    a, b, w = torch.randn(2, 4, 64), torch.randn(2, 64, 8), torch.nn.Parameter(torch.randn(8, 64))
    expected = q(a, SPEC.input) @ q(b, SPEC.input, -2)  # activations both: the input format
    with emulating(SPEC):
        results = [a @ b, torch.matmul(a, b), a.matmul(b), torch.bmm(a, b), a.bmm(b),
                   torch.baddbmm(torch.ones(2, 4, 8), a, b, beta=2, alpha=0.5) - 2]
        linear = F.linear(a, w)
        addmm = torch.addmm(torch.ones(8), a[0], b[0])  # how GPT-2's Conv1D layers multiply
        summed = torch.add(a, 1)  # anything else runs as it is
    for result in results[:-1]:
        assert torch.equal(result, expected)
    assert torch.equal(results[-1], (2 * torch.ones(2, 4, 8) + 0.5 * expected) - 2)
    assert torch.equal(linear, q(a, SPEC.input) @ q(w.detach(), SPEC.weight, 1).T)  # a parameter: the weight format
    assert torch.equal(addmm, 1 + expected[0])
    assert torch.equal(summed, a + 1)


def test_attention_runs_as_its_two_quantized_products():
    torch.manual_seed(2)
    qh, k, v = (torch.randn(2, 3, 16, 32) for _ in range(3))
    mask = torch.rand(16, 16) > 0.2
    mask.fill_diagonal_(True)
    with emulating(QuantSpec()):  # nothing quantized: plain attention, computed in parts
        plain = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)
        causal = F.scaled_dot_product_attention(qh, k, v, is_causal=True, scale=0.3)
    assert torch.allclose(plain, F.scaled_dot_product_attention(qh, k, v, attn_mask=mask), atol=1e-5)
    assert torch.allclose(causal, F.scaled_dot_product_attention(qh, k, v, is_causal=True, scale=0.3), atol=1e-5)
    with emulating(SPEC):
        out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)
    scores = (q(qh, SPEC.input) @ q(k.mT, SPEC.input, -2)) / math.sqrt(32)
    probabilities = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    assert torch.equal(out, q(probabilities, SPEC.input) @ q(v, SPEC.input, -2))


class TinyTransformer(torch.nn.Module):
    """One pre-norm block: attention written out with @, then an MLP."""

    def __init__(self, vocab=16, width=64, heads=2):
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(vocab, width)
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                       torch.nn.Linear(4 * width, width))
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, tokens):
        x = self.embed(tokens)
        b, t, w = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        scores = qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(w // self.heads)
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        attended = (torch.softmax(scores, dim=-1) @ qkv[2]).transpose(1, 2).reshape(b, t, w)
        x = x + self.proj(attended)
        return self.head(x + self.mlp(self.norm2(x)))


def test_the_mode_catches_the_products_inside_attention(monkeypatch):
    calls = []
    real = mode_module.quantized_matmul
    def counted(a, b, spec):
        calls.append(tuple(a.shape))
        return real(a, b, spec)

    monkeypatch.setattr(mode_module, "quantized_matmul", counted)
    model = quantize_model(TinyTransformer(), SPEC)  # Linear layers swapped: the mode leaves their calls alone
    tokens = torch.randint(0, 16, (2, 12))
    with emulating(SPEC):
        model(tokens)
    assert calls == [(2, 2, 12, 32), (2, 2, 12, 12)]  # q @ k.T, then probabilities @ v


def test_a_tiny_transformer_learns_with_mxfp8_activations_and_mxfp4_weights():
    torch.manual_seed(3)
    spec = QuantSpec(input="mxfp8_e4m3", weight="mxfp4", grad_output="mxfp8_e5m2")
    model = quantize_model(TinyTransformer(), spec)
    assert isinstance(model.qkv, QuantLinear)
    sequence = torch.arange(13) % 4 * 3 + 1  # a repeating pattern to predict
    tokens = sequence.repeat(8, 1) + torch.randint(0, 2, (8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    with emulating(spec):
        for _ in range(25):
            optimizer.zero_grad()
            logits = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, 16), tokens[:, 1:].reshape(-1))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_compiled_mode_matches_eager():
    torch.manual_seed(4)
    model = TinyTransformer()
    tokens = torch.randint(0, 16, (2, 12))

    def run(m):
        with emulating(SPEC):
            return m(tokens)

    eager = run(model)
    compiled = torch.compile(run, backend="aot_eager")(model)
    assert torch.equal(eager, compiled)


def test_mode_errors():
    with pytest.raises(TypeError, match="spec must be a QuantSpec"):
        with emulating("mxfp4"):
            pass


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 24])
def test_multihead_attention_is_computed_from_its_parts(batch_first, kdim):
    """With nothing rounded, the decomposition equals nn.MultiheadAttention
    (to float rounding) for every mask kind and weight layout."""
    torch.manual_seed(5)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first, kdim=kdim, vdim=kdim)
    query, source = torch.randn(2, 5, 32), torch.randn(2, 7, kdim or 32)
    if not batch_first:
        query, source = query.transpose(0, 1), source.transpose(0, 1)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, -2:] = True
    for options in ({}, {"attn_mask": torch.rand(5, 7) > 0.7}, {"key_padding_mask": padding},
                    {"attn_mask": torch.randn(8, 5, 7), "average_attn_weights": False}):
        expected, expected_weights = mha(query, source, source, **options)
        with emulating(QuantSpec()):
            out, weights = mha(query, source, source, **options)
        assert torch.allclose(out, expected, atol=1e-6) and torch.allclose(weights, expected_weights, atol=1e-6)


def test_multihead_attention_products_are_quantized(monkeypatch):
    from lowbit.emulate import attention as attention_module

    calls = []
    for name in ("quantized_matmul", "quantized_linear"):
        real = getattr(attention_module, name)
        monkeypatch.setattr(attention_module, name,
                            lambda *args, _real=real, _name=name: calls.append(_name) or _real(*args))
    torch.manual_seed(6)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    x = torch.randn(2, 6, 32)
    plain = layer(x)
    with emulating(SPEC):
        quantized = layer(x)
    assert sorted(calls) == ["quantized_linear"] * 4 + ["quantized_matmul"] * 2
    assert not torch.equal(quantized, plain) and torch.isfinite(quantized).all()
    unbatched = torch.nn.MultiheadAttention(32, 4)
    with emulating(QuantSpec()):
        out, _ = unbatched(x[0], x[0], x[0])
    assert torch.allclose(out, unbatched(x[0], x[0], x[0])[0], atol=1e-6)
    with pytest.raises(ValueError, match="add_bias_kv"):
        with emulating(SPEC):
            torch.nn.MultiheadAttention(32, 4, add_bias_kv=True)(x[0], x[0], x[0])
