// CUDA kernel of dsch_ext::segment_gram: one thread block per segment, each
// thread a set of upper-triangle entries (i <= j), each entry summed over the
// segment's rows in order (segment_gram.h, the CPU's sums) and written to
// (i, j) and (j, i). No atomics: the same bits every run.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/segment_gram.h"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void segment_gram_kernel(const T* __restrict__ rows, const int64_t* __restrict__ offsets, int64_t k,
                                    int64_t d, T* __restrict__ out) {
  for (int64_t c = blockIdx.x; c < k; c += gridDim.x) {
    const int64_t begin = offsets[c], end = offsets[c + 1];
    T* o = out + c * d * d;
    for (int64_t t = threadIdx.x; t < d * d; t += blockDim.x) {
      const int64_t i = t / d, j = t % d;
      if (j < i) continue;
      const T v = segment_gram_entry<T>(rows, d, begin, end, i, j);
      o[i * d + j] = v;
      o[j * d + i] = v;
    }
  }
}

at::Tensor segment_gram_cuda(const at::Tensor& rows_in, const at::Tensor& offsets_in) {
  const c10::cuda::CUDAGuard guard(rows_in.device());
  check_segment_gram(rows_in, offsets_in);
  const at::Tensor rows = rows_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  const int64_t k = offsets.size(0) - 1, d = rows.size(1);
  at::Tensor out = at::empty({k, d, d}, rows.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "segment_gram_cuda", [&] {
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(k, 1 << 16));
    segment_gram_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        rows.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int64_t>(), k, d, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CUDA, m) { m.impl("segment_gram", &segment_gram_cuda); }

}  // namespace dsch_ext
