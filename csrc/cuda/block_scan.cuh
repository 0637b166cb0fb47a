// Block-wide helpers for the CUDA kernels (device code only).
#pragma once

#include <cstdint>

#include "device_runtime.cuh"

namespace dsch_ext {

constexpr unsigned kFullWarpMask = 0xffffffffu;

// Exclusive rank of `flag` among the threads of the block, in thread order,
// and the block's total. Every thread of the block must call it (it
// synchronises); `warp_totals` is shared memory of at least 33 ints.
__device__ __forceinline__ int block_exclusive_rank(bool flag, int* warp_totals, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  const unsigned ballot = __ballot_sync(kFullWarpMask, flag);
  const int in_warp = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) warp_totals[warp] = __popc(ballot);
  __syncthreads();
  if (threadIdx.x == 0) {
    int run = 0;
    for (int w = 0; w < nwarps; ++w) {
      const int c = warp_totals[w];
      warp_totals[w] = run;
      run += c;
    }
    warp_totals[32] = run;
  }
  __syncthreads();
  const int rank = warp_totals[warp] + in_warp;
  *total = warp_totals[32];
  __syncthreads();  // warp_totals may be reused by the next call
  return rank;
}

}  // namespace dsch_ext

namespace dsch_ext {

// Block-wide max and sum (every thread gets the result). `scratch` is shared
// memory of at least 33 values; every thread of the block must call.
template <typename T>
__device__ __forceinline__ T block_reduce_max(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullWarpMask, v, o));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T m = scratch[0];
    for (int w = 1; w < nwarps; ++w) m = max(m, scratch[w]);
    scratch[32] = m;
  }
  __syncthreads();
  const T result = scratch[32];
  __syncthreads();
  return result;
}

template <typename T>
__device__ __forceinline__ T block_reduce_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullWarpMask, v, o);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T s = 0;
    for (int w = 0; w < nwarps; ++w) s += scratch[w];  // fixed order: deterministic
    scratch[32] = s;
  }
  __syncthreads();
  const T result = scratch[32];
  __syncthreads();
  return result;
}

}  // namespace dsch_ext
