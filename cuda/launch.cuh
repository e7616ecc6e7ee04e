// Launch helpers shared by the .cu kernels.
//
// LOWBIT_LAUNCH(grid, threads, stream, kernel)(args...) is a kernel launch
// under nvcc. Compiled as C++ with LOWBIT_EMULATE_DEVICE (the emulated
// build, emulated_kernels.cpp) it runs the kernel on the host instead,
// thread after thread (emulated_device.h), so that machines without a GPU
// execute the kernels' own code: their indexing, vector loads, tails and
// grid-stride loops. LOWBIT_LAUNCH_COOPERATIVE is the same launch for
// kernels whose threads wait for each other (barriers, warp-wide
// instructions); emulated, each block's threads run at once.
#pragma once

#include <stdint.h>

#ifdef LOWBIT_EMULATE_DEVICE
#include "emulated_device.h"
#define LOWBIT_LAUNCH(grid, threads, stream, ...) \
  ((void)(stream), ::lowbit::emulated::launch(grid, threads, __VA_ARGS__))
#define LOWBIT_LAUNCH_COOPERATIVE(grid, threads, stream, ...) \
  ((void)(stream), ::lowbit::emulated::launch_cooperative(grid, threads, __VA_ARGS__))
#else
#define LOWBIT_LAUNCH(grid, threads, stream, ...) __VA_ARGS__<<<grid, threads, 0, stream>>>
#define LOWBIT_LAUNCH_COOPERATIVE LOWBIT_LAUNCH
#endif

namespace lowbit {

// A grid of `threads`-thread blocks covering `items` work items, capped
// (the kernels loop grid-stride over what a capped grid does not cover;
// the emulated build caps it at two blocks so that they do).
inline unsigned grid_for(long long items, int threads) {
#ifdef LOWBIT_EMULATE_DEVICE
  const long long most = 2;
#else
  const long long most = 65536;
#endif
  long long blocks = (items + threads - 1) / threads;
  if (blocks > most) blocks = most;
  return (unsigned)(blocks > 0 ? blocks : 1);
}

inline bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

}  // namespace lowbit
