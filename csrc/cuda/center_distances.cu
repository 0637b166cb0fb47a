// CUDA kernel of dsch_ext::center_distances: inner products by one GEMM, then
// one elementwise epilogue kernel (center_math.h) in place. The GEMM runs in
// full fp32 whatever torch's TF32 switch says (at::NoTF32Guard, thread-local):
// the epilogue's cancellation in |x|^2 + |c|^2 - 2<x, c> would turn TF32's
// ~1e-3 relative error into wrong distances.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "../common/center_checks.h"
#include "center_stats.cuh"
#include "device_runtime.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void center_distance_epilogue_kernel(T* __restrict__ out, int64_t n, int64_t k, int metric,
                                                const T* __restrict__ x_stat, const T* __restrict__ c_stat) {
  const int64_t total = n * k;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / k, j = e - i * k;
    out[e] = center_distance_from_dot<T>(metric, out[e], x_stat[i], c_stat[j]);
  }
}

at::Tensor center_distances_cuda(const at::Tensor& x_in, const at::Tensor& centers_in, c10::string_view metric_name) {
  check_points_centers(x_in, centers_in);
  const int metric = parse_center_metric(metric_name);
  const gpu::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const int64_t n = x.size(0), k = centers.size(0);
  const auto x_stats = center_row_stats_cuda(x, metric);
  const auto c_stats = center_row_stats_cuda(centers, metric);
  at::Tensor out;
  {
    const at::NoTF32Guard full_fp32;
    out = at::mm(x, centers.t());
  }
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_distances_cuda", [&] {
    gpu::launch("center_distance_epilogue", &center_distance_epilogue_kernel<scalar_t>, gpu::grid_for(n * k, kThreads),
                kThreads, 0, gpu::current_stream(), out.data_ptr<scalar_t>(), n, k, metric,
                x_stats.first.const_data_ptr<scalar_t>(), c_stats.first.const_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("center_distances", &center_distances_cuda); }

}  // namespace dsch_ext
