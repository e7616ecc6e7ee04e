// Launch helpers shared by the .cu kernels (GPU only).
#pragma once

#include <stdint.h>

namespace lowbit {

// A grid of `threads`-thread blocks covering `items` work items, capped
// (the kernels loop grid-stride over what a capped grid does not cover).
inline unsigned grid_for(long long items, int threads) {
  long long blocks = (items + threads - 1) / threads;
  if (blocks > 65536) blocks = 65536;
  return (unsigned)(blocks > 0 ? blocks : 1);
}

inline bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

}  // namespace lowbit
