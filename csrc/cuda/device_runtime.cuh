// What a CUDA op's code (csrc/cuda/*.cu and its *.cuh headers) needs from the machine it
// runs on, in one place, for both builds of that code:
//   - nvcc (csrc/cuda/<op>.cu, the CUDA dispatch key): the real runtime;
//   - the host compiler with DSCH_EXT_EMULATION (tests/emulation_build.py, the
//     test-only dsch_ext_emulated ops on CPU tensors): the CPU emulation of
//     csrc/emulation/emulator.h.
// Kernels use DSCH_SHARED_ARRAY / DSCH_DYNAMIC_SHARED for shared memory and
// gpu::launch instead of <<<>>>, so one call site serves both builds; launch
// arithmetic reads the device limits through gpu::, so that under emulation
// small limits make test-sized launches take the grid-stride and chunking
// paths that large inputs take on a GPU.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>
#include <utility>

#if defined(DSCH_EXT_EMULATION)
#include "../emulation/emulator.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

#if defined(DSCH_EXT_EMULATION)
// A block-shared array of n elements of T, named `name` (a T*).
#define DSCH_SHARED_ARRAY(T, name, n)  \
  static const char name##_site_ = 0;  \
  T* const name = static_cast<T*>(::dsch_ext::emu::shared_array(&name##_site_, sizeof(T) * (n)))
// The launch's dynamic shared memory as a T*.
#define DSCH_DYNAMIC_SHARED(T, name) T* const name = static_cast<T*>(::dsch_ext::emu::dynamic_shared())
#else
#define DSCH_SHARED_ARRAY(T, name, n) __shared__ __align__(16) T name[n]
#define DSCH_DYNAMIC_SHARED(T, name)                                \
  extern __shared__ __align__(16) unsigned char dsch_dynamic_smem_[]; \
  T* const name = reinterpret_cast<T*>(dsch_dynamic_smem_)
#endif

namespace dsch_ext::gpu {

#if defined(DSCH_EXT_EMULATION)
using Stream = int;
inline Stream current_stream() { return 0; }
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
inline int multiprocessor_count(const at::Device&) { return emu::emulated_sm_count(); }
inline int64_t max_grid_yz() { return emu::emulated_max_grid_yz(); }
#else
using Stream = cudaStream_t;
inline Stream current_stream() { return c10::cuda::getCurrentCUDAStream(); }
using DeviceGuard = c10::cuda::CUDAGuard;
inline int multiprocessor_count(const at::Device& device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index()));
  return sms;
}
inline int64_t max_grid_yz() { return 65535; }
#endif

// Under emulation, launch constants take small values (launch_constants.cuh
// lists every one) so that test-sized inputs reach the paths large inputs
// take on a GPU; the `production` emulation build
// (DSCH_EMULATION_PRODUCTION_CONSTANTS) keeps the GPU's values, so the
// kernels are also tested exactly as they run there.
#if defined(DSCH_EXT_EMULATION) && !defined(DSCH_EMULATION_PRODUCTION_CONSTANTS)
#define DSCH_SMALL_CONSTANTS 1
#endif

// The largest gridDim.x a launch uses (grid-stride loops cover the rest).
inline int64_t max_grid_x() {
#if defined(DSCH_SMALL_CONSTANTS)
  return 64;
#else
  return int64_t{1} << 20;
#endif
}

// `on_gpu` on a GPU (and in the production emulation build), `emulated` in
// the emulation build the tests mostly run.
constexpr int64_t small_under_emulation(int64_t on_gpu, int64_t emulated) {
#if defined(DSCH_SMALL_CONSTANTS)
  (void)on_gpu;
  return emulated;
#else
  (void)emulated;
  return on_gpu;
#endif
}

// Ceil-divided block count for `total` items, at least 1, at most max_grid_x().
inline unsigned grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > max_grid_x() ? max_grid_x() : blocks));
}

#if defined(DSCH_EXT_EMULATION)
template <typename Tuple, typename Kernel>
struct EmulatedLaunch {
  Kernel kernel;
  Tuple args;
  static void run(void* self) {
    auto* l = static_cast<EmulatedLaunch*>(self);
    std::apply(l->kernel, l->args);
  }
};
#endif

// kernel<<<grid, block, smem, stream>>>(args...), checked. `name` appears in
// the emulation's error messages.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem, Stream stream,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: wrong number of kernel arguments");
#if defined(DSCH_EXT_EMULATION)
  (void)stream;
  using Tuple = std::tuple<Params...>;
  EmulatedLaunch<Tuple, void (*)(Params...)> l{kernel, Tuple(std::forward<Args>(args)...)};
  try {
    emu::run_grid(name, grid, block, dynamic_smem, &EmulatedLaunch<Tuple, void (*)(Params...)>::run, &l);
  } catch (const std::runtime_error& e) {
    TORCH_CHECK(false, e.what());
  }
#else
  (void)name;
  kernel<<<grid, block, dynamic_smem, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

}  // namespace dsch_ext::gpu

// Registers a file's CUDA kernels: on the CUDA dispatch key of dsch_ext, or,
// under emulation, on the CPU key of the test-only dsch_ext_emulated library.
#if defined(DSCH_EXT_EMULATION)
#define DSCH_EXT_GPU_IMPL(m) TORCH_LIBRARY_IMPL(dsch_ext_emulated, CPU, m)
#else
#define DSCH_EXT_GPU_IMPL(m) TORCH_LIBRARY_IMPL(dsch_ext, CUDA, m)
#endif
