// The device instructions of the MX matmul kernel: warp-wide tensor-core
// MMAs (mma.sync) and asynchronous copies to shared memory (cp.async),
// both sm_80+, FP8 MMAs sm_89+ (compiled to traps below those, where the
// binding refuses to launch). In the emulated build (host threads, see
// emulated_device.h) the copies are plain copies and an MMA is computed by
// the warp's 32 host threads from each other's fragments, with the
// tensor cores modelled as adding exact products in double and rounding
// to fp32 once per instruction (int8: exactly, in int32).
//
// Fragments, as the PTX ISA lays them out ("Matrix fragments for mma.m16n8k16"
// and "... mma.m16n8k32"): lane L = 4 g + t holds, for A (16 x k, row
// major), rows g and g + 8 of the low and high halves of k; for B (k x 8,
// column major) column g; for C/D (16 x 8) rows g, g + 8 and columns 2t, 2t + 1.
#pragma once

#include "mx_matmul_math.cuh"

namespace lowbit {

// -- asynchronous copies to shared memory --------------------------------------
// Copies `Bytes` (4 or 16) from global to shared memory, or zeros when !valid
// (the global address is then not read).
template <int Bytes> __device__ __forceinline__ void copy_async(void* shared, const void* global, bool valid) {
#ifdef LOWBIT_EMULATE_DEVICE
  if (valid) memcpy(shared, global, Bytes);
  else memset(shared, 0, Bytes);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // cp.async is sm_80+
#else
  unsigned address = (unsigned)__cvta_generic_to_shared(shared);
  int source_bytes = valid ? Bytes : 0;
  if constexpr (Bytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(source_bytes));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(address), "l"(global), "r"(source_bytes));
#endif
}

// Closes the group of copies issued since the last commit.
__device__ __forceinline__ void commit_copies() {
#if !defined(LOWBIT_EMULATE_DEVICE) && !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800)
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most `Pending` committed groups are still in flight.
template <int Pending> __device__ __forceinline__ void wait_copies() {
#if !defined(LOWBIT_EMULATE_DEVICE) && !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
#endif
}

#ifdef LOWBIT_EMULATE_DEVICE
namespace emulated {

// The value of the i-th element of a fragment register array of type T.
inline double fragment_value(int type, const uint32_t* registers, int i) {
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(registers);
  return type == TYPE_FP16 ? mma_input_value(type, bytes + 2 * i) : mma_input_value(type, bytes + i);
}

// d = c + a b for one warp, Acc = float (fp16, FP8) or int (int8). Each
// lane posts its fragments, then computes its own four outputs from
// everyone's, following the PTX formulas for (row, column) of element i.
template <int AT, int BT, typename Acc> void warp_mma(Acc* d, const uint32_t* a, const uint32_t* b, const Acc* c) {
  WarpExchange& warp = current_block->warps[threadIdx.x / 32];
  const int lane = (int)(threadIdx.x % 32), k = AT == TYPE_FP16 ? 16 : 32;
  memcpy(warp.lanes[lane], a, 16);
  memcpy(warp.lanes[lane] + 4, b, 8);
  memcpy(warp.lanes[lane] + 6, c, 16);
  warp.barrier.wait();
  double tile_a[16][32], tile_b[32][8];
  for (int owner = 0; owner < 32; ++owner) {
    const int g = owner >> 2, t = owner & 3;
    for (int i = 0; i < (k == 16 ? 8 : 16); ++i) {  // A: 8 (fp16) or 16 (8-bit) elements per lane
      bool high_row = k == 16 ? (i & 2) != 0 : (i & 4) != 0;
      int column = k == 16 ? t * 2 + (i & 1) + (i >= 4 ? 8 : 0) : t * 4 + (i & 3) + (i >= 8 ? 16 : 0);
      tile_a[g + (high_row ? 8 : 0)][column] = fragment_value(AT, warp.lanes[owner], i);
    }
    for (int i = 0; i < (k == 16 ? 4 : 8); ++i) {  // B: 4 (fp16) or 8 (8-bit) elements per lane
      int row = k == 16 ? t * 2 + (i & 1) + (i >= 2 ? 8 : 0) : t * 4 + (i & 3) + (i >= 4 ? 16 : 0);
      tile_b[row][g] = fragment_value(BT, warp.lanes[owner] + 4, i);
    }
  }
  const int g = lane >> 2, t = lane & 3;
  Acc sums[4];
  for (int i = 0; i < 4; ++i) {
    int row = g + (i >= 2 ? 8 : 0), column = t * 2 + (i & 1);
    Acc start;
    memcpy(&start, &warp.lanes[lane][6 + i], sizeof(Acc));
    sums[i] = modelled_mma(start, k, [&](int j) { return tile_a[row][j] * tile_b[j][column]; });
  }
  warp.barrier.wait();  // every lane has read the posted fragments
  for (int i = 0; i < 4; ++i) d[i] = sums[i];
}

}  // namespace emulated
#endif

// -- tensor-core MMA: d = c + a b on a warp's m16n8 tile (c may be d) ----------
#define LOWBIT_MMA(instruction, out, in)                                                                       \
  asm volatile("mma.sync.aligned." instruction " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n" \
               : out(d[0]), out(d[1]), out(d[2]), out(d[3])                                                    \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), in(c[0]), in(c[1]), in(c[2]), \
                 in(c[3]))
#define LOWBIT_MMA_F32(instruction) LOWBIT_MMA(instruction, "=f", "f")

template <int AT, int BT, typename Acc>
__device__ __forceinline__ void mma(Acc* d, const uint32_t* a, const uint32_t* b, const Acc* c) {
#ifdef LOWBIT_EMULATE_DEVICE
  emulated::warp_mma<AT, BT>(d, a, b, c);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the m16n8k16/k32 MMAs are sm_80+; the binding refuses older GPUs before launching
#else
  if constexpr (AT == TYPE_INT8) {
    LOWBIT_MMA("m16n8k32.row.col.s32.s8.s8.s32", "=r", "r");
  } else if constexpr (AT == TYPE_FP16) {
    LOWBIT_MMA_F32("m16n8k16.row.col.f32.f16.f16.f32");
  } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    if constexpr (AT == TYPE_E4M3 && BT == TYPE_E4M3) LOWBIT_MMA_F32("m16n8k32.row.col.f32.e4m3.e4m3.f32");
    else if constexpr (AT == TYPE_E4M3) LOWBIT_MMA_F32("m16n8k32.row.col.f32.e4m3.e5m2.f32");
    else if constexpr (BT == TYPE_E4M3) LOWBIT_MMA_F32("m16n8k32.row.col.f32.e5m2.e4m3.f32");
    else LOWBIT_MMA_F32("m16n8k32.row.col.f32.e5m2.e5m2.f32");
#else
    __trap();  // FP8 MMAs need sm_89 or later; the launcher checks before launching
#endif
  }
#endif
}

#undef LOWBIT_MMA_F32
#undef LOWBIT_MMA

}  // namespace lowbit
