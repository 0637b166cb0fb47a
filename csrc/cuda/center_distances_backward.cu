// CUDA kernel of dsch_ext::center_distances_backward (formulas in
// center_math.h): weighted row / column sums of the gradient (torch
// reductions), the two cross-term GEMMs (cuBLAS), and one combine kernel per
// side.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../common/center_checks.h"
#include "center_stats.cuh"

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
    out[e] = a * out[e] + b * rows[e];
  }
}

unsigned grid_for(int64_t total) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20)));
}

std::tuple<at::Tensor, at::Tensor> center_distances_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& centers_in,
    const at::Tensor& distances_in, c10::string_view metric_name) {
  check_points_centers(x_in, centers_in);
  const int metric = parse_center_metric(std::string_view(metric_name.data(), metric_name.size()));
  const int64_t n = x_in.size(0), k = centers_in.size(0);
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.size(0) == n && grad_in.size(1) == k &&
                  grad_in.sizes() == distances_in.sizes(),
              "grad and distances must be [N, K] = [", n, ", ", k, "], got grad shape ",
              grad_in.sizes(), " and distances shape ", distances_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const at::Tensor grad = grad_in.contiguous().to(x.scalar_type());
  const auto x_stats = center_row_stats_cuda(x, metric, "x");
  const auto c_stats = center_row_stats_cuda(centers, metric, "centers");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor weight = grad;
  if (metric == kCosine) {
    const at::Tensor dist = distances_in.contiguous().to(x.scalar_type());
    weight = at::empty_like(grad);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_grad_weight_cuda", [&] {
      center_grad_weight_kernel<scalar_t><<<grid_for(n * k), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), dist.const_data_ptr<scalar_t>(), n * k, metric,
          weight.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::Tensor row_sum = at::sum(weight, {1}).contiguous();
  const at::Tensor col_sum = at::sum(weight, {0}).contiguous();
  const at::Tensor c_scaled = metric == kCosine ? centers.mul(c_stats.first.unsqueeze(1)) : centers;
  const at::Tensor x_scaled = metric == kCosine ? x.mul(x_stats.first.unsqueeze(1)) : x;
  at::Tensor grad_x = at::mm(grad, c_scaled);
  at::Tensor grad_c = at::mm(grad.t(), x_scaled);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_grad_combine_cuda", [&] {
    if (n > 0) {
      center_grad_combine_kernel<scalar_t><<<grid_for(n * x.size(1)), kThreads, 0, stream>>>(
          grad_x.data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), x_stats.first.const_data_ptr<scalar_t>(),
          x_stats.second.const_data_ptr<scalar_t>(), row_sum.const_data_ptr<scalar_t>(), n, x.size(1), metric);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    center_grad_combine_kernel<scalar_t><<<grid_for(k * x.size(1)), kThreads, 0, stream>>>(
        grad_c.data_ptr<scalar_t>(), centers.const_data_ptr<scalar_t>(), c_stats.first.const_data_ptr<scalar_t>(),
        c_stats.second.const_data_ptr<scalar_t>(), col_sum.const_data_ptr<scalar_t>(), k, x.size(1), metric);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_c};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CUDA, m) {
  m.impl("center_distances_backward", &center_distances_backward_cuda);
}

}  // namespace dsch_ext
