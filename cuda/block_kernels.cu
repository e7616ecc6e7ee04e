// GPU kernels for scaled formats (BlockFormat: OCP MX, NVFP4, and codebook
// elements with fp32 scales; MicroexponentFormat: MX9/MX6/MX4, MSFP):
// quantize, encode and decode along any axis. One thread per block, in one
// pass over the data: the block's scale and its elements (block_math.cuh,
// codebook_math.cuh) from the same reads.
// Threads run over blocks with the inner index fastest (block_of_item), so
// a warp's reads are coalesced when the blocked axis is not the last one;
// blocks along a contiguous last axis are read with 16-byte vector loads
// into a per-thread buffer first (local memory: the block math indexes it
// at run time).
#include "dispatch.h"
#include "launch.cuh"

namespace lowbit {
namespace {

constexpr int BLOCK_THREADS = 128;
// Blocks of at most this many bytes, contiguous and 16-byte aligned, are
// read into the per-thread buffer with vector loads.
constexpr int CACHED_BYTES = 128;


// Whether every block of the view can be read with 16-byte loads into
// CACHED_BYTES of buffer: a contiguous last axis of whole blocks whose
// bytes are a multiple of 16, from an aligned pointer.
inline bool vector_blocks(const void* x, const BlockView& v, int block, int element_bytes) {
  long long bytes = (long long)block * element_bytes;
  return aligned16(x) && v.inner == 1 && v.stride_axis == 1 && v.length % block == 0 && bytes % 16 == 0 &&
         bytes <= CACHED_BYTES && (v.stride_outer * element_bytes) % 16 == 0;
}

// Block r's input: from global memory, or (VECTOR) copied into `cache` with
// 16-byte loads first.
template <int DT, bool VECTOR>
__device__ __forceinline__ BlockInput<DT> read_block(const typename Storage<DT>::type* x, const BlockView& v,
                                                     long long r, int block, uint4* cache) {
  BlockOrigin b = block_origin(r, v, block);
  BlockInput<DT> in = block_input<DT>(x, v, b, block);
  if (VECTOR) {
    const uint4* source = reinterpret_cast<const uint4*>(in.first);
    int vectors = block * (int)sizeof(typename Storage<DT>::type) / 16;
#pragma unroll
    for (int k = 0; k < CACHED_BYTES / 16; ++k)
      if (k < vectors) cache[k] = source[k];
    in.first = reinterpret_cast<const typename Storage<DT>::type*>(cache);
    in.stride = 1;
  }
  return in;
}

// F: the format's descriptor (BlockFormatDesc, CodebookBlocks; MicroParams below).
template <int DT, bool VECTOR, typename F>
__global__ void __launch_bounds__(BLOCK_THREADS)
    block_quantize_kernel(const typename Storage<DT>::type* x, typename Storage<DT>::type* out, BlockView v, F f,
                          Policy p, int* inexact) {
  uint4 cache[CACHED_BYTES / 16];
  bool lost = false;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < block_count(v);
       t += (long long)gridDim.x * blockDim.x) {
    long long r = block_of_item(t, v);
    lost |= quantize_block<DT>(read_block<DT, VECTOR>(x, v, r, block_size(f), cache), out, v, r, f, p);
  }
  if (lost) *inexact = 1;
}

template <int DT, bool VECTOR, typename F>
__global__ void __launch_bounds__(BLOCK_THREADS)
    block_encode_kernel(const typename Storage<DT>::type* x, unsigned char* elements, int32_t* scales, BlockView v,
                        F f, Policy p) {
  uint4 cache[CACHED_BYTES / 16];
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < block_count(v);
       t += (long long)gridDim.x * blockDim.x) {
    long long r = block_of_item(t, v);
    encode_block<DT>(read_block<DT, VECTOR>(x, v, r, block_size(f), cache), elements, scales, r, f, p);
  }
}

template <typename O, typename F>
__global__ void __launch_bounds__(BLOCK_THREADS)
    block_decode_kernel(const unsigned char* elements, const int32_t* scales, O* out, BlockView v, F f) {
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < block_count(v);
       t += (long long)gridDim.x * blockDim.x)
    decode_block<O>(elements, scales, out, v, block_of_item(t, v), f);
}

template <int DT, bool VECTOR, typename F>
__global__ void __launch_bounds__(BLOCK_THREADS)
    microexponent_kernel(const typename Storage<DT>::type* x, typename Storage<DT>::type* out, unsigned char* elements,
                         int32_t* scales, unsigned char* subscales, BlockView v, F mp, Policy p, int* inexact) {
  uint4 cache[CACHED_BYTES / 16];
  bool lost = false;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < block_count(v);
       t += (long long)gridDim.x * blockDim.x) {
    long long r = block_of_item(t, v);
    bool block_lost;
    long long scale = walk_microexponent_block<DT>(read_block<DT, VECTOR>(x, v, r, mp.block, cache), v, r, mp, p, out,
                                                   elements, subscales, block_lost);
    if (scales) scales[r] = (int32_t)scale;
    lost |= block_lost;
  }
  if (lost && inexact) *inexact = 1;
}

template <typename O>
__global__ void __launch_bounds__(BLOCK_THREADS)
    microexponent_decode_kernel(const unsigned char* elements, const int32_t* scales, const unsigned char* subscales,
                                O* out, BlockView v, MicroParams mp) {
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < block_count(v);
       t += (long long)gridDim.x * blockDim.x)
    decode_microexponent_block<O>(elements, scales, subscales, out, v, block_of_item(t, v), mp);
}

// Launches kernel<DT, true, F> when the blocks can be read with vector loads, else kernel<DT, false, F>.
#define LOWBIT_LAUNCH_BLOCKS(kernel, F, block, ...)                                               \
  with_dtype(dtype, [&](auto tag) {                                                               \
    constexpr int DT = decltype(tag)::value;                                                      \
    typedef typename Storage<DT>::type T;                                                         \
    const unsigned grid = grid_for(block_count(v), BLOCK_THREADS);                                \
    if (vector_blocks(x, v, block, sizeof(T)))                                                    \
      LOWBIT_LAUNCH(grid, BLOCK_THREADS, stream, kernel<DT, true, F>)(static_cast<const T*>(x), __VA_ARGS__); \
    else                                                                                          \
      LOWBIT_LAUNCH(grid, BLOCK_THREADS, stream, kernel<DT, false, F>)(static_cast<const T*>(x), __VA_ARGS__); \
  })

template <typename F>
void launch_block_quantize(int dtype, const void* x, void* out, const BlockView& v, const F& f, const Policy& p,
                           int* inexact, cudaStream_t stream) {
  if (block_count(v) == 0) return;
  LOWBIT_LAUNCH_BLOCKS(block_quantize_kernel, F, block_size(f), static_cast<T*>(out), v, f, p, inexact);
}

template <typename F>
void launch_block_encode(int dtype, const void* x, unsigned char* elements, int32_t* scales, const BlockView& v,
                         const F& f, const Policy& p, cudaStream_t stream) {
  if (block_count(v) == 0) return;
  LOWBIT_LAUNCH_BLOCKS(block_encode_kernel, F, block_size(f), elements, scales, v, f, p);
}

template <typename F>
void launch_block_decode(const unsigned char* elements, const int32_t* scales, void* out, int out_dtype,
                         const BlockView& v, const F& f, cudaStream_t stream) {
  if (block_count(v) == 0) return;
  with_output_dtype(out_dtype, [&](auto tag) {
    typedef typename Storage<decltype(tag)::value>::type O;
    LOWBIT_LAUNCH(grid_for(block_count(v), BLOCK_THREADS), BLOCK_THREADS, stream, block_decode_kernel<O, F>)(
        elements, scales, static_cast<O*>(out), v, f);
  });
}

}  // namespace

void block_quantize(int dtype, const void* x, void* out, BlockView v, BlockFormatDesc f, Policy p, int* inexact,
                    cudaStream_t stream) {
  launch_block_quantize(dtype, x, out, v, f, p, inexact, stream);
}

void block_quantize(int dtype, const void* x, void* out, BlockView v, CodebookBlocks f, Policy p, int* inexact,
                    cudaStream_t stream) {
  launch_block_quantize(dtype, x, out, v, f, p, inexact, stream);
}

void block_encode(int dtype, const void* x, unsigned char* elements, int32_t* scales, BlockView v, BlockFormatDesc f,
                  Policy p, cudaStream_t stream) {
  launch_block_encode(dtype, x, elements, scales, v, f, p, stream);
}

void block_encode(int dtype, const void* x, unsigned char* elements, int32_t* scales, BlockView v, CodebookBlocks f,
                  Policy p, cudaStream_t stream) {
  launch_block_encode(dtype, x, elements, scales, v, f, p, stream);
}

void block_decode(const unsigned char* elements, const int32_t* scales, void* out, int out_dtype, BlockView v,
                  BlockFormatDesc f, cudaStream_t stream) {
  launch_block_decode(elements, scales, out, out_dtype, v, f, stream);
}

void block_decode(const unsigned char* elements, const int32_t* scales, void* out, int out_dtype, BlockView v,
                  CodebookBlocks f, cudaStream_t stream) {
  launch_block_decode(elements, scales, out, out_dtype, v, f, stream);
}

void microexponent_quantize(int dtype, const void* x, void* out, BlockView v, MicroParams mp, Policy p, int* inexact,
                            cudaStream_t stream) {
  if (block_count(v) == 0) return;
  LOWBIT_LAUNCH_BLOCKS(microexponent_kernel, MicroParams, mp.block, static_cast<T*>(out), nullptr, nullptr, nullptr, v,
                       mp, p, inexact);
}

void microexponent_encode(int dtype, const void* x, unsigned char* elements, int32_t* scales,
                          unsigned char* subscales, BlockView v, MicroParams mp, Policy p, cudaStream_t stream) {
  if (block_count(v) == 0) return;
  LOWBIT_LAUNCH_BLOCKS(microexponent_kernel, MicroParams, mp.block, nullptr, elements, scales, subscales, v, mp, p,
                       nullptr);
}

void microexponent_decode(const unsigned char* elements, const int32_t* scales, const unsigned char* subscales,
                          void* out, int out_dtype, BlockView v, MicroParams mp, cudaStream_t stream) {
  if (block_count(v) == 0) return;
  with_output_dtype(out_dtype, [&](auto tag) {
    typedef typename Storage<decltype(tag)::value>::type O;
    LOWBIT_LAUNCH(grid_for(block_count(v), BLOCK_THREADS), BLOCK_THREADS, stream, microexponent_decode_kernel<O>)(
        elements, scales, subscales, static_cast<O*>(out), v, mp);
  });
}

}  // namespace lowbit
