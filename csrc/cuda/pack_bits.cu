// CUDA kernel of dsch_ext::pack_bits: one thread per output byte. NaN input
// is reported through a device flag and raised as an error after the
// launch (one host sync; packing is not on a hot path).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/pack_math.h"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void pack_bits_kernel(const T* __restrict__ codes, int64_t n, int64_t nbits,
                                 int64_t nbytes, uint8_t* __restrict__ out, int* __restrict__ saw_nan) {
  const int64_t total = n * nbytes;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / nbytes, b = i % nbytes;
    const T* row = codes + r * nbits;
    bool nan = false;
    for (int64_t dim = b * 8; dim < b * 8 + 8 && dim < nbits; ++dim) nan |= code_value_is_nan(row[dim]);
    if (nan) *saw_nan = 1;
    out[i] = pack_code_byte(row, nbits, b);
  }
}

at::Tensor pack_bits_cuda(const at::Tensor& codes_in) {
  TORCH_CHECK(codes_in.dim() == 2, "codes must be 2-D [N, nbits], got shape ", codes_in.sizes());
  TORCH_CHECK(codes_in.size(1) > 0, "codes has zero bits per code (shape ", codes_in.sizes(), ")");
  TORCH_CHECK(!codes_in.is_complex(), "codes must be real or bool, got dtype ",
              codes_in.scalar_type());
  const c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous();
  const int64_t n = codes.size(0), nbits = codes.size(1), nbytes = (nbits + 7) / 8;
  at::Tensor out = at::empty({n, nbytes}, codes.options().dtype(at::kByte));
  if (n == 0) return out;
  at::Tensor saw_nan = at::zeros({1}, codes.options().dtype(at::kInt));
  const int64_t total = n * nbytes;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, codes.scalar_type(),
                             "pack_bits_cuda", [&] {
    pack_bits_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        codes.const_data_ptr<scalar_t>(), n, nbits, nbytes, out.data_ptr<uint8_t>(),
        saw_nan.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  TORCH_CHECK(saw_nan.item<int>() == 0, "codes contains NaN (shape ", codes.sizes(),
              "): its bit is undefined");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CUDA, m) { m.impl("pack_bits", &pack_bits_cuda); }

}  // namespace dsch_ext
