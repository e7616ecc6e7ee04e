"""Named :class:`~lowbit.formats.datapath.Datapath` profiles: the
arithmetic of GPUs' matrix instructions as the literature measured and
modelled it, IEEE and exact summation, and lowbit's own MX matmul.

Sources, cited by each profile:

- [Fasi21] M. Fasi, N. J. Higham, M. Mikaitis, S. Pranesh, "Numerical
  behavior of NVIDIA tensor cores", PeerJ Computer Science 7:e330, 2021;
  its test suite github.com/north-numerical-computing/tensor-cores-numerical-behavior.
- [KM25] F. A. Khattak, M. Mikaitis, "Accurate models of NVIDIA tensor
  cores", arXiv:2512.07004, 2025; models in
  github.com/north-numerical-computing/MATLAB-tensor-core (``neab`` is w =
  fraction_bits - 23, ``fma`` the group, ``frmode`` the rounding).
- [MMASim] P. Xie et al., "MMA-Sim: bit-accurate reference model of tensor
  cores and matrix cores", arXiv:2511.10909, 2025; github.com/microsoft/MMA-Sim.
- [DSV3] DeepSeek-AI, "DeepSeek-V3 technical report", arXiv:2412.19437,
  section 3.3.2 (Hopper's FP8 accumulation keeps about 14 bits).

Where the sources disagree or are silent the profile says so. Not
published anywhere we found: a limit on carry bits (the models never
saturate), the FP6 inputs of Blackwell's block-scaled MMA, and any
NVIDIA statement of the internal precision (the PTX manual defines only
the scaling). The least alignment exponent (``min_exponent``) is set only
where [KM25] and [MMASim] agree; it matters only when every term of a step
lies below 2**-126.
"""

from __future__ import annotations

from .datapath import FP32, Datapath
from .float_format import FloatFormat

FP16 = FloatFormat(5, 10, name="fp16")
BF16 = FloatFormat(8, 7, name="bf16")
TF32 = FloatFormat(8, 10, name="tf32")
E4M3 = FloatFormat(4, 3, specials="fn", name="fp8_e4m3")
E5M2 = FloatFormat(5, 2, name="fp8_e5m2")
E2M1 = FloatFormat(2, 1, specials="none", name="fp4_e2m1")
#: Hopper's FP8 accumulator: an fp32 register holding 14 significant bits
E8M13 = FloatFormat(8, 13, name="e8m13")

_TC = "exact products, aligned to the largest exponent of the products and c, truncated toward zero"


def _tensor_core(name: str, inputs: tuple[FloatFormat, ...], group: int, fraction_bits: int, source: str, *,
                 accumulator: FloatFormat = FP32, min_exponent: int | None = None, **extra: object) -> Datapath:
    rounding = "toward_zero" if accumulator is not FP16 else "nearest_even"
    return Datapath(name, group=group, fraction_bits=fraction_bits, alignment_rounding="toward_zero",
                    min_exponent=min_exponent, accumulator=accumulator, rounding=rounding, inputs=inputs,
                    source=f"{_TC}; {source}", **extra)


_PROFILES = [
    Datapath("exact", group=None, accumulator=None,
             source="the exact sum of the exact products, rounded once to float64 (Fraction arithmetic)"),
    Datapath("ieee_fp32", group=1, products=FP32, accumulator=FP32,
             source="IEEE 754 float32 one product at a time: each product rounded to fp32, then added with one "
                    "rounding to nearest even (torch's float32 matmul over chunks of K = 1)"),
    Datapath("ieee_fp32_fma", group=1, accumulator=FP32,
             source="IEEE 754 float32 fused multiply-add chain: c = fl(c + a*b) in K order"),
    Datapath("a100_fp64", group=1, accumulator=None,
             source="A100 DMMA (m8n8k4): a sequential IEEE float64 fma chain in K order, ties to even "
                    "[Fasi21 suite, A100-binary64; MMASim]"),
    _tensor_core("v100_fp16", (FP16,), 4, 23,
                 "V100 (Volta) HMMA, fp32 accumulator, no extra alignment bit, result truncated "
                 "[Fasi21 tests B-D; KM25 V100TC fma=4 neab=0; MMASim]. min_exponent not set: KM25 gives none, "
                 "MMASim -131"),
    _tensor_core("v100_fp16_acc16", (FP16,), 4, 23, "V100 HMMA with an fp16 accumulator, rounded to nearest even "
                 "[Fasi21 C3; KM25 frmode='rne', min_exp_limit=-19]", accumulator=FP16, min_exponent=-19),
    _tensor_core("t4_fp16", (FP16,), 8, 24,
                 "T4 (Turing) mma.m16n8k8, one extra alignment bit [Fasi21 suite, T4 file: tests D1, D3]; the "
                 "group of 8 is from MMASim only (Fasi21 and KM25 do not give it)"),
    _tensor_core("a100_fp16", (FP16,), 8, 24,
                 "A100 (Ampere) fp16 MMA, m16n8k16 done as two groups of 8, one extra alignment bit "
                 "[Fasi21 suite; KM25 A100TC fma=8 neab=1, min_exp_limit=-132; MMASim]", min_exponent=-132),
    _tensor_core("a100_fp16_acc16", (FP16,), 8, 24, "A100 fp16 MMA with an fp16 accumulator, rounded to nearest "
                 "even [KM25 frmode='rne', min_exp_limit=-20; HPEC 2025 A30 output]", accumulator=FP16,
                 min_exponent=-20),
    _tensor_core("a100_bf16", (BF16,), 8, 24, "A100 bf16 MMA [Fasi21 A100-bf16 file; KM25; MMASim]",
                 min_exponent=-132),
    _tensor_core("a100_tf32", (TF32,), 4, 24,
                 "A100 tf32 MMA (m16n8k8 as two groups of 4) [Fasi21 A100-tf32 file; KM25 fma=4; MMASim]; the "
                 "hardware converts fp32 inputs to tf32 by truncation: round them toward zero to tf32 first",
                 min_exponent=-132),
    _tensor_core("h100_fp16", (FP16,), 16, 25,
                 "H100/H200 (Hopper) fp16 wgmma and mma, two extra alignment bits [KM25 H100TC fma=16 neab=2, "
                 "min_exp_limit=-133; MMASim F=25]", min_exponent=-133),
    _tensor_core("h100_fp16_acc16", (FP16,), 16, 25, "H100 fp16 MMA with an fp16 accumulator, rounded to nearest "
                 "even [KM25 min_exp_limit=-21; MMASim]", accumulator=FP16, min_exponent=-21),
    _tensor_core("h100_bf16", (BF16,), 16, 25, "H100/H200 bf16 MMA [KM25; MMASim]", min_exponent=-133),
    _tensor_core("h100_tf32", (TF32,), 8, 25, "H100/H200 tf32 wgmma (k = 8) [KM25 fma=8; MMASim]",
                 min_exponent=-133),
    _tensor_core("h100_fp8", (E4M3, E5M2), 32, 13,
                 "H100/H200 FP8 wgmma (k = 32): 13 fraction bits kept in alignment, the result truncated to a "
                 "14-bit significand in the fp32 register [KM25 fma=32 neab=-10; MMASim f32_e8m13; DSV3: "
                 "'only uses the highest 14 bits of each mantissa product'] ", accumulator=E8M13,
                 min_exponent=-133),
    _tensor_core("b200_fp16", (FP16,), 16, 25, "B200 (Blackwell) fp16 tcgen05.mma [KM25 B200TC fma=16 neab=2; "
                 "MMASim F=25]", min_exponent=-133),
    _tensor_core("b200_bf16", (BF16,), 16, 25, "B200 bf16 tcgen05.mma [KM25; MMASim]", min_exponent=-133),
    _tensor_core("b200_tf32", (TF32,), 8, 25, "B200 tf32 tcgen05.mma [KM25 fma=8; MMASim]", min_exponent=-133),
    _tensor_core("b200_fp8", (E4M3, E5M2), 32, 25,
                 "B200 FP8 tcgen05.mma kind::f8f6f4: the full 25 fraction bits, unlike Hopper [KM25 fma=32; "
                 "MMASim F=25]", min_exponent=-133),
    _tensor_core("b200_mxfp8", (E4M3, E5M2, E2M1), 32, 25,
                 "B200 block-scaled tcgen05.mma kind::mxf8f6f4 (block 32, UE8M0 scales): each product's exponent "
                 "adds both block scales' [MMASim MMA_ST_FDPA F=25]; FP6 inputs not published (MMASim: to do)",
                 block_scaled=True, min_exponent=-133),
    Datapath("lowbit_mx_int8", group=None, accumulator=FP32, promote_every="block",
             source="lowbit.cuda.mx_matmul, instruction='int8': each block's element products summed exactly "
                    "(int32), then total = fp32(total + P_b * scale_a * scale_b), nearest even (docs/cuda.md)"),
    Datapath("lowbit_mx_fp16", group=16, accumulator=FP32, promote_every="block",
             source="lowbit.cuda.mx_matmul, instruction='fp16', as its CPU model computes it: each m16n8k16 "
                    "adds 16 exact products to the block's partial sum with one rounding to nearest even (the "
                    "GPU's tensor cores truncate instead), then as lowbit_mx_int8 (docs/cuda.md)"),
    Datapath("lowbit_mx_fp8", group=32, accumulator=FP32, promote_every="block",
             source="lowbit.cuda.mx_matmul, instruction='fp8', as its CPU model computes it: m16n8k32 groups of "
                    "32, otherwise as lowbit_mx_fp16 (docs/cuda.md)"),
]

#: every named profile, by name (see :class:`~lowbit.formats.datapath.Datapath`; a user's own
#: is ``Datapath(...)`` or ``DATAPATHS[name].with_(...)``)
DATAPATHS: dict[str, Datapath] = {profile.name: profile for profile in _PROFILES}


def get_datapath(spec: object) -> Datapath:
    """A Datapath from its profile name or itself; ValueError naming the
    profiles for an unknown name, TypeError for anything else."""
    if isinstance(spec, Datapath):
        return spec
    if isinstance(spec, str):
        if spec in DATAPATHS:
            return DATAPATHS[spec]
        raise ValueError(f"unknown datapath {spec!r}; the profiles are {', '.join(DATAPATHS)}")
    raise TypeError(f"a datapath is a profile name or a Datapath, got {type(spec).__name__}")
