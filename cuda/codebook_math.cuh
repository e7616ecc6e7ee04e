// Codebook elements (lowbit.formats.codebook.CodebookFormat: QLoRA's NF4,
// bitsandbytes' FP4, fitted codebooks), on their own and in blocks with an
// fp32 scale per block under scale rule amax (nf4, fp4_bnb, kmeans4_g64),
// as __host__ __device__ functions.
//
// A twin of lowbit/formats/cpu/codebook_kernels.py (both follow the
// reference, formats/codebook.py and BlockFormat): an element's code follows
// from exact double comparisons of its value with the table's values and
// midpoints (lo + hi is exact in double: CodebookFormat checks it), the
// lower neighbour found by binary search. Block r's element j draws
// stochastic uniform r * block + j, as in block_math.cuh.
#pragma once

#include "block_math.cuh"

namespace lowbit {

// A codebook: `entries` (2 to 65536) strictly increasing doubles, each a
// float32 number; code k is the index of values[k].
struct Codebook {
  const double* values;
  int entries;
};

// Blocks of `block` codebook elements of `bits`-bit codes with one fp32
// scale each: BlockFormat(CodebookFormat, block, scale=fp32), rule amax.
struct CodebookBlocks {
  Codebook table;
  int block, bits;
};

LB_HD int block_size(const CodebookBlocks& f) { return f.block; }
LB_HD int element_bits(const CodebookBlocks& f) { return f.bits; }

// The index of the largest table value <= x (0 below the table).
LB_HD int down_index(double x, const Codebook& t) {
  int lo = 0, hi = t.entries;
  while (hi - lo > 1) {
    int middle = (lo + hi) >> 1;
    if (t.values[middle] <= x) lo = middle;
    else hi = middle;
  }
  return lo;
}

// The code of x (not NaN) under rounding `mode` and stochastic uniform u:
// beyond the table's ends (+-Inf too) the end code; a table value keeps its
// code; between lo and hi: nearest_even the nearer, a tie to the even code;
// nearest_away the nearer, a tie to hi unless x's sign bit is set;
// toward_zero lo unless x's sign bit is set; up hi; down lo; odd the odd
// code; stochastic as stochastic_upper (CodebookFormat.encode_exact).
LB_HD long long codebook_code(double x, const Codebook& t, int mode, double u) {
  const int last = t.entries - 1;
  if (x <= t.values[0]) return 0;
  if (x >= t.values[last]) return last;
  const int lo_index = down_index(x, t);
  const double lo = t.values[lo_index], hi = t.values[lo_index + 1];
  if (x == lo) return lo_index;
  const bool negative = bits_of(x) < 0, lo_is_odd = (lo_index & 1) == 1;
  const double twice = 2.0 * x, mid = lo + hi;
  bool upper;
  switch (mode) {
    case NEAREST_EVEN: upper = twice > mid || (twice == mid && lo_is_odd); break;
    case NEAREST_AWAY: upper = twice > mid || (twice == mid && !negative); break;
    case TOWARD_ZERO: upper = negative; break;
    case UP: upper = true; break;
    case DOWN: upper = false; break;
    case ODD: upper = !lo_is_odd; break;
    default: upper = stochastic_upper(mode, x, lo, hi, u);  // STOCHASTIC, or with sr_bits
  }
  return lo_index + (upper ? 1 : 0);
}

// -- codebook elements on their own -------------------------------------------
// Element i of a codebook encode: a NaN input cannot be encoded (code 0).
template <int DT>
LB_HD Code encode_one(typename Storage<DT>::type x, long long i, const Codebook& t, const Policy& p) {
  const double v = flushed(load_value<DT>(x), p);
  if (v != v) return Code{0, true};
  return Code{codebook_code(v, t, p.mode, uniform_for(p, i)), false};
}

// Element i of a codebook quantize: its table value (NaN for NaN) in the
// output dtype; `exact` as in store_value.
template <int DT>
LB_HD typename Storage<DT>::type quantize_one(typename Storage<DT>::type x, long long i, const Codebook& t,
                                              const Policy& p, bool& exact) {
  const Code c = encode_one<DT>(x, i, t, p);
  return store_value<DT>(c.invalid ? (double)NAN : t.values[c.code], exact);
}

// The value of a code: NaN past the table's end, and NaN with `out_of_range`
// for codes outside [0, 2**nbits).
LB_HD double decode_one(long long code, const Codebook& t, int nbits, bool& out_of_range) {
  out_of_range = code < 0 || code >= (1LL << nbits);
  return out_of_range || code >= t.entries ? (double)NAN : t.values[code];
}

// -- codebook elements in blocks with an fp32 scale ------------------------------
// fp32's NaN code, the scale code of a block that holds NaN or Inf.
constexpr int32_t FLOAT32_NAN_BITS = 0x7FC00000;

// The scale of a block: float32(amax / the table's largest magnitude)
// (amax of its flushed elements, padding zeros), saturating at float32's
// largest; NaN when the block holds NaN or Inf.
template <int DT> LB_HD double codebook_block_scale(const BlockInput<DT>& in, const CodebookBlocks& f, const Policy& p) {
  double amax = 0.0;
  for (int j = 0; j < f.block; ++j) {
    const double a = fabs(element_at<DT>(in, j, p));
    if (!(a < (double)INFINITY)) return (double)NAN;
    amax = maxd(amax, a);
  }
  const double divisor = maxd(fabs(f.table.values[0]), fabs(f.table.values[f.table.entries - 1]));
  const double quotient = amax / divisor, float32_max = 3.4028234663852886e38;
  return quotient >= float32_max ? float32_max : (double)(float)quotient;  // no conversion out of float's range
}

// The element code of v (flushed) in a block of `scale`, the block's element
// `index` (its stochastic draw): 0 in a block of NaN/Inf, the code of 0.0 in
// a block of scale 0, else the code of the double quotient v / scale (kept
// from underflow as the reference keeps it: kept_from_underflow).
LB_HD long long codebook_element_code(double v, double scale, const CodebookBlocks& f, const Policy& p,
                                      long long index) {
  if (scale != scale) return 0;
  if (scale == 0.0) return codebook_code(0.0, f.table, NEAREST_EVEN, 0.0);
  return codebook_code(kept_from_underflow(v / scale, v), f.table, p.mode, uniform_for(p, index));
}

// The value of an element code in a block: float32(table value * scale),
// NaN for a code past the table or a NaN scale.
LB_HD double codebook_element_value(long long code, double scale, const Codebook& t) {
  return code < t.entries ? (double)(float)(t.values[code] * scale) : (double)NAN;
}

// Block r of a quantize (its input: `in`): its values into the contiguous
// output; whether the output dtype failed to hold one exactly.
template <int DT>
LB_HD bool quantize_block(const BlockInput<DT>& in, typename Storage<DT>::type* out, const BlockView& v, long long r,
                          const CodebookBlocks& f, const Policy& p) {
  const BlockOrigin b = block_origin(r, v, f.block);
  const double scale = codebook_block_scale<DT>(in, f, p);
  bool lost = false;
  for (long long j = 0; j < in.valid; ++j) {
    const long long code = codebook_element_code(element_at<DT>(in, j, p), scale, f, p, r * f.block + j);
    bool exact;
    out[output_offset(v, b, b.k0 + j)] = store_value<DT>(codebook_element_value(code, scale, f.table), exact);
    lost = lost || !exact;
  }
  return lost;
}

// Block r of an encode: its scale's fp32 bits into scales[r], its element
// codes packed into `elements` (zeroed unless whole bytes).
template <int DT>
LB_HD void encode_block(const BlockInput<DT>& in, unsigned char* elements, int32_t* scales, long long r,
                        const CodebookBlocks& f, const Policy& p) {
  const double scale = codebook_block_scale<DT>(in, f, p);
  scales[r] = scale != scale ? FLOAT32_NAN_BITS : float_bits((float)scale);
  RowWriter row(elements, r * f.block * f.bits, (long long)f.block * f.bits);
  for (int j = 0; j < f.block; ++j)
    row.push(codebook_element_code(element_at<DT>(in, j, p), scale, f, p, r * f.block + j), f.bits);
}

// Block r of a decode into a contiguous (outer, length, inner) output; scales:
// the blocks' fp32 scales as their bits (codes, or the values a double
// quantization's scales decode to).
template <typename O>
LB_HD void decode_block(const unsigned char* elements, const int32_t* scales, O* out, const BlockView& v, long long r,
                        const CodebookBlocks& f) {
  const BlockOrigin b = block_origin(r, v, f.block);
  const double scale = (double)float_of(scales[r]);
  const long long n = min64(f.block, v.length - b.k0);
  for (long long j = 0; j < n; ++j) {
    const long long code = get_code(elements, (r * f.block + j) * f.bits, f.bits);
    out[output_offset(v, b, b.k0 + j)] = (O)codebook_element_value(code, scale, f.table);
  }
}

}  // namespace lowbit
