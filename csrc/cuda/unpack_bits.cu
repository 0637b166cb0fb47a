// CUDA kernel of dsch_ext::unpack_bits: one thread per output value
// (grid-stride), pack_math.h's arithmetic.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/pack_math.h"
#include "device_runtime.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;

__global__ void unpack_bits_kernel(const uint8_t* __restrict__ packed, int64_t n, int64_t nbits, int64_t nbytes,
                                   float* __restrict__ out) {
  const int64_t total = n * nbits;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / nbits, dim = i % nbits;
    out[i] = unpack_code_value(packed + r * nbytes, dim);
  }
}

at::Tensor unpack_bits_cuda(const at::Tensor& packed_in, int64_t nbits) {
  check_unpack_width(packed_in, nbits);
  const gpu::DeviceGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous();
  const int64_t n = packed.size(0), nbytes = packed.size(1);
  at::Tensor out = at::empty({n, nbits}, packed.options().dtype(at::kFloat));
  if (n == 0) return out;
  gpu::launch("unpack_bits", &unpack_bits_kernel, gpu::grid_for(n * nbits, kThreads), kThreads, 0,
              gpu::current_stream(), packed.const_data_ptr<uint8_t>(), n, nbits, nbytes, out.data_ptr<float>());
  return out;
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("unpack_bits", &unpack_bits_cuda); }

}  // namespace dsch_ext
