// A register-tiled scan over (point, column) pairs, shared by the centre
// distances, the nearest centre and the diagonal / spherical / tied GMM
// E-step: the same loop as a GEMM's, with what a pair accumulates (a Pair
// policy) and what happens to each finished pair (a visitor: write a
// distance, keep the nearest two centres, keep a log-sum-exp) chosen at
// compile time, so no N x K intermediate goes through global memory.
//
// A block of 256 threads owns kPairTileRows points and walks column tiles of
// kPairTileCols (a contiguous share of the columns: grid.y splits them into
// groups when there are too few point tiles to fill the GPU). The dimension
// is staged through shared memory kPairChunk coordinates at a time,
// transposed, zero-filled past D. Thread t holds a 4 x 4 micro-tile: points
// 4 (t / 16) .. + 3, columns 4 (t % 16) .. + 3 of the tile, so the 16
// threads sharing a point are one half-warp and reduce over shuffles.
//
// Visitor interface (all device functions; `State` is per point):
//   void start(State&)                                    before the first column
//   void visit(State&, int64_t point, int64_t col, T acc) every pair in range
//   void finish(State&, int64_t point, int group, bool writer)
//      after the last column of the group; all 32 lanes call it (reductions
//      over the half-warp use __shfl_xor_sync with width 16) and `writer`
//      (one lane per point, point < n) stores the point's result.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "block_scan.cuh"
#include "device_runtime.cuh"

namespace dsch_ext {

constexpr int kPairThreads = 256;
constexpr int kPairTileRows = 64;
constexpr int kPairTileCols = 64;
constexpr int kPairChunk = 16;
constexpr int kPairStride = kPairTileRows + 4;  // padded: transposed stores hit fewer banks
static_assert(kPairTileRows == kPairTileCols, "the staging loop loads both tiles with one index map");
static_assert(kPairThreads * 4 == kPairTileRows * kPairChunk, "each thread stages four elements per operand");

// acc += x c (centre distances, nearest centre).
struct DotPair {
  static constexpr int kOperands = 1;
  template <typename T>
  __device__ __forceinline__ static T step(T acc, T x, const T* c) {
    return fused_multiply_add(x, c[0], acc);
  }
};

struct PairTilePlan {
  int64_t n, k, dim;
  int64_t col_tiles;        // ceil(k / kPairTileCols)
  int64_t tiles_per_group;  // column tiles each grid.y group walks
};

// gridDim.y groups so that point tiles x groups fill `sms` multiprocessors
// about four times over (at most 32 groups: the combine kernels give a group a lane).
inline PairTilePlan plan_pair_tiles(int64_t n, int64_t k, int64_t dim, int sms) {
  PairTilePlan plan{n, k, dim, (k + kPairTileCols - 1) / kPairTileCols, 0};
  const int64_t point_tiles = (n + kPairTileRows - 1) / kPairTileRows;
  int64_t groups = (4 * static_cast<int64_t>(sms) + point_tiles - 1) / point_tiles;
  groups = std::max<int64_t>(1, std::min<int64_t>({groups, plan.col_tiles, 32, gpu::max_grid_yz()}));
  plan.tiles_per_group = (plan.col_tiles + groups - 1) / groups;
  return plan;
}

inline int64_t pair_groups(const PairTilePlan& plan) {
  return (plan.col_tiles + plan.tiles_per_group - 1) / plan.tiles_per_group;
}

// Makes every group start at a multiple of `tiles` column tiles, for a visitor
// whose unit (one component of the full-covariance E-step) spans that many:
// fewer, longer groups, never a unit split between two blocks.
inline PairTilePlan align_pair_groups(PairTilePlan plan, int64_t tiles) {
  plan.tiles_per_group = (plan.tiles_per_group + tiles - 1) / tiles * tiles;
  return plan;
}

inline dim3 pair_tile_grid(const PairTilePlan& plan) {
  return dim3(gpu::grid_for(plan.n, kPairTileRows), static_cast<unsigned>(pair_groups(plan)));
}

// Stages coordinates [d0, d0 + kPairChunk) of `count` rows starting at row0
// of a [rows, dim] matrix into tile[d][r], zeros past the matrix.
template <typename T>
__device__ __forceinline__ void stage_pair_chunk(T* tile, const T* __restrict__ src, int64_t row0, int64_t rows,
                                                 int64_t dim, int64_t d0) {
  DSCH_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int e = threadIdx.x + i * kPairThreads;
    const int r = e / kPairChunk, d = e % kPairChunk;
    const int64_t row = row0 + r, col = d0 + d;
    tile[d * kPairStride + r] = row < rows && col < dim ? src[row * dim + col] : T(0);
  }
}

// The column tiles [first, last) that grid.y's group walks.
struct ColumnGroup {
  int64_t first, last;
  __device__ __forceinline__ static ColumnGroup of_block(const PairTilePlan& plan) {
    const int64_t first = blockIdx.y * plan.tiles_per_group;
    return {first, min(plan.col_tiles, first + plan.tiles_per_group)};
  }
};

// A thread's four points of the point tile at p0 are p0 + 4 (t / 16) + i; the
// tile kernels (here and in pair_tile_mma.cuh) share these three steps.
template <typename Visitor>
__device__ __forceinline__ void start_points(const Visitor& visitor, typename Visitor::State (&state)[4]) {
  DSCH_UNROLL
  for (int i = 0; i < 4; ++i) visitor.start(state[i]);
}

// value(i, j): the thread's pair (point i, column j) of the column tile at c0.
template <typename Visitor, typename Value>
__device__ __forceinline__ void visit_pairs(const PairTilePlan& plan, const Visitor& visitor,
                                            typename Visitor::State (&state)[4], int64_t p0, int64_t c0,
                                            const Value& value) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  DSCH_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int64_t point = p0 + ty * 4 + i;
    DSCH_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int64_t col = c0 + tx * 4 + j;
      if (point < plan.n && col < plan.k) visitor.visit(state[i], point, col, value(i, j));
    }
  }
}

template <typename Visitor>
__device__ __forceinline__ void finish_points(const PairTilePlan& plan, const Visitor& visitor,
                                              typename Visitor::State (&state)[4], int64_t p0) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  DSCH_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int64_t point = p0 + ty * 4 + i;
    visitor.finish(state[i], point, static_cast<int>(blockIdx.y), tx == 0 && point < plan.n);
  }
}

// operands[o]: [k, dim] matrices, the column side of the pair.
template <typename T, typename Pair, typename Visitor>
__global__ void __launch_bounds__(kPairThreads, 1) pair_tile_kernel(PairTilePlan plan, const T* __restrict__ points,
                                                                 const T* __restrict__ operand0,
                                                                 const T* __restrict__ operand1, Visitor visitor) {
  DSCH_SHARED_ARRAY(T, point_tile, kPairChunk * kPairStride);
  DSCH_SHARED_ARRAY(T, col_tile, Pair::kOperands * kPairChunk * kPairStride);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const ColumnGroup group = ColumnGroup::of_block(plan);
  const T* const operands[2] = {operand0, operand1};
  for (int64_t p0 = blockIdx.x * int64_t{kPairTileRows}; p0 < plan.n;
       p0 += static_cast<int64_t>(gridDim.x) * kPairTileRows) {
    typename Visitor::State state[4];
    start_points(visitor, state);
    for (int64_t tile = group.first; tile < group.last; ++tile) {
      const int64_t c0 = tile * kPairTileCols;
      T acc[4][4] = {};
      for (int64_t d0 = 0; d0 < plan.dim; d0 += kPairChunk) {
        __syncthreads();  // the previous chunk's reads are done
        stage_pair_chunk(point_tile, points, p0, plan.n, plan.dim, d0);
        DSCH_UNROLL
        for (int o = 0; o < Pair::kOperands; ++o)
          stage_pair_chunk(col_tile + o * kPairChunk * kPairStride, operands[o], c0, plan.k, plan.dim, d0);
        __syncthreads();
        DSCH_UNROLL
        for (int d = 0; d < kPairChunk; ++d) {
          T xv[4], cv[4][Pair::kOperands];
          DSCH_UNROLL
          for (int i = 0; i < 4; ++i) xv[i] = point_tile[d * kPairStride + ty * 4 + i];
          DSCH_UNROLL
          for (int j = 0; j < 4; ++j) {
            DSCH_UNROLL
            for (int o = 0; o < Pair::kOperands; ++o)
              cv[j][o] = col_tile[(o * kPairChunk + d) * kPairStride + tx * 4 + j];
          }
          DSCH_UNROLL
          for (int i = 0; i < 4; ++i) {
            DSCH_UNROLL
            for (int j = 0; j < 4; ++j) acc[i][j] = Pair::step(acc[i][j], xv[i], cv[j]);
          }
        }
      }
      visit_pairs(plan, visitor, state, p0, c0, [&](int i, int j) { return acc[i][j]; });
    }
    finish_points(plan, visitor, state, p0);
  }
}

// Whether T's inner products run on the tensor cores (float32 dot products,
// pair_tile_mma.cuh's launch_dot_tiles) rather than on this tile.
template <typename T, typename Pair>
constexpr bool pair_tiles_use_mma() {
  return std::is_same<T, float>::value && std::is_same<Pair, DotPair>::value;
}

template <typename T, typename Pair, typename Visitor>
void launch_pair_tiles(const char* name, const PairTilePlan& plan, const T* points, const T* operand0,
                       const T* operand1, const Visitor& visitor, gpu::Stream stream) {
  static_assert(!pair_tiles_use_mma<T, Pair>(), "float32 dot products go through launch_dot_tiles");
  if (plan.n == 0) return;
  gpu::launch(name, &pair_tile_kernel<T, Pair, Visitor>, pair_tile_grid(plan), kPairThreads, 0, stream, plan, points, operand0,
              operand1, visitor);
}

}  // namespace dsch_ext
