// The launchers of launchers.h on the host, one loop per kernel over the
// same per-element and per-block functions the GPU kernels call, in the
// same work-item order. Built with g++ (-DLOWBIT_HOST_ONLY) into the host
// twin of the extension, so that machines without a GPU test the kernel
// math, the bindings and the Python glue bit for bit against the reference.
#include "dispatch.h"

namespace lowbit {
namespace {

// Calls f(block r's input, r) for every block, in the GPU's work-item order.
template <int DT, typename F> void for_each_block(const void* x, const BlockView& v, int block, F f) {
  typedef typename Storage<DT>::type T;
  for (long long t = 0; t < block_count(v); ++t) {
    long long r = block_of_item(t, v);
    f(block_input<DT>(static_cast<const T*>(x), v, block_origin(r, v, block), block), r);
  }
}

template <typename D>
void quantize_elements(int dtype, const void* x, void* out, long long n, const D& d, const Policy& p, int* inexact) {
  with_dtype(dtype, [&](auto tag) {
    constexpr int DT = decltype(tag)::value;
    typedef typename Storage<DT>::type T;
    for (long long i = 0; i < n; ++i) {
      bool exact;
      static_cast<T*>(out)[i] = quantize_one<DT>(static_cast<const T*>(x)[i], i, d, p, exact);
      if (!exact) *inexact = 1;
    }
  });
}

template <typename D>
void encode_elements(int dtype, const void* x, void* codes, int code_type, long long n, const D& d, const Policy& p,
                     unsigned long long* first_invalid) {
  with_dtype(dtype, [&](auto tag) {
    constexpr int DT = decltype(tag)::value;
    typedef typename Storage<DT>::type T;
    with_code_type(code_type, [&](auto code_tag) {
      typedef typename CodeStorage<decltype(code_tag)::value>::type C;
      for (long long i = 0; i < n; ++i) {
        Code code = encode_one<DT>(static_cast<const T*>(x)[i], i, d, p);
        static_cast<C*>(codes)[i] = (C)code.code;
        if (code.invalid && (unsigned long long)i < *first_invalid) *first_invalid = i;
      }
    });
  });
}

template <typename D>
void decode_elements(int code_type, const void* codes, void* out, int out_dtype, long long n, const D& d, int nbits,
                     int* out_of_range) {
  with_code_type(code_type, [&](auto code_tag) {
    typedef typename CodeStorage<decltype(code_tag)::value>::type C;
    with_output_dtype(out_dtype, [&](auto out_tag) {
      typedef typename Storage<decltype(out_tag)::value>::type O;
      for (long long i = 0; i < n; ++i) {
        bool outside;
        static_cast<O*>(out)[i] = (O)decode_one((long long)static_cast<const C*>(codes)[i], d, nbits, outside);
        if (outside) *out_of_range = 1;
      }
    });
  });
}

template <typename F>
void quantize_blocks(int dtype, const void* x, void* out, const BlockView& v, const F& f, const Policy& p,
                     int* inexact) {
  with_dtype(dtype, [&](auto tag) {
    constexpr int DT = decltype(tag)::value;
    typedef typename Storage<DT>::type T;
    for_each_block<DT>(x, v, block_size(f), [&](const BlockInput<DT>& in, long long r) {
      if (quantize_block<DT>(in, static_cast<T*>(out), v, r, f, p)) *inexact = 1;
    });
  });
}

template <typename F>
void encode_blocks(int dtype, const void* x, unsigned char* elements, int32_t* scales, const BlockView& v, const F& f,
                   const Policy& p) {
  with_dtype(dtype, [&](auto tag) {
    constexpr int DT = decltype(tag)::value;
    for_each_block<DT>(x, v, block_size(f), [&](const BlockInput<DT>& in, long long r) {
      encode_block<DT>(in, elements, scales, r, f, p);
    });
  });
}

template <typename F>
void decode_blocks(const unsigned char* elements, const int32_t* scales, void* out, int out_dtype, const BlockView& v,
                   const F& f) {
  with_output_dtype(out_dtype, [&](auto tag) {
    typedef typename Storage<decltype(tag)::value>::type O;
    for (long long t = 0; t < block_count(v); ++t)
      decode_block<O>(elements, scales, static_cast<O*>(out), v, block_of_item(t, v), f);
  });
}

}  // namespace

void element_quantize(int dtype, const void* x, void* out, long long n, ElementDesc d, Policy p, int* inexact,
                      cudaStream_t) {
  quantize_elements(dtype, x, out, n, d, p, inexact);
}

void element_quantize(int dtype, const void* x, void* out, long long n, Codebook d, Policy p, int* inexact,
                      cudaStream_t) {
  quantize_elements(dtype, x, out, n, d, p, inexact);
}

void element_encode(int dtype, const void* x, void* codes, int code_type, long long n, ElementDesc d, Policy p,
                    unsigned long long* first_invalid, cudaStream_t) {
  encode_elements(dtype, x, codes, code_type, n, d, p, first_invalid);
}

void element_encode(int dtype, const void* x, void* codes, int code_type, long long n, Codebook d, Policy p,
                    unsigned long long* first_invalid, cudaStream_t) {
  encode_elements(dtype, x, codes, code_type, n, d, p, first_invalid);
}

void element_decode(int code_type, const void* codes, void* out, int out_dtype, long long n, ElementDesc d,
                    int nbits, int* out_of_range, cudaStream_t) {
  decode_elements(code_type, codes, out, out_dtype, n, d, nbits, out_of_range);
}

void element_decode(int code_type, const void* codes, void* out, int out_dtype, long long n, Codebook d,
                    int nbits, int* out_of_range, cudaStream_t) {
  decode_elements(code_type, codes, out, out_dtype, n, d, nbits, out_of_range);
}

void block_quantize(int dtype, const void* x, void* out, BlockView v, BlockFormatDesc f, Policy p, int* inexact,
                    cudaStream_t) {
  quantize_blocks(dtype, x, out, v, f, p, inexact);
}

void block_quantize(int dtype, const void* x, void* out, BlockView v, CodebookBlocks f, Policy p, int* inexact,
                    cudaStream_t) {
  quantize_blocks(dtype, x, out, v, f, p, inexact);
}

void block_encode(int dtype, const void* x, unsigned char* elements, int32_t* scales, BlockView v, BlockFormatDesc f,
                  Policy p, cudaStream_t) {
  encode_blocks(dtype, x, elements, scales, v, f, p);
}

void block_encode(int dtype, const void* x, unsigned char* elements, int32_t* scales, BlockView v, CodebookBlocks f,
                  Policy p, cudaStream_t) {
  encode_blocks(dtype, x, elements, scales, v, f, p);
}

void block_decode(const unsigned char* elements, const int32_t* scales, void* out, int out_dtype, BlockView v,
                  BlockFormatDesc f, cudaStream_t) {
  decode_blocks(elements, scales, out, out_dtype, v, f);
}

void block_decode(const unsigned char* elements, const int32_t* scales, void* out, int out_dtype, BlockView v,
                  CodebookBlocks f, cudaStream_t) {
  decode_blocks(elements, scales, out, out_dtype, v, f);
}

namespace {

template <int DT>
void walk_microexponent(const void* x, void* out, unsigned char* elements, int32_t* scales, unsigned char* subscales,
                        const BlockView& v, const MicroParams& mp, const Policy& p, int* inexact) {
  typedef typename Storage<DT>::type T;
  for_each_block<DT>(x, v, mp.block, [&](const BlockInput<DT>& in, long long r) {
    bool lost;
    long long scale = walk_microexponent_block<DT>(in, v, r, mp, p, static_cast<T*>(out), elements, subscales, lost);
    if (scales) scales[r] = (int32_t)scale;
    if (lost && inexact) *inexact = 1;
  });
}
}  // namespace

void microexponent_quantize(int dtype, const void* x, void* out, BlockView v, MicroParams mp, Policy p, int* inexact,
                            cudaStream_t) {
  with_dtype(dtype, [&](auto tag) {
    walk_microexponent<decltype(tag)::value>(x, out, nullptr, nullptr, nullptr, v, mp, p, inexact);
  });
}

void microexponent_encode(int dtype, const void* x, unsigned char* elements, int32_t* scales,
                          unsigned char* subscales, BlockView v, MicroParams mp, Policy p, cudaStream_t) {
  with_dtype(dtype, [&](auto tag) {
    walk_microexponent<decltype(tag)::value>(x, nullptr, elements, scales, subscales, v, mp, p, nullptr);
  });
}

void microexponent_decode(const unsigned char* elements, const int32_t* scales, const unsigned char* subscales,
                          void* out, int out_dtype, BlockView v, MicroParams mp, cudaStream_t) {
  with_output_dtype(out_dtype, [&](auto tag) {
    typedef typename Storage<decltype(tag)::value>::type O;
    for (long long t = 0; t < block_count(v); ++t)
      decode_microexponent_block<O>(elements, scales, subscales, static_cast<O*>(out), v, block_of_item(t, v), mp);
  });
}

void mx_prepare(const unsigned char* packed, int code_bits, const unsigned char* element_table, int bytes,
                unsigned char* inputs, long long n, const int32_t* scale_codes, const float* scale_table, int entries,
                float* scales, long long nscales, cudaStream_t) {
  for (long long j = 0; element_table && j < n; ++j)
    prepare_element(packed, code_bits, element_table, bytes, inputs, j);
  for (long long i = 0; i < nscales; ++i) prepare_scale(scale_codes, scale_table, entries, scales, i);
}

void mx_matmul(int a_type, int b_type, const unsigned char* a, const float* a_scales, const unsigned char* b,
               const float* b_scales, const float* bias, void* out, int out_dtype, long long m, long long n,
               long long k, int block, cudaStream_t) {
  const int bytes = input_bytes(a_type), step = mma_k(a_type);
  const long long nblocks = k / block;
  for (long long row = 0; row < m; ++row)
    for (long long column = 0; column < n; ++column) {
      const unsigned char* a_row = a + row * k * bytes;
      const unsigned char* b_row = b + column * k * bytes;
      auto product = [&](long long position) {
        return mma_input_value(a_type, a_row + position * bytes) * mma_input_value(b_type, b_row + position * bytes);
      };
      float total = 0.0f;
      for (long long blk = 0; blk < nblocks; ++blk) {
        double partial = 0.0;  // an int32 or fp32 accumulator's value
        for (long long first = blk * block; first < (blk + 1) * block; first += step) {
          auto in_chunk = [&](int j) { return product(first + j); };
          partial = a_type == TYPE_INT8 ? (double)modelled_mma((int)partial, step, in_chunk)
                                        : (double)modelled_mma((float)partial, step, in_chunk);
        }
        total = add_scaled_block(total, (float)partial, a_scales[row * nblocks + blk],
                                 b_scales[column * nblocks + blk]);
      }
      store_output(out, out_dtype, row * n + column, total, bias ? bias + column : nullptr);
    }
}

}  // namespace lowbit
