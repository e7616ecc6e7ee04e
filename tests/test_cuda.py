"""The CUDA extension's kernels: every format family cast by them, bit for
bit equal to the reference on the CPU, for every input dtype, odd and
misaligned sizes, non-contiguous inputs and other axes; stochastic
rounding; the ops against their fakes; the emulation layer end to end.

Each test runs twice: on a GPU (``gpu``, marked ``cuda``, skipped without
one) and on the emulated build (``emulated``: the same .cu kernels compiled
for the host and run thread after thread on CPU tensors, see docs/cuda.md),
so that machines without a GPU run the kernels' own code too."""

import pytest
import torch

import lowbit
from lowbit.formats import BlockFormat, abi, backends


@pytest.fixture(scope="module", params=[pytest.param("gpu", marks=pytest.mark.cuda), "emulated"])
def flavour(request):
    if request.param == "gpu":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU")
        if not lowbit.cuda.available():
            pytest.fail(f"a GPU is present but the extension cannot be used: {lowbit.cuda.missing()}",
                        pytrace=False)
        return request.param
    try:
        backends.get("cuda_emulated")
    except backends.BackendUnavailable as why:
        pytest.skip(str(why))
    return request.param


@pytest.fixture
def device(flavour, monkeypatch):
    """Where the kernels' inputs live: the GPU, or the CPU with the emulated
    build as the default backend for CPU data."""
    if flavour == "gpu":
        return torch.device("cuda")
    monkeypatch.setitem(backends.defaults, "cpu", "cuda_emulated")
    return torch.device("cpu")


@pytest.fixture
def ops(device):
    return torch.ops.lowbit_cuda if device.type == "cuda" else torch.ops.lowbit_emulated

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
ELEMENT = ["fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "fp6_e3m2", "fp4_e2m1", "e8m0", "p3109_8p3", "bf16", "fp16",
           "int8", "int4", "uint5"]
SCALED = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4", "mx9", "mx6", "mx4",
          "msfp12", "msfp16", "nf4", "fp4_bnb", "kmeans4_g64", "nf4_dq",
          # rows of codes that end inside a byte, packed by neighbouring threads with atomic ORs
          lowbit.BlockFormat(lowbit.get_format("fp6_e3m2"), 2, scale=lowbit.get_format("e8m0")),
          lowbit.MicroexponentFormat(2, 4, 2, micro_bits=1)]


def data(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * torch.logspace(-8, 8, shape[-1], base=2,
                                                                              dtype=torch.float64)
    flat = x.view(-1)
    flat[:: 97] = 0.0
    flat[5 % flat.numel()] = float("nan")
    return x.to(dtype)


def outcome(call):
    try:
        return call()
    except ValueError as error:
        return str(error)


def same(gpu, reference, context):
    if isinstance(gpu, str) or isinstance(reference, str):
        assert gpu == reference, context
    elif isinstance(gpu, lowbit.Encoded):
        assert gpu == reference, context
    else:
        gpu = gpu.cpu()
        assert gpu.dtype == reference.dtype and gpu.shape == reference.shape, context
        if not gpu.dtype.is_floating_point:
            assert torch.equal(gpu, reference), context
            return
        nan = torch.isnan(gpu)
        assert torch.equal(nan, torch.isnan(reference)), context
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[gpu.element_size()]
        assert torch.equal(gpu[~nan].view(bits), reference[~nan].view(bits)), context


def layouts(x, device):
    """Contiguous, transposed, and a strided slice, each on the device."""
    yield x.to(device)
    yield x.to(device).t()
    yield x.to(device)[:, ::3]


def test_the_kernels_are_the_default_backend(device):
    chosen = backends.resolve(None, device.type, lowbit.get_format("mxfp4"), "quantize")
    assert chosen.name == ("cuda" if device.type == "cuda" else "cuda_emulated")


@pytest.mark.parametrize("name", ELEMENT)
@pytest.mark.parametrize("dtype", DTYPES)
def test_element_formats(name, dtype, device):
    fmt = lowbit.get_format(name)
    for x in layouts(data((37, 129), dtype), device):
        for rounding in abi.ROUNDINGS:  # the modes the kernels implement
            policy = dict(rounding=rounding, **({"seed": 3} if rounding == "stochastic" else {}))
            context = f"{name} {dtype} {tuple(x.stride())} {policy}"
            same(outcome(lambda: fmt.quantize(x, **policy)),
                 outcome(lambda: fmt.quantize(x.cpu(), backend="reference", **policy)), context)
            same(outcome(lambda: fmt.encode(x, **policy)),
                 outcome(lambda: fmt.encode(x.cpu(), backend="reference", **policy)), context)
    if fmt.nbits <= 16:
        codes = torch.arange(1 << fmt.nbits, device=device)
        same(fmt.decode(codes, dtype=torch.float64), fmt.decode(codes.cpu(), dtype=torch.float64,
                                                                backend="reference"), f"{name} decode")


#: codebooks: QLoRA's NF4, bitsandbytes' FP4, and 300 values (a longer search for the lower neighbour)
CODEBOOKS = [lowbit.NF4_VALUES, lowbit.formats.FP4_BNB_VALUES, torch.linspace(-3, 3, 300).float().unique().tolist()]


@pytest.mark.parametrize("table", CODEBOOKS, ids=lambda t: f"{len(t)}-values")
@pytest.mark.parametrize("dtype", DTYPES)
def test_codebook_elements(table, dtype, device):
    fmt = lowbit.CodebookFormat(table)
    values = torch.tensor(table, dtype=torch.float64)
    midpoints = (values[:-1] + values[1:]) / 2
    x = torch.cat([data((3, 129), dtype).double().reshape(-1) * 0.3, values, midpoints,
                   midpoints.nextafter(torch.tensor(float("inf"), dtype=torch.float64))]).reshape(1, -1).to(dtype)
    for xs in layouts(x, device):
        policies = [dict(rounding=rounding, **({"seed": 3} if rounding == "stochastic" else {}))
                    for rounding in abi.ROUNDINGS]
        policies += [dict(rounding="stochastic", seed=3, sr_bits=8), dict(flush_subnormals=True)]
        for policy in policies:
            context = f"{len(table)} values {dtype} {tuple(xs.stride())} {policy}"
            same(outcome(lambda: fmt.quantize(xs, **policy)),
                 outcome(lambda: fmt.quantize(xs.cpu(), backend="reference", **policy)), context)
            same(outcome(lambda: fmt.encode(xs, **policy)),
                 outcome(lambda: fmt.encode(xs.cpu(), backend="reference", **policy)), context)
    codes = torch.arange(1 << fmt.nbits, device=device)
    same(fmt.decode(codes, dtype=torch.float64), fmt.decode(codes.cpu(), dtype=torch.float64, backend="reference"),
         f"{len(table)} values decode")


@pytest.mark.parametrize("name", SCALED, ids=lambda f: f if isinstance(f, str) else f"packed-{f.name}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_formats_along_each_axis(name, dtype, device):
    fmt = lowbit.get_format(name) if isinstance(name, str) else name
    rules = ["floor", "ceil", "rceil", "even"] if isinstance(fmt, BlockFormat) and fmt.scale.man_bits == 0 else [None]
    x = data((5, 67, 33), dtype)
    for axis in (-1, 0, 1):
        for rule in rules:
            for rounding in ("nearest_even", "toward_zero", "stochastic"):
                policy = dict(axis=axis, rounding=rounding, **({"scale_rule": rule} if rule else {}),
                              **({"seed": 9} if rounding == "stochastic" else {}))
                for xs in (x.to(device), x.to(device).permute(2, 0, 1).contiguous().permute(1, 2, 0)):
                    context = f"{name} {dtype} {policy} {tuple(xs.stride())}"
                    same(outcome(lambda: fmt.quantize(xs, **policy)),
                         outcome(lambda: fmt.quantize(xs.cpu(), backend="reference", **policy)), context)
                    encoded = fmt.encode(xs, **policy)
                    same(encoded, fmt.encode(xs.cpu(), backend="reference", **policy), context)
                    same(fmt.decode(encoded), fmt.decode(fmt.encode(xs.cpu(), backend="reference", **policy),
                                                         backend="reference"), context)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1 << 20, (1 << 20) + 3])
def test_odd_sizes_and_misaligned_starts(n, device):
    for fmt in (lowbit.get_format("fp8_e4m3"), lowbit.get_format("mxfp4"), lowbit.get_format("mx6")):
        x = data((1, n + 1), torch.float32).reshape(-1)
        on_device = x.to(device)
        for part in (slice(0, n), slice(1, n + 1)):  # from a 16-byte boundary and one element in
            same(fmt.quantize(on_device[part]), fmt.quantize(x[part], backend="reference"), f"{fmt.name} {n}")
            same(fmt.encode(on_device[part]), fmt.encode(x[part], backend="reference"), f"{fmt.name} {n}")


def test_stochastic_streams_match_the_reference(device):
    x = torch.randn(1 << 18, dtype=torch.float32)
    for name in ("fp8_e4m3", "int4", "mxfp4", "nvfp4", "mx6"):
        fmt = lowbit.get_format(name)
        same(fmt.quantize(x.to(device), rounding="stochastic", seed=2**64 - 5),
             fmt.quantize(x, rounding="stochastic", seed=2**64 - 5, backend="reference"), name)


def test_ops_agree_with_their_fakes(device, ops):
    from lowbit.formats.abi import block_params, element_descriptor, microexponent_params

    x = torch.randn(3, 40, device=device)
    mxfp4, mx6 = lowbit.get_format("mxfp4"), lowbit.get_format("mx6")
    block = (list(element_descriptor(mxfp4.element)), list(element_descriptor(mxfp4.scale)),
             [float(v) for v in block_params(mxfp4, "floor", None)])
    checks = [(ops.element_quantize, (x, list(element_descriptor(lowbit.get_format("fp8_e4m3"))), 0, 0, 0, 0.0)),
              (ops.block_encode, (x, 1, *block, 0, 0, 0.0)),
              (ops.microexponent_quantize, (x, 0, list(microexponent_params(mx6)), 0, 0, 0.0))]
    table = torch.tensor(lowbit.NF4_VALUES, dtype=torch.float64, device=device)
    nf4 = lowbit.get_format("nf4").encode(x, axis=1)
    checks += [(ops.codebook_quantize, (x, table, 0, 0, 0.0)), (ops.codebook_encode, (x, table, 0, 0, 0.0, 8)),
               (ops.codebook_decode, (torch.arange(16, dtype=torch.uint8, device=device), table, 4, torch.float32)),
               (ops.codebook_block_quantize, (x, 1, table, 64, 4, 0, 0, 0.0)),
               (ops.codebook_block_encode, (x, 1, table, 64, 4, 0, 0, 0.0)),
               (ops.codebook_block_decode, (nf4.elements, nf4.scales.reshape(-1).view(torch.int32), [3, 40], 1, table,
                                            64, 4, torch.float32))]
    for op, args in checks:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_quantized_training_step_matches_the_cpu_kernels(device):
    from lowbit.emulate import QuantSpec, quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 8))
    spec = QuantSpec(input="mxfp8_e4m3", weight="mxfp4", grad_output="mxfp8_e5m2")
    x = torch.randn(32, 64)
    results = []
    for where, backend in ((torch.device("cpu"), "cpu"), (device, None)):
        if backend:
            backends.defaults["cpu"], kept = backend, backends.defaults["cpu"]
        m = quantize_model(torch.nn.Sequential(*[layer for layer in model]).to(where), spec, inplace=False)
        out = m(x.to(where))
        out.square().mean().backward()
        results.append((out.detach().cpu(), m[0].weight.grad.cpu()))
        if backend:
            backends.defaults["cpu"] = kept
    # the rounded operands are identical; the products are torch's on each device
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)


def test_fake_quantize_rounds_exactly_eager_and_compiled(device):
    from lowbit.emulate import fake_quantize

    x = torch.randn(8, 64, device=device, requires_grad=True)
    y = fake_quantize(x, "mxfp4")
    same(y.detach(), lowbit.quantize(x.detach().cpu(), "mxfp4", backend="reference"), "fake_quantize")
    compiled = torch.compile(lambda t: fake_quantize(t, "nvfp4"))
    same(compiled(x.detach()), lowbit.quantize(x.detach().cpu(), "nvfp4", backend="reference"), "compiled")
