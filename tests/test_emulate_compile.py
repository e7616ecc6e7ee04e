"""torch.compile of emulated models (issue 18): fullgraph traces of
quantize_model'd models and of code under ``emulating``, results equal to
eager ones with the default inductor backend, no recompiles per model or
per weight update, and custom ops whose fake kernels give the strides their
real kernels give.

Inductor compiles are slow on small machines: the models are tiny and each
compiled function is built once and reused. Inductor orders the
reductions of torch's own ops (RMSNorm, softmax, RoPE's cos/sin, a bias
gradient's sum) differently from eager, so those differ in the last bit
between compiled and eager runs, lowbit or not; the products' operands are
rounded (mxfp8/mxfp4) after them, which gives equal results here. Training
gradients pass through such reductions unrounded: they are compared bit for
bit where no torch reduction lies between the loss and the product (the LM
head) and to float32 rounding elsewhere, and bit for bit under aot_eager,
which runs eager's kernels.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensorMode

from lowbit.emulate import QuantSpec, emulating, fake_quantize, quantize_model
from lowbit.emulate.fake_quant import _clipped_op, _fake_quantize_op, format_key
from lowbit.emulate.rounding import _kept, _rounded_weight_op

transformers = pytest.importorskip("transformers")

SPEC = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")


def llama(seed):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    return quantize_model(transformers.LlamaForCausalLM(config), SPEC)


def inference_logits(model, tokens):
    return model(tokens).logits


def training_logits(model, tokens):
    return model(tokens).logits


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(7))


def test_quantized_llama_inference_equals_eager_without_recompiles(tokens):
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(inference_logits, fullgraph=True, backend=counter)
    first, second = llama(0).eval(), llama(1).eval()  # same architecture, other weights
    with torch.no_grad():
        for model in (first, second, first):
            assert torch.equal(compiled(model, tokens), inference_logits(model, tokens))
        assert first.lm_head.weight in _kept and second.lm_head.weight in _kept  # rounded once, kept outside
        first.model.layers[0].mlp.up_proj.weight.mul_(-1)  # in place: the kept rounded weights are stale
        assert torch.equal(compiled(first, tokens), inference_logits(first, tokens))
        first.model.embed_tokens.weight.data = torch.randn(128, 64)  # a new tensor
        assert torch.equal(compiled(first, tokens), inference_logits(first, tokens))
    assert counter.frame_count == 1  # one graph for every model and weight


def test_quantized_llama_training_step_equals_eager_without_recompiles(tokens):
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(training_logits, fullgraph=True, backend=counter)
    model = llama(2).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    upstream = torch.randn(2, 16, 128, generator=torch.Generator().manual_seed(8))

    def step(run):
        model.zero_grad()
        logits = run(model, tokens)
        logits.backward(upstream)
        return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    for _ in range(2):  # the second step after an optimizer step: the weights changed in place
        eager, eager_grads = step(training_logits)
        traced, traced_grads = step(compiled)
        assert torch.equal(traced, eager)
        assert torch.equal(traced_grads["lm_head.weight"], eager_grads["lm_head.weight"])
        for name, grad in eager_grads.items():  # float32 rounding of the tensor's largest entries
            assert (traced_grads[name] - grad).abs().max() <= 1e-5 * grad.abs().max(), name
        optimizer.step()
    assert counter.frame_count == 1


class Attention(torch.nn.Module):
    """Self-attention whose products are plain calls (x @ w, x @ w.T, sdpa, q @ k.mT, F.linear)."""

    def __init__(self, width=32, heads=2):
        super().__init__()
        self.heads = heads
        self.wq = torch.nn.Parameter(torch.randn(width, width) / math.sqrt(width))  # x @ wq
        self.wk = torch.nn.Parameter(torch.randn(width, width) / math.sqrt(width))  # x @ wk.T: a view of a parameter
        self.v = torch.nn.Linear(width, width)
        self.out = torch.nn.Linear(width, width)
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, x):
        batch, length, width = x.shape
        h = self.norm(x)
        q = (h @ self.wq).view(batch, length, self.heads, -1).transpose(1, 2)
        k = (h @ self.wk.T).view(batch, length, self.heads, -1).transpose(1, 2)
        v = self.v(h).view(batch, length, self.heads, -1).transpose(1, 2)
        fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        spelled = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v
        return x + self.out((fused + spelled).transpose(1, 2).reshape(batch, length, width))


class AttentionModel(torch.nn.Module):
    def __init__(self, vocab=64, width=32):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, width)
        self.layers = torch.nn.Sequential(Attention(width), Attention(width))
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, tokens):
        return self.head(self.layers(self.embedding(tokens)))


def emulated(model, tokens):
    with emulating(SPEC) as report:
        return model(tokens), report


def attention_model(seed):
    torch.manual_seed(seed)
    return AttentionModel()


def test_emulating_an_attention_model_compiles_to_eager_results(tokens):
    tokens = tokens % 64
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(emulated, fullgraph=True, backend=counter)
    with torch.no_grad():
        for model in (attention_model(3), attention_model(4)):  # one graph for both
            (eager, eager_report), (traced, traced_report) = emulated(model, tokens), compiled(model, tokens)
            assert torch.equal(traced, eager)
            assert str(traced_report) == str(eager_report)
            assert traced_report.rounded["F.scaled_dot_product_attention"] == 2
    assert counter.frame_count == 1

    # training: bit for bit under aot_eager (inductor reorders the LayerNorm and bias-gradient reductions)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(emulated, fullgraph=True, backend=counter)
    model = attention_model(5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(run):
        model.zero_grad()
        out, _ = run(model, tokens)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    for _ in range(2):
        eager, eager_grads = step(emulated)
        traced, traced_grads = step(compiled)
        assert torch.equal(traced, eager)
        assert all(torch.equal(a, b) for a, b in zip(traced_grads, eager_grads))
        optimizer.step()
    assert counter.frame_count == 1


def test_traced_emulating_reports_and_keeps_fused_paths_off():
    """model= names the parameters left out (one graph per model: the names
    are looked up by identity); torch's fused encoder-layer path, which
    would bypass the mode, stays off in the graph as in eager."""
    torch.manual_seed(6)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 8, 32)

    def run(model, x):
        with emulating(SPEC, model=model) as report:
            return model(x), report

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")  # the layer ends in a LayerNorm
    with torch.no_grad():
        (eager, eager_report), (traced, traced_report) = run(layer, x), compiled(layer, x)
    assert torch.equal(traced, eager) and str(traced_report) == str(eager_report)
    assert traced_report.rounded["F.multi_head_attention_forward"] == 1
    assert traced_report.unrounded_parameters == ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's, about global hooks on a compiled module
def test_emulating_with_rules_refuses_to_trace():
    model, tokens = AttentionModel(), torch.randint(0, 64, (1, 8))
    rules = {r"layers\.0(\..*)?": None}

    def inside(model, tokens):
        with emulating(SPEC, rules=rules, model=model):
            return model(tokens)

    with pytest.raises(Exception, match=r"emulating\(rules=...\) does not run under torch.compile"):
        torch.compile(inside, fullgraph=True, backend="eager")(model, tokens)
    outside = torch.compile(model, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=r"emulating\(rules=...\) does not run under torch.compile"):
        with emulating(SPEC, rules=rules, model=model):
            outside(tokens)


def test_products_left_in_full_precision_warn_when_traced():
    def outer(a, b):
        with emulating(SPEC) as report:
            return torch.outer(a, b) + a @ b, report

    a, b = torch.randn(32), torch.randn(32)
    with pytest.warns(UserWarning, match="full precision: torch.outer"):
        result, report = torch.compile(outer, fullgraph=True, backend="eager")(a, b)
    with pytest.warns(UserWarning, match="full precision: torch.outer"):
        eager, eager_report = outer(a, b)
    assert torch.equal(result, eager) and str(report) == str(eager_report)


@pytest.mark.parametrize("fmt, axis", [("mxfp4", -1), ("mxfp4", 1), ("mxfp4", 0), ("fp8_e4m3", -1), ("int8", 0)])
def test_fake_kernels_give_the_real_kernels_strides(fmt, axis):
    x = torch.randn(4, 8, 32).permute(2, 0, 1)  # permuted: the backends alone would give contiguous results
    args = (format_key(fmt), axis, "nearest_even", None, None, "identity", None, "nearest_even")
    real, clipped = _fake_quantize_op(x, *args), _clipped_op(x, format_key(fmt), axis, None)
    with FakeTensorMode() as mode:
        fake_x = mode.from_tensor(x)
        fake, fake_clipped = _fake_quantize_op(fake_x, *args), _clipped_op(fake_x, format_key(fmt), axis, None)
    assert (fake.shape, fake.stride(), fake_clipped.stride()) == (real.shape, real.stride(), clipped.stride())
    assert real.stride() == torch.empty_like(x).stride()  # the op's layout: x's
    kept = _rounded_weight_op(x, format_key(fmt), axis, "nearest_even", None)  # compiled inference's weights
    assert torch.equal(kept, real) and kept.stride() == real.stride()


def test_permuted_operands_compile_with_inductor():
    def f(t):  # a transposed view reaches the ops (rounded along its last axis, then an inner one)
        t = t.transpose(1, 2)
        return (fake_quantize(t, "mxfp4", ste="masked") + fake_quantize(t, "mxfp8_e4m3", axis=-2)) * 2

    x = torch.randn(2, 32, 8)
    eager_x, traced_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(2, 8, 32)
    eager = f(eager_x)
    eager.backward(upstream)
    traced = torch.compile(f, fullgraph=True)(traced_x)
    traced.backward(upstream)
    assert torch.equal(traced, eager) and torch.equal(traced_x.grad, eager_x.grad)
