"""GPTQ (lowbit.emulate.methods.gptq) against independent oracles:
round to nearest where the Hessian is diagonal, a float64 numpy GPTQ
written here from the paper's equations (column by column, no lazy
batches) with quantizers written here from their definitions (int4
per-channel absmax, OCP MXFP4, GPTQ's asymmetric int4 groups with fp16
scales), the output error against round to nearest on correlated inputs,
the fixed-scale rounding against the nearest grid point, and the
Prerounded weights' life in quantized models."""

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.emulate import Observer, QuantEmbedding, QuantLinear, QuantSpec, emulating, quantize_model, restore_model, summary_table
from lowbit.emulate.methods import changes, gptq
from lowbit.emulate.methods.column_rounding import column_rounder
from lowbit.emulate.methods.error_feedback import gptq_matrix
from lowbit.emulate.methods.layers import rounded_matrix
from lowbit.emulate.prerounded import Prerounded
from lowbit.formats import BlockFormat, get_format

NVFP4_TS = BlockFormat(get_format("fp4_e2m1"), 16, scale=get_format("fp8_e4m3"), tensor_scale=True, name="nvfp4_ts")
CHANNEL = {"weight": Observer(granularity="channel")}

#: a format of each kind GPTQ rounds (block, tile, whole-row, zero-point, codebook, microexponent,
#: observer-scaled, tensor-scaled and plain element formats)
SPECS = {
    "mxfp4": QuantSpec(weight="mxfp4"),
    "mxfp8_e4m3": QuantSpec(weight="mxfp8_e4m3"),
    "nvfp4": QuantSpec(weight="nvfp4"),
    "nvfp4_ts": QuantSpec(weight=NVFP4_TS),
    "int4 channel": QuantSpec(weight="int4", observers=CHANNEL),
    "int4_g128_asym": QuantSpec(weight="int4_g128_asym"),
    "nf4": QuantSpec(weight="nf4"),
    "mx6": QuantSpec(weight="mx6"),
}
MORE_SPECS = {
    "mxfp4 ceil": QuantSpec(weight="mxfp4", scale_rule="ceil"),
    "mxint8": QuantSpec(weight="mxint8"),
    "nvfp4 4over6": QuantSpec(weight=dataclasses.replace(get_format("nvfp4"), scale_rule="4over6")),
    "nvfp4_16x16": QuantSpec(weight="nvfp4_16x16"),
    "int8_rowwise": QuantSpec(weight="int8_rowwise"),
    "mx4": QuantSpec(weight="mx4"),
    "fp4_bnb": QuantSpec(weight="fp4_bnb"),
    "int4 tensor": QuantSpec(weight="int4", observers={"weight": Observer()}),
    "int4 group mse": QuantSpec(weight="int4", observers={"weight": Observer("mse", "group", group_size=32)}),
    "fp8_e4m3": QuantSpec(weight="fp8_e4m3"),
    "ternary": QuantSpec(weight="ternary"),
    "mxfp4 toward_zero": QuantSpec(weight="mxfp4", rounding="toward_zero"),
    "int4_g128_asym up": QuantSpec(weight="int4_g128_asym", rounding="up"),
    "mx6 nearest_away": QuantSpec(weight="mx6", rounding="nearest_away"),
}
ALL_SPECS = {**SPECS, **MORE_SPECS}


def linear(out_features, in_features, seed, dtype=torch.float32, ties=False):
    """A Linear with normal weights (a few large ones), or weights on a dyadic grid full of rounding ties."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(in_features, out_features, dtype=dtype)
    with torch.no_grad():
        if ties:
            layer.weight.copy_(torch.randint(-48, 49, layer.weight.shape) / 8.0)
        else:
            layer.weight.normal_().mul_(torch.where(torch.rand(layer.weight.shape) < 0.02, 8.0, 1.0))
    return layer


def rtn(layer, spec):
    return rounded_matrix(layer, spec)


# -- 1. a diagonal Hessian gives round to nearest -----------------------------------------------------
@pytest.mark.parametrize("name", ALL_SPECS)
def test_identity_hessian_is_round_to_nearest(name):
    spec = ALL_SPECS[name]
    for shape, ties in (((48, 256), False), ((40, 256), True)):
        layer = linear(*shape, seed=len(name), ties=ties)
        w = layer.weight.detach()
        eye = torch.eye(shape[1], dtype=torch.float64) * 3.0
        got = gptq_matrix(w, eye, column_rounder(spec, w, w))
        assert torch.equal(got, rtn(layer, spec).double()), (name, ties)


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4_ts", "int4_g128_asym", "mx6", "nvfp4_16x16", "int4 channel",
                                  "int4 group mse", "ternary"])
def test_a_diagonal_hessian_in_any_order_is_round_to_nearest(name):
    """No feedback where H is diagonal, so the order (act_order by a random
    diagonal), ragged blocks (200 inputs, 40 outputs) and static groups
    change nothing."""
    spec = ALL_SPECS[name]
    in_features = 256 if name.startswith("int4") else 200
    layer = linear(40, in_features, seed=3)
    w = layer.weight.detach()
    diagonal = torch.diag(torch.rand(in_features, dtype=torch.float64) + 0.1)
    for static in (False, True):
        got = gptq_matrix(w, diagonal, column_rounder(spec, w, w), act_order=True, static_groups=static,
                          block_size=48)
        assert torch.equal(got, rtn(layer, spec).double()), (name, static)


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "int4 channel", "int4_g128_asym", "nf4", "mx6", "ternary"])
def test_identity_inputs_through_the_model_give_round_to_nearest(name):
    spec = ALL_SPECS[name]
    model = torch.nn.Sequential(linear(32, 256, seed=5))
    expected = rtn(model[0], spec)
    batches = [torch.eye(256)[:128], torch.eye(256)[128:]]  # X^T X = I: H = 2 I / 256
    model = gptq(model, spec, batches)
    assert isinstance(model[0], QuantLinear) and torch.equal(model[0].weight, expected)
    (change,) = changes(model)
    assert change.error_after == change.error_before


@settings(max_examples=8)
@given(st.sampled_from(sorted(SPECS)), st.integers(1, 3), st.integers(0, 2**16), st.floats(1e-3, 1e3))
def test_round_to_nearest_for_any_diagonal_hessian(name, blocks, seed, magnitude):
    spec = SPECS[name]
    layer = linear(16, 128 * blocks, seed)
    with torch.no_grad():
        layer.weight.mul_(magnitude)
    w = layer.weight.detach()
    generator = torch.Generator().manual_seed(seed)
    diagonal = torch.diag(torch.rand(w.shape[1], generator=generator, dtype=torch.float64) + 1e-3)
    assert torch.equal(gptq_matrix(w, diagonal, column_rounder(spec, w, w), act_order=seed % 2 == 0),
                       rtn(layer, spec).double())


# -- 2. a numpy GPTQ from the paper's equations ---------------------------------------------------------
def reference_gptq(w, h, fit, quantize, group_size, *, damp=0.01, act_order=False, static_groups=False):
    """GPTQ in float64 numpy, one column at a time with its error spread over
    every later column at once (the paper's equations without lazy batches).
    ``fit(values)`` gives the parameters of a group of columns (out, g);
    ``quantize(column, parameters)`` rounds a column."""
    w, h = w.copy(), h.copy()
    n = w.shape[1]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    groups = {}
    if static_groups:
        groups = {g: fit(w[:, g * group_size:(g + 1) * group_size]) for g in range(-(-n // group_size))}
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(n)
    h = h[order][:, order] + damp * np.mean(np.diag(h)) * np.eye(n)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U, U upper
    work = w[:, order]
    q = np.zeros_like(w)
    for j, column in enumerate(order):
        g = column // group_size
        if g not in groups:  # the group's current values, when the first of its columns comes up
            members = [k for k, c in enumerate(order) if c // group_size == g]
            groups[g] = fit(work[:, sorted(members, key=lambda k: order[k])])
        value = quantize(work[:, j], groups[g])
        error = (work[:, j] - value) / u[j, j]
        work[:, j + 1:] -= np.outer(error, u[j, j + 1:])
        q[:, column] = value
    return q


def int4_channel(original):
    """int4 with one absmax scale per output channel from the original weight (float32 amax / 7)."""
    scale = (np.abs(original).max(axis=1).astype(np.float32) / np.float32(7)).astype(np.float64)
    return (lambda values: scale), (lambda x, s: np.clip(np.round(x / s), -8, 7) * s)


E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def mxfp4_fit(values):
    """OCP MX v1.0: X = 2^(floor(log2(amax)) - emax_elem), emax_elem = 2 for E2M1; zero blocks take 2^-127."""
    amax = np.abs(values).max(axis=1)
    exponent = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - 2, -127)
    return 2.0 ** np.clip(exponent, -127, 127)


def mxfp4_quantize(x, scale):
    """E2M1 of x / scale: nearest value, ties to the even code, saturating at 6."""
    t = np.abs(x / scale)
    distance = np.abs(t[:, None] - E2M1[None, :])
    nearest = distance.min(axis=1, keepdims=True)
    candidates = np.where(distance == nearest, np.arange(8), 99)
    code = np.where((candidates % 2 == 0) & (candidates < 99), candidates, 99).min(axis=1)
    code = np.where(code == 99, candidates.min(axis=1), code)
    return np.sign(x) * E2M1[code] * scale


def asym_fit(values):
    """GPTQ's asymmetric min-max quantizer: the range includes 0, the scale
    (hi - lo) / 15 rounded to fp16, the zero point round(-lo / scale)."""
    lo, hi = np.minimum(values.min(axis=1), 0.0), np.maximum(values.max(axis=1), 0.0)
    scale = ((hi - lo) / 15).astype(np.float16).astype(np.float64)
    scale = np.where(scale == 0, 2.0 ** -24, scale)
    scale = np.where(hi == lo, 1.0, scale)
    return scale, np.clip(np.round(-lo / scale), 0, 15)


def asym_quantize(x, parameters):
    scale, zero = parameters
    return (np.clip(np.round(x / scale) + zero, 0, 15) - zero) * scale


def correlated_batches(features, rows=512, seed=0, dtype=torch.float32, dead=()):
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=generator) / features ** 0.5 + torch.eye(features)
    scale = torch.exp(torch.randn(features, generator=generator))  # features of different magnitudes
    x = (torch.randn(rows, features, generator=generator) @ mix * scale).to(dtype)
    x[:, list(dead)] = 0
    return [x[i:i + 128] for i in range(0, rows, 128)]


def hessian_of(batches):
    x = torch.cat(batches).double().numpy()
    return 2 * x.T @ x / len(x)


@pytest.mark.parametrize("act_order,static_groups", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("quantizer", ["int4 channel", "mxfp4", "int4_g128_asym"])
def test_gptq_equals_a_numpy_gptq_from_the_paper(quantizer, act_order, static_groups):
    in_features = 256
    layer = linear(24, in_features, seed=11, dtype=torch.float64)
    batches = correlated_batches(in_features, dtype=torch.float64, dead=(5, 77))  # two dead inputs
    w = layer.weight.detach().numpy().copy()
    if quantizer == "int4 channel":
        (fit, quantize), group_size = int4_channel(w), in_features
    elif quantizer == "mxfp4":
        fit, quantize, group_size = mxfp4_fit, mxfp4_quantize, 32
    else:
        fit, quantize, group_size = asym_fit, asym_quantize, 128
    expected = reference_gptq(w, hessian_of(batches), fit, quantize, group_size, act_order=act_order,
                              static_groups=static_groups)
    nearest = rtn(layer, SPECS[quantizer]).numpy()
    model = gptq(torch.nn.Sequential(layer), SPECS[quantizer], batches, act_order=act_order,
                 static_groups=static_groups, block_size=64)
    got = model[0].weight.detach().numpy()
    assert np.array_equal(got, expected), f"{(got != expected).sum()} of {got.size} differ"
    assert (got != nearest).mean() > 0.1  # GPTQ moved many weights off round to nearest


def test_lazy_batches_of_any_size_give_the_same_weight():
    layer = linear(16, 192, seed=2, dtype=torch.float64)
    batches = correlated_batches(192, dtype=torch.float64)
    h = torch.from_numpy(hessian_of(batches))
    w = layer.weight.detach()
    spec = SPECS["mx6"]
    results = [gptq_matrix(w, h, column_rounder(spec, w, w), block_size=b, act_order=True) for b in (1, 16, 50, 192)]
    assert all(torch.equal(results[0], r) for r in results[1:])


# -- 3. less output error than round to nearest ------------------------------------------------------
@pytest.mark.parametrize("name", ALL_SPECS)
def test_gptq_lowers_the_output_error_below_round_to_nearest(name):
    spec = ALL_SPECS[name]
    layer = linear(64, 256, seed=7)
    batches = correlated_batches(256, seed=1)
    x = torch.cat(batches).double()
    w = layer.weight.detach().clone()
    nearest = rtn(layer, spec)
    model = gptq(torch.nn.Sequential(layer), spec, batches)
    q = model[0].weight.detach()

    def error(rounded):
        return float(torch.linalg.matrix_norm(x @ (w.double() - rounded.double()).T))

    assert error(q) < error(nearest)
    (change,) = changes(model)
    assert change.error_after < change.error_before and change.method == "gptq"


def test_fewer_calibration_rows_than_input_features_are_warned_about():
    """A singular H: damping makes it invertible, but GPTQ then fits the
    rows it saw (on MiniLM, 4 sentences made its embeddings worse than
    round to nearest's); said once per call, naming the layer."""
    model = torch.nn.Sequential(linear(8, 64, seed=3), torch.nn.ReLU(), linear(8, 8, seed=4))
    few = [torch.randn(20, 64, generator=torch.Generator().manual_seed(0))]
    with pytest.warns(UserWarning, match=r"1 layer\(s\) saw fewer calibration rows than input features.*0 \(20 < 64\)"):
        gptq(copy.deepcopy(model), SPECS["mxfp4"], few)
    enough = [torch.randn(64, 64, generator=torch.Generator().manual_seed(0))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gptq(copy.deepcopy(model), SPECS["mxfp4"], enough)


# -- the rounding with fixed scales -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["mxfp4", "nvfp4_ts", "int4_g128_asym", "nf4", "mx6", "mxint8", "int4 group mse"])
def test_rounding_with_fixed_scales_picks_a_nearest_grid_point(name):
    """Scales set from one set of values, other values (up to 3x larger:
    they saturate) rounded with them: each result is on the group's grid
    (element values times the fixed scales) and no grid point is nearer."""
    spec = ALL_SPECS[name]
    fmt = spec.weight
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(16, 128, generator=generator)
    later = first * torch.rand(16, 128, generator=generator) * 3 + torch.randn(16, 128, generator=generator) * 0.1
    rounder = column_rounder(spec, first, first)
    group = rounder.group(0)
    rounder.set_scales(group, first[:, group.start:group.stop])
    if name == "mx6":
        step = fmt.grid(first[:, :16], axis=1).ulp
        grids = [torch.arange(-15, 16, dtype=torch.float64)[None, :] * step[:, c:c + 1] for c in range(16)]
    elif name == "int4_g128_asym":
        encoded = fmt.encode(first, axis=1)
        scale = fmt.scale.decode(encoded.scales.reshape(-1), dtype=torch.float64)
        zero = lowbit.unpack(encoded.zero_points, 4, 16).double()
        grid = (torch.arange(16, dtype=torch.float64)[None, :] - zero[:, None]) * scale[:, None]
        grids = [grid] * 16
    elif name == "int4 group mse":
        scale = spec.observer("weight").scale(first[:, :32], fmt, lambda t: fmt.quantize(t))[:, :1]
        grids = [(torch.arange(-8, 8, dtype=torch.float32)[None, :] * scale).double()] * 16  # Q(x / s) * s in float32
    else:
        element, width = fmt.element, fmt.block_size
        encoded = fmt.encode(first[:, :width], axis=1, tensor_scale=rounder.tensor_scale)
        scale = fmt.scale.decode(encoded.scales.reshape(-1), dtype=torch.float64)[:, None]
        grid = torch.from_numpy(element.values())[None, :] * scale
        if fmt.rounds_to_float32 or fmt.tensor_scale:
            grid = grid.float().double()
        if fmt.tensor_scale:
            grid = (grid.float() * torch.tensor(rounder.tensor_scale, dtype=torch.float32)).double()
        grids = [grid] * 16
    for column in range(16):
        x = later[:, column].double()
        q = rounder.round(column, later[:, column])
        distance = (x[:, None] - grids[column]).abs()
        on_grid = (q[:, None] == grids[column]).any(dim=1)
        assert bool(on_grid.all()), (name, column)
        assert bool(((x - q).abs() <= distance.min(dim=1).values * (1 + 1e-9)).all()), (name, column)


def test_encode_takes_a_given_tensor_scale():
    x = torch.randn(8, 64)
    whole = torch.cat([x, torch.full((1, 64), 50.0)])
    ts = NVFP4_TS.encode(whole, axis=1).tensor_scale
    part = NVFP4_TS.encode(x, axis=1, tensor_scale=ts)
    assert part.tensor_scale == ts and torch.equal(part.decode(), NVFP4_TS.encode(whole, axis=1).decode()[:8])
    with pytest.raises(ValueError, match="tensor_scale must be a float32 number exactly .* nearest float32 is "
                                         "0.10000000149011612"):
        NVFP4_TS.encode(x, tensor_scale=0.1)
    with pytest.raises(ValueError, match="tensor_scale must be a positive float32 value of at most"):
        NVFP4_TS.encode(x, tensor_scale=-1.0)
    with pytest.raises(ValueError, match="mxfp4 has no per-tensor scale"):
        get_format("mxfp4").encode(x, tensor_scale=1.0)


# -- 5. the GPTQ'd model: its marker, restore_model, quantizing again -------------------------------
def two_layers(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))


def test_gptq_layers_keep_their_weight_and_restore_model_gives_back_the_original():
    model = two_layers()
    first, second = model[0], model[2]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weight = first.weight
    spec = QuantSpec(input="mxfp8_e4m3", weight="int4_g128_asym")
    batches = correlated_batches(128, seed=3)
    model = gptq(model, spec, batches)
    q = model[0].weight.detach().clone()
    marker = model[0].spec.weight
    assert (marker.format, marker.method) == (get_format("int4_g128_asym"), "gptq") and model[0].weight is weight
    assert "int4_g128_asym (gptq)" in summary_table(model)
    assert not torch.equal(rtn(first, spec), q)  # rounding the GPTQ weight again would change it
    x = batches[0]
    expected = torch.nn.functional.linear(get_format("mxfp8_e4m3").quantize(x, axis=-1), q, first.bias)
    with torch.no_grad():
        assert torch.equal(model[0](x), expected)
    # quantizing again with the same weight format keeps GPTQ's values; another format rounds them
    model = quantize_model(model, QuantSpec(input="mxfp8_e5m2", weight="int4_g128_asym"))
    assert isinstance(model[0].spec.weight, Prerounded) and torch.equal(model[0].rounded_weight(), q)
    assert not isinstance(quantize_model(model, QuantSpec(weight="int4_g128_asym", rounding="up"))[0].spec.weight,
                          Prerounded)  # another rounding mode is another rounding
    model = quantize_model(model, QuantSpec(weight="mxfp4"))
    assert model[0].spec.weight == get_format("mxfp4")
    assert torch.equal(model[0].rounded_weight(), get_format("mxfp4").quantize(q, axis=1))
    model = restore_model(model)
    assert model[0] is first and model[2] is second and first.weight is weight
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert changes(model) == []
    assert not isinstance(quantize_model(model, spec)[0].spec.weight, Prerounded)  # the mark went with the undo


def test_copies_and_moves_keep_the_gptq_weight():
    model = gptq(two_layers(), SPECS["int4 channel"], correlated_batches(128, seed=5))
    q = model[0].weight.detach().clone()
    assert not torch.equal(rtn(model[0].original, SPECS["int4 channel"]), q)
    copied = copy.deepcopy(model)  # new Parameters with the same values
    assert copied[0].weight is not model[0].weight and torch.equal(copied[0].rounded_weight(), q)
    requantized = quantize_model(copied, QuantSpec(input="mxfp8_e4m3", weight="int4", observers=CHANNEL))
    assert isinstance(requantized[0].spec.weight, Prerounded) and torch.equal(requantized[0].rounded_weight(), q)
    wide = copy.deepcopy(model).to(torch.float64)  # an exact move to another dtype
    assert torch.equal(wide[0].rounded_weight(), q.double())


def test_a_changed_weight_is_rounded_again():
    model = gptq(two_layers(), QuantSpec(weight="mxfp4"), correlated_batches(128, seed=4))
    layer = model[0]
    q = layer.weight.detach().clone()
    assert torch.equal(layer.rounded_weight(), q)
    with torch.no_grad():
        layer.weight.mul_(1.3)  # an in-place change (an optimizer step)
    assert torch.equal(layer.rounded_weight(), get_format("mxfp4").quantize(q * 1.3, axis=1))
    model = gptq(two_layers(), QuantSpec(weight="int4", observers=CHANNEL), correlated_batches(128, seed=4))
    layer = model[0]
    layer.weight = torch.nn.Parameter(layer.weight.detach() + 0.01)  # a new parameter (load_state_dict(assign=True))
    fresh = torch.nn.Linear(128, 64)
    fresh.weight = torch.nn.Parameter(layer.weight.detach().clone())
    assert torch.equal(layer.rounded_weight(), QuantLinear(fresh, SPECS["int4 channel"]).rounded_weight())


def test_gptq_on_a_bare_layer_and_on_a_copy():
    layer = linear(16, 64, seed=1)
    weight = layer.weight.detach().clone()
    copy = gptq(layer, SPECS["mxfp4"], correlated_batches(64), inplace=False)
    assert torch.equal(layer.weight, weight) and isinstance(copy, QuantLinear) and copy.original is not layer
    quantized = gptq(layer, SPECS["mxfp4"], correlated_batches(64))
    assert isinstance(quantized, QuantLinear) and quantized.original is layer and len(changes(quantized)) == 1
    assert restore_model(quantized) is layer and torch.equal(layer.weight, weight)


def test_a_small_llama_end_to_end():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    model = transformers.LlamaForCausalLM(config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = [torch.randint(0, 128, (2, 32)) for _ in range(4)]
    with torch.no_grad():
        reference = model(tokens[0]).logits
    spec = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")
    model = gptq(model, spec, tokens, forward=lambda m, batch: m(batch))
    log = changes(model)
    assert len(log) == 15 and {c.layer for c in log} >= {"model.layers.1.mlp.down_proj", "lm_head"}
    assert all(c.error_after < c.error_before for c in log)
    with torch.no_grad():
        logits = model(tokens[0]).logits
    assert torch.isfinite(logits).all() and not torch.equal(logits, reference)
    assert "mxfp4 (gptq)" in summary_table(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # a change: the head is rounded to nearest again, and said so
    assert "mxfp4 (to nearest: the weight changed since gptq)" in summary_table(model)
    model = restore_model(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


# -- sequential calibration ----------------------------------------------------------------------------
def test_sequential_gptq_sees_the_layers_before_as_gptq_left_them():
    """The second layer's Hessian comes from the first layer's output with GPTQ's weight and the spec's
    input rounding in place: the same as GPTQ of the second layer alone on those outputs."""
    torch.manual_seed(40)
    model = torch.nn.Sequential(torch.nn.Linear(96, 128), torch.nn.GELU(), torch.nn.Linear(128, 32))
    batches = correlated_batches(96, rows=768, seed=41)
    spec = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")
    first_alone = gptq(copy.deepcopy(model[:1]), spec, batches)
    with torch.no_grad():
        second_inputs = [model[1](first_alone(x)) for x in batches]
    second_alone = gptq(copy.deepcopy(model[2:]), spec, second_inputs)
    one_pass = gptq(copy.deepcopy(model), spec, batches)
    sequential = gptq(copy.deepcopy(model), spec, batches, sequential=True)
    assert torch.equal(sequential[0].weight, first_alone[0].weight)
    assert torch.equal(sequential[2].weight, second_alone[0].weight)
    assert not torch.equal(one_pass[2].weight, sequential[2].weight)
    assert all(c.detail.endswith("static_groups, sequential, 768 rows") for c in changes(sequential))


def test_sequential_stages_group_the_layers_that_share_an_input():
    from lowbit.emulate.methods.error_feedback import _stages

    from helpers import small_llama
    model = small_llama()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    stages = _stages(model, names, [torch.randint(0, 100, (2, 8))], None)
    block = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
             ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    expected = [[f"model.layers.{i}.{n}" for n in stage] for i in range(2) for stage in block] + [["lm_head"]]
    assert stages == expected


def test_sequential_gptq_that_fails_on_a_later_layer_changes_nothing():
    torch.manual_seed(42)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="layer '2': the damped Hessian is not positive definite"):
        gptq(model, SPECS["mxfp4"], [torch.randn(64, 32)], damp=0.0, sequential=True)  # 64 rows < 256 inputs
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear] and not changes(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_gpt2_conv1d_layers_and_a_tied_head():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=128, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    head = model.lm_head.weight.detach().clone()
    tokens = [torch.randint(0, 128, (2, 32)) for _ in range(2)]
    with pytest.warns(UserWarning, match="gptq leaves lm_head as it is: a weight tied"):
        model = gptq(model, QuantSpec(weight="mx6"), tokens)
    assert {c.layer for c in changes(model)} == {f"transformer.h.0.{n}" for n in
                                                  ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert torch.equal(model.lm_head.weight, head)
    attention = model.transformer.h[0].attn.c_attn
    assert type(attention).__name__ == "QuantConv1D" and attention.spec.weight.name == "mx6 (gptq)"
    assert all(c.error_after < c.error_before for c in changes(model))
    with torch.no_grad():
        assert torch.isfinite(model(tokens[0]).logits).all()


# -- 6. errors ----------------------------------------------------------------------------------------
def test_bad_arguments_raise_before_anything_changes():
    model = two_layers()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = correlated_batches(128)
    spec = SPECS["mxfp4"]
    with pytest.raises(ValueError, match="batches is empty"):
        gptq(model, spec, [])
    with pytest.raises(ValueError, match="no linear layer"):
        gptq(torch.nn.Sequential(torch.nn.Conv1d(3, 3, 1)), spec, batches)
    with pytest.raises(TypeError, match="spec must be a QuantSpec"):
        gptq(model, "mxfp4", batches)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="block_size must be a positive int"):
            gptq(model, spec, batches, block_size=bad)
    for bad in (-0.1, float("nan"), "1%"):
        with pytest.raises(ValueError, match="damp must be a finite number"):
            gptq(model, spec, batches, damp=bad)
    with pytest.raises(TypeError, match="act_order must be a bool"):
        gptq(model, spec, batches, act_order=1)
    with pytest.raises(ValueError, match="double quantization"):
        gptq(model, QuantSpec(weight="nf4_dq"), batches)
    with pytest.raises(ValueError, match="stochastic"):
        gptq(model, QuantSpec(weight="mxfp4", rounding="stochastic"), batches)
    with pytest.raises(ValueError, match="group scales need"):
        gptq(model, QuantSpec(weight="int4", observers={"weight": Observer(granularity="group", group_size=48)}),
             batches)
    with pytest.raises(ValueError, match="Prerounded marker; give gptq a format"):
        gptq(model, QuantSpec(weight=Prerounded("mxfp4", "gptq")), batches)
    with pytest.raises(ValueError, match="damped Hessian is not positive definite"):
        gptq(model, spec, [torch.ones(4, 128)], damp=0)  # rank one
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'2': its weight holds NaN"):
        gptq(model, spec, batches)
    model[2].weight.data.copy_(state["2.weight"])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()) and changes(model) == []
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


def test_the_marker_stays_in_its_place():
    with pytest.raises(ValueError, match="belongs in the weight role"):
        QuantSpec(input=Prerounded("mxfp4", "gptq"))
    marked = QuantSpec(weight=Prerounded("mxfp4", "gptq"), scale_rule="ceil")
    assert str(marked) == "weight=mxfp4 (gptq), scale_rule=ceil"
    with pytest.raises(ValueError, match="emulating takes formats"):
        emulating(marked)
    with pytest.raises(ValueError, match="QuantEmbedding takes no Prerounded weight"):
        QuantEmbedding(torch.nn.Embedding(4, 4), marked)
    with pytest.raises(ValueError, match="method must be"):
        Prerounded("mxfp4", "")
    layer = torch.nn.Linear(32, 4)  # a marker no method set: the weight is rounded as usual
    assert torch.equal(QuantLinear(layer, marked).rounded_weight(),
                       QuantLinear(layer, QuantSpec(weight="mxfp4", scale_rule="ceil")).rounded_weight())
