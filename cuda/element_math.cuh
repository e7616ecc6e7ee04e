// Per-element math of lowbit's formats, as __host__ __device__ functions.
//
// A line-for-line twin of lowbit/formats/cpu/scalar.py (itself a mirror of
// the reference implementation): every value is taken exactly as a double
// and rounded with the same double steps (scaling by powers of two, floor,
// exact comparisons), so the GPU kernels, the host build of this header and
// the numba kernels agree bit for bit. Compile without floating-point
// contraction (nvcc --fmad=false, g++ -ffp-contract=off): an a*b+c fused
// into one rounding would change results the reference computes in two.
//
// Formats arrive as ElementDesc, the integer fields of
// lowbit.formats.abi.element_descriptor, numbered by abi.h (generated from
// that module, as are the rounding, overflow and scale-rule numbers).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "abi.h"

#ifdef LOWBIT_EMULATE_DEVICE
#include "emulated_device.h"  // the device functions the GPU branches call
#endif

// LB_HD: a function of the math headers, for host and device, inlined.
// LB_HD_NOINLINE: the same kept a call on the GPU (rare or repeated code);
// `inline` for its linkage: every file that includes the header defines it.
#if defined(__CUDACC__)
#define LB_HD __host__ __device__ __forceinline__
#define LB_HD_NOINLINE inline __host__ __device__ __noinline__
#else
#define LB_HD inline
#define LB_HD_NOINLINE inline
#endif

namespace lowbit {

// -- format descriptors: fields numbered by ElementField (abi.h) -----------
struct ElementDesc {
  long long f[ELEMENT_FIELDS];
};

// How a call rounds: mode, overflow policy, stochastic key, and the
// magnitude below which inputs are flushed to signed zeros (0: no flushing).
struct Policy {
  int mode;
  int overflow;
  unsigned long long key;
  double tiny;
};

// -- double and float bits ---------------------------------------------------
constexpr long long EXPONENT_MASK = 0x7FF0000000000000LL;
constexpr long long MAGNITUDE_MASK = 0x7FFFFFFFFFFFFFFFLL;

// The same bits as another type (memcpy compiles to a register move, on the GPU too).
template <typename To, typename From> LB_HD To bit_cast(From x) {
  To y;
  memcpy(&y, &x, sizeof y);
  return y;
}

LB_HD long long bits_of(double x) { return bit_cast<long long>(x); }
LB_HD double double_of(long long b) { return bit_cast<double>(b); }
LB_HD int32_t float_bits(float x) { return bit_cast<int32_t>(x); }
LB_HD float float_of(int32_t b) { return bit_cast<float>(b); }

// 2.0**k for integer k in [-1022, 1023], built on the bits.
LB_HD double pow2(long long k) { return double_of((long long)((unsigned long long)(k + 1023) << 52)); }

// floor(log2 |x|) of a normal double given as its bits, or `below` when x is
// zero or subnormal.
LB_HD long long floor_log2_or(long long x_bits, long long below) {
  long long biased = (x_bits & MAGNITUDE_MASK) >> 52;
  return biased != 0 ? biased - 1023 : below;
}

// The index of the highest set bit of x > 0.
LB_HD long long highest_bit(long long x) {
#ifdef __CUDA_ARCH__
  return 63 - __clzll(x);
#else
  return 63 - __builtin_clzll((unsigned long long)x);
#endif
}

LB_HD long long max64(long long a, long long b) { return a > b ? a : b; }
LB_HD long long min64(long long a, long long b) { return a < b ? a : b; }
// Python's max/min on floats as numba compiles them (the first argument wins ties and NaN comparisons fail).
LB_HD double maxd(double a, double b) { return b > a ? b : a; }
LB_HD double mind(double a, double b) { return b < a ? b : a; }

// -- stochastic rounding's uniforms ------------------------------------------
// Element `index`'s uniform in [0, 1) in the stream `key`: draw `index` of
// SplitMix64, as lowbit.formats.rounding.counter_uniforms.
// The uniform is z * 2**-53 for the 53-bit integer z this returns.
LB_HD unsigned long long counter_bits53(unsigned long long key, long long index) {
  unsigned long long z = key + (unsigned long long)(index + 1) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z = z ^ (z >> 31);
  return z >> 11;
}

LB_HD double counter_uniform(unsigned long long key, long long index) {
  return (double)counter_bits53(key, index) * 0x1p-53;
}

// Whether rounding mode `mode` draws a random number per element:
// STOCHASTIC (53 bits) or STOCHASTIC_BITS + k (sr_bits=k, k in 1..32).
LB_HD bool is_stochastic(int mode) { return mode == STOCHASTIC || mode > STOCHASTIC_BITS; }

LB_HD double uniform_for(const Policy& p, long long index) {
  return is_stochastic(p.mode) ? counter_uniform(p.key, index) : 0.0;
}

// The same draw as its 53-bit integer (0 for other modes), for the integer paths.
LB_HD unsigned long long draw53_for(const Policy& p, long long index) {
  return is_stochastic(p.mode) ? counter_bits53(p.key, index) : 0;
}

// -- the rounding decision ---------------------------------------------------
LB_HD bool toward_zero(int mode, bool negative) {
  return mode == TOWARD_ZERO || (mode == UP && negative) || (mode == DOWN && !negative);
}

// The stochastic decision for lo <= a < hi and the 53-bit uniform u:
// u * (hi - lo) < a - lo (STOCHASTIC); under sr_bits=k (mode
// STOCHASTIC_BITS + k) round_half_even((a - lo) / (hi - lo) * 2**k) +
// floor(u * 2**k) >= 2**k, floor(u * 2**k) being the draw's top k bits.
// Every step is exact in double but the fraction's division, rounded as the
// reference rounds it.
LB_HD bool stochastic_upper(int mode, double a, double lo, double hi, double u) {
  if (mode == STOCHASTIC) return u * (hi - lo) < (a - lo);
  if (hi == lo) return a > lo;  // the reference's division gives +-Inf or NaN here
  const double steps = pow2(mode - STOCHASTIC_BITS);
  return rint((a - lo) / (hi - lo) * steps) + floor(u * steps) >= steps;
}

// The sr_bits=k decision of stochastic_upper for the fraction rest / 2**drop
// (0 <= rest < 2**drop, or rest < 2**24 when drop >= 62), in integers.
LB_HD bool fraction_upper_bits(long long rest, long long drop, int k, unsigned long long draw53) {
  long long rounded;  // round_half_even(rest * 2**(k - drop))
  if (drop <= k) {
    rounded = rest << (k - drop);
  } else if (drop - k >= 62) {
    rounded = 0;  // rest < 2**24 < half a unit
  } else {
    const long long shift = drop - k, half = 1LL << (shift - 1);
    rounded = rest >> shift;
    const long long remainder = rest - (rounded << shift);
    rounded += (remainder > half || (remainder == half && (rounded & 1) == 1)) ? 1 : 0;
  }
  return rounded + (long long)(draw53 >> (53 - k)) >= (1LL << k);
}

// Whether magnitude a (lo <= a < hi, its neighbours) rounds up to hi.
LB_HD bool pick_upper(int mode, double a, double lo, double hi, bool lo_is_odd, bool negative, double u) {
  double twice = 2.0 * a, mid = lo + hi;
  if (mode == NEAREST_EVEN) return twice > mid || (twice == mid && lo_is_odd);
  if (mode == NEAREST_AWAY) return twice >= mid;
  if (is_stochastic(mode)) return stochastic_upper(mode, a, lo, hi, u);
  if (mode == ODD) return a > lo && !lo_is_odd;
  return a > lo && !toward_zero(mode, negative);
}

struct Code {
  long long code;
  bool invalid;  // the format cannot represent the input at all
};

// -- FloatFormat -------------------------------------------------------------
// The code of a rounded magnitude `mag` (a code without its sign; past
// MAX_CODE when the input overflowed) under the format's overflow policy,
// signs, zeros and NaNs; x_is_zero: the input is a zero of either sign.
LB_HD Code float_code(long long mag, bool negative, bool nan_in, bool inf_in, bool x_is_zero, const ElementDesc& d,
                      int mode, int overflow) {
  bool overflowed = mag > d.f[MAX_CODE];
  bool to_max = overflow == OVERFLOW_SATURATE || toward_zero(mode, negative);
  bool special = (overflowed && !to_max) || (inf_in && overflow != OVERFLOW_SATURATE);
  if ((overflowed && to_max) || (inf_in && overflow == OVERFLOW_SATURATE)) mag = d.f[MAX_CODE];
  if (overflow == OVERFLOW_INF && special) mag = d.f[INF_MAG];
  bool sign = d.f[HAS_NEGATIVE_ZERO] ? negative : (negative && mag != 0);
  long long code = mag + (sign ? d.f[SIGN_CODE] : 0);
  if (d.f[NAN_POSITIVE] >= 0 && (nan_in || (overflow == OVERFLOW_NAN && special)))
    code = negative ? d.f[NAN_NEGATIVE] : d.f[NAN_POSITIVE];
  bool invalid = nan_in && d.f[NAN_POSITIVE] < 0;
  if (!d.f[SIGNED]) {
    invalid = invalid || (negative && !x_is_zero);
    if (invalid) code = 0;
  }
  if (!d.f[HAS_ZERO]) invalid = invalid || x_is_zero;
  return Code{code, invalid};
}

LB_HD Code float_encode(double x, const ElementDesc& d, int mode, int overflow, double u) {
  long long x_bits = bits_of(x);
  bool negative = x_bits < 0;
  bool nan_in = (x_bits & MAGNITUDE_MASK) > EXPONENT_MASK;
  bool inf_in = (x_bits & MAGNITUDE_MASK) == EXPONENT_MASK;
  double a = (nan_in || inf_in) ? 0.0 : fabs(x);
  long long m = d.f[MAN_BITS], e0 = d.f[LOWEST_EXPONENT];
  long long e = max64(floor_log2_or(bits_of(a), e0), e0);
  double step = pow2(e - m);
  double sig = floor(a * pow2(m - e));
  double lo = sig * step;
  double hi = lo + step;
  long long code = ((e - e0) << m) + (long long)sig;
  if (!d.f[SUBNORMALS]) {
    code -= 1LL << m;
    bool below = d.f[HAS_ZERO] ? code <= 0 : code < 0;
    if (below) {
      code = d.f[HAS_ZERO] ? 0 : -1;
      lo = 0.0;
      hi = double_of(d.f[SMALLEST_BITS]);
    }
  }
  bool upper = pick_upper(mode, a, lo, hi, (code & 1) == 1, negative, u) || code < 0;
  return float_code(code + (upper ? 1 : 0), negative, nan_in, inf_in, x == 0.0, d, mode, overflow);
}

// -- FloatFormat from an integer significand, in integers ---------------------
// float_encode of the value +-significand * 2**scale_exponent (NaN or Inf
// as flagged; significand < 2**24, scale_exponent >= -1022) for formats of
// at most 23 mantissa bits: the same code, with floor(|x| / step) and the
// rounding decision computed by shifts and integer compares instead of
// double arithmetic. draw53: the stochastic uniform as its 53-bit integer
// (counter_bits53; sr_bits=k reads its top k bits); unused by other modes. Float32 inputs
// (float_encode_f32) and float32 inputs divided by a power-of-two block
// scale (element_code) take it.
LB_HD Code float_encode_parts(bool negative, bool nan_in, bool inf_in, long long significand,
                              long long scale_exponent, const ElementDesc& d, int mode, int overflow,
                              unsigned long long draw53) {
  if (nan_in || inf_in) significand = 0;  // as float_encode's a
  const long long m = d.f[MAN_BITS], e0 = d.f[LOWEST_EXPONENT];
  long long e = e0;  // max(floor(log2 |x|), e0)
  if (significand != 0) {
    e = max64(scale_exponent + highest_bit(significand), e0);
  }
  const long long drop = e - m - scale_exponent;  // bits of the significand below the step
  long long sig = 0, rest = significand;  // floor(|x| / step) and |x| - lo in units of 2**scale_exponent
  if (drop < 0) {
    // the format keeps more bits than the significand has, so it is exact: a
    // zero, or a float32 subnormal over a block scale so small that the
    // quotient is normal in the element format (bf16 elements under 2**-127);
    // then -drop <= 23 for a nonzero significand
    sig = significand == 0 ? 0 : significand << -drop;
    rest = 0;
  } else if (drop < 62) {
    sig = significand >> drop;
    rest = significand - (sig << drop);
  }
  long long code = ((e - e0) << m) + sig;
  bool below = false;
  if (!d.f[SUBNORMALS]) {
    code -= 1LL << m;
    below = d.f[HAS_ZERO] ? code <= 0 : code < 0;
  }
  bool upper;
  if (below) {  // between 0 (or nothing) and the smallest value: float_encode's own comparison, exact in double
    code = d.f[HAS_ZERO] ? 0 : -1;
    const double a = (double)significand * pow2(scale_exponent);
    upper = pick_upper(mode, a, 0.0, double_of(d.f[SMALLEST_BITS]), (code & 1) == 1, negative,
                       (double)draw53 * 0x1p-53) || code < 0;
  } else if (rest == 0) {
    upper = false;  // exact: every mode keeps it (and drop may be negative below)
  } else {
    // 2 rest against the step 2**drop: above, at or below the midpoint
    const int half = drop >= 62 ? -1 : (2 * rest > (1LL << drop)) - (2 * rest < (1LL << drop));
    if (mode == NEAREST_EVEN) upper = half > 0 || (half == 0 && (code & 1) == 1);
    else if (mode == NEAREST_AWAY) upper = half >= 0;
    else if (mode == STOCHASTIC) {
      // draw53 * 2**-53 * step < rest, i.e. draw53 < rest * 2**(53 - drop), exactly
      if (drop <= 53) upper = draw53 < (unsigned long long)(rest << (53 - drop));
      else if (drop - 53 < 40) upper = draw53 < (unsigned long long)((rest + (1LL << (drop - 53)) - 1) >> (drop - 53));
      else upper = draw53 == 0 && rest > 0;
    } else if (mode > STOCHASTIC_BITS) {
      upper = fraction_upper_bits(rest, drop, mode - STOCHASTIC_BITS, draw53);
    } else if (mode == ODD) upper = rest > 0 && (code & 1) == 0;
    else upper = rest > 0 && !toward_zero(mode, negative);
  }
  return float_code(code + (upper ? 1 : 0), negative, nan_in, inf_in, significand == 0 && !nan_in && !inf_in, d,
                    mode, overflow);
}

// A float32's sign, NaN/Inf flags, significand and exponent, as float_encode_parts takes them.
struct Float32Parts {
  bool negative, nan, inf;
  long long significand, scale_exponent;  // |x| = significand * 2**scale_exponent
};

LB_HD Float32Parts float32_parts(int32_t bits) {
  const int32_t magnitude = bits & 0x7FFFFFFF;
  const long long biased = magnitude >> 23, fraction = magnitude & 0x7FFFFF;
  return Float32Parts{bits < 0, magnitude > 0x7F800000, magnitude == 0x7F800000,
                      biased ? fraction | 0x800000 : fraction, (biased ? biased : 1) - 150};
}

// float_encode of a float32 input given as its bits (flushed as the policy says).
LB_HD Code float_encode_f32(int32_t bits, const ElementDesc& d, int mode, int overflow, unsigned long long draw53) {
  const Float32Parts x = float32_parts(bits);
  return float_encode_parts(x.negative, x.nan, x.inf, x.significand, x.scale_exponent, d, mode, overflow, draw53);
}

LB_HD double float_decode(long long code, const ElementDesc& d) {
  long long m = d.f[MAN_BITS], bias = d.f[BIAS];
  long long mag = code & ((1LL << d.f[MAG_BITS]) - 1);
  bool negative = d.f[SIGNED] && (code >> d.f[MAG_BITS]) != 0;
  long long e_field = mag >> m;
  double m_field = (double)(mag & ((1LL << m) - 1));
  double value = ((double)(1LL << m) + m_field) * pow2(e_field - bias - m);
  if (d.f[SUBNORMALS]) {
    if (e_field == 0) value = m_field * pow2(1 - bias - m);
  } else if (d.f[HAS_ZERO] && mag == 0) {
    value = 0.0;
  }
  if (mag > d.f[MAX_CODE]) value = mag == d.f[INF_MAG] ? (double)INFINITY : (double)NAN;
  if (negative) value = -value;
  if (d.f[NEGATIVE_ZERO_IS_NAN] && code == d.f[SIGN_CODE]) value = NAN;
  return value;
}

// -- IntFormat ---------------------------------------------------------------
LB_HD Code int_encode(double x, const ElementDesc& d, int mode, double u) {
  bool nan_in = x != x;
  bool negative = bits_of(x) < 0;
  double a = nan_in ? 0.0 : mind(fabs(x), 0x1p100);  // beyond every IntFormat's max, 2**95
  if (a > 0.0) a = maxd(a, 0x1p-900);
  a = a * pow2(d.f[FRAC_BITS]);
  double lo = floor(a);
  double half = lo * 0.5;
  bool upper = pick_upper(mode, a, lo, lo + 1.0, half != floor(half), negative, u);
  double q = lo + (upper ? 1.0 : 0.0);
  q = negative ? -q : q;
  q = mind(maxd(q, (double)d.f[QMIN]), (double)d.f[QMAX]);
  long long code = nan_in ? 0 : ((long long)q & ((1LL << d.f[INT_BITS]) - 1));
  return Code{code, nan_in};
}

LB_HD double int_decode(long long code, const ElementDesc& d) {
  long long bits = d.f[INT_BITS];
  long long q = d.f[INT_SIGNED] ? code - ((code >> (bits - 1)) << bits) : code;
  return (double)q * pow2(-d.f[FRAC_BITS]);
}

// -- either family -----------------------------------------------------------
LB_HD Code encode_element(double x, const ElementDesc& d, int mode, int overflow, double u) {
  return d.f[IS_INT] ? int_encode(x, d, mode, u) : float_encode(x, d, mode, overflow, u);
}

LB_HD double decode_element(long long code, const ElementDesc& d) {
  return d.f[IS_INT] ? int_decode(code, d) : float_decode(code, d);
}

// -- input and output dtypes -------------------------------------------------
// Tensors hold float16 and bfloat16 as their 16-bit patterns.
enum DType { F16 = 0, BF16 = 1, F32 = 2, F64 = 3 };

template <int DT> struct Storage;
template <> struct Storage<F16> { typedef uint16_t type; };
template <> struct Storage<BF16> { typedef uint16_t type; };
template <> struct Storage<F32> { typedef float type; };
template <> struct Storage<F64> { typedef double type; };

LB_HD double float16_value(long long code) {
  long long bits = code & 0xFFFF;
  long long e_field = (bits >> 10) & 0x1F;
  double m_field = (double)(bits & 0x3FF);
  double value = e_field != 0 ? (1024.0 + m_field) * pow2(e_field - 25) : m_field * 0x1p-24;
  if (e_field == 0x1F) value = m_field == 0.0 ? (double)INFINITY : (double)NAN;
  return (bits >> 15) ? -value : value;
}

LB_HD double bfloat16_value(long long code) { return (double)float_of((int32_t)((code & 0xFFFF) << 16)); }

// The float16 bits of value when it is a float16 number (else a code that
// decodes to another value); NaN gives the quiet NaN 0x7E00 with its sign.
LB_HD long long float16_code(double value) {
  double a = fabs(value);
  long long e = max64(floor_log2_or(bits_of(a), -15), -15);
  e = min64(e, 16);
  long long mantissa = a <= 65536.0 ? (long long)floor(a * pow2(10 - max64(e, -14))) : 0;
  long long code = e < -14 ? mantissa : ((e + 15) << 10) + mantissa - 1024;
  if (a > 65504.0) code = a == (double)INFINITY ? 0x7C00 : 0x7BFF;
  if (value != value) code = 0x7E00;
  return code | (bits_of(value) < 0 ? 0x8000 : 0);
}

// The bfloat16 bits of value when it is a bfloat16 number; NaN gives 0x7FC0 with its sign.
LB_HD long long bfloat16_code(double value) {
  if (value != value) return bits_of(value) < 0 ? 0xFFC0 : 0x7FC0;
  return ((long long)float_bits((float)value) >> 16) & 0xFFFF;
}

// An input element as its exact double value.
template <int DT> LB_HD double load_value(typename Storage<DT>::type v) {
  if (DT == F16) return float16_value((long long)v);
  if (DT == BF16) return bfloat16_value((long long)v);
  return (double)v;
}

// The input value flushed to a signed zero below the policy's threshold.
LB_HD double flushed(double v, const Policy& p) { return fabs(v) < p.tiny ? v * 0.0 : v; }

// A double result in the output dtype; `exact` says whether it held the value (NaN counts as exact).
template <int DT> LB_HD typename Storage<DT>::type store_value(double value, bool& exact) {
  typedef typename Storage<DT>::type T;
  if (DT == F64) {
    exact = true;
    return (T)value;
  }
  if (DT == F32) {
    float narrow = (float)value;
    exact = (double)narrow == value || value != value;
    return (T)narrow;
  }
  long long code = DT == F16 ? float16_code(value) : bfloat16_code(value);
  double back = DT == F16 ? float16_value(code) : bfloat16_value(code);
  exact = back == value || value != value;
  return (T)code;
}

// -- one element of a call ---------------------------------------------------
// A float16, bfloat16 or float32 input as the bits of the same float32,
// flushed to a signed zero below the policy's threshold as `flushed` does.
template <int DT> LB_HD int32_t float32_bits(typename Storage<DT>::type x, const Policy& p) {
  int32_t bits;
  if constexpr (DT == F32) bits = float_bits(x);
  else if constexpr (DT == BF16) bits = (int32_t)((uint32_t)x << 16);
  else bits = float_bits((float)float16_value((long long)x));
  return fabs((double)float_of(bits)) < p.tiny ? (int32_t)((uint32_t)bits & 0x80000000u) : bits;
}

// Whether float_encode_f32 encodes inputs of dtype DT in the format d: float
// formats of at most 23 mantissa bits, from float16, bfloat16 or float32.
template <int DT> LB_HD bool takes_float32_path(const ElementDesc& d) {
  return DT != F64 && !d.f[IS_INT] && d.f[MAN_BITS] <= 23;
}

// Element i of an element-format encode.
template <int DT>
LB_HD Code encode_one(typename Storage<DT>::type x, long long i, const ElementDesc& d, const Policy& p) {
  if (takes_float32_path<DT>(d))
    return float_encode_f32(float32_bits<DT>(x, p), d, p.mode, p.overflow, draw53_for(p, i));
  double v = flushed(load_value<DT>(x), p);
  return encode_element(v, d, p.mode, p.overflow, uniform_for(p, i));
}

// Element i of an element-format quantize: its rounded value in the output
// dtype; `exact` as in store_value.
template <int DT>
LB_HD typename Storage<DT>::type quantize_one(typename Storage<DT>::type x, long long i, const ElementDesc& d,
                                              const Policy& p, bool& exact) {
  Code c = encode_one<DT>(x, i, d, p);
  return store_value<DT>(c.invalid ? (double)NAN : decode_element(c.code, d), exact);
}

// The value of a code; NaN (and `out_of_range`) for codes outside [0, 2**nbits).
LB_HD double decode_one(long long code, const ElementDesc& d, int nbits, bool& out_of_range) {
  out_of_range = code < 0 || code >= (1LL << nbits);
  return out_of_range ? (double)NAN : decode_element(code, d);
}

}  // namespace lowbit
