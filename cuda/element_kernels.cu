// GPU kernels for element formats: quantize, encode, decode over contiguous
// data. Each thread takes 16 bytes of input at a time (one aligned vector
// load) in a grid-stride loop; the per-element math is element_math.cuh's
// (D = ElementDesc) or codebook_math.cuh's (D = Codebook).
#include "dispatch.h"
#include "launch.cuh"

namespace lowbit {
namespace {

constexpr int ELEMENT_THREADS = 256;


// The grid of a kernel that takes 16 bytes of `element_bytes`-byte elements per step.
inline unsigned vector_grid(long long n, size_t element_bytes) {
  return grid_for(n / (long long)(16 / element_bytes), ELEMENT_THREADS);
}

template <typename T> union Vector {
  uint4 raw;
  T lane[16 / sizeof(T)];
};

// quantize: VECTOR takes 16 bytes per step (x and out 16-byte aligned).
template <int DT, bool VECTOR, typename D>
__global__ void __launch_bounds__(ELEMENT_THREADS)
    quantize_kernel(const typename Storage<DT>::type* x, typename Storage<DT>::type* out, long long n, D d, Policy p,
                    int* inexact) {
  typedef typename Storage<DT>::type T;
  constexpr int LANES = VECTOR ? 16 / sizeof(T) : 1;
  bool lost = false;
  long long stride = (long long)gridDim.x * blockDim.x;
  long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  long long vectors = n / LANES;
  for (long long c = first; c < vectors; c += stride) {
    if (VECTOR) {
      Vector<T> in, result;
      in.raw = reinterpret_cast<const uint4*>(x)[c];
#pragma unroll
      for (int l = 0; l < LANES; ++l) {
        bool exact;
        result.lane[l] = quantize_one<DT>(in.lane[l], c * LANES + l, d, p, exact);
        lost |= !exact;
      }
      reinterpret_cast<uint4*>(out)[c] = result.raw;
    } else {
      bool exact;
      out[c] = quantize_one<DT>(x[c], c, d, p, exact);
      lost |= !exact;
    }
  }
  for (long long i = vectors * LANES + first; i < n; i += stride) {
    bool exact;
    out[i] = quantize_one<DT>(x[i], i, d, p, exact);
    lost |= !exact;
  }
  if (lost) *inexact = 1;
}

template <int DT, typename C, bool VECTOR, typename D>
__global__ void __launch_bounds__(ELEMENT_THREADS)
    encode_kernel(const typename Storage<DT>::type* x, C* codes, long long n, D d, Policy p,
                  unsigned long long* first_invalid) {
  typedef typename Storage<DT>::type T;
  constexpr int LANES = VECTOR ? 16 / sizeof(T) : 1;
  unsigned long long bad = ~0ULL;
  long long stride = (long long)gridDim.x * blockDim.x;
  long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  long long vectors = n / LANES;
  for (long long c = first; c < vectors; c += stride) {
    Vector<T> in;
    if (VECTOR) in.raw = reinterpret_cast<const uint4*>(x)[c];
    else in.lane[0] = x[c];
#pragma unroll
    for (int l = 0; l < LANES; ++l) {
      long long i = c * LANES + l;
      Code code = encode_one<DT>(in.lane[l], i, d, p);
      codes[i] = (C)code.code;
      if (code.invalid && (unsigned long long)i < bad) bad = i;
    }
  }
  for (long long i = vectors * LANES + first; i < n; i += stride) {
    Code code = encode_one<DT>(x[i], i, d, p);
    codes[i] = (C)code.code;
    if (code.invalid && (unsigned long long)i < bad) bad = i;
  }
  if (bad != ~0ULL) atomicMin(first_invalid, bad);
}

template <typename C, typename O, typename D>
__global__ void __launch_bounds__(ELEMENT_THREADS)
    decode_kernel(const C* codes, O* out, long long n, D d, int nbits, int* out_of_range) {
  bool any = false;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    bool outside;
    out[i] = (O)decode_one((long long)codes[i], d, nbits, outside);
    any |= outside;
  }
  if (any) *out_of_range = 1;
}

template <typename D>
void launch_quantize(int dtype, const void* x, void* out, long long n, const D& d, const Policy& p, int* inexact,
                     cudaStream_t stream) {
  if (n == 0) return;
  with_dtype(dtype, [&](auto tag) {
    constexpr int DT = decltype(tag)::value;
    typedef typename Storage<DT>::type T;
    const T* in = static_cast<const T*>(x);
    T* result = static_cast<T*>(out);
    if (aligned16(x) && aligned16(out))
      LOWBIT_LAUNCH(vector_grid(n, sizeof(T)), ELEMENT_THREADS, stream, quantize_kernel<DT, true, D>)(in, result, n, d,
                                                                                                     p, inexact);
    else
      LOWBIT_LAUNCH(grid_for(n, ELEMENT_THREADS), ELEMENT_THREADS, stream, quantize_kernel<DT, false, D>)(
          in, result, n, d, p, inexact);
  });
}

template <typename D>
void launch_encode(int dtype, const void* x, void* codes, int code_type, long long n, const D& d, const Policy& p,
                   unsigned long long* first_invalid, cudaStream_t stream) {
  if (n == 0) return;
  with_dtype(dtype, [&](auto tag) {
    constexpr int DT = decltype(tag)::value;
    typedef typename Storage<DT>::type T;
    with_code_type(code_type, [&](auto code_tag) {
      typedef typename CodeStorage<decltype(code_tag)::value>::type C;
      const T* in = static_cast<const T*>(x);
      C* out = static_cast<C*>(codes);
      if (aligned16(x))
        LOWBIT_LAUNCH(vector_grid(n, sizeof(T)), ELEMENT_THREADS, stream, encode_kernel<DT, C, true, D>)(
            in, out, n, d, p, first_invalid);
      else
        LOWBIT_LAUNCH(grid_for(n, ELEMENT_THREADS), ELEMENT_THREADS, stream, encode_kernel<DT, C, false, D>)(
            in, out, n, d, p, first_invalid);
    });
  });
}

template <typename D>
void launch_decode(int code_type, const void* codes, void* out, int out_dtype, long long n, const D& d, int nbits,
                   int* out_of_range, cudaStream_t stream) {
  if (n == 0) return;
  with_code_type(code_type, [&](auto code_tag) {
    typedef typename CodeStorage<decltype(code_tag)::value>::type C;
    with_output_dtype(out_dtype, [&](auto out_tag) {
      typedef typename Storage<decltype(out_tag)::value>::type O;
      LOWBIT_LAUNCH(grid_for(n, ELEMENT_THREADS), ELEMENT_THREADS, stream, decode_kernel<C, O, D>)(
          static_cast<const C*>(codes), static_cast<O*>(out), n, d, nbits, out_of_range);
    });
  });
}

}  // namespace

void element_quantize(int dtype, const void* x, void* out, long long n, ElementDesc d, Policy p, int* inexact,
                      cudaStream_t stream) {
  launch_quantize(dtype, x, out, n, d, p, inexact, stream);
}

void element_quantize(int dtype, const void* x, void* out, long long n, Codebook d, Policy p, int* inexact,
                      cudaStream_t stream) {
  launch_quantize(dtype, x, out, n, d, p, inexact, stream);
}

void element_encode(int dtype, const void* x, void* codes, int code_type, long long n, ElementDesc d, Policy p,
                    unsigned long long* first_invalid, cudaStream_t stream) {
  launch_encode(dtype, x, codes, code_type, n, d, p, first_invalid, stream);
}

void element_encode(int dtype, const void* x, void* codes, int code_type, long long n, Codebook d, Policy p,
                    unsigned long long* first_invalid, cudaStream_t stream) {
  launch_encode(dtype, x, codes, code_type, n, d, p, first_invalid, stream);
}

void element_decode(int code_type, const void* codes, void* out, int out_dtype, long long n, ElementDesc d,
                    int nbits, int* out_of_range, cudaStream_t stream) {
  launch_decode(code_type, codes, out, out_dtype, n, d, nbits, out_of_range, stream);
}

void element_decode(int code_type, const void* codes, void* out, int out_dtype, long long n, Codebook d,
                    int nbits, int* out_of_range, cudaStream_t stream) {
  launch_decode(code_type, codes, out, out_dtype, n, d, nbits, out_of_range, stream);
}

}  // namespace lowbit
