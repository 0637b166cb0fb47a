// CUDA kernel of dsch_ext::nearest_center: the register-tiled pair scan
// (pair_tile.cuh) computes <x, c> and keeps, per point, the smallest
// |c|^2 - 2 <x, c>, its index and the second smallest value, in registers:
// no N x K matrix, O(N + K) memory (one partial per point and column group).
// A combine kernel, one warp per point, merges the groups; where the best two
// are within the rounding bound of the expanded form (center_math.h) it
// recomputes the candidates directly, so equal centres tie exactly and the
// lower index wins, as on the CPU. float32 products run on the tensor cores
// in 3xTF32 (fp32 accuracy, its own rounding unit in the bound), float64
// ones as FMAs; never plain TF32, whatever torch's switch says. A point with NaN or Inf gets index -1
// and a NaN distance; a centre with NaN or Inf is never the nearest.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/max.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "../common/center_checks.h"
#include "center_stats.cuh"
#include "pair_tile_mma.cuh"

namespace dsch_ext {
namespace {

constexpr int kCombineThreads = 256;

// A candidate nearest centre and the runner-up's value.
template <typename T>
struct NearestPair {
  T best;
  int64_t best_j;  // -1: none yet
  T second;

  __device__ __forceinline__ void offer(T value, int64_t j) {
    value = value == value ? value : std::numeric_limits<T>::infinity();  // a non-finite centre never wins
    if (best_j < 0 || nearer_center(value, j, best, best_j)) {
      second = best_j < 0 ? second : min(second, best);
      best = value;
      best_j = j;
    } else {
      second = min(second, value);
    }
  }
  __device__ __forceinline__ void merge(const NearestPair& other) {
    if (other.best_j < 0) return;
    const T old_best = best;
    const bool had = best_j >= 0;
    if (!had || nearer_center(other.best, other.best_j, best, best_j)) {
      best = other.best;
      best_j = other.best_j;
      second = min(had ? min(second, old_best) : second, other.second);
    } else {
      second = min(second, min(other.best, other.second));
    }
  }
  __device__ __forceinline__ NearestPair shuffled(int offset, int width) const {
    return {__shfl_xor_sync(kFullWarpMask, best, offset, width),
            __shfl_xor_sync(kFullWarpMask, best_j, offset, width),
            __shfl_xor_sync(kFullWarpMask, second, offset, width)};
  }
};

template <typename T>
struct NearestVisitor {
  using State = NearestPair<T>;
  const T* c_stat;
  T* part_best;  // [groups, n]
  int64_t* part_index;
  T* part_second;
  int64_t n;

  __device__ __forceinline__ void start(State& s) const {
    s = {std::numeric_limits<T>::infinity(), -1, std::numeric_limits<T>::infinity()};
  }
  __device__ __forceinline__ void visit(State& s, int64_t, int64_t col, T dot) const {
    s.offer(c_stat[col] - T(2) * dot, col);
  }
  __device__ __forceinline__ void finish(State& s, int64_t point, int group, bool writer) const {
    for (int offset = 8; offset > 0; offset >>= 1) s.merge(s.shuffled(offset, 16));
    if (!writer) return;
    part_best[group * n + point] = s.best;
    part_index[group * n + point] = s.best_j;
    part_second[group * n + point] = s.second;
  }
};

// One warp per point: lane g < groups reads group g's partial; the warp
// merges them; near ties are settled on direct distances (center_math.h).
template <typename T>
__global__ void nearest_center_combine_kernel(const T* __restrict__ part_best, const int64_t* __restrict__ part_index,
                                              const T* __restrict__ part_second, int64_t groups, int64_t n,
                                              const T* __restrict__ x_stat, const T* __restrict__ c_stat,
                                              const T* __restrict__ x, const T* __restrict__ centers, int64_t k,
                                              int64_t dim, const T* __restrict__ c_sqnorm_max,
                                              int64_t* __restrict__ out_index, T* __restrict__ out_dist) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x / 32;
  const T inf = std::numeric_limits<T>::infinity();
  for (int64_t r = blockIdx.x * warps + threadIdx.x / 32; r < n; r += static_cast<int64_t>(gridDim.x) * warps) {
    NearestPair<T> p{inf, -1, inf};
    if (lane < groups) p = {part_best[lane * n + r], part_index[lane * n + r], part_second[lane * n + r]};
    for (int offset = 16; offset > 0; offset >>= 1) p.merge(p.shuffled(offset, 32));
    if (!(x_stat[r] == x_stat[r])) {  // NaN statistic: the point is not finite
      if (lane == 0) {
        out_index[r] = -1;
        out_dist[r] = x_stat[r];
      }
      continue;
    }
    const T limit =
        p.best + T(2) * expanded_sqdist_error(dim, x_stat[r], *c_sqnorm_max, pair_tile_epsilon<T, DotPair>());
    if (p.second <= limit) {
      // Candidates by the expanded form computed directly (within the same
      // bound of the exact value as the tile's), compared on direct distances.
      const T* xr = x + r * dim;
      NearestPair<T> direct{inf, -1, inf};
      for (int64_t j = lane; j < k; j += 32) {
        T dot = 0;
        for (int64_t d = 0; d < dim; ++d) dot = fused_multiply_add(xr[d], centers[j * dim + d], dot);
        if (c_stat[j] - T(2) * dot <= limit) direct.offer(direct_sqdist(xr, centers + j * dim, dim), j);
      }
      for (int offset = 16; offset > 0; offset >>= 1) direct.merge(direct.shuffled(offset, 32));
      if (lane == 0) {
        out_index[r] = direct.best_j;
        out_dist[r] = direct.best;
      }
      continue;
    }
    if (lane == 0) {
      out_index[r] = p.best_j;
      const T d = x_stat[r] + p.best;
      out_dist[r] = d > T(0) ? d : T(0);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> nearest_center_cuda(const at::Tensor& x_in, const at::Tensor& centers_in) {
  const gpu::DeviceGuard guard(x_in.device());
  const NearestCenterCall call = start_nearest_center(x_in, centers_in);
  const at::Tensor &x = call.x, &centers = call.centers, &index = call.index, &distance = call.distance;
  const int64_t n = x.size(0), k = centers.size(0), dim = x.size(1);
  const auto x_stats = center_row_stats_cuda(x, kSqEuclidean);
  const auto c_stats = center_row_stats_cuda(centers, kSqEuclidean);
  if (n == 0) return {index, distance};
  const PairTilePlan plan = plan_pair_tiles(n, k, dim, gpu::multiprocessor_count(x.device()));
  const int64_t groups = pair_groups(plan);
  at::Tensor part_best = at::empty({groups, n}, x.options());
  at::Tensor part_second = at::empty({groups, n}, x.options());
  at::Tensor part_index = at::empty({groups, n}, index.options());
  const at::Tensor c_sqnorm_max = c_stats.first.max();
  const gpu::Stream stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nearest_center_cuda", [&] {
    const NearestVisitor<scalar_t> visitor{c_stats.first.const_data_ptr<scalar_t>(), part_best.data_ptr<scalar_t>(),
                                           part_index.data_ptr<int64_t>(), part_second.data_ptr<scalar_t>(), n};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* cp = centers.const_data_ptr<scalar_t>();
    launch_dot_tiles<scalar_t>("nearest_center_tiles", plan, x, centers, visitor, stream);
    gpu::launch("nearest_center_combine", &nearest_center_combine_kernel<scalar_t>,
                gpu::grid_for(n, kCombineThreads / 32), kCombineThreads, 0, stream,
                part_best.const_data_ptr<scalar_t>(), part_index.const_data_ptr<int64_t>(),
                part_second.const_data_ptr<scalar_t>(), groups, n, x_stats.first.const_data_ptr<scalar_t>(),
                c_stats.first.const_data_ptr<scalar_t>(), xp, cp, k, dim, c_sqnorm_max.const_data_ptr<scalar_t>(),
                index.data_ptr<int64_t>(), distance.data_ptr<scalar_t>());
  });
  return {index, distance};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("nearest_center", &nearest_center_cuda); }

}  // namespace dsch_ext
