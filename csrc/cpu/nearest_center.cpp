// CPU kernel of dsch_ext::nearest_center: index and squared Euclidean
// distance of each point's nearest centre, ties to the lower index.
//
// Points are taken in blocks: one BLAS GEMM gives a block's inner products
// with every centre in a fixed-size buffer, then a parallel scan picks each
// row's minimum of |c|^2 - 2 <x, c> (|x|^2 is constant along the row). Extra
// memory is O(N + K) plus the block buffer, never N x K.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../common/center_checks.h"
#include "center_stats.h"

namespace dsch_ext {
namespace {

constexpr int64_t kBufferElements = 4 << 20;  // 16 MB of float32 per block

std::tuple<at::Tensor, at::Tensor> nearest_center_cpu(const at::Tensor& x_in,
                                                      const at::Tensor& centers_in) {
  check_points_centers(x_in, centers_in);
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const int64_t n = x.size(0), k = centers.size(0);
  at::Tensor index = at::empty({n}, x.options().dtype(at::kLong));
  at::Tensor distance = at::empty({n}, x.options());
  const auto x_stats = center_row_stats_cpu(x, kSqEuclidean, "x");
  const auto c_stats = center_row_stats_cpu(centers, kSqEuclidean, "centers");
  if (n == 0) return {index, distance};
  const int64_t block = std::clamp<int64_t>(kBufferElements / k, 64, n);
  at::Tensor buffer = at::empty({block, k}, x.options());
  const at::Tensor centers_t = centers.t();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nearest_center_cpu", [&] {
    const scalar_t* xs = x_stats.first.const_data_ptr<scalar_t>();
    const scalar_t* cs = c_stats.first.const_data_ptr<scalar_t>();
    int64_t* oi = index.data_ptr<int64_t>();
    scalar_t* od = distance.data_ptr<scalar_t>();
    for (int64_t b0 = 0; b0 < n; b0 += block) {
      const int64_t rows = std::min(block, n - b0);
      at::Tensor dots = buffer.narrow(0, 0, rows);
      at::mm_out(dots, x.narrow(0, b0, rows), centers_t);
      const scalar_t* dp = dots.const_data_ptr<scalar_t>();
      at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* row = dp + r * k;
          scalar_t best = cs[0] - scalar_t(2) * row[0];
          int64_t best_j = 0;
          for (int64_t j = 1; j < k; ++j) {
            const scalar_t v = cs[j] - scalar_t(2) * row[j];
            if (nearer_center(v, j, best, best_j)) {
              best = v;
              best_j = j;
            }
          }
          oi[b0 + r] = best_j;
          const scalar_t d = xs[b0 + r] + best;
          od[b0 + r] = d > scalar_t(0) ? d : scalar_t(0);
        }
      });
    }
  });
  return {index, distance};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("nearest_center", &nearest_center_cpu); }

}  // namespace dsch_ext
