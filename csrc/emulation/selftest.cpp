// Kernels with deliberate defects, for the tests that show the emulation and
// the sanitizer builds catch them (test-only; compiled into the emulation
// library alone). dsch_ext_emulated::_emulation_selftest(case, x) runs one
// block-wide sum of x (x: float32 [n], n <= 256) in the variant named by
// `case`:
//   ok                    the correct reduction (barriers in place)
//   missing_syncthreads   a barrier left out: threads read shared memory that
//                         others are still writing (ThreadSanitizer: data race)
//   shared_out_of_bounds  one thread writes one element past a shared array
//                         (AddressSanitizer: heap-buffer-overflow)
//   global_out_of_bounds  the last thread reads one element past x
//   divergent_syncthreads a barrier only some threads reach (the emulator)
//   shfl_missing_lane     a full-mask shuffle that lane 31 skips (the emulator)
//   shfl_foreign_lane     a lane calls a shuffle whose mask leaves it out
//   mma_missing_lane      a tensor-core product that lane 31 skips (the emulator)
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string_view>

#include "../cuda/device_runtime.cuh"
#include "../cuda/mma_tf32.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 64;
enum SelfTest { kOk, kMissingSync, kSharedOob, kGlobalOob, kDivergentSync, kShflMissingLane, kShflForeignLane,
                kMmaMissingLane };

__global__ void selftest_kernel(const float* x, int64_t n, int which, float* out) {
  DSCH_SHARED_ARRAY(float, partial, kThreads);
  const int t = threadIdx.x;
  float v = 0;
  for (int64_t i = t; i < n; i += blockDim.x) v += x[i];
  if (which == kGlobalOob && t == kThreads - 1) v += x[n];
  partial[t] = v;
  if (which == kSharedOob && t == 0) partial[kThreads] = v;
  if (which == kDivergentSync) {
    if (t < 32) __syncthreads();
  } else if (which != kMissingSync) {
    __syncthreads();
  }
  if (which == kShflMissingLane && t < 32) {
    if (t != 31) v = __shfl_xor_sync(0xffffffffu, v, 1);
  }
  if (which == kShflForeignLane && t < 32) v = __shfl_xor_sync(0x0000ffffu, v, 1);
  if (which == kMmaMissingLane && t < 32 && t != 31) {
    float d[4] = {}, a[4] = {v, v, v, v}, b[2] = {1.0f, 1.0f};
    mma_tf32_m16n8k8(d, a, b);
  }
  if (t == 0) {
    float s = 0;
    for (int i = 0; i < kThreads; ++i) s += partial[i];
    out[0] = s;
  }
}

at::Tensor emulation_selftest(c10::string_view name, const at::Tensor& x_in) {
  const std::string_view c(name.data(), name.size());
  int which = -1;
  if (c == "ok") which = kOk;
  if (c == "missing_syncthreads") which = kMissingSync;
  if (c == "shared_out_of_bounds") which = kSharedOob;
  if (c == "global_out_of_bounds") which = kGlobalOob;
  if (c == "divergent_syncthreads") which = kDivergentSync;
  if (c == "shfl_missing_lane") which = kShflMissingLane;
  if (c == "shfl_foreign_lane") which = kShflForeignLane;
  if (c == "mma_missing_lane") which = kMmaMissingLane;
  TORCH_CHECK(which >= 0, "unknown self-test case '", c, "'");
  const at::Tensor x = x_in.contiguous().to(at::kFloat);
  at::Tensor out = at::zeros({1}, x.options());
  gpu::launch("emulation_selftest", &selftest_kernel, 1, kThreads, 0, gpu::current_stream(),
              x.const_data_ptr<float>(), x.size(0), which, out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dsch_ext_emulated, m) {
  m.def("_emulation_selftest(str case, Tensor x) -> Tensor");
  m.impl("_emulation_selftest", c10::DispatchKey::CPU, &emulation_selftest);
}

}  // namespace dsch_ext
