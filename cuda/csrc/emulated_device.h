// Just enough of CUDA's device language for the kernels in the .cu files
// to compile as C++ and run on the host, one thread after another (see
// launch.cuh). Sequential threads cannot show races; they do run every
// index computation, vector access and tail loop as the GPU would.
#pragma once

#include <stdint.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint4 {
  unsigned int x, y, z, w;
};

struct EmulatedDim {
  unsigned int x;
};
inline thread_local EmulatedDim threadIdx{0}, blockIdx{0}, blockDim{1}, gridDim{1};

inline unsigned int atomicOr(unsigned int* address, unsigned int value) {
  unsigned int old = *address;
  *address = old | value;
  return old;
}

inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  unsigned long long old = *address;
  if (value < old) *address = value;
  return old;
}

namespace lowbit {
namespace emulated {

// A kernel launch of `grid` blocks of `threads` threads: calling it with
// the kernel's arguments runs every thread in turn, blocks last to first
// and threads in a scrambled order (t * 97 mod threads), so that a kernel
// whose result depends on threads running in index order fails its tests.
template <typename... Params> struct Launch {
  unsigned grid;
  int threads;
  void (*kernel)(Params...);

  template <typename... Args> void operator()(const Args&... args) const {
    gridDim.x = grid;
    blockDim.x = (unsigned)threads;
    for (unsigned b = grid; b-- > 0;)
      for (int k = 0; k < threads; ++k) {
        blockIdx.x = b;
        threadIdx.x = (unsigned)((long long)k * 97 % threads);
        kernel(args...);
      }
  }
};

template <typename... Params> Launch<Params...> launch(unsigned grid, int threads, void (*kernel)(Params...)) {
  return Launch<Params...>{grid, threads, kernel};
}

}  // namespace emulated
}  // namespace lowbit
