// CUDA kernel of dsch_ext::_center_distances_backward (formulas in
// center_math.h): weighted row / column sums of the gradient (torch
// reductions), the two cross-term GEMMs (full fp32 whatever torch's TF32
// switch says), and one combine kernel per side.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <tuple>

#include "../common/center_checks.h"
#include "center_stats.cuh"
#include "device_runtime.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void center_grad_weight_kernel(const T* __restrict__ grad, const T* __restrict__ dist,
                                          int64_t total, int metric, T* __restrict__ weight) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    weight[e] = center_grad_weight<T>(metric, grad[e], dist[e]);
}

// out[r, :] = gemm_scale(stat[r]) * out[r, :] + self_scale(stat[r], sqnorm[r]) * sums[r] * rows[r, :]
template <typename T>
__global__ void center_grad_combine_kernel(T* __restrict__ out, const T* __restrict__ rows,
                                           const T* __restrict__ stat, const T* __restrict__ sqnorm,
                                           const T* __restrict__ sums, int64_t nrows, int64_t dim,
                                           int metric) {
  const int64_t total = nrows * dim;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / dim;
    const T a = center_gemm_scale<T>(metric, stat[r]);
    const T b = center_self_scale<T>(metric, stat[r], sqnorm[r]) * sums[r];
    out[e] = fused_multiply_add(a, out[e], b * rows[e]);
  }
}

std::tuple<at::Tensor, at::Tensor> center_distances_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& centers_in,
    const at::Tensor& distances_in, c10::string_view metric_name) {
  check_points_centers(x_in, centers_in);
  check_center_backward(grad_in, x_in, centers_in, distances_in);
  const int metric = parse_center_metric(metric_name);
  const int64_t n = x_in.size(0), k = centers_in.size(0);
  const gpu::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const at::Tensor grad = grad_in.contiguous().to(x.scalar_type());
  const auto x_stats = center_row_stats_cuda(x, metric);
  const auto c_stats = center_row_stats_cuda(centers, metric);
  const gpu::Stream stream = gpu::current_stream();

  at::Tensor weight = grad;
  if (metric == kCosine) {
    const at::Tensor dist = distances_in.contiguous().to(x.scalar_type());
    weight = at::empty_like(grad);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_grad_weight_cuda", [&] {
      gpu::launch("center_grad_weight", &center_grad_weight_kernel<scalar_t>, gpu::grid_for(n * k, kThreads), kThreads,
                  0, stream, grad.const_data_ptr<scalar_t>(), dist.const_data_ptr<scalar_t>(), n * k, metric,
                  weight.data_ptr<scalar_t>());
    });
  }
  const at::Tensor row_sum = at::sum(weight, {1}).contiguous();
  const at::Tensor col_sum = at::sum(weight, {0}).contiguous();
  const at::Tensor c_scaled = metric == kCosine ? centers.mul(c_stats.first.unsqueeze(1)) : centers;
  const at::Tensor x_scaled = metric == kCosine ? x.mul(x_stats.first.unsqueeze(1)) : x;
  at::Tensor grad_x, grad_c;
  {
    const at::NoTF32Guard full_fp32;
    grad_x = at::mm(grad, c_scaled);
    grad_c = at::mm(grad.t(), x_scaled);
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_grad_combine_cuda", [&] {
    const int64_t dim = x.size(1);
    if (n > 0) {
      gpu::launch("center_grad_combine", &center_grad_combine_kernel<scalar_t>, gpu::grid_for(n * dim, kThreads),
                  kThreads, 0, stream, grad_x.data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                  x_stats.first.const_data_ptr<scalar_t>(), x_stats.second.const_data_ptr<scalar_t>(),
                  row_sum.const_data_ptr<scalar_t>(), n, dim, metric);
    }
    gpu::launch("center_grad_combine", &center_grad_combine_kernel<scalar_t>, gpu::grid_for(k * dim, kThreads),
                kThreads, 0, stream, grad_c.data_ptr<scalar_t>(), centers.const_data_ptr<scalar_t>(),
                c_stats.first.const_data_ptr<scalar_t>(), c_stats.second.const_data_ptr<scalar_t>(),
                col_sum.const_data_ptr<scalar_t>(), k, dim, metric);
  });
  return {grad_x, grad_c};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) {
  m.impl("_center_distances_backward", &center_distances_backward_cuda);
}

}  // namespace dsch_ext
