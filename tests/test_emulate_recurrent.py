"""Quantized LSTM, GRU and RNN: against torch's own layers with nothing
quantized, and bit for bit against the documented equations written out
here with operands rounded by lowbit.quantize (forward and backward)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import lowbit
from lowbit.emulate import QuantSpec, emulating
from lowbit.emulate.recurrent import QuantGRU, QuantLSTM, QuantRNN

INPUT, HIDDEN, STEPS, BATCH = 24, 32, 5, 3  # 24 input features: one padded block
KINDS = {"lstm": (torch.nn.LSTM, QuantLSTM, {}), "gru": (torch.nn.GRU, QuantGRU, {}),
         "rnn_tanh": (torch.nn.RNN, QuantRNN, {}), "rnn_relu": (torch.nn.RNN, QuantRNN, {"nonlinearity": "relu"})}
MX = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")
MX_ALL_ROLES = QuantSpec(input="mxfp8_e4m3", weight="mxfp4", output="bf16", grad_input="mxfp8_e5m2",
                         grad_weight="fp8_e4m3", grad_output="mxfp8_e5m2")
SAMPLE_BLOCKS = dataclasses.replace(MX_ALL_ROLES, token_blocks="sample")
ELEMENT = QuantSpec(input="fp8_e4m3", weight="fp8_e4m3", output="fp8_e4m3", grad_output="fp8_e5m2")


def make(kind, seed=0, **options):
    torch_cls, quant_cls, extra = KINDS[kind]
    torch.manual_seed(seed)
    return torch_cls(INPUT, HIDDEN, **extra, **options), quant_cls


def inputs(rnn, batched=True, with_state=False, seed=1):
    """x (and hx, or None) for rnn, requiring gradients."""
    torch.manual_seed(seed)
    shape = ((BATCH, STEPS) if rnn.batch_first else (STEPS, BATCH)) if batched else (STEPS,)
    x = torch.randn(*shape, INPUT, requires_grad=True)
    if not with_state:
        return x, None
    state_shape = (rnn.num_layers * (2 if rnn.bidirectional else 1), *((BATCH,) if batched else ()), HIDDEN)
    states = [torch.randn(state_shape, requires_grad=True) for _ in range(2 if isinstance(rnn, torch.nn.LSTM) else 1)]
    return x, tuple(states) if isinstance(rnn, torch.nn.LSTM) else states[0]


def flat(result):
    """(output, h_n[, c_n]) as a list of tensors."""
    output, state = result
    return [output, *(state if isinstance(state, tuple) else (state,))]


def run(module, x, hx, seed=2):
    """The module's results and the gradients of a fixed random loss with
    respect to x, hx and the parameters (in that order)."""
    torch.manual_seed(seed)  # the same dropout masks for every module
    results = flat(module(x, hx))
    torch.manual_seed(seed + 1)
    loss = sum((r * torch.randn(r.shape)).sum() for r in results)
    leaves = [x, *(hx if isinstance(hx, tuple) else () if hx is None else (hx,)), *module.parameters()]
    return [r.detach() for r in results], torch.autograd.grad(loss, leaves)


CONFIGS = {
    "default": ({}, {}),
    "2 layers, bidirectional": (dict(num_layers=2, bidirectional=True), {}),
    "batch_first, h0 given": (dict(batch_first=True), dict(with_state=True)),
    "no bias, 2 layers": (dict(bias=False, num_layers=2), {}),
    "dropout, 3 layers, bidirectional, batch_first": (dict(num_layers=3, dropout=0.4, bidirectional=True,
                                                           batch_first=True), {}),
    "unbatched, h0 given, 2 layers, bidirectional": (dict(num_layers=2, bidirectional=True),
                                                     dict(batched=False, with_state=True)),
    "unbatched, batch_first": (dict(batch_first=True), dict(batched=False)),
    "everything": (dict(num_layers=2, bidirectional=True, batch_first=True, bias=False, dropout=0.5),
                   dict(with_state=True)),
}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kind", KINDS)
def test_with_nothing_quantized_it_is_the_torch_layer(kind, config):
    options, given = CONFIGS[config]
    rnn, quant_cls = make(kind, **options)
    x, hx = inputs(rnn, **given)
    expected, expected_grads = run(rnn, x, hx)
    results, grads = run(quant_cls(rnn, QuantSpec()), x, hx)
    assert [r.shape for r in results] == [e.shape for e in expected]
    for got, want in zip([*results, *grads], [*expected, *expected_grads]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_dropout_acts_in_training_only():
    rnn, _ = make("lstm", num_layers=2, dropout=0.5)
    layer = QuantLSTM(rnn.eval(), QuantSpec())
    assert not layer.training  # the wrapped module's mode carries over
    x, _ = inputs(rnn)
    assert torch.equal(layer(x)[0], layer(x)[0])
    layer.train()
    assert not torch.equal(layer(x)[0], layer(x)[0])


# -- the reference: torch's documented equations, operands rounded by lowbit.quantize --------------

def q(t, fmt, axis):
    if fmt is None:
        return t
    if isinstance(fmt, lowbit.formats.ElementFormat):
        return lowbit.quantize(t, fmt)
    return lowbit.quantize(t, fmt, axis=axis)


class ReferenceLinear(torch.autograd.Function):
    """y = Q_out(Q_in(x) @ Q_w(w).T + b), the roles of docs/emulate.md: forward
    blocks along the reduction (features); backward, the input gradient
    reduces over the output features, the weight gradient over the tokens."""

    @staticmethod
    def forward(ctx, x, w, b, spec):
        ctx.save_for_backward(x, w)
        ctx.spec = spec
        return q(F.linear(q(x, spec.input, -1), q(w, spec.weight, 1), b), spec.output, -1)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        spec = ctx.spec
        grad_x = q(q(g, spec.grad_output, -1) @ q(w, spec.weight, 0), spec.grad_input, -1)
        if spec.token_blocks == "sample":  # blocks along each sample's tokens (axis -2 of (batch, tokens, features))
            g_t, x_t = q(g, spec.grad_output, -2).flatten(0, -2), q(x, spec.input, -2).flatten(0, -2)
        else:  # blocks along every token of the batch, flattened
            g_t, x_t = q(g.flatten(0, -2), spec.grad_output, 0), q(x.flatten(0, -2), spec.input, 0)
        grad_w = q(g_t.T @ x_t, spec.grad_weight, -1)
        return grad_x, grad_w, g.flatten(0, -2).sum(0), None


def reference_step(kind, x_product, h_product, h, c):
    """torch.nn.LSTM / GRU / RNN's documented equations (gates i, f, g, o and r, z, n)."""
    if kind == "lstm":
        i, f, g, o = (x_product + h_product).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if kind == "gru":
        x_r, x_z, x_n = x_product.chunk(3, dim=-1)
        h_r, h_z, h_n = h_product.chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h, None
    return (torch.tanh if kind == "rnn_tanh" else torch.relu)(x_product + h_product), None


def reference(kind, rnn, x, hx, spec):
    """(output, h_n[, c_n]) of a bidirectional, multi-layer, batch_first rnn
    (no dropout): the input products of a whole sequence of (batch, steps,
    features) in one product, each step's hidden product on (batch, 1, features)."""
    layer_input = x
    h0, c0 = hx if kind == "lstm" else (hx, None)
    finals_h, finals_c = [], []
    for layer in range(rnn.num_layers):
        outputs = []
        for direction, suffix in enumerate((f"_l{layer}", f"_l{layer}_reverse")):
            w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{name}{suffix}") for name in
                                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            x_products = ReferenceLinear.apply(layer_input, w_ih, b_ih, spec)
            h, c = h0[2 * layer + direction], None if c0 is None else c0[2 * layer + direction]
            hs = [None] * STEPS
            for t in (range(STEPS) if direction == 0 else range(STEPS - 1, -1, -1)):
                h_product = ReferenceLinear.apply(h[:, None], w_hh, b_hh, spec)[:, 0]
                h, c = reference_step(kind, x_products[:, t], h_product, h, c)
                hs[t] = h
            outputs.append(torch.stack(hs, dim=1))
            finals_h.append(h)
            finals_c.append(c)
        layer_input = torch.cat(outputs, dim=-1)
    finals = [torch.stack(finals_h)] + ([torch.stack(finals_c)] if kind == "lstm" else [])
    return [layer_input, *finals]


@pytest.mark.parametrize("spec", [MX, MX_ALL_ROLES, ELEMENT, SAMPLE_BLOCKS], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_bit_for_bit_the_documented_equations_with_rounded_operands(kind, spec):
    rnn, quant_cls = make(kind, num_layers=2, bidirectional=True, batch_first=True)
    x, hx = inputs(rnn, with_state=True)
    results, grads = run(quant_cls(rnn, spec), x, hx)
    torch.manual_seed(3)  # run()'s loss
    expected = reference(kind, rnn, x, hx, spec)
    loss = sum((r * torch.randn(r.shape)).sum() for r in expected)
    leaves = [x, *(hx if isinstance(hx, tuple) else (hx,)), *rnn.parameters()]
    expected_grads = torch.autograd.grad(loss, leaves)
    for got, want in zip([*results, *grads], [*[e.detach() for e in expected], *expected_grads]):
        assert torch.equal(got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_it_is_not_full_precision_and_its_gradients_are_finite(kind):
    rnn, quant_cls = make(kind, num_layers=2)
    x, _ = inputs(rnn)
    full, _ = run(rnn, x, None)
    results, grads = run(quant_cls(rnn, MX), x, None)
    assert all(not torch.equal(r, f) for r, f in zip(results, full))
    assert all(g.isfinite().all() and g.abs().sum() > 0 for g in grads)


def test_batch_first_changes_nothing_but_the_layout():
    """The tokens of the input weight's gradient are in the same order either way."""
    time_major, _ = make("lstm", num_layers=2, bidirectional=True)
    batch_first, _ = make("lstm", num_layers=2, bidirectional=True, batch_first=True)
    x, hx = inputs(time_major, with_state=True)
    upstream = torch.randn(STEPS, BATCH, 2 * HIDDEN)
    outputs, grads = [], []
    for rnn, layout in ((time_major, lambda t: t), (batch_first, lambda t: t.transpose(0, 1))):
        output, state = QuantLSTM(rnn, MX_ALL_ROLES)(layout(x), hx)
        outputs += [layout(output).detach(), *state]
        loss = (layout(output) * upstream).sum() + sum(s.sum() for s in state)
        grads.append(torch.autograd.grad(loss, [x, *hx, *rnn.parameters()]))
    assert all(torch.equal(a, b) for a, b in zip(outputs[:3], outputs[3:]))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_an_enclosing_emulating_mode_rounds_nothing_twice():
    rnn, _ = make("gru")
    layer = QuantGRU(rnn, MX)
    x, _ = inputs(rnn)
    with torch.no_grad():
        outside = layer(x)[0]
        with emulating(QuantSpec(input="fp8_e5m2", weight="fp8_e5m2", output="fp8_e5m2")):
            inside = layer(x)[0]
    assert torch.equal(inside, outside)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_keys_and_parameters_are_the_wrapped_modules(kind):
    rnn, quant_cls = make(kind, num_layers=2, bidirectional=True)
    layer = quant_cls(rnn, MX)
    assert list(layer.state_dict()) == list(rnn.state_dict())
    assert all(a is b for a, b in zip(layer.parameters(), rnn.parameters()))


def test_refusals_name_the_feature():
    rnn, _ = make("lstm")
    with pytest.raises(ValueError, match="proj_size"):
        QuantLSTM(torch.nn.LSTM(INPUT, HIDDEN, proj_size=8), MX)
    with pytest.raises(ValueError, match="observers"):
        QuantLSTM(rnn, QuantSpec(input="int8", observers={"input": lowbit.emulate.Observer()}))
    with pytest.raises(TypeError, match="wraps GRU"):
        QuantGRU(rnn, MX)
    layer = QuantLSTM(rnn, MX)
    packed = pack_padded_sequence(torch.randn(STEPS, BATCH, INPUT), [5, 4, 2])
    with pytest.raises(ValueError, match="PackedSequence"):
        layer(packed)
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        layer(torch.randn(2, STEPS, BATCH, INPUT))
    with pytest.raises(TypeError, match=r"tuple \(h_0, c_0\)"):
        layer(torch.randn(STEPS, BATCH, INPUT), torch.zeros(1, BATCH, HIDDEN))
    with pytest.raises(ValueError, match="c_0 must be 2-D for unbatched"):
        layer(torch.randn(STEPS, INPUT), (torch.zeros(1, HIDDEN), torch.zeros(1, 1, HIDDEN)))
    with pytest.raises(TypeError, match="tensor h_0"):
        QuantGRU(make("gru")[0], MX)(torch.randn(STEPS, BATCH, INPUT), (torch.zeros(1, BATCH, HIDDEN),))
    with pytest.raises(RuntimeError, match="Expected hidden"):  # torch's own size check
        layer(torch.randn(STEPS, BATCH, INPUT), (torch.zeros(1, BATCH + 1, HIDDEN),) * 2)
