// The arithmetic of lowbit's MX matmul, as __host__ __device__ functions
// shared by the GPU kernel (mx_matmul.cu), its emulated build and its host
// twin (host_launchers.cpp).
//
// C = A B^T with A (M x K) and B (N x K) blocked along K. Each operand
// arrives prepared (lowbit/cuda/matmul.py): its elements as tensor-core
// inputs (int8, fp16, or FP8 E4M3/E5M2 bytes; each MX element value is
// exact in the chosen type, up to a fixed power of two folded into the
// scale) and one float32 scale per block (a power of two, or NaN).
//
// For output (m, n) and block b, the tensor cores give the partial sum P_b
// of the block's element products; then
//     total <- round_fp32(total + P_b * scale_a[m, b] * scale_b[n, b])
// in block order b = 0, 1, ..., with one rounding per block (see
// add_scaled_block). Then the bias is added in fp32 and the result rounded
// to the output dtype (round to nearest, ties to even).
#pragma once

#include <type_traits>

#include "block_math.cuh"  // get_code

namespace lowbit {

// The tensor-core input type of an operand's elements: int8 (with the int8
// MMA), fp16 (the fp16 MMA), or FP8 E4M3/E5M2 (the FP8 MMA, either pair).
enum MmaType { TYPE_INT8 = 0, TYPE_FP16 = 1, TYPE_E4M3 = 2, TYPE_E5M2 = 3 };

// The longest block the int8 instruction takes: its int32 partial sum of
// a block (at most INT8_BLOCK_MAX products of magnitude <= 128 * 128 =
// 2**14) stays below 2**24, so that converting it to fp32 is exact.
constexpr int INT8_BLOCK_MAX = 1024;

// Bytes per element of an operand of `type`.
LB_HD constexpr int input_bytes(int type) { return type == TYPE_FP16 ? 2 : 1; }

// How many K positions one MMA instruction takes: m16n8k16 for fp16
// inputs, m16n8k32 for 8-bit ones. The tensor cores round a partial sum to
// fp32 after each instruction (int8: exact, in int32).
LB_HD constexpr int mma_k(int type) { return type == TYPE_FP16 ? 16 : 32; }

// Preparing an operand: element j's tensor-core input (`bytes` bytes), its
// code (`code_bits` wide at bit j * code_bits of the packed stream) looked
// up in `table` (2**code_bits entries of `bytes` bytes).
LB_HD void prepare_element(const unsigned char* packed, int code_bits, const unsigned char* table, int bytes,
                           unsigned char* inputs, long long j) {
  const unsigned char* entry = table + get_code(packed, j * code_bits, code_bits) * bytes;
  for (int b = 0; b < bytes; ++b) inputs[j * bytes + b] = entry[b];
}

// Preparing an operand: block i's scale, its code looked up in `table`
// (`entries` float32 scales); NaN for a code outside the table.
LB_HD void prepare_scale(const int32_t* codes, const float* table, int entries, float* scales, long long i) {
  const int32_t code = codes[i];
  scales[i] = code >= 0 && code < entries ? table[code] : (float)NAN;
}

// The value of one tensor-core input element of `type` stored at `bytes`.
LB_HD double mma_input_value(int type, const unsigned char* bytes) {
  if (type == TYPE_INT8) return (double)(signed char)bytes[0];
  if (type == TYPE_FP16) return float16_value((long long)bytes[0] | ((long long)bytes[1] << 8));
  const int man = type == TYPE_E4M3 ? 3 : 2, bias = type == TYPE_E4M3 ? 7 : 15;
  const long long magnitude = bytes[0] & 0x7F, e = magnitude >> man, m = magnitude & ((1 << man) - 1);
  double value = e ? (double)((1 << man) + m) * pow2(e - bias - man) : (double)m * pow2(1 - bias - man);
  if (type == TYPE_E4M3 && magnitude == 0x7F) value = (double)NAN;
  if (type == TYPE_E5M2 && e == 31) value = m ? (double)NAN : (double)INFINITY;
  return (bytes[0] & 0x80) ? -value : value;
}

// The CPU builds' model of one MMA output: c plus the n products
// product(0), product(1), ... summed exactly, then converted to the
// accumulator type once (int8 products are integers and their int32 sums
// stay exact; fp32 accumulators round once per instruction, to nearest
// even: lowbit.formats.DATAPATHS["lowbit_mx_fp16"] and ["lowbit_mx_fp8"]).
// Every product of two tensor-core inputs (fp16, FP8) and every partial sum
// the kernel starts from is a multiple of 2**-48 below 2**40 in magnitude,
// so a 128-bit integer in units of 2**-48 holds the sum exactly; NaN and
// Inf (and, defensively, any other value) take the IEEE double sum.
inline bool fits_mma_units(double x) {
  const double units = x * 0x1p48;
  return units == units && fabs(units) < 0x1p100 && units == floor(units);
}

template <typename Acc, typename Product> inline Acc modelled_mma(Acc c, int n, Product product) {
  double sum = (double)c;
  bool exact = std::is_integral<Acc>::value || fits_mma_units(sum);
  __int128 units = exact && !std::is_integral<Acc>::value ? (__int128)(sum * 0x1p48) : 0;
  for (int k = 0; k < n; ++k) {
    const double p = product(k);
    sum += p;
    if (!std::is_integral<Acc>::value && exact && (exact = fits_mma_units(p))) units += (__int128)(p * 0x1p48);
  }
  if (std::is_integral<Acc>::value || !exact) return (Acc)sum;
  if (units == 0) return (Acc)(sum == 0.0 ? sum : 0.0);  // the sign of zeros as IEEE gives it; a cancellation is +0
  return (Acc)((float)units * 0x1p-48f);  // one rounding (int128 to float), then an exact scaling
}

// total + partial * sa * sb rounded once to fp32, for scales sa, sb that are
// powers of two or NaN. When sa * sb is a float (2**-149 .. 2**127) one fma
// computes it; otherwise the scaled partial is formed exactly in double and
// added there, and rounding that double sum to fp32 gives the same single
// rounding (a double holds 53 >= 2 * 24 + 2 bits, so rounding twice is
// innocuous for a sum of two 24-bit numbers).
LB_HD_NOINLINE  // rare: kept out of the kernel's unrolled loops and registers
float add_scaled_block_in_double(float total, float partial, float sa, float sb) {
  return (float)((double)total + (double)partial * ((double)sa * (double)sb));
}

LB_HD float add_scaled_block(float total, float partial, float sa, float sb) {
  float s = sa * sb;
  if (s != 0.0f && fabsf(s) != INFINITY) return fmaf(partial, s, total);
  return add_scaled_block_in_double(total, partial, sa, sb);
}

// Whether a scale lies in 2**-63 .. 2**63, where the product of any two
// such is a normal float, so that add_scaled_block's first branch (one fma)
// computes it; or is 0, which only the zero-filled rows past M or N have
// (their outputs are never stored). False for NaN.
LB_HD bool scale_multiplies_exactly(float s) { return s == 0.0f || (s >= 0x1p-63f && s <= 0x1p63f); }

// An fp32 result rounded to bfloat16 bits (nearest, ties to even; NaN: 0x7FC0).
LB_HD uint16_t bfloat16_rounded(float x) {
  if (x != x) return 0x7FC0;
  uint32_t bits = (uint32_t)float_bits(x);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return (uint16_t)(bits >> 16);
}

// An fp32 result rounded to float16 bits (nearest, ties to even; beyond
// 65504 by half a step or more: infinity; NaN: 0x7E00).
LB_HD uint16_t float16_rounded(float x) {
  double a = fabs((double)x);
  if (a < (double)INFINITY && a == a) {
    long long e = max64(floor_log2_or(bits_of(a), -14), -14);
    double step = pow2(e - 10);
    a = rint(a / step) * step;  // exact scaling; rint rounds half to even
    if (a >= 65520.0) a = (double)INFINITY;
  }
  return (uint16_t)float16_code(x == x ? copysign(a, (double)x) : (double)x);
}

// Output `index` of a matmul: total (+ *bias, in fp32) rounded to out_dtype
// (F32, BF16 or F16). Not inlined on the GPU: the kernel stores 64 outputs
// per thread from an unrolled loop, and inlining the rounding into each
// made about 70% of its machine code and of its first-use compile time.
LB_HD_NOINLINE
void store_output(void* out, int out_dtype, long long index, float total, const float* bias) {
  const float value = bias ? total + *bias : total;
  if (out_dtype == F32) static_cast<float*>(out)[index] = value;
  else static_cast<uint16_t*>(out)[index] = out_dtype == BF16 ? bfloat16_rounded(value) : float16_rounded(value);
}

}  // namespace lowbit
