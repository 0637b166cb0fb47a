// CPU emulation of the CUDA execution model, for running the project's CUDA
// kernels (csrc/cuda/*.cuh) under the host compiler on machines without a GPU.
//
// What it provides, with CUDA's names at global scope so kernel bodies
// compile unchanged: threadIdx / blockIdx / blockDim / gridDim, __syncthreads
// (a block barrier), the warp collectives (__shfl*_sync, __ballot_sync,
// __match_any_sync, __any_sync, __all_sync, __syncwarp, and the tensor cores'
// mma.sync) as per-warp rendezvous, atomics (std::atomic_ref), bit intrinsics, and shared memory
// per block (DSCH_SHARED_ARRAY / DSCH_DYNAMIC_SHARED in device_runtime.cuh).
//
// How it runs a launch: every CUDA thread of a block is one OS thread; two
// blocks run at a time on separate thread sets (so ThreadSanitizer can see
// races between blocks), taking blocks in a shuffled order. It checks what a
// GPU would not report: a collective whose mask differs from the set of lanes
// that arrive, a lane reading from a lane outside the mask, a __syncthreads
// that some thread of the block never reaches (deadlock or early exit),
// launch configurations CUDA rejects, and shared memory read before it is
// written shows a poison pattern (0xFF bytes: NaN for floats, -1 for ints).
// A failed check raises from the launch with the block, thread and reason.
//
// What it cannot show: timing, occupancy, bank conflicts, coalescing, the
// GPU memory model's weaker orderings (its threads see each other's writes
// as x86 does), warp-synchronous behaviour of real hardware, and anything
// cuBLAS or other GPU libraries do.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>

namespace dsch_ext::emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr Dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

class BlockState;

// The calling CUDA thread's place in the launch.
struct ThreadContext {
  BlockState* block = nullptr;
  int linear = 0;        // thread index within the block (x fastest)
  uint64_t barriers = 0;  // __syncthreads passed in this block
};

inline thread_local ThreadContext current;

// Tunables of the emulated device (environment, read once per launch):
//   DSCH_EMULATION_SMS          multiprocessor count the launch code sees (default 3)
//   DSCH_EMULATION_MAX_GRID_Y   largest gridDim.y / z the launch code may use (default 3),
//                               so that grid-stride loops over y run at test sizes
//   DSCH_EMULATION_SEED         seed of the block order (default 1)
//   DSCH_EMULATION_CONCURRENT   blocks run at once (default 2)
int env_int(const char* name, int fallback);
inline int emulated_sm_count() { return env_int("DSCH_EMULATION_SMS", 3); }
inline int emulated_max_grid_yz() { return env_int("DSCH_EMULATION_MAX_GRID_Y", 3); }

enum class Collective : int {
  kSyncWarp, kBallot, kMatchAny, kShflIdx, kShflXor, kShflDown, kShflUp, kReduceAdd, kMmaTf32
};
const char* collective_name(Collective kind);

// Runs `body` as a kernel launch of `grid` x `block` threads with `dynamic_smem`
// bytes of dynamic shared memory. Throws std::runtime_error on a failed check.
void run_grid(const char* name, Dim3 grid, Dim3 block, size_t dynamic_smem, void (*body)(void*), void* arg);

// Called by the intrinsics below on behalf of the current thread.
void syncthreads();
uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int param, int width);
void* shared_array(const void* site, size_t bytes);

// mma.sync m16n8k8 TF32 (csrc/cuda/mma_tf32.cuh's fragments) as one rendezvous
// of the warp's 32 lanes: the last lane to arrive forms every lane's d from
// the others' a and b fragments, which stay on their waiting threads' stacks.
struct MmaFragments {
  float* d;        // 4 accumulators
  const float* a;  // 4 values of A
  const float* b;  // 2 values of B
};
void warp_mma_tf32_m16n8k8(float (&d)[4], const float (&a)[4], const float (&b)[2]);
void* dynamic_shared();
[[noreturn]] void unsupported(const char* what);

}  // namespace dsch_ext::emu

// ----------------------------------------------------------------- CUDA names
using dim3 = dsch_ext::emu::Dim3;
struct alignas(16) float4 {  // CUDA's vector types, for 16- and 8-byte shared and global accesses
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
using uint3 = dsch_ext::emu::Dim3;
inline thread_local dsch_ext::emu::Dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

inline void __syncthreads() { dsch_ext::emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  dsch_ext::emu::warp_collective(dsch_ext::emu::Collective::kSyncWarp, mask, 0, 0, 32);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(
      dsch_ext::emu::warp_collective(dsch_ext::emu::Collective::kBallot, mask, predicate != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == mask; }
inline unsigned __activemask() { dsch_ext::emu::unsupported("__activemask"); }

namespace dsch_ext::emu {
template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp collectives move up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}
}  // namespace dsch_ext::emu

template <typename T>
unsigned __match_any_sync(unsigned mask, T value) {
  using namespace dsch_ext::emu;
  return static_cast<unsigned>(warp_collective(Collective::kMatchAny, mask, to_bits(value), 0, 32));
}
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  using namespace dsch_ext::emu;
  return from_bits<T>(warp_collective(Collective::kShflIdx, mask, to_bits(var), src_lane, width));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  using namespace dsch_ext::emu;
  return from_bits<T>(warp_collective(Collective::kShflXor, mask, to_bits(var), lane_mask, width));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  using namespace dsch_ext::emu;
  return from_bits<T>(warp_collective(Collective::kShflDown, mask, to_bits(var), static_cast<int>(delta), width));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  using namespace dsch_ext::emu;
  return from_bits<T>(warp_collective(Collective::kShflUp, mask, to_bits(var), static_cast<int>(delta), width));
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned value) {
  using namespace dsch_ext::emu;
  return static_cast<unsigned>(warp_collective(Collective::kReduceAdd, mask, value, 0, 32));
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline float __int_as_float(int x) { return __builtin_bit_cast(float, x); }
inline int __float_as_int(float x) { return __builtin_bit_cast(int, x); }
template <typename T>
T __ldg(const T* p) { return *p; }

// CUDA's min / max overloads for device code.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
using std::isfinite;
using std::isinf;
using std::isnan;

// Atomics: relaxed, like CUDA's.
template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}
template <typename T>
T atomicSub(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_sub(value, std::memory_order_relaxed);
}
template <typename T>
T atomicExch(T* address, T value) {
  return std::atomic_ref<T>(*address).exchange(value, std::memory_order_relaxed);
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value, std::memory_order_relaxed);
  return compare;
}
template <typename T>
T atomicMax(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (old < value && !ref.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}
template <typename T>
T atomicMin(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (value < old && !ref.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}
template <typename T>
T atomicOr(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_or(value, std::memory_order_relaxed);
}
