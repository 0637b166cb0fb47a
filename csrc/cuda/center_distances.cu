// CUDA kernel of dsch_ext::center_distances: inner products by one cuBLAS
// GEMM, then one elementwise epilogue kernel (center_math.h) in place.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/center_checks.h"
#include "center_stats.cuh"

namespace dsch_ext {
namespace {

template <typename T>
__global__ void center_distance_epilogue_kernel(T* __restrict__ out, int64_t n, int64_t k, int metric,
                                                const T* __restrict__ x_stat,
                                                const T* __restrict__ c_stat) {
  const int64_t total = n * k;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / k, j = e - i * k;
    out[e] = center_distance_from_dot<T>(metric, out[e], x_stat[i], c_stat[j]);
  }
}

at::Tensor center_distances_cuda(const at::Tensor& x_in, const at::Tensor& centers_in,
                                 c10::string_view metric_name) {
  check_points_centers(x_in, centers_in);
  const int metric = parse_center_metric(std::string_view(metric_name.data(), metric_name.size()));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const int64_t n = x.size(0), k = centers.size(0);
  const auto x_stats = center_row_stats_cuda(x, metric, "x");
  const auto c_stats = center_row_stats_cuda(centers, metric, "centers");
  at::Tensor out = at::mm(x, centers.t());
  if (n == 0) return out;
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n * k + kThreads - 1) / kThreads, 1 << 20));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_distances_cuda", [&] {
    center_distance_epilogue_kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        out.data_ptr<scalar_t>(), n, k, metric, x_stats.first.const_data_ptr<scalar_t>(),
        c_stats.first.const_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CUDA, m) { m.impl("center_distances", &center_distances_cuda); }

}  // namespace dsch_ext
