// The pair scan of pair_tile.cuh on the tensor cores, for float32 inner
// products (centre distances, nearest centre, the full-covariance E-step's
// x L_k): the same 64 x 64 tiles, plan and visitors, with the products in
// 3xTF32 (mma_tf32.cuh, tf32_math.h). launch_dot_tiles picks the kernel.
#pragma once

#include <ATen/ops/constant_pad_nd.h>

#include <cstdint>
#include <limits>

#include "mma_tf32.cuh"
#include "pair_tile.cuh"

namespace dsch_ext {

// The scan for float32 inner products (DotPair) on the tensor cores, in
// 3xTF32 (tf32_math.h), for D above kSplitAtUseMaxDim (below that, the
// split-at-use kernel): the block's 64 x 64 tile is eight warps of 32 x 16
// (below), four m16n8k8 products each a k-step. Both sides are staged row-major
// a chunk of coordinates at a time, already split into TF32 high and residual
// parts (stride kMmaStride: the fragment loads of a warp hit 32 different
// banks). The finished tile goes through shared memory to the visitors in the
// SIMT kernel's layout, so every visitor serves both kernels unchanged.
constexpr int kMmaStride = kPairChunk + 4;
constexpr int kMmaOutStride = kPairTileCols + 4;
// A warp's share of the tile: 32 points x 16 columns, two m16 by two n8
// products a k-step. Each B fragment (the staged centres) is then read by two
// warps, not four as with 16 x 32: half the shared-memory traffic for twice
// the A fragments in registers.
constexpr int kWarpRows = 32, kWarpCols = 16, kMTiles = kWarpRows / 16, kNTiles = kWarpCols / 8;
static_assert(kPairThreads == 8 * 32 && kPairTileRows == 2 * kWarpRows && kPairTileCols == 4 * kWarpCols,
              "eight warps of 32 x 16 cover the tile");

// A lane's place in the tile's fragments: g = lane / 4, t = lane % 4 and the
// corner of its warp's MT m16 by NT n8 products (32 x 16 by default; 16 x 32 in
// the split-at-use kernel at 128 coordinates), the warps filling the tile's rows first.
template <int MT = kMTiles, int NT = kNTiles>
struct MmaLane {
  static_assert((kPairTileRows / (16 * MT)) * (kPairTileCols / (8 * NT)) * 32 == kPairThreads,
                "the eight warps cover the tile");
  int g, t, row_base, col_base;
  __device__ __forceinline__ static MmaLane here() {
    constexpr int kWarpsDown = kPairTileRows / (16 * MT);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    return {lane / 4, lane % 4, (warp % kWarpsDown) * 16 * MT, (warp / kWarpsDown) * 8 * NT};
  }
};
static_assert(kPairChunk % 8 == 0, "a chunk is whole k-steps");

// The point coordinate a lane holds as A fragment value f of k-step s in its
// m-tile mt, for the kernels that keep the points in registers: 0 past N and D.
template <int MT, int NT>
__device__ __forceinline__ float point_fragment_value(const PairTilePlan& plan, const float* __restrict__ points,
                                                      int64_t p0, const MmaLane<MT, NT>& m, int mt, int s, int f) {
  const int64_t row = p0 + m.row_base + 16 * mt + m.g + 8 * (f % 2);
  const int col = 8 * s + m.t + 4 * (f / 2);
  return row < plan.n && col < plan.dim ? points[row * plan.dim + col] : 0.0f;
}

__device__ __forceinline__ void stage_split_chunk(float* hi, float* lo, const float* __restrict__ src, int64_t row0,
                                                  int64_t rows, int64_t dim, int64_t d0) {
  DSCH_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int e = threadIdx.x + i * kPairThreads;
    const int r = e / kPairChunk, d = e % kPairChunk;
    const int64_t row = row0 + r, col = d0 + d;
    const float v = row < rows && col < dim ? src[row * dim + col] : 0.0f;
    const float h = tf32_round(v);
    hi[r * kMmaStride + d] = h;
    lo[r * kMmaStride + d] = tf32_residual(v, h);
  }
}

// The epilogue of both tensor-core kernels: after a barrier (out_tile's earlier
// readers are done) each warp writes its 32 x 16 accumulators into out_tile in
// the SIMT kernel's layout, and after another every pair in range goes to the
// visitor from there. A visitor may also have
//   void end_tile(State (&)[4], int64_t p0, int64_t c0)
// which every thread calls after the tile's pairs (so it may reduce over the half-warp).
template <typename Visitor, int MT, int NT>
__device__ __forceinline__ void visit_mma_tile(const PairTilePlan& plan, const Visitor& visitor,
                                               typename Visitor::State (&state)[4], float* out_tile,
                                               const float (&acc)[MT][NT][4], int64_t p0, int64_t c0) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const MmaLane<MT, NT> m = MmaLane<MT, NT>::here();
  __syncthreads();
  DSCH_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    DSCH_UNROLL
    for (int nt = 0; nt < NT; ++nt) {
      DSCH_UNROLL
      for (int f = 0; f < 4; ++f)
        out_tile[(m.row_base + 16 * mt + m.g + 8 * (f / 2)) * kMmaOutStride + m.col_base + 8 * nt + 2 * m.t + f % 2] =
            acc[mt][nt][f];
    }
  }
  __syncthreads();
  visit_pairs(plan, visitor, state, p0, c0,
              [&](int i, int j) { return out_tile[(ty * 4 + i) * kMmaOutStride + tx * 4 + j]; });
  // A visitor that reduces over a whole tile (the full-covariance E-step: one component a tile).
  if constexpr (requires { visitor.end_tile(state, p0, c0); }) visitor.end_tile(state, p0, c0);
}

template <typename Visitor>
__global__ void __launch_bounds__(kPairThreads, 1) pair_tile_mma_kernel(PairTilePlan plan, const float* __restrict__ points,
                                                                     const float* __restrict__ centers, Visitor visitor) {
  DSCH_SHARED_ARRAY(float, point_hi, kPairTileRows * kMmaStride);
  DSCH_SHARED_ARRAY(float, point_lo, kPairTileRows * kMmaStride);
  DSCH_SHARED_ARRAY(float, col_hi, kPairTileCols * kMmaStride);
  DSCH_SHARED_ARRAY(float, col_lo, kPairTileCols * kMmaStride);
  DSCH_SHARED_ARRAY(float, out_tile, kPairTileRows * kMmaOutStride);
  const MmaLane<> m = MmaLane<>::here();
  const ColumnGroup group = ColumnGroup::of_block(plan);
  for (int64_t p0 = blockIdx.x * int64_t{kPairTileRows}; p0 < plan.n;
       p0 += static_cast<int64_t>(gridDim.x) * kPairTileRows) {
    typename Visitor::State state[4];
    start_points(visitor, state);
    for (int64_t tile = group.first; tile < group.last; ++tile) {
      const int64_t c0 = tile * kPairTileCols;
      float acc[kMTiles][kNTiles][4] = {};
      for (int64_t d0 = 0; d0 < plan.dim; d0 += kPairChunk) {
        __syncthreads();  // the previous chunk's reads are done
        stage_split_chunk(point_hi, point_lo, points, p0, plan.n, plan.dim, d0);
        stage_split_chunk(col_hi, col_lo, centers, c0, plan.k, plan.dim, d0);
        __syncthreads();
        DSCH_UNROLL
        for (int ks = 0; ks < kPairChunk; ks += 8) {
          float a_hi[kMTiles][4], a_lo[kMTiles][4];
          DSCH_UNROLL
          for (int mt = 0; mt < kMTiles; ++mt) {
            DSCH_UNROLL
            for (int f = 0; f < 4; ++f) {
              const int at = (m.row_base + 16 * mt + m.g + 8 * (f % 2)) * kMmaStride + ks + m.t + 4 * (f / 2);
              a_hi[mt][f] = point_hi[at];
              a_lo[mt][f] = point_lo[at];
            }
          }
          DSCH_UNROLL
          for (int nt = 0; nt < kNTiles; ++nt) {
            float b_hi[2], b_lo[2];
            DSCH_UNROLL
            for (int f = 0; f < 2; ++f) {
              const int at = (m.col_base + 8 * nt + m.g) * kMmaStride + ks + m.t + 4 * f;
              b_hi[f] = col_hi[at];
              b_lo[f] = col_lo[at];
            }
            DSCH_UNROLL
            for (int mt = 0; mt < kMTiles; ++mt) mma_tf32x3_m16n8k8(acc[mt][nt], a_hi[mt], a_lo[mt], b_hi, b_lo);
          }
        }
      }
      // The previous tile's visitors have read out_tile (dim == 0 stages nothing).
      visit_mma_tile(plan, visitor, state, out_tile, acc, p0, c0);
    }
    finish_points(plan, visitor, state, p0);
  }
}

// Floats of the shared buffer that holds a column tile's staged centres (rows
// of `stride`) and, after the products, the finished tile.
constexpr int centres_and_tile_buffer(int stride) {
  return kPairTileCols * stride > kPairTileRows * kMmaOutStride ? kPairTileCols * stride
                                                                : kPairTileRows * kMmaOutStride;
}

// The tensor-core scan for D <= DP (16, 32, 64 or 128: centre distances,
// nearest centre and the float32 full-covariance E-step's x L_k), with the
// split made where a value is used. Both sides stay raw: the points in
// registers, loaded once a point tile, the centres in shared memory, staged
// all DP coordinates at once, so a column tile runs DP / 8 k-steps between
// two barriers; every value is split as it is used (tf32_split_at_use: an
// add, an AND and a subtraction). Staging is then a plain copy: rounding and
// splitting each staged value instead made the integer pipe, not the tensor
// cores, bound the scan. Its products err within the same kTf32x3Epsilon as
// the staged split's (tf32_math.h), so the nearest-centre tie bound holds.
// A warp owns 32 points x 16 columns up to DP = 64 (each staged value is
// then read and split by two warps, not four; ptxas keeps the points' split
// out of the tile loop), 16 x 32 at DP = 128, where split fragments of 32
// points would not fit in registers. The centres come padded to
// [col_tiles * kPairTileCols, DP] (zeros past K and D: no bounds checks or
// 64-bit index arithmetic in the loop) with each 8 coordinates in the order
// 0 4 1 5 2 6 3 7 (interleave_for_split_at_use), so a lane's two B values of a
// k-step, t and t + 4, are one 8-byte load; the row stride, DP + 8 (8 or 24
// mod 32 floats), gives each half-warp 32 different banks.
constexpr int kSplitAtUseMaxDim = 128;

template <int DP>
constexpr int split_at_use_stride() {
  return DP + 8;
}

template <int DP, typename Visitor>
__global__ void __launch_bounds__(kPairThreads, 1)
    pair_tile_mma_split_at_use_kernel(PairTilePlan plan, const float* __restrict__ points,
                                      const float* __restrict__ padded_centers, Visitor visitor) {
  constexpr int kMT = DP <= 64 ? 2 : 1, kNT = 4 / kMT, kSteps = DP / 8, kStride = split_at_use_stride<DP>();
  constexpr int kVecs = DP / 4, kRowsPerRound = kPairThreads / kVecs;  // staging: float4s
  static_assert(kPairThreads % kVecs == 0 && kPairTileCols % kRowsPerRound == 0, "whole staging rounds");
  DSCH_SHARED_ARRAY(float, buffer, centres_and_tile_buffer(kStride));
  float* const cols = buffer;
  float* const out_tile = buffer;  // after the products have read the centres
  const MmaLane<kMT, kNT> m = MmaLane<kMT, kNT>::here();
  const int stage_row = threadIdx.x / kVecs, stage_v = threadIdx.x % kVecs;
  const ColumnGroup group = ColumnGroup::of_block(plan);
  for (int64_t p0 = blockIdx.x * int64_t{kPairTileRows}; p0 < plan.n;
       p0 += static_cast<int64_t>(gridDim.x) * kPairTileRows) {
    float a[kMT][kSteps][4];
    DSCH_UNROLL
    for (int mt = 0; mt < kMT; ++mt) {
      DSCH_UNROLL
      for (int s = 0; s < kSteps; ++s) {
        DSCH_UNROLL
        for (int f = 0; f < 4; ++f) a[mt][s][f] = point_fragment_value(plan, points, p0, m, mt, s, f);
      }
    }
    typename Visitor::State state[4];
    start_points(visitor, state);
    const float* tile_src = padded_centers + (group.first * kPairTileCols + stage_row) * DP + 4 * stage_v;
    for (int64_t tile = group.first; tile < group.last; ++tile) {
      const int64_t c0 = tile * kPairTileCols;
      __syncthreads();  // the previous tile's visitors have read out_tile
      DSCH_UNROLL
      for (int i = 0; i < kPairTileCols / kRowsPerRound; ++i)
        *reinterpret_cast<float4*>(&cols[(stage_row + i * kRowsPerRound) * kStride + 4 * stage_v]) =
            *reinterpret_cast<const float4*>(tile_src + i * kRowsPerRound * DP);
      tile_src += kPairTileCols * DP;
      __syncthreads();
      float acc[kMT][kNT][4] = {};
      DSCH_UNROLL
      for (int s = 0; s < kSteps; ++s) {
        float a_hi[kMT][4], a_lo[kMT][4];
        DSCH_UNROLL
        for (int mt = 0; mt < kMT; ++mt) {
          DSCH_UNROLL
          for (int f = 0; f < 4; ++f) tf32_split_at_use(a[mt][s][f], a_hi[mt][f], a_lo[mt][f]);
        }
        DSCH_UNROLL
        for (int nt = 0; nt < kNT; ++nt) {
          const float2 b =
              *reinterpret_cast<const float2*>(&cols[(m.col_base + 8 * nt + m.g) * kStride + 8 * s + 2 * m.t]);
          float b_hi[2], b_lo[2];
          tf32_split_at_use(b.x, b_hi[0], b_lo[0]);
          tf32_split_at_use(b.y, b_hi[1], b_lo[1]);
          DSCH_UNROLL
          for (int mt = 0; mt < kMT; ++mt) mma_tf32x3_m16n8k8(acc[mt][nt], a_hi[mt], a_lo[mt], b_hi, b_lo);
        }
      }
      visit_mma_tile(plan, visitor, state, out_tile, acc, p0, c0);  // after every warp's products read the centres
    }
    finish_points(plan, visitor, state, p0);
  }
}

// Centres padded to [col_tiles * kPairTileCols, DP] (zeros past K and D) in
// pair_tile_mma_split_at_use_kernel's layout: each 8 coordinates in the order 0 4 1 5 2 6 3 7.
inline at::Tensor interleave_for_split_at_use(const at::Tensor& padded) {
  const int64_t rows = padded.size(0), dp = padded.size(1);
  return padded.view({rows, dp / 8, 2, 4}).transpose(2, 3).contiguous().view({rows, dp});
}

template <typename T, typename Pair>
constexpr T pair_tile_epsilon() {
  return pair_tiles_use_mma<T, Pair>() ? T(kTf32x3Epsilon) : std::numeric_limits<T>::epsilon();
}

// The padded dimension of the split-at-use kernel for D <= kSplitAtUseMaxDim.
inline int split_at_use_dim(int64_t dim) {
  return dim <= 16 ? 16 : dim <= 32 ? 32 : dim <= 64 ? 64 : kSplitAtUseMaxDim;
}

// The centres padded to [col_tiles * kPairTileCols, dp], zeros past K and D:
// an O(K dp) copy each call, against the O(N K D) scan that no longer checks
// bounds.
inline at::Tensor pad_centers_for_tiles(const at::Tensor& centers, const PairTilePlan& plan, int dp) {
  return at::constant_pad_nd(centers, {0, dp - plan.dim, 0, plan.col_tiles * kPairTileCols - plan.k});
}

// Inner products of points [n, dim] with centres [k, dim] (DotPair): float32
// on the tensor cores in 3xTF32 (split at use up to kSplitAtUseMaxDim
// coordinates, staged split above), float64 on the FMA tile.
template <typename T, typename Visitor>
void launch_dot_tiles(const char* name, const PairTilePlan& plan, const at::Tensor& points,
                      const at::Tensor& centers, const Visitor& visitor, gpu::Stream stream) {
  if (plan.n == 0) return;
  if constexpr (pair_tiles_use_mma<T, DotPair>()) {
    if (plan.dim <= kSplitAtUseMaxDim) {
      const int dp = split_at_use_dim(plan.dim);
      // The padded copy is freed after the launch is queued: the caching allocator reuses it in stream order.
      const at::Tensor columns = interleave_for_split_at_use(pad_centers_for_tiles(centers, plan, dp));
      const auto kernel = dp == 16   ? &pair_tile_mma_split_at_use_kernel<16, Visitor>
                          : dp == 32 ? &pair_tile_mma_split_at_use_kernel<32, Visitor>
                          : dp == 64 ? &pair_tile_mma_split_at_use_kernel<64, Visitor>
                                     : &pair_tile_mma_split_at_use_kernel<kSplitAtUseMaxDim, Visitor>;
      gpu::launch(name, kernel, pair_tile_grid(plan), kPairThreads, 0, stream, plan, points.const_data_ptr<float>(),
                  columns.const_data_ptr<float>(), visitor);
    } else {
      gpu::launch(name, &pair_tile_mma_kernel<Visitor>, pair_tile_grid(plan), kPairThreads, 0, stream, plan,
                  points.const_data_ptr<float>(), centers.const_data_ptr<float>(), visitor);
    }
  } else {
    gpu::launch(name, &pair_tile_kernel<T, DotPair, Visitor>, pair_tile_grid(plan), kPairThreads, 0, stream, plan,
                points.const_data_ptr<T>(), centers.const_data_ptr<T>(), static_cast<const T*>(nullptr), visitor);
  }
}

}  // namespace dsch_ext
