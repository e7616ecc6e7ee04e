"""The datapath profiles (``lowbit.formats.DATAPATHS``) against published
tensor-core measurements and models, and against an exact model written here.

Sources (compiled from public material only; nothing here was read from
lowbit's datapath implementation):

- **Fasi, Higham, Mikaitis and Pranesh**, *Numerical behavior of NVIDIA
  tensor cores*, PeerJ Computer Science 7:e330 (2021), and its test suite
  ``north-numerical-computing/tensor-cores-numerical-behavior`` @ 9dae3fc
  (``tc_test_numerics-V100.cu``, ``-T4-A100-binary16.cu``, ``-A100-bf16.cu``,
  ``-A100-tf32.cu``, ``-A100-binary64.cu``). Every test of that suite puts its
  nonzero terms at k < 4 of one wmma tile, so one group is involved. The
  expected values below are the pass conditions the authors hard-coded in the
  file of the GPU the row comes from (the V100 file and the T4/A100 file
  differ where the V100 has no extra alignment bit).
- **Khattak and Mikaitis**, *Generalized methodology for determining
  numerical features of hardware floating-point matrix multipliers*, IEEE
  HPEC 2025 (``faiziktk/IEEE_HPEC2025_block_FMA_tests`` @ 46136b5): the
  generalised vectors and the printed output of an A30 (Ampere), which the
  Khattak-Mikaitis models treat as an A100 (``A30TC.m`` calls ``A100TC``).
- **Khattak and Mikaitis**, *Accurate models of NVIDIA tensor cores*,
  arXiv:2512.07004 (``MATLAB-tensor-core``), and **Xie et al.**, *MMA-Sim*,
  arXiv:2511.10909 (``microsoft/MMA-Sim``, ``fused_sum``): the per-GPU
  parameters (group n, fraction bits F = 23 + extra alignment bits, final
  rounding, zero floor ``min_exp_limit``). Rows tagged *model-derived*
  evaluate those published models on the given inputs (exact arithmetic):
  they are not hardware measurements.

The exact model ``oracle_dot`` below is the published algorithm (MMA-Sim's
``fused_sum`` / Khattak-Mikaitis ``Generic_BFMA_TC`` with global alignment):
per group, the products are exact with exponent e(a) + e(b) (operand
exponents clamped at their format's emin, products not renormalised), the
accumulator c has exponent max(floor(log2|c|), accumulator emin), every
nonzero term is truncated toward zero to a multiple of 2**(E - F) with E the
largest exponent (at least the model's zero floor), the truncated terms are
added exactly and the sum is rounded once: toward zero into fp32 (or the
13-fraction-bit e8m13 of Hopper FP8), to nearest even into fp16; the result
is the next group's c. With F = None and groups of 1 it is an IEEE fma chain.
It must reproduce every published vector (``test_oracle_reproduces_*``) and
is then compared with lowbit on random inputs.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lowbit.formats import DATAPATHS, reference_matmul

# --------------------------------------------------------------------------
# Running one vector through lowbit
# --------------------------------------------------------------------------

#: the K of the instruction the published tests ran (wmma 16x16x16 for fp16
#: and bf16, 16x16x8 for tf32, DMMA 8x8x4 for fp64, wgmma/tcgen05 k = 32 for
#: FP8); unlisted k are zero
TILE_K = {"fp16": 16, "bf16": 16, "tf32": 8, "fp64": 4, "fp8": 32}


def tile_k(profile):
    for key in ("fp16", "bf16", "tf32", "fp64", "fp8"):
        if key in profile:
            return TILE_K[key]
    raise AssertionError(profile)


def padded(values, k):
    values = list(values)
    assert len(values) <= k
    return values + [0.0] * (k - len(values))


def lowbit_dot(profile, a, b, c, k=None):
    """d = c + sum a_k b_k on ``profile``, as a Python float."""
    k = k or max(tile_k(profile), len(a), len(b))
    at = torch.tensor([padded(a, k)], dtype=torch.float64)
    bt = torch.tensor([padded(b, k)], dtype=torch.float64)
    ct = torch.tensor([c], dtype=torch.float64)
    return reference_matmul(at, bt, ct, datapath=profile)[0, 0].item()


# --------------------------------------------------------------------------
# The independent exact model (published algorithm, Fraction arithmetic)
# --------------------------------------------------------------------------

#: accumulator/output formats: (emin, fraction bits, final rounding, largest finite)
OUTPUTS = {
    "fp32": (-126, 23, "rz", (2 - Fraction(1, 2**23)) * 2**127),
    "e8m13": (-126, 13, "rz", (2 - Fraction(1, 2**13)) * 2**127),
    "fp16": (-14, 10, "rne", Fraction(65504)),
    "fp64": (-1022, 52, "rne", (2 - Fraction(1, 2**52)) * Fraction(2) ** 1023),
}

#: smallest normal exponent of each input format
INPUT_EMIN = {"fp16": -14, "bf16": -126, "tf32": -126, "e5m2": -14, "fp64": -1022}

#: published parameters per profile: (group n, F, input format, output, zero
#: floor). n and F: Khattak-Mikaitis (fma, 23 + neab) and MMA-Sim
#: (n_accum_fractional_bits); the floor is Khattak-Mikaitis' min_exp_limit
#: (V100: -1024, i.e. none; T4 is not in their models, and for fp16 inputs
#: with an fp32 accumulator the floor never matters: a nonzero product has
#: exponent >= -28 and c >= -126)
PUBLISHED = {
    "v100_fp16": (4, 23, "fp16", "fp32", None),
    "v100_fp16_acc16": (4, 23, "fp16", "fp16", -19),
    "t4_fp16": (8, 24, "fp16", "fp32", None),
    "a100_fp16": (8, 24, "fp16", "fp32", -132),
    "a100_fp16_acc16": (8, 24, "fp16", "fp16", -20),
    "a100_bf16": (8, 24, "bf16", "fp32", -132),
    "a100_tf32": (4, 24, "tf32", "fp32", -132),
    "a100_fp64": (1, None, "fp64", "fp64", None),
    "h100_fp16": (16, 25, "fp16", "fp32", -133),
    "h100_fp16_acc16": (16, 25, "fp16", "fp16", -21),
    "h100_bf16": (16, 25, "bf16", "fp32", -133),
    "h100_tf32": (8, 25, "tf32", "fp32", -133),
    "h100_fp8": (32, 13, "e5m2", "e8m13", -133),
    "b200_fp16": (16, 25, "fp16", "fp32", -133),
    "b200_bf16": (16, 25, "bf16", "fp32", -133),
    "b200_tf32": (8, 25, "tf32", "fp32", -133),
    "b200_fp8": (32, 25, "e5m2", "fp32", -133),
}


def floor_log2(q):
    """floor(log2 |q|) of a nonzero Fraction, exactly."""
    q = abs(Fraction(q))
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if q < Fraction(2) ** e:
        e -= 1
    return e


def round_into(s, output):
    """The nonzero Fraction s rounded once into ``output`` (RZ or RNE,
    subnormals kept, IEEE 754 section 7.4 on overflow), as a float."""
    emin, man, mode, largest = OUTPUTS[output]
    quantum = Fraction(2) ** (max(floor_log2(s), emin) - man)
    n = math.trunc(s / quantum) if mode == "rz" else round(s / quantum)  # round(): half to even
    r = n * quantum
    if abs(r) > largest:
        r = largest if mode == "rz" else math.inf
        return math.copysign(float(r), s)
    return math.copysign(float(r), s) if r == 0 else float(r)


def fused_step(a, b, c, fraction_bits, input_emin, output, min_exponent):
    """One group: c + sum a_i b_i as the published multi-term fused adder."""
    acc_emin = OUTPUTS[output][0]
    terms = []  # (exact value, alignment exponent)
    every_zero_negative = math.copysign(1.0, c) < 0
    if c != 0:
        terms.append((Fraction(c), max(floor_log2(c), acc_emin)))
    for x, y in zip(a, b):
        p = Fraction(x) * Fraction(y)
        if p == 0:
            every_zero_negative &= math.copysign(1.0, x) * math.copysign(1.0, y) < 0
            continue
        terms.append((p, max(floor_log2(x), input_emin) + max(floor_log2(y), input_emin)))
    if not terms:  # IEEE: a sum of zeros is -0 only if every one is -0
        return -0.0 if every_zero_negative else 0.0
    if fraction_bits is None:
        s = sum(v for v, _ in terms)
    else:
        e_max = max(e for _, e in terms)
        if min_exponent is not None:
            e_max = max(e_max, min_exponent)
        quantum = Fraction(2) ** (e_max - fraction_bits)
        s = sum(math.trunc(v / quantum) for v, _ in terms) * quantum  # toward zero, no sticky bit
    if s == 0:  # exact cancellation: +0 (round to nearest and toward zero)
        return 0.0
    return round_into(s, output)


def oracle_dot(a, b, c, *, group, fraction_bits, input_emin, output, min_exponent=None):
    """c + sum_k a_k b_k, group after group, each group's result rounded into
    ``output`` and taken as the next group's c."""
    assert len(a) == len(b)
    c = float(c)
    for start in range(0, max(len(a), 1), group):
        c = fused_step(a[start:start + group], b[start:start + group], c,
                       fraction_bits, input_emin, output, min_exponent)
    return c


def oracle_for(profile, a, b, c, k=None):
    """``oracle_dot`` with the published parameters of ``profile``."""
    group, f, fmt, output, floor = PUBLISHED[profile]
    k = k or max(tile_k(profile), len(a), len(b))
    return oracle_dot(padded(a, k), padded(b, k), c, group=group, fraction_bits=f,
                      input_emin=INPUT_EMIN[fmt], output=output, min_exponent=floor)


# --------------------------------------------------------------------------
# Fasi et al. suite (section 3.1), fp16 inputs
# --------------------------------------------------------------------------

ONE4 = [1.0] * 4
TINY4 = [2.0**-24] * 4
HALF4 = [0.5] * 4
B11 = 1 - 2.0**-11  # largest fp16 below 1
B11_SQ = 1 - 2.0**-10 + 2.0**-22  # (1 - 2**-11)**2, exact
C_CARRY = 1 + 2.0**-22 + 2.0**-23


def b4_v100(j):
    b = list(TINY4)
    b[j] = 1.0
    return ONE4, b


def b4_t4(j):
    a, b = list(HALF4), list(TINY4)
    a[j], b[j] = 1.0, 1.0
    return a, b


def d4a(i):
    b = list(ONE4)
    b[i] = 2.0**-23
    return ONE4, b


D5_T4_B = [2.0**-24] * 3 + [3 * 2.0**-24]

#: (id, a, b, c, fp16 output?, V100-file expectation, T4/A100-file expectation);
#: None where the vector is not in that file
FP16_SUITE = [
    ("A1-subnormal_fp16_inputs_fp16_out", [2.0**-24], [4.0], 0.0, True, 2.0**-22, 2.0**-22),
    ("A2-subnormal_fp16_inputs", [2.0**-24], [4.0], 0.0, False, 2.0**-22, 2.0**-22),
    ("A3-subnormal_fp32_c_passes", [], [], 2.0**-149, False, 2.0**-149, 2.0**-149),
    # the suite checks d != 0; the exact value 2**-15 is an fp16 subnormal
    ("A4-subnormal_fp16_output", [2.0**-14], [1.0], -2.0**-15, True, 2.0**-15, 2.0**-15),
    ("A5i-subnormal_fp16_range_fp32_out", [2.0**-14], [2.0**-1], 0.0, False, 2.0**-15, 2.0**-15),
    ("A5ii-subnormal_fp16_range_fp32_out_with_c", [2.0**-14], [1.0], -2.0**-15, False, 2.0**-15, 2.0**-15),
    ("B1i-exact_products", [B11], [B11], 0.0, False, B11_SQ, B11_SQ),
    ("B1ii-exact_products_x4", [B11] * 4, [B11] * 4, 0.0, False, 4 * B11_SQ, 4 * B11_SQ),
    ("B2-exact_products_fp16_out", [B11, B11], [B11, 2.0**-11], 0.0, True, B11, B11),
    ("B3-fp32_accumulation_v100_form", ONE4, TINY4, 1.0, False, 1.0, None),
    ("B3-fp32_accumulation_t4_a100_form", HALF4, TINY4, 1.0, False, None, 1.0),
    *[(f"B4-sum_starts_from_largest_v100_form_j{j}", *b4_v100(j), 2.0**-24, False, 1.0, None) for j in range(4)],
    *[(f"B4-sum_starts_from_largest_t4_a100_form_j{j}", *b4_t4(j), 2.0**-24, False, None, 1.0) for j in range(4)],
    ("C1-truncation_positive", ONE4, [2.0, 2.0**-23 + 2.0**-24], 0.0, False, 2.0, 2.0),
    ("C2-truncation_negative", ONE4, [-2.0, -(2.0**-23 + 2.0**-24)], 0.0, False, -2.0, -2.0),
    ("C3-fp16_output_round_to_nearest", [2.0**-24] * 2, [2.0**-1, 2.0**-2], 0.0, True, 2.0**-24, 2.0**-24),
    ("D1-extra_alignment_bits", [1.0], [1.0], -(1 - 2.0**-24), False, 2.0**-23, 2.0**-24),
    ("D2-no_normalisation_in_addition", ONE4, TINY4, 1 - 2.0**-24, False, 1 + 2.0**-23, 1 + 2.0**-23),
    ("D3-no_normalisation_in_subtraction", [1.0, 1.0], [1.0, -2.0**-24], -1 + 2.0**-24, False, 2.0**-23, 0.0),
    *[(f"D4a-carry_out_i{i}", *d4a(i), C_CARRY, False, 4 + 2.0**-21, 4 + 2.0**-21) for i in range(4)],
    ("D4b-third_carry_out_bit", ONE4, [1.0, 1.5, 1.75, 1.875], 1.875, False, 8.0, 8.0),
    ("D4c-round_toward_zero_when_normalising_positive", ONE4, ONE4, C_CARRY, False, 5.0, 5.0),
    ("D4d-round_toward_zero_when_normalising_negative", ONE4, [-1.0] * 4, -C_CARRY, False, -5.0, -5.0),
]


def fp16_suite_cases():
    cases = []
    for name, a, b, c, out16, v100, t4a100 in FP16_SUITE:
        if v100 is not None:
            cases.append(pytest.param("v100_fp16_acc16" if out16 else "v100_fp16", a, b, c, v100,
                                      id=f"{name}-v100"))
        if t4a100 is not None:
            # no T4 profile has an fp16 accumulator: fp16-output rows run on the A100's
            for profile in (["a100_fp16_acc16"] if out16 else ["t4_fp16", "a100_fp16"]):
                cases.append(pytest.param(profile, a, b, c, t4a100, id=f"{name}-{profile.split('_')[0]}"))
    return cases


# --------------------------------------------------------------------------
# Fasi et al. suite (section 3.2), A100 bf16 and tf32 files
# --------------------------------------------------------------------------


def bf16_tf32_rows(kind):
    """The bf16 / tf32 files' vectors and pass values (T4/A100 forms)."""
    if kind == "bf16":
        sub, big, below_one = 2.0**-133, 2.0**7, 1 - 2.0**-8
        square = 1 - 2.0**-7 + 2.0**-16
    else:
        # the suite feeds fp32 1 - 2**-24; the A100 truncates it to tf32 (1 - 2**-11)
        # and expects (1 - 2**-11)**2: the tf32 value is given here
        sub, big, below_one = 2.0**-136, 2.0**10, 1 - 2.0**-11
        square = 1 - 2.0**-10 + 2.0**-22
    return [
        ("A1-subnormal_inputs", [sub], [big], 0.0, 2.0**-126),
        ("A2-subnormal_fp32_c_passes", [], [], 2.0**-149, 2.0**-149),
        ("A3i-subnormal_output", [2.0**-126], [2.0**-1], 0.0, 2.0**-127),
        ("A3ii-subnormal_output_with_c", [2.0**-126], [1.0], -2.0**-127, 2.0**-127),
        ("B1-exact_products", [below_one], [below_one], 0.0, square),
        ("B2-fp32_accumulation", HALF4, TINY4, 1.0, 1.0),
        *[(f"B3-sum_starts_from_largest_j{j}", *b4_t4(j), 2.0**-24, 1.0) for j in range(4)],
        ("C1-truncation_positive", ONE4, [2.0, 2.0**-23 + 2.0**-24], 0.0, 2.0),
        ("C2-truncation_negative", ONE4, [-2.0, -(2.0**-23 + 2.0**-24)], 0.0, -2.0),
        ("D1-extra_alignment_bits", [1.0], [1.0], -(1 - 2.0**-24), 2.0**-24),
        ("D2-no_normalisation_in_addition", ONE4, TINY4, 1 - 2.0**-24, 1 + 2.0**-23),
        ("D3-no_normalisation_in_subtraction", [1.0, 1.0], [1.0, -2.0**-24], -1 + 2.0**-24, 0.0),
        *[(f"D4a-carry_out_i{i}", *d4a(i), C_CARRY, 4 + 2.0**-21) for i in range(4)],
        ("D4b-third_carry_out_bit", ONE4, [1.0, 1.5, 1.75, 1.875], 1.875, 8.0),
        ("D4c-round_toward_zero_when_normalising_positive", ONE4, ONE4, C_CARRY, 5.0),
        ("D4d-round_toward_zero_when_normalising_negative", ONE4, [-1.0] * 4, -C_CARRY, -5.0),
    ]


def bf16_tf32_suite_cases():
    return [pytest.param(f"a100_{kind}", a, b, c, want, id=f"{name}-a100_{kind}")
            for kind in ("bf16", "tf32") for name, a, b, c, want in bf16_tf32_rows(kind)]


# --------------------------------------------------------------------------
# Fasi et al. suite (section 3.3), A100 binary64 file: an IEEE fma chain
# --------------------------------------------------------------------------

FP64_SUITE = [
    ("subnormal_inputs", [2.0**-1074], [2.0**52], 0.0, 2.0**-1022),
    ("subnormal_output", [2.0**-1022], [2.0**-1], 0.0, 2.0**-1023),
    ("subnormal_output_with_c", [2.0**-1022], [1.0], -2.0**-1023, 2.0**-1023),
    ("round_to_nearest_positive_up", [1.0, 1.0], [2.0, 2.0**-52 + 2.0**-53], 0.0, 2 + 2.0**-51),
    ("round_to_nearest_positive_down", [1.0, 1.0], [2.0, 2.0**-53], 0.0, 2.0),
    ("round_to_nearest_negative_up", [1.0, 1.0], [-2.0, -(2.0**-52 + 2.0**-53)], 0.0, -(2 + 2.0**-51)),
    ("round_to_nearest_negative_down", [1.0, 1.0], [-2.0, -2.0**-53], 0.0, -2.0),
    ("ties_to_even_down", [1.0, 1.0], [2.0, 2.0**-52], 0.0, 2.0),
    ("ties_to_even_up", [1.0, 1.0], [2.0 + 2.0**-51, 2.0**-52], 0.0, 2 + 2.0**-50),
    ("extra_bits", [1.0], [1.0], -(1 - 2.0**-53), 2.0**-53),
    ("normalisation_after_each_add", [1.0, 1.0], [2.0**-53, 2.0**-53], 1 - 2.0**-53, 1.0),
    ("normalisation_in_subtraction", [1.0, 1.0], [1.0, -2.0**-53], -1 + 2.0**-53, 0.0),
]

#: "no extra carry bits": the suite passes on either of two values
FP64_CARRY = [
    ("no_extra_carry_bits_small_first", [1.0, 1.0], [2.0**-52, 1.0], 1 + 2.0**-51 + 2.0**-52),
    ("no_extra_carry_bits_small_last", [1.0, 1.0], [1.0, 2.0**-52], 1 + 2.0**-51 + 2.0**-52),
]

# --------------------------------------------------------------------------
# Monotonicity (D5): PASS iff the larger c gives a smaller result
# --------------------------------------------------------------------------

#: (id, profiles, a, b, smaller c, larger c)
D5_NON_MONOTONIC = [
    ("D5-non_monotonic_v100_form", ["v100_fp16"], ONE4, TINY4, 1 - 2.0**-24, 1.0),
    ("D5-non_monotonic_t4_a100_form", ["t4_fp16", "a100_fp16", "a100_bf16", "a100_tf32"],
     HALF4, D5_T4_B, 1 - 2.0**-24, 1.0),
]


def d5_cases():
    return [pytest.param(p, a, b, lo, hi, id=f"{name}-{p}")
            for name, profiles, a, b, lo, hi in D5_NON_MONOTONIC for p in profiles]


# --------------------------------------------------------------------------
# HPEC 2025 (section 3.4): the A30's printed output, A100 model
# --------------------------------------------------------------------------

F5_C = 1 + 2.0**-23 + 2.0**-22
HPEC_A30 = [
    # "extra bits: 1 ... Passed"
    ("F1-one_extra_alignment_bit", "a100_fp16", [2.0**-24] * 2, [1.0, 1.0], 1.0, 1 + 2.0**-23),
    ("F4-late_normalisation", "a100_fp16", [2.0**-21 + 2.0**-24] * 2, [1.0, 1.0], 1 - 2.0**-21,
     1 + 2.0**-21 + 2.0**-23),
    ("F5-fp32_output_round_toward_zero_positive", "a100_fp16", [1.0] * 3, [1.0] * 3, F5_C, 4.0),
    ("F5-fp32_output_round_toward_zero_negative", "a100_fp16", [-1.0] * 3, [1.0] * 3, -F5_C, -4.0),
    ("F6-fp16_output_round_to_nearest_even", "a100_fp16_acc16", [1.0] * 3, [1.0] * 3,
     1 + 2.0**-10 + 2.0**-9, 4 + 2.0**-8),
    ("F7-alignment_truncation_positive", "a100_fp16", [2.0**-24] * 2, [0.75] * 2, 1.0, 1.0),
    ("F9-alignment_truncation_negative", "a100_fp16", [-2.0**-24] * 2, [0.75] * 2, -1.0, -1.0),
    # N = 8, the detected FMA size: the term lands in the second group
    ("F8-rounding_across_groups_positive", "a100_fp16", [0.0] * 8 + [2.0**-24], [0.0] * 8 + [1.5],
     1 + 2.0**-23, 1 + 2.0**-23),
    ("F8-rounding_across_groups_negative", "a100_fp16", [0.0] * 8 + [-2.0**-24], [0.0] * 8 + [1.5],
     -(1 + 2.0**-23), -(1 + 2.0**-23)),
]

#: the A30 prints "Failed" for two extra bits: the result is not 1 + 2**-23
F1_TWO_BITS = ([2.0**-24] * 3, [1.0, 0.5, 0.5], 1.0)

FP16_PROFILES = ["v100_fp16", "t4_fp16", "a100_fp16", "h100_fp16", "b200_fp16"]
#: group sizes: V100 4 (KM25 fma=4; MMA-Sim m8n8k4), T4 8 (MMA-Sim m16n8k8),
#: A100 8 (KM25; the A30's "FMA size is: 8"), H100/B200 16 (KM25; MMA-Sim)
FMA_SIZE = {"v100_fp16": 4, "t4_fp16": 8, "a100_fp16": 8, "h100_fp16": 16, "b200_fp16": 16}


def fma_size_probe(dot, profile, k_max=32):
    """F3: a0 = b0 = 1, a_{k-1} = 2**-23, b_{k-1} = 1, c = 1 + 2**-23; the
    two small terms survive (2 + 2**-22) only while k-1 is in c's group.
    Returns {k: in the same group?}."""
    seen = {}
    for k in range(2, k_max + 1):
        a, b = [0.0] * k_max, [0.0] * k_max
        a[0] = b[0] = 1.0
        a[k - 1], b[k - 1] = 2.0**-23, 1.0
        d = dot(profile, a, b, 1 + 2.0**-23, k_max)
        assert d in (2.0, 2 + 2.0**-22), (k, d)
        seen[k] = d == 2 + 2.0**-22
    return seen


# --------------------------------------------------------------------------
# Model-derived rows (sections 3.1, 3.2, 3.4, 3.5, 3.6)
# --------------------------------------------------------------------------

H100_LIKE = ["h100_fp16", "b200_fp16"]


def derived_cases():
    """(id, profile, a, b, c, expected), from the published models."""
    rows = []

    def add(name, profiles, a, b, c, want, k=None):
        for p in profiles:
            rows.append(pytest.param(p, a, b, c, want, k, id=f"{name}-{p}"))

    # 3.1, H100 column (B200 has the same n = 16, F = 25): every suite vector
    h100_31 = {
        "B3-fp32_accumulation_v100_form": 1 + 2.0**-22,
        "B3-fp32_accumulation_t4_a100_form": 1 + 2.0**-23,
        "D1-extra_alignment_bits": 2.0**-24,
        "D3-no_normalisation_in_subtraction": 0.0,
    }
    for name, a, b, c, out16, v100, t4a100 in FP16_SUITE:
        if name.startswith("B4-") and "v100_form" in name:
            want = 1 + 2.0**-22
        elif name.startswith("B4-"):
            want = 1 + 2.0**-23
        else:
            want = h100_31.get(name, t4a100 if t4a100 is not None else v100)
        add(name, ["h100_fp16_acc16"] if out16 else H100_LIKE, a, b, c, want)
    # 3.1, the other form on V100 / T4 / A100 (the suite runs each form on its own GPU only)
    add("B3-fp32_accumulation_v100_form", ["t4_fp16", "a100_fp16"], ONE4, TINY4, 1.0, 1 + 2.0**-22)
    add("B3-fp32_accumulation_t4_a100_form", ["v100_fp16"], HALF4, TINY4, 1.0, 1.0)
    for j in range(4):
        add(f"B4-sum_starts_from_largest_v100_form_j{j}", ["t4_fp16", "a100_fp16"], *b4_v100(j), 2.0**-24,
            1 + 2.0**-22)
        add(f"B4-sum_starts_from_largest_t4_a100_form_j{j}", ["v100_fp16"], *b4_t4(j), 2.0**-24, 1.0)
    # 3.1, D5 values on each GPU (the suite's monotonicity test then fails or passes)
    d5v = ("D5-non_monotonic_v100_form", ONE4, TINY4)
    d5t = ("D5-non_monotonic_t4_a100_form", HALF4, D5_T4_B)
    for (name, a, b), profiles, lo_want, hi_want in [
        (d5v, ["v100_fp16"], 1 + 2.0**-23, 1.0),
        (d5v, ["t4_fp16", "a100_fp16", *H100_LIKE], 1 + 2.0**-23, 1 + 2.0**-22),
        (d5t, ["v100_fp16"], 1.0, 1.0),
        (d5t, ["t4_fp16", "a100_fp16"], 1 + 2.0**-23, 1.0),
        (d5t, H100_LIKE, 1 + 2.0**-23, 1 + 2.0**-23),
    ]:
        add(f"{name}_c_below_one", profiles, a, b, 1 - 2.0**-24, lo_want)
        add(f"{name}_c_one", profiles, a, b, 1.0, hi_want)

    # 3.2, H100 column for bf16 and tf32
    for kind in ("bf16", "tf32"):
        for name, a, b, c, want in bf16_tf32_rows(kind):
            if name.startswith(("B2-fp32_accumulation", "B3-sum_starts_from_largest")):
                want = 1 + 2.0**-23  # two extra bits keep the small terms
            add(name, [f"h100_{kind}"], a, b, c, want)
        add("D5-non_monotonic_c_below_one", [f"h100_{kind}"], HALF4, D5_T4_B, 1 - 2.0**-24, 1 + 2.0**-23)
        add("D5-non_monotonic_c_one", [f"h100_{kind}"], HALF4, D5_T4_B, 1.0, 1 + 2.0**-23)

    # 3.4, model columns (V100 23/4, T4 24/8, A100 24/8, H100 and B200 25/16)
    add("F1-one_extra_alignment_bit", ["v100_fp16"], [2.0**-24] * 2, [1.0, 1.0], 1.0, 1.0)
    add("F1-one_extra_alignment_bit", ["t4_fp16", *H100_LIKE], [2.0**-24] * 2, [1.0, 1.0], 1.0, 1 + 2.0**-23)
    add("F1-two_extra_alignment_bits", ["v100_fp16", "t4_fp16", "a100_fp16"], *F1_TWO_BITS, 1.0)
    add("F1-two_extra_alignment_bits", H100_LIKE, *F1_TWO_BITS, 1 + 2.0**-23)
    others = ["v100_fp16", "t4_fp16", *H100_LIKE]
    for name, profile, a, b, c, want in HPEC_A30:
        if name.startswith(("F1", "F8")):  # F1: above, F8: below
            continue
        if profile.endswith("acc16"):
            add(name, ["v100_fp16_acc16", "h100_fp16_acc16"], a, b, c, want)
        else:
            add(name, others, a, b, c, want)
    for sign in (1.0, -1.0):
        tag = "positive" if sign > 0 else "negative"
        for p in ["v100_fp16", "t4_fp16", *H100_LIKE]:
            n = 0 if p in H100_LIKE else FMA_SIZE[p]  # the K = 16 probe never breaks on H100/B200
            a = [0.0] * n + [sign * 2.0**-24]
            b = [0.0] * n + [1.5]
            add(f"F8-rounding_across_groups_{tag}", [p], a, b, sign * (1 + 2.0**-23), sign * (1 + 2.0**-23))

    # 3.5, FP8 (e5m2) in one 32-product group: H100 keeps 13 fraction bits, B200 25
    fp8 = [
        ("fp8_small_difference_2e-14", [1.0, 2.0**-7], [1.0, 2.0**-7], -1.0, 0.0, 2.0**-14),
        ("fp8_small_difference_2e-26", [1.0, 2.0**-13], [1.0, 2.0**-13], -1.0, 0.0, 0.0),
        ("fp8_c_alone_is_truncated", [], [], 1 + 2.0**-20, 1.0, 1 + 2.0**-20),
        ("fp8_c_2e13_plus_32", [1.0] * 32, [1.0] * 32, 2.0**13, 2.0**13 + 32, 2.0**13 + 32),
        ("fp8_c_2e14_plus_32", [1.0] * 32, [1.0] * 32, 2.0**14, 2.0**14, 2.0**14 + 32),
        ("fp8_c_2e25_plus_32", [1.0] * 32, [1.0] * 32, 2.0**25, 2.0**25, 2.0**25 + 32),
        ("fp8_c_2e26_plus_32", [1.0] * 32, [1.0] * 32, 2.0**26, 2.0**26, 2.0**26),
    ]
    for name, a, b, c, h100, b200 in fp8:
        add(name, ["h100_fp8"], a, b, c, h100)
        add(name, ["b200_fp8"], a, b, c, b200)

    # 3.6, vectors that separate the model variants
    c_sep = -(0.5 - 2.0**-25)
    add("separating_extra_bits", ["v100_fp16"], [1.0], [1.0], c_sep, 0.5 + 2.0**-23)
    add("separating_extra_bits", ["t4_fp16", "a100_fp16"], [1.0], [1.0], c_sep, 0.5 + 2.0**-24)
    add("separating_extra_bits", H100_LIKE, [1.0], [1.0], c_sep, 0.5)
    add("unnormalised_product_exponent", FP16_PROFILES, [1.5, 1.5], [1.5, -1.5], 2.0**-23, 2.0**-23)
    for p in FP16_PROFILES:
        f = PUBLISHED[p][1]
        for x in (0.25, 0.5, 0.75, 1.5, -0.25, -0.5, -0.75, -1.5):
            want = math.trunc(x) * 2.0 ** (14 - f)
            add(f"c_truncated_toward_zero_x{x}", [p], [2.0**7, 2.0**7], [2.0**7, -2.0**7],
                x * 2.0 ** (14 - f), want)
    return rows


# ==========================================================================
# Tests
# ==========================================================================


@pytest.mark.parametrize("profile, a, b, c, expected", fp16_suite_cases())
def test_fasi_suite_fp16(profile, a, b, c, expected):
    """Fasi et al.'s fp16 tests (V100 file, T4/A100 file): the pass value."""
    assert lowbit_dot(profile, a, b, c) == expected


@pytest.mark.parametrize("profile, a, b, c, expected", bf16_tf32_suite_cases())
def test_fasi_suite_bf16_tf32(profile, a, b, c, expected):
    """Fasi et al.'s A100 bf16 and tf32 files: the pass value."""
    assert lowbit_dot(profile, a, b, c) == expected


@pytest.mark.parametrize("a, b, c, expected", [pytest.param(*row[1:], id=row[0]) for row in FP64_SUITE])
def test_fasi_suite_fp64(a, b, c, expected):
    """Fasi et al.'s A100 binary64 file (DMMA: an IEEE fma chain)."""
    assert lowbit_dot("a100_fp64", a, b, c) == expected


@pytest.mark.parametrize("a, b, c", [pytest.param(*row[1:], id=row[0]) for row in FP64_CARRY])
def test_fasi_suite_fp64_no_extra_carry_bits(a, b, c):
    """The binary64 file passes on 2 or on 2 + 2**-50."""
    assert lowbit_dot("a100_fp64", a, b, c) in (2.0, 2 + 2.0**-50)


def test_fasi_suite_fp64_monotonic():
    """The binary64 file: PASS iff d(c=1) >= d(c=1-2**-53)."""
    a, b = [1.0, 1.0], [2.0**-54, 2.0**-53 + 2.0**-54]
    assert lowbit_dot("a100_fp64", a, b, 1.0) >= lowbit_dot("a100_fp64", a, b, 1 - 2.0**-53)


@pytest.mark.parametrize("profile, a, b, c_lo, c_hi", d5_cases())
def test_fasi_suite_non_monotonic(profile, a, b, c_lo, c_hi):
    """D5: PASS iff the larger accumulator gives the smaller result."""
    assert lowbit_dot(profile, a, b, c_hi) < lowbit_dot(profile, a, b, c_lo)


@pytest.mark.parametrize("profile, a, b, c, expected",
                         [pytest.param(*row[1:], id=row[0]) for row in HPEC_A30])
def test_hpec2025_a30_output(profile, a, b, c, expected):
    """Khattak-Mikaitis HPEC 2025 vectors: the A30's printed result."""
    assert lowbit_dot(profile, a, b, c) == expected


def test_hpec2025_a30_two_extra_bits_fail():
    """F1 with two extra bits: the A30 prints "Failed" (it has only one)."""
    assert lowbit_dot("a100_fp16", *F1_TWO_BITS) != 1 + 2.0**-23


@pytest.mark.parametrize("profile", FP16_PROFILES)
def test_hpec2025_fma_size(profile):
    """F3: the largest k whose term still meets c in one group is the FMA size
    (the A30 prints "FMA size is: 8"; the others from the published models)."""
    seen = fma_size_probe(lowbit_dot, profile)
    assert max(k for k, same in seen.items() if same) == FMA_SIZE[profile] == DATAPATHS[profile].group
    assert all(same == (k <= FMA_SIZE[profile]) for k, same in seen.items())


@pytest.mark.parametrize("profile, a, b, c, expected, k", derived_cases())
def test_model_derived(profile, a, b, c, expected, k):
    """Rows computed by evaluating the published models (MMA-Sim's fused sum,
    the Khattak-Mikaitis models) with each GPU's parameters: H100/B200
    columns, FP8, the vectors that separate the model variants, and each
    suite form on the other GPUs. Not hardware measurements."""
    assert lowbit_dot(profile, a, b, c, k) == expected


# ---- the oracle must reproduce every published vector ----------------------

ALL_VALUE_CASES = (
    [pytest.param(p, a, b, c, want, None, id=f"suite-{pid.id}")
     for pid in fp16_suite_cases() + bf16_tf32_suite_cases() for p, a, b, c, want in [pid.values]]
    + [pytest.param("a100_fp64", a, b, c, want, None, id=f"suite-fp64-{name}") for name, a, b, c, want in FP64_SUITE]
    + [pytest.param(p, a, b, c, want, None, id=f"hpec-{name}") for name, p, a, b, c, want in HPEC_A30]
    + [pytest.param(*pid.values, id=f"derived-{pid.id}") for pid in derived_cases()]
)


@pytest.mark.parametrize("profile, a, b, c, expected, k", ALL_VALUE_CASES)
def test_oracle_reproduces_published_vectors(profile, a, b, c, expected, k):
    """The exact model here, with the published parameters, gives every
    published value (suite, A30, model-derived)."""
    assert oracle_for(profile, a, b, c, k) == expected


def test_oracle_reproduces_published_conditions():
    """... and every published pass/fail condition (D5, fp64 carry and
    monotonicity, F1 with two bits, F3)."""
    for name, profiles, a, b, lo, hi in D5_NON_MONOTONIC:
        for p in profiles:
            assert oracle_for(p, a, b, hi) < oracle_for(p, a, b, lo), (name, p)
    for name, a, b, c in FP64_CARRY:
        assert oracle_for("a100_fp64", a, b, c) == 2 + 2.0**-50, name  # the chain's value
    a, b = [1.0, 1.0], [2.0**-54, 2.0**-53 + 2.0**-54]
    assert oracle_for("a100_fp64", a, b, 1.0) >= oracle_for("a100_fp64", a, b, 1 - 2.0**-53)
    assert oracle_for("a100_fp16", *F1_TWO_BITS) != 1 + 2.0**-23
    for p in FP16_PROFILES:
        seen = fma_size_probe(oracle_for, p)
        assert max(k for k, same in seen.items() if same) == FMA_SIZE[p], p


# ---- the oracle against lowbit on random inputs ------------------------------


def fp16_values():
    """fp16 values from their bits: every finite fp16 (zeros, negatives,
    subnormals), and values near 1 (exponents -3..2)."""
    def from_bits(sign, exp_field, mantissa):
        return float(np.uint16((sign << 15) | (exp_field << 10) | mantissa).view(np.float16))
    return st.one_of(
        st.builds(from_bits, st.integers(0, 1), st.integers(0, 30), st.integers(0, 1023)),
        st.builds(from_bits, st.integers(0, 1), st.integers(12, 17), st.integers(0, 1023)),
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0**-24, -2.0**-24, 2.0**-14, 1 - 2.0**-11, 65504.0]),
    )


def bf16_values(max_exponent=59):
    """bf16 values from their bits (zeros, negatives, subnormals), |x| < 2**60
    so that no sum leaves fp32's range."""
    def from_bits(sign, exp_field, mantissa):
        bits = np.uint32((sign << 31) | (exp_field << 23) | (mantissa << 16))
        return float(bits.view(np.float32))
    bits = st.builds(from_bits, st.integers(0, 1), st.integers(0, 127 + max_exponent), st.integers(0, 127))
    return st.one_of(bits, st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0**-133, 1 - 2.0**-8]))


def fp32_accumulators():
    """c: any fp32 of magnitude below 2**100 (zeros and subnormals included)."""
    def from_bits(sign, exp_field, mantissa):
        return float(np.uint32((sign << 31) | (exp_field << 23) | mantissa).view(np.float32))
    return st.one_of(
        st.builds(from_bits, st.integers(0, 1), st.integers(0, 127 + 99), st.integers(0, 2**23 - 1)),
        st.floats(-2.0**20, 2.0**20, width=32),
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 1 - 2.0**-24, 2.0**-149]),
    )


@st.composite
def dot_problems(draw, values):
    m = draw(st.integers(1, 2))
    n = draw(st.integers(1, 2))
    k = draw(st.integers(1, 40))
    a = [[draw(values) for _ in range(k)] for _ in range(m)]
    b = [[draw(values) for _ in range(k)] for _ in range(n)]
    c = [draw(fp32_accumulators()) for _ in range(n)]
    return a, b, c


def same_float(x, y):
    return x == y and math.copysign(1.0, x) == math.copysign(1.0, y)


def check_against_oracle(profile, problem):
    a, b, c = problem
    group, f, fmt, output, floor = PUBLISHED[profile]
    got = reference_matmul(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                           torch.tensor(c, dtype=torch.float64), datapath=profile)
    for i, row in enumerate(a):
        for j, col in enumerate(b):
            want = oracle_dot(row, col, c[j], group=group, fraction_bits=f, input_emin=INPUT_EMIN[fmt],
                              output=output, min_exponent=floor)
            assert same_float(got[i, j].item(), want), (profile, row, col, c[j], got[i, j].item(), want)


@pytest.mark.parametrize("profile", ["v100_fp16", "t4_fp16", "a100_fp16", "h100_fp16", "b200_fp16"])
@settings(max_examples=60, deadline=None)
@given(problem=dot_problems(fp16_values()))
def test_fp16_profiles_match_oracle(profile, problem):
    """Random fp16 dot products: lowbit equals the exact published model bit
    for bit (zeros with their sign)."""
    check_against_oracle(profile, problem)


@pytest.mark.parametrize("profile", ["a100_bf16", "h100_bf16"])
@settings(max_examples=60, deadline=None)
@given(problem=dot_problems(bf16_values()))
def test_bf16_profiles_match_oracle(profile, problem):
    """Random bf16 dot products (including products far below fp32's
    subnormals, where the zero floor min_exp_limit decides): lowbit equals the
    exact published model bit for bit."""
    check_against_oracle(profile, problem)


# ---- IEEE and exact ------------------------------------------------------------


def fp32_values(limit=2.0**60):
    return st.floats(-limit, limit, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def fp32_problems(draw):
    m, n, k = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 24))
    a = [[draw(fp32_values()) for _ in range(k)] for _ in range(m)]
    b = [[draw(fp32_values()) for _ in range(k)] for _ in range(n)]
    c = [draw(fp32_values()) for _ in range(n)]
    return a, b, c


@settings(max_examples=60, deadline=None)
@given(problem=fp32_problems())
def test_exact_profile_is_the_correctly_rounded_sum(problem):
    """``exact``: the exact sum of the exact products and c, rounded once to
    float64 (Fraction arithmetic; a Fraction has no -0, so zeros compare by
    value)."""
    a, b, c = problem
    got = reference_matmul(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                           torch.tensor(c, dtype=torch.float64), datapath="exact")
    for i, row in enumerate(a):
        for j, col in enumerate(b):
            want = float(sum(Fraction(x) * Fraction(y) for x, y in zip(row, col)) + Fraction(c[j]))
            assert got[i, j].item() == want, (row, col, c[j])


@settings(max_examples=60, deadline=None)
@given(problem=fp32_problems())
def test_ieee_fp32_profile_is_torch_float32_one_product_at_a_time(problem):
    """``ieee_fp32``: torch's float32, acc = acc + a[:, k] b[:, k]^T for k in
    order, starting from c; and IEEE float32 elementwise (numpy), signs of
    zeros included."""
    a, b, c = problem
    a32, b32 = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    acc = torch.tensor(c, dtype=torch.float32).expand(len(a), len(c)).clone()
    for k in range(a32.shape[1]):
        acc = acc + a32[:, k:k + 1] @ b32[:, k:k + 1].T
    got = reference_matmul(a32.double(), b32.double(), torch.tensor(c, dtype=torch.float64), datapath="ieee_fp32")
    assert torch.equal(got, acc.double()), (a, b, c, got, acc)
    # torch's one-term matmul starts its sum at +0, so 0 * -0 comes out +0:
    # the signs of zeros are checked against numpy's elementwise IEEE float32
    a_np, b_np = np.array(a, np.float32), np.array(b, np.float32)
    ieee = np.broadcast_to(np.array(c, np.float32), (len(a), len(c))).copy()
    for k in range(a_np.shape[1]):
        ieee = ieee + a_np[:, k:k + 1] * b_np[:, k]
    assert np.array_equal(got.numpy(), ieee), (a, b, c, got, ieee)
    assert np.array_equal(np.signbit(got.numpy()), np.signbit(ieee)), (a, b, c, got, ieee)
