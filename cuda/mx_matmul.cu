// The MX matmul on tensor cores: C = A B^T + bias over prepared MX operands
// (mx_matmul_math.cuh says what they hold and what the result is), and the
// preparation of an operand from its packed codes (one thread per element).
//
// Each thread block computes a TILE x TILE tile of C with 8 warps (2 along
// M by 4 along N, 64 x 32 each, as 4 x 4 m16n8 MMA tiles). K advances 32
// positions per stage, staged in shared memory by cp.async, two stages
// deep, together with the 32-position block's scales. The warps' MMAs sum
// a block's products into `partial` (fp32 or int32 registers), which the
// block's two scales then fold into the fp32 `total`
// (add_scaled_block), block after block along K. Tiles are taken
// grid-stride.
#include "dispatch.h"
#include "launch.cuh"
#include "mma_ops.cuh"

namespace lowbit {
namespace {

constexpr int TILE = 128;
constexpr int THREADS = 256;
constexpr int WARP_ROWS = 64, WARP_COLS = 32;
constexpr int M_FRAGMENTS = WARP_ROWS / 16, N_FRAGMENTS = WARP_COLS / 8;
constexpr int STEP = 32;  // K positions per stage (MX blocks are whole stages)
static_assert(THREADS == 2 * TILE, "stage_copies gives each thread one row's scale of A or B");

// The shared-memory shape of an operand's stage, by element type.
template <int T> struct Staging {
  static constexpr int row = STEP * input_bytes(T);  // bytes of a row per stage
  static constexpr int pitch = row + 16;  // row pitch: a warp's 32-bit fragment loads hit 32 banks
  static constexpr int chunks = TILE * row / 16;  // 16-byte copies per stage
};

template <int AT> using Accumulator = typename std::conditional<AT == TYPE_INT8, int, float>::type;

struct MatmulArgs {
  const unsigned char *a, *b;  // m (n) rows of k elements, row-major, 16-byte aligned
  const float *a_scales, *b_scales;  // m (n) rows of k / block scales
  const float* bias;  // n, or null
  void* out;  // m x n of out_dtype
  int out_dtype, block;
  long long m, n, k, tiles_n, tiles;
};

// Issues the copies of stage `step` (K positions step * STEP ..) of the tile
// at rows (tile_m, tile_n) into shared buffers; rows past m (n) read as zeros.
template <int T>
__device__ __forceinline__ void stage_copies(const MatmulArgs& g, long long tile_m, long long tile_n, long long step,
                                             unsigned char* a_stage, unsigned char* b_stage, float* a_scale,
                                             float* b_scale) {
  typedef Staging<T> S;
  const long long row_bytes = g.k * input_bytes(T), nblocks = g.k / g.block;
  const long long block_index = step * STEP / g.block;
  for (int c = (int)threadIdx.x; c < 2 * S::chunks; c += THREADS) {
    const bool is_a = c < S::chunks;
    const int chunk = is_a ? c : c - S::chunks, row = chunk / (S::row / 16), part = chunk % (S::row / 16);
    const long long source_row = (is_a ? tile_m : tile_n) + row;
    const bool valid = source_row < (is_a ? g.m : g.n);
    const unsigned char* source = (is_a ? g.a : g.b) + (valid ? source_row : 0) * row_bytes + step * S::row + part * 16;
    copy_async<16>((is_a ? a_stage : b_stage) + row * S::pitch + part * 16, source, valid);
  }
  const bool is_a = threadIdx.x < TILE;
  const long long source_row = (is_a ? tile_m : tile_n) + (long long)threadIdx.x % TILE;
  const bool valid = source_row < (is_a ? g.m : g.n);
  const float* source = (is_a ? g.a_scales : g.b_scales) + (valid ? source_row : 0) * nblocks + block_index;
  copy_async<4>((is_a ? a_scale : b_scale) + threadIdx.x % TILE, source, valid);
}

template <int AT, int BT>
__global__ void __launch_bounds__(THREADS) mx_matmul_kernel(MatmulArgs g) {
  typedef Staging<AT> S;
  typedef Accumulator<AT> Acc;
  __shared__ __align__(16) unsigned char a_stages[2][TILE * S::pitch];
  __shared__ __align__(16) unsigned char b_stages[2][TILE * S::pitch];
  __shared__ float a_scales[2][TILE], b_scales[2][TILE];

  const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32, group = lane / 4, quad = lane % 4;
  const int warp_m = (warp / 4) * WARP_ROWS, warp_n = (warp % 4) * WARP_COLS;
  const long long steps = g.k / STEP, steps_per_block = g.block / STEP;

  for (long long tile = blockIdx.x; tile < g.tiles; tile += gridDim.x) {
    const long long tile_m = (tile / g.tiles_n) * TILE, tile_n = (tile % g.tiles_n) * TILE;
    float total[M_FRAGMENTS][N_FRAGMENTS][4] = {};
    Acc partial[M_FRAGMENTS][N_FRAGMENTS][4];
    const Acc zero[4] = {};

    __syncthreads();  // the previous tile is done with stage 0
    if (steps > 0)  // K = 0: no copies; the outputs are the bias alone
      stage_copies<AT>(g, tile_m, tile_n, 0, a_stages[0], b_stages[0], a_scales[0], b_scales[0]);
    commit_copies();
    for (long long step = 0; step < steps; ++step) {
      const int s = (int)(step & 1);
      wait_copies<0>();
      __syncthreads();  // stage s has landed, and everyone is done with stage s ^ 1
      if (step + 1 < steps)
        stage_copies<AT>(g, tile_m, tile_n, step + 1, a_stages[s ^ 1], b_stages[s ^ 1], a_scales[s ^ 1],
                         b_scales[s ^ 1]);
      commit_copies();

      const bool first_of_block = step % steps_per_block == 0;
      #pragma unroll
      for (int chunk = 0; chunk < STEP / mma_k(AT); ++chunk) {
        const int offset = chunk * 32 + quad * 4;  // this lane's bytes in the chunk's 32-byte row slice
        uint32_t a[M_FRAGMENTS][4], b[N_FRAGMENTS][2];
        #pragma unroll
        for (int i = 0; i < M_FRAGMENTS; ++i) {
          const unsigned char* row = a_stages[s] + (warp_m + i * 16 + group) * S::pitch + offset;
          a[i][0] = *reinterpret_cast<const uint32_t*>(row);
          a[i][1] = *reinterpret_cast<const uint32_t*>(row + 8 * S::pitch);
          a[i][2] = *reinterpret_cast<const uint32_t*>(row + 16);
          a[i][3] = *reinterpret_cast<const uint32_t*>(row + 8 * S::pitch + 16);
        }
        #pragma unroll
        for (int j = 0; j < N_FRAGMENTS; ++j) {
          const unsigned char* column = b_stages[s] + (warp_n + j * 8 + group) * S::pitch + offset;
          b[j][0] = *reinterpret_cast<const uint32_t*>(column);
          b[j][1] = *reinterpret_cast<const uint32_t*>(column + 16);
        }
        if (chunk == 0 && first_of_block) {  // a block's first MMAs start from zero
          #pragma unroll
          for (int i = 0; i < M_FRAGMENTS; ++i)
            #pragma unroll
            for (int j = 0; j < N_FRAGMENTS; ++j) mma<AT, BT>(partial[i][j], a[i], b[j], zero);
        } else {
          #pragma unroll
          for (int i = 0; i < M_FRAGMENTS; ++i)
            #pragma unroll
            for (int j = 0; j < N_FRAGMENTS; ++j) mma<AT, BT>(partial[i][j], a[i], b[j], partial[i][j]);
        }
      }

      if ((step + 1) % steps_per_block == 0) {  // the block is complete: scale it into the total
        float sa[M_FRAGMENTS][2], sb[N_FRAGMENTS][2];
        bool exact = true;
        #pragma unroll
        for (int i = 0; i < M_FRAGMENTS; ++i)
          #pragma unroll
          for (int h = 0; h < 2; ++h) {
            sa[i][h] = a_scales[s][warp_m + i * 16 + group + 8 * h];
            exact = exact && scale_multiplies_exactly(sa[i][h]);
          }
        #pragma unroll
        for (int j = 0; j < N_FRAGMENTS; ++j)
          #pragma unroll
          for (int h = 0; h < 2; ++h) {
            sb[j][h] = b_scales[s][warp_n + j * 8 + quad * 2 + h];
            exact = exact && scale_multiplies_exactly(sb[j][h]);
          }
        #pragma unroll
        for (int i = 0; i < M_FRAGMENTS; ++i)
          #pragma unroll
          for (int j = 0; j < N_FRAGMENTS; ++j)
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float p = (float)partial[i][j][e], row_scale = sa[i][e >> 1], column_scale = sb[j][e & 1];
              total[i][j][e] = exact ? fmaf(p, row_scale * column_scale, total[i][j][e])
                                     : add_scaled_block(total[i][j][e], p, row_scale, column_scale);
            }
      }
    }

    #pragma unroll
    for (int i = 0; i < M_FRAGMENTS; ++i)
      #pragma unroll
      for (int j = 0; j < N_FRAGMENTS; ++j)
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
          const long long row = tile_m + warp_m + i * 16 + group + 8 * (e >> 1);
          const long long column = tile_n + warp_n + j * 8 + quad * 2 + (e & 1);
          if (row < g.m && column < g.n)
            store_output(g.out, g.out_dtype, row * g.n + column, total[i][j][e], g.bias ? g.bias + column : nullptr);
        }
  }
}

constexpr int PREPARE_THREADS = 256;

__global__ void __launch_bounds__(PREPARE_THREADS)
    mx_prepare_kernel(const unsigned char* packed, int code_bits, const unsigned char* element_table, int bytes,
                      unsigned char* inputs, long long n, const int32_t* scale_codes, const float* scale_table,
                      int entries, float* scales, long long nscales) {
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n || t < nscales;
       t += (long long)gridDim.x * blockDim.x) {
    if (t < n && element_table) prepare_element(packed, code_bits, element_table, bytes, inputs, t);
    if (t < nscales) prepare_scale(scale_codes, scale_table, entries, scales, t);
  }
}

}  // namespace

void mx_prepare(const unsigned char* packed, int code_bits, const unsigned char* element_table, int bytes,
                unsigned char* inputs, long long n, const int32_t* scale_codes, const float* scale_table, int entries,
                float* scales, long long nscales, cudaStream_t stream) {
  const long long items = element_table && n > nscales ? n : nscales;
  if (items == 0) return;
  LOWBIT_LAUNCH(grid_for(items, PREPARE_THREADS), PREPARE_THREADS, stream, mx_prepare_kernel)(
      packed, code_bits, element_table, bytes, inputs, n, scale_codes, scale_table, entries, scales, nscales);
}

void mx_matmul(int a_type, int b_type, const unsigned char* a, const float* a_scales, const unsigned char* b,
               const float* b_scales, const float* bias, void* out, int out_dtype, long long m, long long n,
               long long k, int block, cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  MatmulArgs g{a, b, a_scales, b_scales, bias, out, out_dtype, block, m, n, k, 0, 0};
  g.tiles_n = (n + TILE - 1) / TILE;
  g.tiles = (m + TILE - 1) / TILE * g.tiles_n;
  const unsigned grid = grid_for(g.tiles, 1);
  with_mma_types(a_type, b_type, [&](auto a_tag, auto b_tag) {
    constexpr int A = decltype(a_tag)::value, B = decltype(b_tag)::value;
    LOWBIT_LAUNCH_COOPERATIVE(grid, THREADS, stream, mx_matmul_kernel<A, B>)(g);
  });
}

}  // namespace lowbit
