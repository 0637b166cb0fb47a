// Binary tensor cores against the POPC pipe, on the GPU at hand: how many
// Hamming code pairs a second each could compute at most. Built and run by
// `scripts/gpu_check.sh bench` (nvcc -arch=sm_80 or later):
//
//   bmma: mma.sync m16n8k256 b1 AND.POPC: one warp instruction pairs 16 x 8
//         256-bit rows, 128 popcount(a & b) sums. Hamming follows from
//         popc(a ^ b) = popc(a) + popc(b) - 2 popc(a & b), the row popcounts
//         computed once per code.
//   popc: the scan's own work, xor + 32-bit POPC + add, per lane.
//
// Each warp runs independent accumulator chains so latency hides; the result
// is stored so nothing is optimised away. Rates are printed as 256-bit code
// pairs per second and as a ratio: the first GPU run decides whether a
// tensor-core scan is worth its design (docs/ops.md, "Binary tensor cores").
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define CHECK(call)                                                                   \
  do {                                                                                \
    cudaError_t err_ = (call);                                                        \
    if (err_ != cudaSuccess) {                                                        \
      std::fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(err_));              \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

constexpr int kChains = 8;

__global__ void bmma_kernel(int iterations, uint32_t seed, int* out) {
  uint32_t a[4], b[2];
  for (int i = 0; i < 4; ++i) a[i] = seed * (threadIdx.x + 7 * i + 1);
  for (int i = 0; i < 2; ++i) b[i] = seed ^ (threadIdx.x * 13 + i);
  int acc[kChains][4] = {};
  for (int it = 0; it < iterations; ++it) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) {
      asm volatile(
          "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
          "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+r"(acc[c][0]), "+r"(acc[c][1]), "+r"(acc[c][2]), "+r"(acc[c][3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
  }
  int total = 0;
  for (int c = 0; c < kChains; ++c) total += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = total;
}

__global__ void popc_kernel(int iterations, uint32_t seed, int* out) {
  uint32_t q[kChains];
  for (int c = 0; c < kChains; ++c) q[c] = seed * (threadIdx.x + c + 1);
  uint32_t code = seed ^ threadIdx.x;
  int acc[kChains] = {};
  for (int it = 0; it < iterations; ++it) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) acc[c] += __popc(q[c] ^ code);
    code += 0x9e3779b9u;  // a new code word each iteration, as a scan's would be
  }
  int total = 0;
  for (int c = 0; c < kChains; ++c) total += acc[c];
  out[blockIdx.x * blockDim.x + threadIdx.x] = total;
}

template <typename Kernel>
float time_ms(Kernel kernel, int blocks, int threads, int iterations, int* out) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  kernel<<<blocks, threads>>>(iterations / 10, 1u, out);  // warm-up
  CHECK(cudaGetLastError());
  float best = 1e30f;
  for (int r = 0; r < 5; ++r) {
    CHECK(cudaEventRecord(start));
    kernel<<<blocks, threads>>>(iterations, 2u + r, out);
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    best = ms < best ? ms : best;
  }
  CHECK(cudaGetLastError());
  return best;
}

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  if (prop.major < 8) {
    std::printf("bmma_rate: %s is sm_%d%d; binary mma.sync needs sm_80 or later\n", prop.name, prop.major, prop.minor);
    return 0;
  }
  const int threads = 256, blocks = prop.multiProcessorCount * 8, iterations = 1 << 14;
  int* out = nullptr;
  CHECK(cudaMalloc(&out, sizeof(int) * blocks * threads));
  const double warps = static_cast<double>(blocks) * threads / 32;
  const float bmma_ms = time_ms(bmma_kernel, blocks, threads, iterations, out);
  const float popc_ms = time_ms(popc_kernel, blocks, threads, iterations, out);
  // bmma: 128 pairs of 256-bit rows per warp instruction; popc: a 256-bit pair is 8 lane POPCs.
  const double bmma_pairs = warps * iterations * kChains * 128 / (bmma_ms * 1e-3);
  const double popc_pairs = warps * 32 * iterations * kChains / 8.0 / (popc_ms * 1e-3);
  std::printf("bmma_rate on %s (%d SMs): binary mma AND.POPC %.3g 256-bit pairs/s (%.2f ms), "
              "xor + POPC %.3g pairs/s (%.2f ms): tensor cores %.2fx the POPC pipe at most\n",
              prop.name, prop.multiProcessorCount, bmma_pairs, bmma_ms, popc_pairs, popc_ms,
              bmma_pairs / popc_pairs);
  CHECK(cudaFree(out));
  return 0;
}
