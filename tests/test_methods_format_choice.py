"""Per-layer format choice (lowbit.emulate.methods.choose_formats, MoFQ)
against the definition written here: each layer's quantized output
Q_in(x) Q_w(W)^T + b (roundings by lowbit.quantize along the reduction
axis, observer scales from their definition) against x W^T + b in float64,
the least-error candidate per layer, and under a bit budget the least
total error found by brute force over every assignment."""

import itertools
import math
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lowbit
from lowbit.emulate import Observer, QuantSpec, quantize_model, restore_model, summary
from lowbit.emulate.methods import changes, choose_formats
from lowbit.emulate.methods.costs import weight_bits
from lowbit.emulate.methods.format_choice import best_assignment

CHANNEL = {"weight": Observer("absmax", "channel")}
INT4 = QuantSpec(input="mxfp8_e4m3", weight="int4", observers=CHANNEL)
FP4 = QuantSpec(input="mxfp8_e4m3", weight="fp4_e2m1", observers=CHANNEL)
MXFP4 = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")
MXFP6 = QuantSpec(input="mxfp8_e4m3", weight="mxfp6_e2m3")
FOUR_BIT = [INT4, FP4, MXFP4]
CANDIDATES = [INT4, FP4, MXFP4, MXFP6]


# -- the definitions ----------------------------------------------------------------------------------

def rounded_weight(w, spec):
    """W rounded as the spec says: per output channel absmax scales s = max|w_row| / max (in float32), or
    the block format along the input features."""
    fmt = lowbit.get_format(spec.weight)
    if spec.observer("weight") is None:
        return lowbit.quantize(w, fmt, axis=1)
    s = w.abs().amax(dim=1, keepdim=True) / fmt.max
    return lowbit.quantize(w / s, fmt) * s


def output_error(x, layer, spec):
    """||Q_in(x) Q_w(W)^T + b - (x W^T + b)|| / ||x W^T + b||, the products in float64."""
    x, w, b = x.detach(), layer.weight.detach(), layer.bias.detach().double()
    quantized = lowbit.quantize(x, spec.input, axis=-1).double() @ rounded_weight(w, spec).double().T + b
    reference = x.double() @ w.double().T + b
    return float((quantized - reference).norm() / reference.norm())


def stored_bits(layer, spec):
    """Bits per weight element: 4-bit codes and a float32 scale per row, or the MX block's 8-bit scale per 32."""
    in_features = layer.weight.shape[1]
    return {"int4": 4 + 32 / in_features, "fp4_e2m1": 4 + 32 / in_features, "mxfp4": 4 + 8 / 32,
            "mxfp6_e2m3": 6 + 8 / 32}[spec.weight.name]


def logged_errors(change):
    """{candidate: error} from a choose_formats row's detail."""
    listing = change.detail.removeprefix("output errors (input rounded too) of ")
    return {label: float(error) for label, error in re.findall(r"(.+?): (\S+) \([^)]*\)(?:; |$)", listing)}


def net(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    with torch.no_grad():  # layers that prefer different formats: heavy-tailed rows, uniform rows, outliers
        model[0].weight.mul_(torch.logspace(-1, 1, 64))
        model[2].weight.uniform_(-0.1, 0.1)
        model[4].weight[:, 3] *= 40
    return model


def layer_rows(model, x):
    """Each Linear's input rows, gathered by running the layers here."""
    rows = {}
    for name, module in model.named_children():
        if isinstance(module, torch.nn.Linear):
            rows[name] = x
        x = module(x)
    return rows


def oracle(model, x, candidates):
    rows = layer_rows(model, x)
    errors = np.array([[output_error(rows[name], model.get_submodule(name), spec) for spec in candidates]
                       for name in rows])
    bits = np.array([[stored_bits(model.get_submodule(name), spec) for spec in candidates] for name in rows])
    sizes = np.array([model.get_submodule(name).weight.numel() for name in rows], dtype=float)
    return list(rows), errors, bits, sizes


# -- choices ------------------------------------------------------------------------------------------

def test_each_layer_takes_its_least_error_candidate():
    model, x = net(0), torch.randn(40, 64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rules = choose_formats(model, FOUR_BIT, [x[:25], x[25:]])
    names, errors, bits, _ = oracle(model, x, FOUR_BIT)
    assert list(rules) == [re.escape(n) for n in names]
    logged = {c.layer: c for c in changes(model)}
    for i, name in enumerate(names):
        best = int(np.argmin(errors[i]))
        assert rules[name] is CANDIDATES[best]
        assert logged[name].error_after == pytest.approx(errors[i, best], rel=1e-4)
        for j, spec in enumerate(FOUR_BIT):
            assert weight_bits(model.get_submodule(name), spec) == pytest.approx(bits[i, j], rel=1e-15)
        assert list(logged_errors(logged[name])) == ["weight=int4, weight scale=absmax/channel",
                                                     "weight=fp4_e2m1, weight scale=absmax/channel",
                                                     "weight=mxfp4"]
        assert np.allclose(list(logged_errors(logged[name]).values()), errors[i], rtol=1e-3)
    assert len({rules[n].weight.name for n in names}) > 1  # the layers do not all agree
    sizes = [model.get_submodule(name).weight.numel() for name in names]
    average = sum(bits[i, np.argmin(errors[i])] * size for i, size in enumerate(sizes)) / sum(sizes)
    assert logged[""].detail == f"{average:.4g} bits per weight on average over 4 layers (no budget)"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # nothing changed
    quantize_model(model, None, rules)
    assert [row["weight"].split()[0] for row in summary(model)] == [rules[n].weight.name for n in names]
    restore_model(model)
    assert changes(model) == [] and all(type(m) in (torch.nn.Linear, torch.nn.ReLU) for m in model)


@pytest.mark.parametrize("budget", [4.25, 4.3, 4.5, 5.0, 6.25])
def test_under_a_budget_the_least_total_error_by_brute_force(budget):
    model, x = net(1), torch.randn(40, 64)
    rules = choose_formats(model, CANDIDATES, [x], bits_per_weight=budget)
    names, errors, bits, sizes = oracle(model, x, CANDIDATES)
    capacity = budget * sizes.sum()
    feasible = [(sum(errors[i, c] for i, c in enumerate(choice)), choice)
                for choice in itertools.product(range(len(CANDIDATES)), repeat=len(names))
                if sum(bits[i, c] * sizes[i] for i, c in enumerate(choice)) <= capacity]
    best_error, _ = min(feasible)
    chosen = [CANDIDATES.index(rules[re.escape(n)]) for n in names]
    assert sum(bits[i, c] * sizes[i] for i, c in enumerate(chosen)) <= capacity
    assert sum(errors[i, c] for i, c in enumerate(chosen)) == pytest.approx(best_error, rel=1e-4)
    assert changes(model)[-1].detail.endswith(f"over 4 layers (budget {budget:.4g})")


def test_a_budget_below_the_cheapest_choice_is_refused():
    model, x = net(2), torch.randn(8, 64)
    with pytest.raises(ValueError, match="bits_per_weight=4.2 is below the cheapest choice's 4.25 bits per weight"):
        choose_formats(model, [MXFP4, MXFP6], [x], bits_per_weight=4.2)
    assert changes(model) == []


@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2 ** 32 - 1), st.floats(0, 1))
def test_best_assignment_is_exact(layers, options, seed, slack):
    rng = np.random.default_rng(seed)
    errors = rng.choice([0.0, 0.25, 0.5, 1.0, rng.random()], size=(layers, options))  # ties happen
    errors[rng.random((layers, options)) < 0.15] = math.inf
    errors[np.isinf(errors).all(axis=1), 0] = 0.75
    bits = rng.choice([2.0, 4.0, 4.25, 8.0], size=(layers, options)) * rng.integers(1, 4, size=(layers, 1))
    cheapest = np.where(np.isfinite(errors), bits, math.inf).min(axis=1).sum()
    dearest = np.where(np.isfinite(errors), bits, 0).max(axis=1).sum()
    capacity = cheapest + slack * (dearest - cheapest)
    chosen = best_assignment(errors, bits, capacity)
    total = lambda choice: sum(errors[i, c] for i, c in enumerate(choice))
    spent = lambda choice: sum(bits[i, c] for i, c in enumerate(choice))
    assert spent(chosen) <= capacity * (1 + 1e-12) and math.isfinite(total(chosen))
    feasible = [c for c in itertools.product(range(options), repeat=layers) if spent(c) <= capacity * (1 + 1e-12)]
    best = min(total(c) for c in feasible)
    assert total(chosen) == best
    assert spent(chosen) == min(spent(c) for c in feasible if total(c) == best)  # ties: the fewer bits
    with pytest.raises(ValueError, match="cheapest"):
        best_assignment(errors, bits, cheapest * 0.99)


def test_ties_go_to_the_fewer_bits_then_the_earlier_candidate():
    torch.manual_seed(3)
    layer = torch.nn.Linear(32, 8)
    with torch.no_grad():
        layer.weight.copy_(lowbit.quantize(layer.weight, "fp8_e4m3"))  # exact in fp8, fp16 and fp32
    model, x = torch.nn.Sequential(layer), [torch.randn(6, 32)]
    fp32, fp16, fp8 = (QuantSpec(weight=f) for f in ("fp32", "fp16", "fp8_e4m3"))
    assert choose_formats(model, [fp32, fp16, fp8], x) == {"0": fp8}  # equal (zero) errors: 8 bits
    with_output = QuantSpec(weight="fp16", output="fp32")  # fp32 output: the same values, the same bits
    assert choose_formats(model, [with_output, fp16], x) == {"0": with_output}
    assert choose_formats(model, [fp16, with_output], x) == {"0": fp16}


# -- models ---------------------------------------------------------------------------------------

def test_llama_end_to_end():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(4)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = transformers.LlamaForCausalLM(config).eval()
    tokens = torch.randint(0, 128, (2, 16))
    candidates = [INT4, MXFP4, MXFP6]
    rules = choose_formats(model, candidates, [tokens], rules={"lm_head": None}, samples=64, bits_per_weight=5.0)
    assert len(rules) == 2 * 7 and "lm_head" not in rules
    sizes = {name: module.weight.numel() for name, module in model.named_modules() if name in
             {n.replace("\\", "") for n in rules}}
    average = sum(weight_bits(model.get_submodule(n), rules[re.escape(n)]) * s for n, s in sizes.items()) / sum(
        sizes.values())
    assert average <= 5.0 and len({spec.weight.name for spec in rules.values()}) > 1
    quantize_model(model, None, rules)
    with torch.no_grad():
        assert torch.isfinite(model(tokens).logits).all()
    assert len(summary(model)) == 14
    restore_model(model)


def test_a_candidate_a_layer_cannot_take_is_said_and_left_out():
    transformers = pytest.importorskip("transformers")
    conv = transformers.pytorch_utils.Conv1D(8, 32)  # GPT-2's layer: no per-channel observer on its axis 0
    model = torch.nn.Sequential(conv, torch.nn.Linear(8, 4))
    with pytest.warns(UserWarning, match=r"layer '0' cannot take weight=int4, weight scale=absmax/channel"):
        rules = choose_formats(model, [QuantSpec(weight="int4", observers=CHANNEL), QuantSpec(weight="mxfp4")],
                               [torch.randn(5, 32)])
    assert rules["0"].weight.name == "mxfp4"
    with pytest.warns(UserWarning) as said:
        rules = choose_formats(model, [QuantSpec(weight="int4", observers=CHANNEL),
                                       QuantSpec(weight="fp4_e2m1", observers=CHANNEL)], [torch.randn(5, 32)])
    assert [str(w.message).split(":")[1].strip() for w in said] == [
        "layer '0' cannot take weight=int4", "layer '0' cannot take weight=fp4_e2m1",
        "layer '0' can take none of the candidates; it is left out of the rules"]
    assert list(rules) == ["1"]


def test_input_observers_are_calibrated_on_the_rows():
    torch.manual_seed(5)
    layer, x = torch.nn.Linear(32, 8), torch.randn(12, 32)
    observed = {"input": Observer()}
    candidates = [QuantSpec(input="int8", weight=w, observers=observed) for w in ("mxfp4", "mxfp6_e2m3")]
    choose_formats(torch.nn.Sequential(layer), candidates, [x])
    s = x.abs().max() / 127  # the per-tensor absmax scale of the rows (float32)
    w = lowbit.quantize(layer.weight.detach(), "mxfp4", axis=1)
    y = (lowbit.quantize(x / s, "int8") * s).double() @ w.double().T
    reference = x.double() @ layer.weight.detach().double().T
    expected = float((y - reference).norm() / (reference + layer.bias.detach().double()).norm())
    model = torch.nn.Sequential(layer)
    choose_formats(model, candidates, [x])
    assert logged_errors(changes(model)[0])["weight=mxfp4"] == pytest.approx(expected, rel=1e-3)


# -- what it refuses --------------------------------------------------------------------------------

def test_clear_errors():
    model, x = net(6), [torch.randn(4, 64)]
    with pytest.raises(TypeError, match="candidates must be a sequence of QuantSpecs"):
        choose_formats(model, MXFP4, x)
    with pytest.raises(TypeError, match="candidates must be QuantSpecs"):
        choose_formats(model, ["mxfp4", "int4"], x)
    with pytest.raises(ValueError, match="at least two candidates"):
        choose_formats(model, [MXFP4], x)
    with pytest.raises(ValueError, match="must differ"):
        choose_formats(model, [MXFP4, QuantSpec(input="mxfp8_e4m3", weight="mxfp4")], x)
    with pytest.raises(ValueError, match="needs a weight format"):
        choose_formats(model, [MXFP4, QuantSpec(input="mxfp8_e4m3")], x)
    with pytest.raises(ValueError, match="bits_per_weight must be a positive finite number"):
        choose_formats(model, [MXFP4, MXFP6], x, bits_per_weight=-1)
    with pytest.raises(ValueError, match="bits_per_weight"):
        choose_formats(model, [MXFP4, MXFP6], x, bits_per_weight=math.inf)
    with pytest.raises(TypeError, match="bits_per_weight must be a number"):
        choose_formats(model, [MXFP4, MXFP6], x, bits_per_weight="4")
    with pytest.raises(ValueError, match="samples"):
        choose_formats(model, [MXFP4, MXFP6], x, samples=0)
    with pytest.raises(ValueError, match="rules leave layers out"):
        choose_formats(model, [MXFP4, MXFP6], x, rules={"0": MXFP4})
    with pytest.raises(ValueError, match="empty"):
        choose_formats(model, [MXFP4, MXFP6], [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_formats(model, [MXFP4, MXFP6], x, rules={"6": None})
    assert changes(model)[-1].detail.endswith("over 3 layers (no budget)")


def test_a_partial_block_pays_a_whole_scale():
    from lowbit.emulate.methods.costs import weight_bits

    narrow, wide = torch.nn.Linear(64, 8), torch.nn.Linear(256, 8)
    assert weight_bits(narrow, QuantSpec(weight="int4_g128")) == 4 + 16 / 64  # one fp16 scale per 64-wide row
    assert weight_bits(wide, QuantSpec(weight="int4_g128")) == 4 + 16 / 128
    assert weight_bits(torch.nn.Linear(48, 8), QuantSpec(weight="mxfp4")) == 4 + 2 * 8 / 48  # two E8M0 scales
