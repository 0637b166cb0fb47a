// CUDA kernel of dsch_ext::pack_bits: one thread per output byte (grid-stride).
// The arithmetic is pack_math.h's, shared with the CPU kernel. The op never
// stops the stream to look at its input: NaN, whose bit the CPU op refuses to
// guess, packs as 0 here (NaN > 0 is false).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/pack_math.h"
#include "device_runtime.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void pack_bits_kernel(const T* __restrict__ codes, int64_t n, int64_t nbits, int64_t nbytes,
                                 uint8_t* __restrict__ out) {
  const int64_t total = n * nbytes;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / nbytes, b = i % nbytes;
    out[i] = pack_code_byte(codes + r * nbits, nbits, b);
  }
}

at::Tensor pack_bits_cuda(const at::Tensor& codes_in) {
  check_pack_codes(codes_in);
  const gpu::DeviceGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous();
  const int64_t n = codes.size(0), nbits = codes.size(1), nbytes = (nbits + 7) / 8;
  at::Tensor out = at::empty({n, nbytes}, codes.options().dtype(at::kByte));
  if (n == 0) return out;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, codes.scalar_type(), "pack_bits_cuda", [&] {
    gpu::launch("pack_bits", &pack_bits_kernel<scalar_t>, gpu::grid_for(n * nbytes, kThreads), kThreads, 0,
                gpu::current_stream(), codes.const_data_ptr<scalar_t>(), n, nbits, nbytes, out.data_ptr<uint8_t>());
  });
  return out;
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("pack_bits", &pack_bits_cuda); }

}  // namespace dsch_ext
