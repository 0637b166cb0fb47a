// Shared pieces of the CPU centre-distance kernels: per-row statistics (see
// center_math.h) with the non-finite input check folded into the same pass,
// and the blocked GEMM walk over points x centres (for_each_dot_block).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/isfinite.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "../common/center_math.h"

namespace dsch_ext {

// Returns (stat [rows], sqnorm [rows]) of a contiguous [rows, D] tensor and
// raises if any value is NaN or infinite, naming `name` and its shape.
inline std::pair<at::Tensor, at::Tensor> center_row_stats_cpu(const at::Tensor& t, int metric,
                                                              const char* name) {
  const int64_t rows = t.size(0), dim = t.size(1);
  at::Tensor stat = at::empty({rows}, t.options());
  at::Tensor sqnorm = at::empty({rows}, t.options());
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "center_row_stats_cpu", [&] {
    const scalar_t* p = t.const_data_ptr<scalar_t>();
    scalar_t* s = stat.data_ptr<scalar_t>();
    scalar_t* q = sqnorm.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
      bool local_bad = false;
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t acc = 0;
        for (int64_t d = 0; d < dim; ++d) acc += p[r * dim + d] * p[r * dim + d];
        local_bad |= !std::isfinite(acc);
        q[r] = acc;
        s[r] = center_row_stat<scalar_t>(metric, acc);
      }
      if (local_bad) bad.store(true, std::memory_order_relaxed);
    });
  });
  if (bad.load()) {
    // Finite input whose squared norm overflows says so; NaN or Inf input says that.
    TORCH_CHECK(!at::isfinite(t).all().item<bool>(), "the squared norm of a row of ", name,
                " overflows ", t.scalar_type(), " (shape ", t.sizes(),
                "): scale the data down or use float64");
    TORCH_CHECK(false, name, " contains NaN or Inf (shape ", t.sizes(), ")");
  }
  return {stat, sqnorm};
}

// Inner products of every point with every centre, a block of points at a
// time: each task multiplies its own block of rows of x [N, D] by all of
// centers [K, D] (single-threaded GEMM inside the parallel region) into a
// per-thread buffer of about 1 MB of float32, so it is still in L2 when
// block_fn(first_row, rows, dots) scans it; dots is [rows, K] row-major.
// Extra memory: one buffer per thread, never N x K. Used by nearest_center
// and by the exact pass of kmeans_bounded_assign.
template <typename T, typename BlockFn>
void for_each_dot_block(const at::Tensor& x, const at::Tensor& centers, const BlockFn& block_fn) {
  constexpr int64_t kBufferElements = 256 << 10;
  const int64_t n = x.size(0), k = centers.size(0);
  if (n == 0 || k == 0) return;
  const int64_t block = std::clamp<int64_t>(kBufferElements / k, 16, 512);
  const int64_t nblocks = (n + block - 1) / block;
  const at::Tensor centers_t = centers.t();
  at::parallel_for(0, nblocks, 1, [&](int64_t t0, int64_t t1) {
    at::Tensor buffer = at::empty({block, k}, x.options());
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b0 = t * block, rows = std::min(block, n - b0);
      at::Tensor dots = buffer.narrow(0, 0, rows);
      at::mm_out(dots, x.narrow(0, b0, rows), centers_t);
      block_fn(b0, rows, dots.const_data_ptr<T>());
    }
  });
}

}  // namespace dsch_ext
