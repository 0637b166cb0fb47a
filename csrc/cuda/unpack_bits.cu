// CUDA kernel of dsch_ext::unpack_bits: one thread per output value.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/pack_math.h"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;

__global__ void unpack_bits_kernel(const uint8_t* __restrict__ packed, int64_t n, int64_t nbits,
                                   int64_t nbytes, float* __restrict__ out) {
  const int64_t total = n * nbits;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / nbits, dim = i % nbits;
    out[i] = unpack_code_value(packed + r * nbytes, dim);
  }
}

at::Tensor unpack_bits_cuda(const at::Tensor& packed_in, int64_t nbits) {
  check_packed_codes(packed_in, "packed", /*allow_empty_rows=*/true);
  TORCH_CHECK(nbits >= 1 && (nbits + 7) / 8 == packed_in.size(1), "nbits = ", nbits,
              " does not fit packed of shape ", packed_in.sizes(), ": it needs ",
              (packed_in.size(1) - 1) * 8 + 1, "..", packed_in.size(1) * 8);
  const c10::cuda::CUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous();
  const int64_t n = packed.size(0), nbytes = packed.size(1);
  at::Tensor out = at::empty({n, nbits}, packed.options().dtype(at::kFloat));
  if (n == 0) return out;
  const int64_t total = n * nbits;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
  unpack_bits_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      packed.const_data_ptr<uint8_t>(), n, nbits, nbytes, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CUDA, m) { m.impl("unpack_bits", &unpack_bits_cuda); }

}  // namespace dsch_ext
