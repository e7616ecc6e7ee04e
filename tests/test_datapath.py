"""Datapath models (lowbit.formats.datapath): the numba kernel bit for bit
against the exact Fraction reference over random parameters and inputs
(specials, signed zeros, subnormals, wide spans included); the parameters'
checks; reference_matmul's operands, inputs and bias; the CUDA MX matmul's
CPU model against its profiles; and the emulation layer's accumulate=.

The reference itself is checked against the published measurements and an
independent model in tests/test_datapath_published.py.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.emulate import QuantSpec, quantize_model, quantized_matmul
from lowbit.formats import DATAPATHS, BlockFormat, Datapath, FloatFormat, get_datapath, get_format, reference_matmul
from lowbit.formats import datapath_reference as reference
from lowbit.formats.datapath_matmul import alignment_exponents, datapath_product

FP32, FP16, BF16 = get_format("fp32"), get_format("fp16"), get_format("bf16")
E8M13 = FloatFormat(8, 13)


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal as float64 bit patterns (NaNs equal each other, zeros keep their signs)."""
    x, y = x.double(), y.double()
    both_nan = torch.isnan(x) & torch.isnan(y)
    return bool(((x.view(torch.int64) == y.view(torch.int64)) | both_nan).all())


def reference_product(a, b, datapath, c=None, a_emin=None, b_emin=None):
    a64, b64 = a.double().numpy(), b.double().numpy()
    a_e, b_e = alignment_exponents(a64, a_emin), alignment_exponents(b64, b_emin)
    rows, columns = a.shape[0], b.shape[0]
    out = torch.empty(rows, columns, dtype=torch.float64)
    for m in range(rows):
        for n in range(columns):
            value = reference.dot(a64[m].tolist(), b64[n].tolist(), datapath,
                                  c=0.0 if c is None else float(c[m, n]),
                                  a_exponents=a_e[m].tolist(), b_exponents=b_e[n].tolist())
            out[m, n] = float(value)
    return out


datapaths = st.builds(
    Datapath,
    name=st.just("drawn"),
    group=st.sampled_from([1, 2, 3, 4, 8, 16, None]),
    fraction_bits=st.sampled_from([None, 0, 3, 13, 23, 24, 25, 35]),
    alignment_rounding=st.sampled_from(["toward_zero", "down", "nearest_even"]),
    min_exponent=st.sampled_from([None, -20, -132]),
    accumulator=st.sampled_from([FP32, FP16, BF16, E8M13, None]),
    rounding=st.sampled_from(["nearest_even", "nearest_away", "toward_zero", "up", "down", "odd"]),
    promote_every=st.sampled_from([None, None, 2, 5]),
    promote_to=st.sampled_from([FP32, FP16]),
)

# fp16 values: normal, subnormal, signed zeros, and (rarely) Inf and NaN
halves = st.one_of(
    st.floats(-60000, 60000, width=16),
    st.sampled_from([0.0, -0.0, 2.0 ** -24, -(2.0 ** -24), 2.0 ** -14, 1.0, -1.0, 65504.0]),
)
specials = st.sampled_from([math.inf, -math.inf, math.nan])


@st.composite
def problems(draw, allow_specials=True):
    rows, columns, depth = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 20))
    values = st.one_of(halves, specials) if allow_specials and draw(st.booleans()) else halves
    a = torch.tensor(draw(st.lists(values, min_size=rows * depth, max_size=rows * depth)),
                     dtype=torch.float64).reshape(rows, depth)
    b = torch.tensor(draw(st.lists(values, min_size=columns * depth, max_size=columns * depth)),
                     dtype=torch.float64).reshape(columns, depth)
    return a, b


@settings(max_examples=300, deadline=None)
@given(datapaths, problems(), st.sampled_from([None, -14]), st.data())
def test_the_kernel_is_the_reference_bit_for_bit(datapath, problem, emin, data):
    a, b = problem
    accumulator = datapath.accumulator or FP32
    c_values = st.one_of(st.floats(-1e4, 1e4, width=16), st.sampled_from([0.0, -0.0]))
    c = torch.tensor(data.draw(st.lists(c_values, min_size=a.shape[0] * b.shape[0],
                                        max_size=a.shape[0] * b.shape[0])), dtype=torch.float64)
    c = accumulator.quantize(c).reshape(a.shape[0], b.shape[0]) if c.numel() else c.reshape(a.shape[0], b.shape[0])
    kernel = datapath_product(a, b, datapath, c=c, a_emin=emin, b_emin=emin)
    assert same_bits(kernel, reference_product(a, b, datapath, c, emin, emin))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-2.0 ** 100, 2.0 ** 100, width=32), min_size=2, max_size=12), st.data())
def test_exact_steps_too_wide_for_an_int64_come_from_the_reference(values, data):
    """Terms some 2**100 apart: the kernel hands those outputs to the
    reference, and they are still the exact sum rounded once."""
    tiny = data.draw(st.floats(2.0 ** -100, 2.0 ** -80, width=32))
    a = torch.tensor([values + [tiny]], dtype=torch.float64)
    b = torch.ones_like(a)
    for name in ("exact", "ieee_fp32", "ieee_fp32_fma"):
        datapath = DATAPATHS[name]
        assert same_bits(datapath_product(a, b, datapath), reference_product(a, b, datapath))
    exact = sum((Fraction(x) for x in a[0].tolist()), Fraction(0))
    assert datapath_product(a, b, DATAPATHS["exact"]).item() == float(exact)


def test_every_profile_computes_a_product_bit_for_bit_with_the_reference():
    torch.manual_seed(0)
    for name, datapath in DATAPATHS.items():
        if datapath.block_scaled or datapath.promote_every == "block":
            continue
        fmt = datapath.inputs[0] if datapath.inputs else FP16
        a = fmt.quantize(torch.randn(3, 70, dtype=torch.float64))
        b = fmt.quantize(torch.randn(2, 70, dtype=torch.float64) * 4)
        emin = getattr(fmt, "emin", None) if datapath.inputs else None
        kernel = datapath_product(a, b, datapath, a_emin=emin, b_emin=emin)
        assert same_bits(kernel, reference_product(a, b, datapath, None, emin, emin)), name


# -- the parameters -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,match", [
    ({"group": 0}, ValueError, "group must be an int >= 1"),
    ({"group": 2.0}, ValueError, "group must be"),
    ({"fraction_bits": -1}, ValueError, "fraction_bits must be an int >= 0"),
    ({"fraction_bits": 60}, ValueError, "fraction_bits must be at most 52"),
    ({"alignment_rounding": "up"}, ValueError, "alignment_rounding must be one of"),
    ({"rounding": "stochastic"}, ValueError, "rounding must be one of"),
    ({"accumulator": get_format("int8")}, TypeError, "accumulator must be a signed FloatFormat"),
    ({"accumulator": get_format("mxfp8_e4m3")}, TypeError, "accumulator must be"),
    ({"products": FP32, "fraction_bits": 23}, ValueError, "products are rounded only"),
    ({"inputs": ("fp16",)}, TypeError, "inputs must be None or element formats"),
    ({"promote_every": "blocks"}, ValueError, "promote_every must be an int >= 1 or None or 'block'"),
    ({"promote_every": 32, "block_scaled": True}, ValueError, "choose one"),
    ({"block_scaled": 1}, TypeError, "block_scaled must be True or False"),
])
def test_parameters_are_checked_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        Datapath("mine", **kwargs)


def test_profiles_by_name_with_variants_and_records():
    assert get_datapath("a100_fp16") is DATAPATHS["a100_fp16"]
    with pytest.raises(ValueError, match="unknown datapath 'a100'; the profiles are exact, ieee_fp32"):
        get_datapath("a100")
    with pytest.raises(TypeError, match="a datapath is a profile name or a Datapath"):
        get_datapath(3)
    wider = DATAPATHS["v100_fp16"].with_(name="v100 with a guard bit", fraction_bits=24)
    assert wider.group == 4 and wider.fraction_bits == 24 and DATAPATHS["v100_fp16"].fraction_bits == 23
    for datapath in (*DATAPATHS.values(), wider):
        assert Datapath.from_dict(json.loads(datapath.json)) == datapath
        assert datapath.describe().startswith(f"datapath {datapath.name}")
    described = DATAPATHS["h100_fp8"].describe()
    assert "32 products" in described and "13 fraction bits kept (w = -10)" in described and "e8m13" in described
    assert "DSV3" in described


# -- reference_matmul ---------------------------------------------------------------
def test_reference_matmul_checks_inputs_bias_and_shapes():
    a, b = torch.randn(2, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match="a has values that no input format of a100_fp16 .fp16. holds exactly"):
        reference_matmul(a, b, datapath="a100_fp16")
    a, b = a.half().float(), b.half().float()
    with pytest.raises(ValueError, match="bias must be exact in fp32 .a100_fp16's accumulator format"):
        reference_matmul(a, b, torch.full((3,), 0.1, dtype=torch.float64), datapath="a100_fp16")
    with pytest.raises(ValueError, match="same K"):
        reference_matmul(a, b[:, :4], datapath="a100_fp16")
    with pytest.raises(ValueError, match="bias must have N = 3 elements"):
        reference_matmul(a, b, torch.zeros(2), datapath="a100_fp16")
    bias = torch.tensor([1.0, -2.0, 0.5])
    assert torch.equal(reference_matmul(a, b, bias, datapath="exact"),
                       reference_matmul(a, b, datapath="exact") + bias.double())


def test_reference_matmul_of_encoded_operands():
    torch.manual_seed(1)
    x, w = lowbit.encode(torch.randn(4, 64), "mxfp8_e4m3", axis=1), lowbit.encode(torch.randn(3, 64), "mxfp4", axis=1)
    decoded = reference_matmul(x.decode(dtype=torch.float64), w.decode(dtype=torch.float64), datapath="v100_fp16")
    assert torch.equal(reference_matmul(x, w, datapath="v100_fp16"), decoded)  # a decoding datapath
    assert torch.equal(reference_matmul(x, w, datapath="exact"), reference_matmul(x, w))  # float64 is exact here
    with pytest.raises(ValueError, match="a has values that no input format of h100_fp8"):
        reference_matmul(x, w, datapath="h100_fp8")  # decoded MX values are not E4M3 values
    two_level = BlockFormat(get_format("fp4_e2m1"), 16, scale=get_format("fp8_e4m3"), tensor_scale=True)
    nv = lowbit.encode(torch.randn(3, 64), two_level, axis=1)
    with pytest.raises(ValueError, match="per-tensor scale"):
        reference_matmul(nv, nv, datapath="lowbit_mx_int8")
    with pytest.raises(ValueError, match="same block length"):
        reference_matmul(x, lowbit.encode(torch.randn(3, 64), "nvfp4", axis=1), datapath="b200_mxfp8")
    mx6 = lowbit.encode(torch.randn(3, 64), "mx6", axis=1)
    with pytest.raises(ValueError, match="sub-block shifts"):
        reference_matmul(mx6, mx6, datapath="b200_mxfp8")


def test_block_scaled_products_add_the_scales_exponents():
    """MMA-Sim's mxf8f6f4 vector in MX blocks: c = -1 plus the products 1
    and 2**-48; with the block scales 2**-16 and 2**-7 the tiny product's
    exponent is e(2**-16 as e5m2: -14) + e(2**-9) - 16 - 7 = -46, far below
    the others' 0, so F = 25 truncates it: +0, where the exact sum is 2**-48."""
    a, b = torch.zeros(1, 32), torch.zeros(1, 32)
    a[0, :3] = torch.tensor([2.0 ** -8, 2.0 ** -32, 0.5])  # scale 2**-16: elements 2**8, 2**-16, 2**15
    b[0, :2] = torch.tensor([2.0 ** 8, 2.0 ** -16])  # scale 2**-7: elements 2**15, 2**-9
    x, y = lowbit.encode(a, "mxfp8_e5m2", axis=1), lowbit.encode(b, "mxfp8_e5m2", axis=1)
    assert torch.equal(x.decode(), a) and torch.equal(y.decode(), b)
    assert reference_matmul(x, y, torch.tensor([-1.0]), datapath="exact").item() == 2.0 ** -48
    result = reference_matmul(x, y, torch.tensor([-1.0]), datapath="b200_mxfp8").item()
    assert result == 0.0 and math.copysign(1.0, result) == 1.0


# -- the emulation layer ---------------------------------------------------------------
def test_quantized_linear_accumulates_as_the_datapath_forward_and_backward():
    torch.manual_seed(3)
    spec = QuantSpec(input="fp16", weight="fp16", grad_output="fp16", accumulate="h100_fp16")
    assert str(spec) == "input=fp16, weight=fp16, grad_output=fp16, accumulate=datapath h100_fp16"
    linear = torch.nn.Linear(40, 6)
    model = quantize_model(torch.nn.Sequential(linear), spec)
    x = torch.randn(5, 40, requires_grad=True)
    y = model(x)
    x16, w16 = x.detach().half().float(), linear.weight.detach().half().float()
    expected = reference_matmul(x16, w16, datapath="h100_fp16").float() + linear.bias.detach()
    assert torch.equal(y, expected)
    g = torch.randn(5, 6).half().float()
    y.backward(g)
    assert torch.equal(x.grad, reference_matmul(g, w16.T.contiguous(), datapath="h100_fp16").float())
    assert torch.equal(linear.weight.grad, reference_matmul(g.T.contiguous(), x16.T.contiguous(),
                                                            datapath="h100_fp16").float())


def test_quantized_matmul_with_a_datapath_batches_and_compiles():
    torch.manual_seed(4)
    a, b = torch.randn(2, 3, 24).half().float(), torch.randn(24, 5).half().float()
    mine = DATAPATHS["a100_fp16"].with_(name="a100 with round to nearest", rounding="nearest_even")
    spec = QuantSpec(accumulate=mine)
    product = quantized_matmul(a, b, spec)
    for i in range(2):
        assert torch.equal(product[i], reference_matmul(a[i], b.T.contiguous(), datapath=mine).float())
    compiled = torch.compile(lambda x, y: quantized_matmul(x, y, spec), fullgraph=True)
    assert torch.equal(compiled(a, b), product)


def test_accumulate_refuses_what_cannot_apply():
    with pytest.raises(ValueError, match="block-scaled or block-promoting datapath needs Encoded operands"):
        QuantSpec(accumulate="b200_mxfp8")
    with pytest.raises(ValueError, match="block-scaled or block-promoting"):
        QuantSpec(accumulate="lowbit_mx_fp16")
    model = quantize_model(torch.nn.Linear(8, 2), QuantSpec(accumulate="a100_fp16"))
    with pytest.raises(ValueError, match="give the roles of this product"):
        model(torch.randn(3, 8))
    with pytest.raises(ValueError, match="accumulate must be an element format .* or a datapath"):
        QuantSpec(accumulate="mxfp4")


def test_zero_sized_products():
    empty = torch.zeros(2, 0)
    assert torch.equal(reference_matmul(empty, torch.zeros(3, 0), datapath="v100_fp16"), torch.zeros(2, 3,
                                                                                                     dtype=torch.float64))
    assert reference_matmul(torch.zeros(0, 4), torch.zeros(3, 4), datapath="exact").shape == (0, 3)
    assert np.isnan(reference_matmul(torch.tensor([[math.inf]]), torch.tensor([[0.0]]), datapath="exact").item())
