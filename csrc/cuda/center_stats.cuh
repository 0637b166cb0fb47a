// Per-row statistics for the CUDA centre-distance kernels (see
// center_math.h): one warp per row, non-finite input reported through a
// device flag that the caller turns into an error (one host sync).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <utility>

#include "../common/center_math.h"
#include "block_scan.cuh"

namespace dsch_ext {

template <typename T>
__global__ void center_row_stats_kernel(const T* __restrict__ rows, int64_t nrows, int64_t dim,
                                        int metric, T* __restrict__ stat, T* __restrict__ sqnorm,
                                        int* __restrict__ bad) {
  const int64_t warps_per_block = blockDim.x / 32;
  const int lane = threadIdx.x & 31;
  for (int64_t r = blockIdx.x * warps_per_block + threadIdx.x / 32; r < nrows;
       r += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    T acc = 0;
    for (int64_t d = lane; d < dim; d += 32) acc += rows[r * dim + d] * rows[r * dim + d];
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(kFullWarpMask, acc, offset);
    if (lane == 0) {
      if (!isfinite(acc)) *bad = 1;
      sqnorm[r] = acc;
      stat[r] = center_row_stat<T>(metric, acc);
    }
  }
}

// (stat [rows], sqnorm [rows]); raises naming `name` if t holds NaN or Inf.
inline std::pair<at::Tensor, at::Tensor> center_row_stats_cuda(const at::Tensor& t, int metric,
                                                               const char* name) {
  const int64_t rows = t.size(0), dim = t.size(1);
  at::Tensor stat = at::empty({rows}, t.options());
  at::Tensor sqnorm = at::empty({rows}, t.options());
  if (rows == 0) return {stat, sqnorm};
  at::Tensor bad = at::zeros({1}, t.options().dtype(at::kInt));
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((rows + 7) / 8, 65535));
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "center_row_stats_cuda", [&] {
    center_row_stats_kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        t.const_data_ptr<scalar_t>(), rows, dim, metric, stat.data_ptr<scalar_t>(),
        sqnorm.data_ptr<scalar_t>(), bad.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  TORCH_CHECK(bad.item<int>() == 0, name, " contains NaN or Inf (shape ", t.sizes(), ")");
  return {stat, sqnorm};
}

}  // namespace dsch_ext
