// CPU kernel of dsch_ext::center_distances: [N, K] distances between points
// and centres, one BLAS GEMM for the inner products and one fused epilogue
// pass (center_math.h) that turns them into distances in place; the row
// statistics are computed once (O(N + K)), nothing of size N x K x D exists.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "../common/center_checks.h"
#include "center_stats.h"

namespace dsch_ext {
namespace {

at::Tensor center_distances_cpu(const at::Tensor& x_in, const at::Tensor& centers_in,
                                c10::string_view metric_name) {
  check_points_centers(x_in, centers_in);
  const int metric = parse_center_metric(metric_name);
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const int64_t n = x.size(0), k = centers.size(0);
  const auto x_stats = center_row_stats_cpu(x, metric, "x");
  const auto c_stats = center_row_stats_cpu(centers, metric, "centers");
  at::Tensor out = at::mm(x, centers.t());  // inner products, then the epilogue in place
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_distances_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* xs = x_stats.first.const_data_ptr<scalar_t>();
    const scalar_t* cs = c_stats.first.const_data_ptr<scalar_t>();
    at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        scalar_t* row = o + i * k;
        const scalar_t xi = xs[i];
        for (int64_t j = 0; j < k; ++j) row[j] = center_distance_from_dot<scalar_t>(metric, row[j], xi, cs[j]);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("center_distances", &center_distances_cpu); }

}  // namespace dsch_ext
