// CPU kernel of dsch_ext::segment_gram: per-segment Gram matrices of rows
// (segment_gram.h). Segments are independent tasks; a short one accumulates
// its upper triangle by rank-one updates, a long one is one GEMM; either is
// mirrored, so no [M, D(D+1)/2] product matrix is ever formed.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "../common/segment_gram.h"

namespace dsch_ext {
namespace {

constexpr int64_t kGemmRows = 32;  // segments at least this long use a BLAS GEMM

// Copy the upper triangle of a [d, d] matrix into its lower one.
template <typename T>
void mirror_upper(T* m, int64_t d) {
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t j = 0; j < i; ++j) m[i * d + j] = m[j * d + i];
  }
}

template <typename T>
void segment_block(const T* rows, const int64_t* offsets, int64_t d, int64_t c0, int64_t c1, T* out) {
  for (int64_t c = c0; c < c1; ++c) {
    T* o = out + c * d * d;
    segment_gram_upper<T>(rows, d, offsets[c], offsets[c + 1], o);
    mirror_upper(o, d);
  }
}

DSCH_CPU_CLONES void segment_block_float(const float* rows, const int64_t* offsets, int64_t d, int64_t c0, int64_t c1,
                                         float* out) {
  segment_block<float>(rows, offsets, d, c0, c1, out);
}
DSCH_CPU_CLONES void segment_block_double(const double* rows, const int64_t* offsets, int64_t d, int64_t c0,
                                          int64_t c1, double* out) {
  segment_block<double>(rows, offsets, d, c0, c1, out);
}
void segment_block_dispatch(const float* r, const int64_t* o, int64_t d, int64_t c0, int64_t c1, float* out) {
  segment_block_float(r, o, d, c0, c1, out);
}
void segment_block_dispatch(const double* r, const int64_t* o, int64_t d, int64_t c0, int64_t c1, double* out) {
  segment_block_double(r, o, d, c0, c1, out);
}

at::Tensor segment_gram_cpu(const at::Tensor& rows_in, const at::Tensor& offsets_in) {
  check_segment_gram(rows_in, offsets_in);
  check_segment_offsets(rows_in, offsets_in);
  const at::Tensor rows = rows_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t k = offsets.size(0) - 1, d = rows.size(1);
  at::Tensor out = at::empty({k, d, d}, rows.options());
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "segment_gram_cpu", [&] {
    const scalar_t* r = rows.const_data_ptr<scalar_t>();
    const int64_t* off = offsets.const_data_ptr<int64_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    // Grain: enough segments per task to amortise the task (segments are often tiny). Long
    // segments (responsibilities spread over many components, as in DSCH's first round) go
    // through a single-threaded BLAS GEMM, mirrored afterwards so the result stays exactly
    // symmetric.
    at::parallel_for(0, k, 16, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t begin = off[c], len = off[c + 1] - off[c];
        if (len < kGemmRows) {
          segment_block_dispatch(r, off, d, c, c + 1, o);
          continue;
        }
        const at::Tensor seg = rows.narrow(0, begin, len);
        at::Tensor oc = out.select(0, c);
        at::mm_out(oc, seg.t(), seg);
        mirror_upper(o + c * d * d, d);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("segment_gram", &segment_gram_cpu); }

}  // namespace dsch_ext
