// Per-block math of lowbit's scaled formats, as __host__ __device__ functions.
//
// A twin of lowbit/formats/cpu/block_kernels.py (BlockFormat: OCP MX, NVFP4)
// and microexponent_kernels.py (MX9/MX6/MX4, MSFP), with the same double
// operations. A block is addressed in an (outer, length, inner) view of the
// input: block r = (line, k) with line = o * inner + i in C order and k the
// block's index along the axis; positions past `length` are zero padding.
// Block r's element j draws stochastic uniform r * block + j.
#pragma once

#include "element_math.cuh"

namespace lowbit {

// BlockFormat parameters: lowbit.formats.abi.block_params, fields in BlockField order.
struct BlockParams {
  int rule, scale_emin, scale_emax, element_emax;
  double element_max;
  int element_mantissa_bits;
  double divisor;  // the per-tensor scale (1 when there is none)
  int block, element_bits, has_tensor_scale, scale_nan;
  int round_float32;  // element * scale rounded to float32 (float32 scales); the scaling schemes' other fields are
                      // read by the CPU kernels only (the CUDA backends refuse the schemes that need them)
};

// A BlockFormat's descriptors: its elements', its scales' and its parameters.
struct BlockFormatDesc {
  ElementDesc element, scale;
  BlockParams params;
};

LB_HD int block_size(const BlockFormatDesc& f) { return f.params.block; }
LB_HD int element_bits(const BlockFormatDesc& f) { return f.params.element_bits; }

// MicroexponentFormat parameters: lowbit.formats.abi.microexponent_params, fields in MicroField order.
struct MicroParams {
  int man, block, sub_block, exp_bits, micro_bits, emin, emax, exp_bias;
};

// An (outer, length, inner) view of the input with strides in elements, and
// the number of blocks along `length`.
struct BlockView {
  long long outer, length, inner, nblocks;
  long long stride_outer, stride_axis, stride_inner;
};

struct BlockOrigin {
  long long o, i, k0;  // outer index, inner index, first position along the axis
};

LB_HD long long block_count(const BlockView& v) { return v.outer * v.inner * v.nblocks; }

LB_HD BlockOrigin block_origin(long long r, const BlockView& v, int block) {
  long long line = r / v.nblocks, k = r % v.nblocks;
  return BlockOrigin{line / v.inner, line % v.inner, k * block};
}

// The block that work item t handles: items run with the inner index
// fastest, so neighbouring GPU threads read neighbouring addresses when the
// blocked axis is not the last one.
LB_HD long long block_of_item(long long t, const BlockView& v) {
  long long i = t % v.inner, rest = t / v.inner;
  return ((rest / v.nblocks) * v.inner + i) * v.nblocks + rest % v.nblocks;
}

// Offset of position k along the axis of block origin b in a contiguous output.
LB_HD long long output_offset(const BlockView& v, const BlockOrigin& b, long long k) {
  return (b.o * v.length + k) * v.inner + b.i;
}

// One block's input: its first element, the stride between its elements,
// and how many of its `block` positions hold data (the rest is padding).
template <int DT> struct BlockInput {
  const typename Storage<DT>::type* first;
  long long stride;
  long long valid;
};

template <int DT>
LB_HD BlockInput<DT> block_input(const typename Storage<DT>::type* x, const BlockView& v, const BlockOrigin& b,
                                 int block) {
  return BlockInput<DT>{x + b.o * v.stride_outer + b.k0 * v.stride_axis + b.i * v.stride_inner, v.stride_axis,
                        min64(block, v.length - b.k0)};
}

// The exact (flushed) value of the block's element j; 0 in the padding.
template <int DT> LB_HD double element_at(const BlockInput<DT>& in, long long j, const Policy& p) {
  if (j >= in.valid) return 0.0;
  return flushed(load_value<DT>(in.first[j * in.stride]), p);
}

// -- bit packing (lowbit.formats.packing's layout: code i at bits i*k.., LSB first) --
// OR a `bits`-wide (<= 16) code into zeroed bytes at stream position `bit`.
// On the GPU neighbouring threads may share a byte, so the OR is atomic on
// the 32-bit words it touches (packed buffers are allocated in whole words).
LB_HD void put_code(unsigned char* packed, long long bit, unsigned long long code, int bits) {
#if defined(__CUDA_ARCH__) || defined(LOWBIT_EMULATE_DEVICE)
  (void)bits;  // the code's width matters only to the byte loop
  unsigned long long word = code << (bit & 31);
  unsigned int* w = reinterpret_cast<unsigned int*>(packed) + (bit >> 5);
  if ((unsigned int)word) atomicOr(w, (unsigned int)word);
  if (word >> 32) atomicOr(w + 1, (unsigned int)(word >> 32));
#else
  long long byte = bit >> 3;
  unsigned long long word = code << (bit & 7);
  for (int k = 0; k < (int)(((bit & 7) + bits + 7) >> 3); ++k) packed[byte + k] |= (unsigned char)(word >> (8 * k));
#endif
}

LB_HD long long get_code(const unsigned char* packed, long long bit, int bits) {
  long long byte = bit >> 3, word = 0;
  for (int k = 0; k < (int)(((bit & 7) + bits + 7) >> 3); ++k) word |= (long long)packed[byte + k] << (8 * k);
  return (word >> (bit & 7)) & ((1LL << bits) - 1);
}

// Writes a row of codes that starts and ends on byte boundaries (so no other
// thread touches its bytes) with plain byte stores; other rows OR each code
// in with put_code.
struct RowWriter {
  unsigned char* packed;
  long long bit;
  bool whole_bytes;
  unsigned long long acc;
  int pending;

  LB_HD RowWriter(unsigned char* packed_, long long first_bit, long long row_bits)
      : packed(packed_), bit(first_bit), whole_bytes(first_bit % 8 == 0 && row_bits % 8 == 0), acc(0), pending(0) {}

  LB_HD void push(long long code, int bits) {
    if (!whole_bytes) {
      put_code(packed, bit, (unsigned long long)code, bits);
      bit += bits;
      return;
    }
    acc |= (unsigned long long)code << pending;
    pending += bits;
    while (pending >= 8) {
      packed[bit >> 3] = (unsigned char)acc;
      acc >>= 8;
      pending -= 8;
      bit += 8;
    }
  }
};

// -- BlockFormat (OCP MX, NVFP4) ---------------------------------------------
// The scale exponent of a block with positive finite amax (BlockFormat._scale_exponent).
LB_HD long long scale_exponent(double amax, const BlockParams& bp) {
  long long floor_log2 = floor_log2_or(bits_of(amax), -1100);
  long long emax = bp.element_emax;
  if (bp.rule == RULE_FLOOR) return floor_log2 - emax;
  if (bp.rule == RULE_CEIL) return floor_log2 + (amax == ldexp(1.0, (int)floor_log2) ? 0 : 1) - emax;
  if (bp.rule == RULE_EVEN) {
    bool carry = amax >= ldexp(1.0, (int)floor_log2) * (2.0 - ldexp(1.0, -(bp.element_mantissa_bits + 1)));
    return floor_log2 + (carry ? 1 : 0) - emax;
  }
  // rceil: the least s with amax <= max * 2**s (log2 only estimates it)
  double top = bp.element_max;
  long long s = (long long)ceil(log2(amax / top));
  s += amax > ldexp(top, (int)s) ? 1 : 0;
  return s - (amax <= ldexp(top, (int)(s - 1)) ? 1 : 0);
}

struct BlockScale {
  long long code;     // the scale's code (the scale format's NaN for a NaN block)
  double value;       // the scale
  double full_scale;  // the scale times the tensor scale: what elements are divided by
  bool bad;           // the block holds NaN or Inf
  bool power_of_two;  // full_scale is 2**log2_scale (MX): dividing by it is multiplying by its exact reciprocal
  long long log2_scale;
  double reciprocal;
};

// The block's scale record for a scale `value` (and its code) and the tensor scale `divisor`.
LB_HD BlockScale scale_record(long long code, double value, double divisor, bool bad) {
  const double full = value * divisor;
  const long long full_bits = bits_of(full);
  // a positive normal double with no fraction bits, whose reciprocal is normal too
  const bool power = full > 0.0 && (full_bits & 0xFFFFFFFFFFFFFLL) == 0 && full >= 0x1p-1021 && full <= 0x1p1021;
  const long long log2_scale = power ? floor_log2_or(full_bits, 0) : 0;
  return BlockScale{code, value, full, bad, power, log2_scale, power ? pow2(-log2_scale) : 0.0};
}

template <int DT>
LB_HD BlockScale block_scale(const BlockInput<DT>& in, const ElementDesc& sd, const BlockParams& bp, const Policy& p) {
  double amax = 0.0;
  bool bad = false;
  for (int j = 0; j < bp.block; ++j) {
    double a = fabs(element_at<DT>(in, j, p));
    bool finite = a < (double)INFINITY;
    bad = bad || !finite;
    amax = maxd(amax, finite ? a : 0.0);
  }
  long long code;
  double value;
  if (bp.rule == RULE_AMAX) {
    code = float_encode(amax / (bp.divisor * bp.element_max), sd, NEAREST_EVEN, OVERFLOW_SATURATE, 0.0).code;
    value = float_decode(code, sd);
  } else {
    long long exponent = amax > 0.0 ? scale_exponent(amax, bp) : bp.scale_emin;
    value = pow2(min64(max64(exponent, bp.scale_emin), bp.scale_emax));
    code = float_encode(value, sd, NEAREST_EVEN, OVERFLOW_SATURATE, 0.0).code;
  }
  return scale_record(bad ? bp.scale_nan : code, value, bp.divisor, bad);
}

// The quotient `scaled` of a block's element v by its scale, as the
// reference keeps it (BlockFormat._element_codes): only double inputs far
// below the scale underflow, and a nonzero v whose quotient falls below
// 2**-1020 keeps 2**-1020 with its sign, which every element format (and
// codebook) rounds as it rounds the exact quotient.
LB_HD double kept_from_underflow(double scaled, double v) {
  return fabs(scaled) < 0x1p-1020 && v != 0.0 ? copysign(0x1p-1020, v) : scaled;
}

// The element code of v (an input of dtype DT, flushed), the block's
// element `index` (its stochastic draw), in a block with the given scale;
// 0 in a block of NaN/Inf or with a zero scale. Float32 inputs (and
// narrower) in a float element format with a power-of-two scale (2**-512
// .. 2**512: every MX scale) are encoded on their bits
// (float_encode_parts, the scale a shift of the exponent); others divide in double (multiplying by the exact reciprocal
// of a power-of-two scale) and encode the quotient.
template <int DT>
LB_HD long long element_code(double v, const BlockScale& s, const ElementDesc& ed, const Policy& p, long long index) {
  if (!(s.full_scale > 0.0) || s.bad) return 0;
  if (s.power_of_two && takes_float32_path<DT>(ed) && s.log2_scale >= -512 && s.log2_scale <= 512) {
    const Float32Parts x = float32_parts(float_bits((float)v));
    return float_encode_parts(x.negative, x.nan, x.inf, x.significand, x.scale_exponent - s.log2_scale, ed, p.mode,
                              OVERFLOW_SATURATE, draw53_for(p, index)).code;
  }
  const double scaled = s.power_of_two ? v * s.reciprocal : v / s.full_scale;  // the same, correctly rounded, quotient
  return encode_element(kept_from_underflow(scaled, v), ed, p.mode, OVERFLOW_SATURATE, uniform_for(p, index)).code;
}

// The value of an element code in a block (BlockFormat.decode_blocks_exact).
LB_HD double element_value(long long code, double scale_value, bool bad, const ElementDesc& ed,
                           const BlockParams& bp) {
  double value = decode_element(code, ed) * scale_value;
  if (bp.has_tensor_scale) {
    value = (double)((float)value * (float)bp.divisor);
  } else if (bp.round_float32) {
    value = (double)(float)value;
  }
  return bad ? (double)NAN : value;
}

// Block r of a BlockFormat quantize (its input: `in`): its values into the
// contiguous output; whether the output dtype failed to hold one exactly.
template <int DT>
LB_HD bool quantize_block(const BlockInput<DT>& in, typename Storage<DT>::type* out, const BlockView& v, long long r,
                          const BlockFormatDesc& f, const Policy& p) {
  const ElementDesc& ed = f.element;
  const BlockParams& bp = f.params;
  BlockOrigin b = block_origin(r, v, bp.block);
  BlockScale s = block_scale<DT>(in, f.scale, bp, p);
  bool lost = false;
  for (long long j = 0; j < in.valid; ++j) {
    double value = element_at<DT>(in, j, p);
    long long code = element_code<DT>(value, s, ed, p, r * bp.block + j);
    bool exact;
    out[output_offset(v, b, b.k0 + j)] = store_value<DT>(element_value(code, s.value, s.bad, ed, bp), exact);
    lost = lost || !exact;
  }
  return lost;
}

// Block r of a BlockFormat encode: its scale code into scales[r], its
// element codes packed into `elements` (zeroed unless whole bytes).
template <int DT>
LB_HD void encode_block(const BlockInput<DT>& in, unsigned char* elements, int32_t* scales, long long r,
                        const BlockFormatDesc& f, const Policy& p) {
  const ElementDesc& ed = f.element;
  const BlockParams& bp = f.params;
  BlockScale s = block_scale<DT>(in, f.scale, bp, p);
  scales[r] = (int32_t)s.code;
  RowWriter row(elements, r * bp.block * bp.element_bits, (long long)bp.block * bp.element_bits);
  for (int j = 0; j < bp.block; ++j) {
    double value = element_at<DT>(in, j, p);
    row.push(element_code<DT>(value, s, ed, p, r * bp.block + j), bp.element_bits);
  }
}

// Block r of a BlockFormat decode into a contiguous (outer, length, inner) output.
template <typename O>
LB_HD void decode_block(const unsigned char* elements, const int32_t* scales, O* out, const BlockView& v, long long r,
                        const BlockFormatDesc& f) {
  const ElementDesc& ed = f.element;
  const BlockParams& bp = f.params;
  BlockOrigin b = block_origin(r, v, bp.block);
  long long scale_code = scales[r];
  double scale_value = float_decode(scale_code, f.scale);
  bool bad = scale_code == bp.scale_nan;
  long long n = min64(bp.block, v.length - b.k0);
  for (long long j = 0; j < n; ++j) {
    long long code = get_code(elements, (r * bp.block + j) * bp.element_bits, bp.element_bits);
    out[output_offset(v, b, b.k0 + j)] = (O)element_value(code, scale_value, bad, ed, bp);
  }
}

// -- MicroexponentFormat (MX9/MX6/MX4, MSFP) ---------------------------------
constexpr long long NO_EXPONENT = -(1LL << 20);

// floor(log2 |v|) for finite nonzero v (subnormal doubles count as -1023); NO_EXPONENT for 0, NaN, Inf.
LB_HD long long exponent_of(double v) {
  double a = fabs(v);
  return (a > 0.0 && a < (double)INFINITY) ? floor_log2_or(bits_of(a), -1023) : NO_EXPONENT;
}

LB_HD long long magnitude_code(double v, long long step_exp, bool bad, const MicroParams& mp, int mode, double u) {
  bool negative = bits_of(v) < 0;
  double t = (fabs(v) < (double)INFINITY ? fabs(v) : 0.0) * pow2(-step_exp);
  double lo = floor(t);
  double half_lo = lo * 0.5;
  bool upper = pick_upper(mode, t, lo, lo + 1.0, half_lo != floor(half_lo), negative, u);
  long long magnitude = (long long)mind(lo + (upper ? 1.0 : 0.0), (double)((1LL << mp.man) - 1));
  return bad ? 0 : magnitude + (negative ? (1LL << mp.man) : 0);
}

LB_HD double code_value(long long code, long long step_exp, bool bad, const MicroParams& mp) {
  double magnitude = (double)(code & ((1LL << mp.man) - 1)) * pow2(step_exp);
  double value = (code >> mp.man) ? -magnitude : magnitude;
  return bad ? (double)NAN : value;
}

// Encodes block r, whose input is `in` (MicroexponentFormat._encode_blocks): the values into
// `out` when it is given, else the codes into `elements`/`subscales`.
// Returns the shared-exponent code; `lost` says whether out's dtype failed
// to hold a value exactly.
template <int DT>
LB_HD long long walk_microexponent_block(const BlockInput<DT>& in, const BlockView& v, long long r,
                                         const MicroParams& mp, const Policy& p, typename Storage<DT>::type* out,
                                         unsigned char* elements, unsigned char* subscales, bool& lost) {
  BlockOrigin b = block_origin(r, v, mp.block);
  long long e_max = NO_EXPONENT;
  bool bad = false;
  for (int j = 0; j < mp.block; ++j) {
    double value = element_at<DT>(in, j, p);
    bad = bad || !(fabs(value) < (double)INFINITY);
    e_max = max64(e_max, exponent_of(value));
  }
  e_max = min64(max64(e_max, mp.emin), mp.emax);
  int per_block = mp.block / mp.sub_block, code_bits = mp.man + 1;
  RowWriter element_row(elements, r * mp.block * code_bits, (long long)mp.block * code_bits);
  RowWriter shift_row(subscales, r * per_block * mp.micro_bits, (long long)per_block * mp.micro_bits);
  lost = false;
  for (int s = 0; s < per_block; ++s) {
    long long k = (long long)s * mp.sub_block, shift = 0;
    if (mp.micro_bits) {
      long long sub_max = NO_EXPONENT;
      for (int j = 0; j < mp.sub_block; ++j) sub_max = max64(sub_max, exponent_of(element_at<DT>(in, k + j, p)));
      shift = min64(max64(e_max - sub_max, 0), (1LL << mp.micro_bits) - 1);
      if (!out) shift_row.push(shift, mp.micro_bits);
    }
    long long step_exp = e_max - shift - mp.man + 1;
    for (int j = 0; j < mp.sub_block; ++j) {
      double value = element_at<DT>(in, k + j, p);
      long long code = magnitude_code(value, step_exp, bad, mp, p.mode, uniform_for(p, r * mp.block + k + j));
      if (!out) {
        element_row.push(code, code_bits);
      } else if (k + j < in.valid) {
        bool exact;
        out[output_offset(v, b, b.k0 + k + j)] = store_value<DT>(code_value(code, step_exp, bad, mp), exact);
        lost = lost || !exact;
      }
    }
  }
  return bad ? (1LL << mp.exp_bits) - 1 : e_max + mp.exp_bias;
}

template <typename O>
LB_HD void decode_microexponent_block(const unsigned char* elements, const int32_t* scales,
                                      const unsigned char* subscales, O* out, const BlockView& v, long long r,
                                      const MicroParams& mp) {
  BlockOrigin b = block_origin(r, v, mp.block);
  long long scale_code = scales[r];
  bool bad = scale_code == (1LL << mp.exp_bits) - 1;
  long long e_max = scale_code - mp.exp_bias;
  long long per_block = mp.block / mp.sub_block, n = min64(mp.block, v.length - b.k0);
  for (long long j = 0; j < n; ++j) {
    long long shift =
        mp.micro_bits ? get_code(subscales, (r * per_block + j / mp.sub_block) * mp.micro_bits, mp.micro_bits) : 0;
    long long code = get_code(elements, (r * mp.block + j) * (mp.man + 1), mp.man + 1);
    out[output_offset(v, b, b.k0 + j)] = (O)code_value(code, e_max - shift - mp.man + 1, bad, mp);
  }
}

}  // namespace lowbit
