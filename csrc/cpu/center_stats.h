// Per-row statistics for the CPU centre-distance kernels (see center_math.h),
// with the non-finite input check folded into the same pass.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

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
  TORCH_CHECK(!bad.load(), name, " contains NaN or Inf (shape ", t.sizes(), ")");
  return {stat, sqnorm};
}

}  // namespace dsch_ext
