// CUDA kernels of dsch_ext::segment_gram, in two passes so that one heavy
// segment spreads over many SMs:
//   1. partial: the M rows are cut into B equal chunks, one block per chunk;
//      for each segment c that meets chunk b, the block sums the Gram matrix
//      of their common rows (segment_gram.h's entry, rows in order) into slot
//      b + c of a [B + K, D, D] buffer. Rows are sorted by segment, so the
//      (chunk, segment) pairs that meet form a staircase and b + c is unique
//      on it.
//   2. reduce: one block per segment adds its pieces in chunk order and
//      writes (i, j) and (j, i).
// No atomics: the same bits every run. Offsets are clamped into [0, M] on
// the device rather than checked (a check would stop the stream).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/segment_gram.h"
#include "device_runtime.cuh"
#include "launch_constants.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kPartialElements = launch::kSegmentPartialElements;

__device__ __forceinline__ int64_t clamped_offset(const int64_t* offsets, int64_t c, int64_t m) {
  const int64_t v = offsets[c];
  return v < 0 ? 0 : (v > m ? m : v);
}

// The segment holding row r: the last c with offsets[c] <= r (offsets sorted).
__device__ __forceinline__ int64_t segment_of_row(const int64_t* offsets, int64_t k, int64_t m, int64_t r) {
  int64_t lo = 0, hi = k - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (clamped_offset(offsets, mid, m) <= r) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

template <typename T>
__global__ void segment_gram_partial_kernel(const T* __restrict__ rows, const int64_t* __restrict__ offsets,
                                            int64_t m, int64_t k, int64_t d, int64_t nchunks, int64_t chunk_rows,
                                            T* __restrict__ partial) {
  for (int64_t b = blockIdx.x; b < nchunks; b += gridDim.x) {
    const int64_t r0 = b * chunk_rows, r1 = r0 + chunk_rows < m ? r0 + chunk_rows : m;
    for (int64_t c = segment_of_row(offsets, k, m, r0); c < k; ++c) {
      const int64_t begin = clamped_offset(offsets, c, m), end = clamped_offset(offsets, c + 1, m);
      if (begin >= r1) break;
      const int64_t lo = begin > r0 ? begin : r0, hi = end < r1 ? end : r1;
      if (lo >= hi) continue;
      T* slot = partial + (b + c) * d * d;
      for (int64_t t = threadIdx.x; t < d * d; t += blockDim.x) {
        const int64_t i = t / d, j = t % d;
        if (j >= i) slot[t] = segment_gram_entry<T>(rows, d, lo, hi, i, j);
      }
    }
  }
}

template <typename T>
__global__ void segment_gram_reduce_kernel(const T* __restrict__ partial, const int64_t* __restrict__ offsets,
                                           int64_t m, int64_t k, int64_t d, int64_t chunk_rows, T* __restrict__ out) {
  for (int64_t c = blockIdx.x; c < k; c += gridDim.x) {
    const int64_t begin = clamped_offset(offsets, c, m), end = clamped_offset(offsets, c + 1, m);
    const int64_t first = begin / chunk_rows, last = end > begin ? (end - 1) / chunk_rows : first - 1;
    T* o = out + c * d * d;
    for (int64_t t = threadIdx.x; t < d * d; t += blockDim.x) {
      const int64_t i = t / d, j = t % d;
      if (j < i) continue;
      T acc = 0;
      for (int64_t b = first; b <= last; ++b) acc += partial[(b + c) * d * d + t];
      o[i * d + j] = acc;
      o[j * d + i] = acc;
    }
  }
}

at::Tensor segment_gram_cuda(const at::Tensor& rows_in, const at::Tensor& offsets_in) {
  check_segment_gram(rows_in, offsets_in);
  const gpu::DeviceGuard guard(rows_in.device());
  const at::Tensor rows = rows_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t m = rows.size(0), k = offsets.size(0) - 1, d = rows.size(1);
  at::Tensor out = at::empty({k, d, d}, rows.options());
  // Chunks: a few per SM, no more than the buffer budget allows (at least one).
  const int64_t want = 4 * static_cast<int64_t>(gpu::multiprocessor_count(rows.device()));
  const int64_t budget_chunks = kPartialElements / (d * d) - k;
  const int64_t nchunks_wanted = std::max<int64_t>(1, std::min(want, budget_chunks));
  const int64_t chunk_rows = std::max<int64_t>(1, (m + nchunks_wanted - 1) / nchunks_wanted);
  const int64_t nchunks = std::max<int64_t>(1, (m + chunk_rows - 1) / chunk_rows);
  at::Tensor partial = at::empty({nchunks + k, d, d}, rows.options());
  const gpu::Stream stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "segment_gram_cuda", [&] {
    if (m > 0) {
      gpu::launch("segment_gram_partial", &segment_gram_partial_kernel<scalar_t>, gpu::grid_for(nchunks, 1), kThreads,
                  0, stream, rows.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(), m, k, d, nchunks,
                  chunk_rows, partial.data_ptr<scalar_t>());
    }
    gpu::launch("segment_gram_reduce", &segment_gram_reduce_kernel<scalar_t>, gpu::grid_for(k, 1), kThreads, 0, stream,
                partial.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(), m, k, d, chunk_rows,
                out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("segment_gram", &segment_gram_cuda); }

}  // namespace dsch_ext
