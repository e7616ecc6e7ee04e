// Just enough of CUDA's device language for the kernels in the .cu files
// to compile as C++ and run on the host (see launch.cuh): one thread after
// another for kernels whose threads never wait for each other, and, for
// kernels that do (__syncthreads, warp-wide instructions), every thread of
// a block at once on its own host thread (cooperative launches). Neither
// can show races; they do run every index computation, vector access and
// tail loop as the GPU would.
#pragma once

#include <stdint.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// one copy per kernel instantiation, shared by the threads of the block
// running (cooperative launches run one block at a time)
#define __shared__ static

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

// Host threads that wait until `count` of them have arrived, reusably.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    long long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      released_.notify_all();
    } else {
      released_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable released_;
  int count_, arrived_ = 0;
  long long generation_ = 0;
};

// What the 32 threads of a warp hand each other in a warp-wide instruction.
struct WarpExchange {
  Barrier barrier{32};
  uint32_t lanes[32][12];
};

// The block that a cooperative launch runs now: its barrier and its warps.
struct CooperativeBlock {
  Barrier block;
  std::vector<WarpExchange> warps;
  explicit CooperativeBlock(int threads) : block(threads), warps((size_t)(threads + 31) / 32) {}
};

inline thread_local CooperativeBlock* current_block = nullptr;

// A launch of a kernel whose threads wait for each other: the blocks in
// turn, last to first, each with all its threads running at once on host
// threads. Blocks must have a whole number of warps.
template <typename... Params> struct CooperativeLaunch {
  unsigned grid;
  int threads;
  void (*kernel)(Params...);

  template <typename... Args> void operator()(const Args&... args) const {
    for (unsigned b = grid; b-- > 0;) {
      CooperativeBlock team_state(threads);
      std::vector<std::thread> team;
      for (int k = 0; k < threads; ++k)
        team.emplace_back([&, k] {
          gridDim.x = grid;
          blockDim.x = (unsigned)threads;
          blockIdx.x = b;
          threadIdx.x = (unsigned)k;
          current_block = &team_state;
          kernel(args...);
        });
      for (std::thread& member : team) member.join();
    }
  }
};

template <typename... Params>
CooperativeLaunch<Params...> launch_cooperative(unsigned grid, int threads, void (*kernel)(Params...)) {
  return CooperativeLaunch<Params...>{grid, threads, kernel};
}

}  // namespace emulated
}  // namespace lowbit

inline void __syncthreads() { lowbit::emulated::current_block->block.wait(); }
