// dsch_ext::segment_gram, shared by both backends: input checks and the
// arithmetic of one Gram entry.
//
// rows [M, D] are grouped into K consecutive segments by offsets [K + 1]
// (CSR: segment c is rows [offsets[c], offsets[c + 1])); the output [K, D, D]
// holds each segment's sum_r rows[r] rows[r]^T. This is the full-covariance
// GMM M-step's second moment when the rows are the kept (point, component)
// pairs sorted by component, each point scaled by sqrt(responsibility).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/all.h>
#include <ATen/ops/ge.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "checks.h"
#include "macros.h"

namespace dsch_ext {

// Shapes, dtypes and devices; no look at the values (nothing here syncs).
inline void check_segment_gram(const at::Tensor& rows, const at::Tensor& offsets) {
  check_float_matrix(rows, "rows", "[M, D]");
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 2 && offsets.scalar_type() == at::kLong,
              "offsets must be int64 [K + 1] with K >= 1, got ", offsets.scalar_type(), " with shape ", offsets.sizes());
  TORCH_CHECK(offsets.device() == rows.device(), "offsets must be on rows' device ", rows.device(), ", got ",
              offsets.device());
}

// The offsets' values: from 0 to M, nondecreasing. The CPU kernel checks them;
// on CUDA that would stop the stream, so the CUDA kernel clamps every offset
// into [0, M] instead (bad offsets give wrong sums there, never a bad read).
inline void check_segment_offsets(const at::Tensor& rows, const at::Tensor& offsets) {
  const int64_t first = offsets[0].item<int64_t>(), last = offsets[-1].item<int64_t>();
  TORCH_CHECK(first == 0 && last == rows.size(0), "offsets must start at 0 and end at M = ", rows.size(0),
              " (rows shape ", rows.sizes(), "), got ", first, " and ", last);
  TORCH_CHECK(at::ge(offsets.slice(0, 1), offsets.slice(0, 0, -1)).all().item<bool>(),
              "offsets must be nondecreasing (shape ", offsets.sizes(), ")");
}

// Entry (i, j) of the Gram matrix of rows [begin, end): rows in order (the
// CUDA kernel, per piece of a segment).
template <typename T>
DSCH_HOST_DEVICE T segment_gram_entry(const T* __restrict__ rows, int64_t d, int64_t begin, int64_t end, int64_t i,
                                      int64_t j) {
  T acc = 0;
  for (int64_t r = begin; r < end; ++r) acc += rows[r * d + i] * rows[r * d + j];
  return acc;
}

// The same sums for the upper triangle (j >= i) of one segment as rank-one
// updates, row after row (the CPU kernel: the inner loop runs along j).
template <typename T>
DSCH_HOST_DEVICE void segment_gram_upper(const T* __restrict__ rows, int64_t d, int64_t begin, int64_t end,
                                         T* __restrict__ out) {
  for (int64_t t = 0; t < d * d; ++t) out[t] = 0;
  for (int64_t r = begin; r < end; ++r) {
    const T* row = rows + r * d;
    for (int64_t i = 0; i < d; ++i) {
      const T ri = row[i];
      T* o = out + i * d;
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#pragma omp simd
#endif
      for (int64_t j = i; j < d; ++j) o[j] += ri * row[j];
    }
  }
}

}  // namespace dsch_ext
