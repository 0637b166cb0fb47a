// CUDA kernel of dsch_ext::nearest_center: blocks of points, one cuBLAS GEMM
// per block into a fixed buffer, then one warp per point scans the centres
// and a shuffle reduction keeps the minimum (ties to the lower index, the
// rule of nearer_center in center_math.h); centres within rounding of it are
// compared on direct distances, as on the CPU. O(N + K) memory plus the
// buffer (at most kBufferElements, at least one row). The GEMM runs in full
// fp32 whatever torch's TF32 switch says: the tie rule's rounding bound
// assumes fp32 products. A point with NaN or Inf gets index -1 and a NaN
// distance (the op does not stop the stream to raise).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/max.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "../common/center_checks.h"
#include "center_stats.cuh"
#include "device_runtime.cuh"

namespace dsch_ext {
namespace {

constexpr int64_t kBufferElements = gpu::tuned(32 << 20, 96);  // 128 MB of float32 per block of points
constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ void warp_nearest(T& best, int64_t& best_j) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const T other = __shfl_xor_sync(kFullWarpMask, best, offset);
    const int64_t other_j = __shfl_xor_sync(kFullWarpMask, best_j, offset);
    if (other_j >= 0 && (best_j < 0 || nearer_center(other, other_j, best, best_j))) {
      best = other;
      best_j = other_j;
    }
  }
}

// x: this block's rows [rows, dim]; c_sqnorm_max: one value on the device.
template <typename T>
__global__ void nearest_center_scan_kernel(const T* __restrict__ dots, int64_t rows, int64_t k,
                                           const T* __restrict__ x_stat, const T* __restrict__ c_stat,
                                           const T* __restrict__ x, const T* __restrict__ centers, int64_t dim,
                                           const T* __restrict__ c_sqnorm_max, int64_t* __restrict__ out_index,
                                           T* __restrict__ out_dist) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x / 32;
  for (int64_t r = blockIdx.x * warps + threadIdx.x / 32; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    const T* row = dots + r * k;
    if (!(x_stat[r] == x_stat[r])) {  // NaN statistic: the point is not finite
      if (lane == 0) {
        out_index[r] = -1;
        out_dist[r] = x_stat[r];
      }
      continue;
    }
    T best = 0;
    int64_t best_j = -1;
    for (int64_t j = lane; j < k; j += 32) {
      T v = c_stat[j] - T(2) * row[j];
      v = v == v ? v : std::numeric_limits<T>::infinity();  // a centre with NaN or Inf is never nearest
      if (best_j < 0 || nearer_center(v, j, best, best_j)) {
        best = v;
        best_j = j;
      }
    }
    warp_nearest(best, best_j);  // every lane now holds the row's minimum
    // Centres within rounding of it: if more than one, compare them on directly
    // computed distances (center_math.h), as the CPU kernel does.
    const T limit =
        best + T(2) * expanded_sqdist_error(dim, x_stat[r], *c_sqnorm_max, std::numeric_limits<T>::epsilon());
    int count = 0;
    for (int64_t j = lane; j < k; j += 32) count += c_stat[j] - T(2) * row[j] <= limit;
    for (int offset = 16; offset > 0; offset >>= 1) count += __shfl_xor_sync(kFullWarpMask, count, offset);
    if (count > 1) {
      T best_d = 0;
      int64_t direct_j = -1;
      for (int64_t j = lane; j < k; j += 32) {
        if (!(c_stat[j] - T(2) * row[j] <= limit)) continue;
        const T d = direct_sqdist(x + r * dim, centers + j * dim, dim);
        if (direct_j < 0 || nearer_center(d, j, best_d, direct_j)) {
          best_d = d;
          direct_j = j;
        }
      }
      warp_nearest(best_d, direct_j);
      if (lane == 0) {
        out_index[r] = direct_j;
        out_dist[r] = best_d;
      }
      continue;
    }
    if (lane == 0) {
      out_index[r] = best_j;
      const T d = x_stat[r] + best;
      out_dist[r] = d > T(0) ? d : T(0);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> nearest_center_cuda(const at::Tensor& x_in,
                                                       const at::Tensor& centers_in) {
  const gpu::DeviceGuard guard(x_in.device());
  const NearestCenterCall call = start_nearest_center(x_in, centers_in);
  const at::Tensor &x = call.x, &centers = call.centers, &index = call.index, &distance = call.distance;
  const int64_t n = x.size(0), k = centers.size(0);
  const auto x_stats = center_row_stats_cuda(x, kSqEuclidean);
  const auto c_stats = center_row_stats_cuda(centers, kSqEuclidean);
  if (n == 0) return {index, distance};
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(n, kBufferElements / k));
  at::Tensor buffer = at::empty({block, k}, x.options());
  const at::Tensor centers_t = centers.t();
  const gpu::Stream stream = gpu::current_stream();
  const at::NoTF32Guard full_fp32;
  const at::Tensor c_sqnorm_max = c_stats.first.max();
  const int64_t dim = x.size(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nearest_center_cuda", [&] {
    for (int64_t b0 = 0; b0 < n; b0 += block) {
      const int64_t rows = std::min(block, n - b0);
      at::Tensor dots = buffer.narrow(0, 0, rows);
      at::mm_out(dots, x.narrow(0, b0, rows), centers_t);
      gpu::launch("nearest_center_scan", &nearest_center_scan_kernel<scalar_t>, gpu::grid_for(rows, kThreads / 32),
                  kThreads, 0, stream, dots.const_data_ptr<scalar_t>(), rows, k,
                  x_stats.first.const_data_ptr<scalar_t>() + b0, c_stats.first.const_data_ptr<scalar_t>(),
                  x.const_data_ptr<scalar_t>() + b0 * dim, centers.const_data_ptr<scalar_t>(), dim,
                  c_sqnorm_max.const_data_ptr<scalar_t>(), index.data_ptr<int64_t>() + b0,
                  distance.data_ptr<scalar_t>() + b0);
    }
  });
  return {index, distance};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("nearest_center", &nearest_center_cuda); }

}  // namespace dsch_ext
