// CPU kernel of dsch_ext::_center_distances_backward: gradients of
// center_distances for x and centres (formulas in center_math.h). One pass
// over the [N, K] gradient gives its weighted row and column sums, two GEMMs
// give the cross terms, and O((N + K) D) epilogues combine them.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../common/center_checks.h"
#include "center_stats.h"

namespace dsch_ext {
namespace {

// out[r, :] = gemm_scale(stat[r]) * out[r, :] + self_scale(stat[r], sqnorm[r]) * sum[r] * rows[r, :]
template <typename scalar_t>
void combine_rows(int metric, at::Tensor& out, const at::Tensor& rows, const at::Tensor& stat,
                  const at::Tensor& sqnorm, const std::vector<scalar_t>& sums) {
  const int64_t nrows = rows.size(0), dim = rows.size(1);
  scalar_t* o = out.data_ptr<scalar_t>();
  const scalar_t* p = rows.const_data_ptr<scalar_t>();
  const scalar_t* st = stat.const_data_ptr<scalar_t>();
  const scalar_t* sq = sqnorm.const_data_ptr<scalar_t>();
  at::parallel_for(0, nrows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t a = center_gemm_scale<scalar_t>(metric, st[r]);
      const scalar_t b = center_self_scale<scalar_t>(metric, st[r], sq[r]) * sums[r];
      for (int64_t d = 0; d < dim; ++d) o[r * dim + d] = a * o[r * dim + d] + b * p[r * dim + d];
    }
  });
}

std::tuple<at::Tensor, at::Tensor> center_distances_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& centers_in,
    const at::Tensor& distances_in, c10::string_view metric_name) {
  check_points_centers(x_in, centers_in);
  const int metric = parse_center_metric(metric_name);
  check_center_backward(grad_in, x_in, centers_in, distances_in);
  const int64_t n = x_in.size(0), k = centers_in.size(0);
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const at::Tensor grad = grad_in.contiguous().to(x.scalar_type());
  const at::Tensor dist = distances_in.contiguous().to(x.scalar_type());
  const auto x_stats = center_row_stats_cpu(x, metric, "x");
  const auto c_stats = center_row_stats_cpu(centers, metric, "centers");

  at::Tensor grad_x, grad_c;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_distances_backward_cpu", [&] {
    // Weighted row / column sums of the gradient, one pass, per-thread column partials.
    std::vector<scalar_t> row_sum(n, scalar_t(0)), col_sum(k, scalar_t(0));
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* dd = dist.const_data_ptr<scalar_t>();
    const int nthreads = at::get_num_threads();
    std::vector<scalar_t> col_partial(static_cast<size_t>(nthreads) * k, scalar_t(0));
    at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
      scalar_t* cp = col_partial.data() + static_cast<size_t>(at::get_thread_num()) * k;
      for (int64_t i = r0; i < r1; ++i) {
        scalar_t rs = 0;
        for (int64_t j = 0; j < k; ++j) {
          const scalar_t w = center_grad_weight<scalar_t>(metric, g[i * k + j], dd[i * k + j]);
          rs += w;
          cp[j] += w;
        }
        row_sum[i] = rs;
      }
    });
    for (int t = 0; t < nthreads; ++t)
      for (int64_t j = 0; j < k; ++j) col_sum[j] += col_partial[static_cast<size_t>(t) * k + j];

    // Cross terms: G @ (rc . C) and G^T @ (rx . X) (unscaled for the other metrics).
    const at::Tensor c_scaled = metric == kCosine ? centers.mul(c_stats.first.unsqueeze(1)) : centers;
    const at::Tensor x_scaled = metric == kCosine ? x.mul(x_stats.first.unsqueeze(1)) : x;
    grad_x = at::mm(grad, c_scaled);
    grad_c = at::mm(grad.t(), x_scaled);
    combine_rows<scalar_t>(metric, grad_x, x, x_stats.first, x_stats.second, row_sum);
    combine_rows<scalar_t>(metric, grad_c, centers, c_stats.first, c_stats.second, col_sum);
  });
  return {grad_x.to(x_in.scalar_type()), grad_c.to(x_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) {
  m.impl("_center_distances_backward", &center_distances_backward_cpu);
}

}  // namespace dsch_ext
