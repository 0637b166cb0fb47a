// Per-row statistics for the CUDA centre-distance kernels (see
// center_math.h): one warp per row. The op does not stop the stream to
// inspect its input: a row holding NaN or Inf gets a NaN statistic, so every
// distance computed from it is NaN (nearest_center reports index -1).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <limits>
#include <utility>

#include "../common/center_math.h"
#include "block_scan.cuh"
#include "device_runtime.cuh"

namespace dsch_ext {

template <typename T>
__global__ void center_row_stats_kernel(const T* __restrict__ rows, int64_t nrows, int64_t dim, int metric,
                                        T* __restrict__ stat, T* __restrict__ sqnorm) {
  const int64_t warps_per_block = blockDim.x / 32;
  const int lane = threadIdx.x & 31;
  for (int64_t r = blockIdx.x * warps_per_block + threadIdx.x / 32; r < nrows;
       r += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    T acc = 0;
    bool finite = true;
    for (int64_t d = lane; d < dim; d += 32) {
      const T v = rows[r * dim + d];
      finite = finite && isfinite(v);
      acc = fused_multiply_add(v, v, acc);
    }
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(kFullWarpMask, acc, offset);
    finite = __all_sync(kFullWarpMask, finite);
    if (lane == 0) {
      const T nan = std::numeric_limits<T>::quiet_NaN();
      sqnorm[r] = finite ? acc : nan;
      stat[r] = finite ? center_row_stat<T>(metric, acc) : nan;
    }
  }
}

// (stat [rows], sqnorm [rows]) of t's rows; NaN for rows that are not finite.
inline std::pair<at::Tensor, at::Tensor> center_row_stats_cuda(const at::Tensor& t, int metric) {
  const int64_t rows = t.size(0), dim = t.size(1);
  at::Tensor stat = at::empty({rows}, t.options());
  at::Tensor sqnorm = at::empty({rows}, t.options());
  if (rows == 0) return {stat, sqnorm};
  constexpr int kThreads = 256;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "center_row_stats_cuda", [&] {
    gpu::launch("center_row_stats", &center_row_stats_kernel<scalar_t>, gpu::grid_for(rows, kThreads / 32), kThreads,
                0, gpu::current_stream(), t.const_data_ptr<scalar_t>(), rows, dim, metric,
                stat.data_ptr<scalar_t>(), sqnorm.data_ptr<scalar_t>());
  });
  return {stat, sqnorm};
}

}  // namespace dsch_ext
