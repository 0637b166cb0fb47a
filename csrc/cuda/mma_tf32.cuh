// One warp-wide tensor-core product D = A B + C of TF32 operands with fp32
// accumulation, shape m16n8k8 (mma.sync, sm_80 and later), and its CPU
// emulation.
//
// Fragments (PTX ISA, m16n8k8 .tf32), with g = lane / 4 and t = lane % 4:
//   A (16 x 8, row-major):  a[0] = A[g][t],   a[1] = A[g + 8][t],
//                           a[2] = A[g][t + 4], a[3] = A[g + 8][t + 4]
//   B (8 x 8, column-major): b[0] = B[t][g],   b[1] = B[t + 4][g]
//   C, D (16 x 8):          c[0] = C[g][2t], c[1] = C[g][2t + 1],
//                           c[2] = C[g + 8][2t], c[3] = C[g + 8][2t + 1]
// Operands must already be TF32 (tf32_math.h): the hardware ignores the low
// 13 bits, the emulation clears them.
//
// Without mma.sync (the CPU emulation, a GPU before sm_80) each lane gathers
// its rows of A and columns of B, from the emulator's warp collective or from
// warp shuffles (both check that all 32 lanes take part, as the instruction
// requires), and adds the 8 exact products to C in k order, rounding each sum
// to nearest (tf32_mma_dot8). The GPU's accumulation order and
// rounding inside one instruction are not specified and differ (it truncates
// within a block of products); kTf32x3Epsilon bounds both.
#pragma once

#include <cstdint>

#include "../common/tf32_math.h"
#include "block_scan.cuh"

namespace dsch_ext {

__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(float_bits(a[0])), "r"(float_bits(a[1])), "r"(float_bits(a[2])), "r"(float_bits(a[3])),
        "r"(float_bits(b[0])), "r"(float_bits(b[1])));
#elif defined(DSCH_EXT_EMULATION) && !defined(DSCH_EMULATION_MMA_SHUFFLES)
  // The emulator's own warp collective: one rendezvous of the 32 lanes for the
  // whole product (emulator.h) instead of the 16 shuffles below.
  dsch_ext::emu::warp_mma_tf32_m16n8k8(d, a, b);
#else
  // A build for a GPU before sm_80 (no TF32 tensor cores), and the production
  // emulation build: the same product from shuffles and fp32 adds.
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int g = lane / 4, t = lane % 4;
  // Two fragment values a 64-bit shuffle: half the collectives.
  const auto pack = [](float low, float high) {
    return static_cast<uint64_t>(float_bits(low)) | (static_cast<uint64_t>(float_bits(high)) << 32);
  };
  const auto low_of = [](uint64_t v) { return bits_float(static_cast<uint32_t>(v)); };
  const auto high_of = [](uint64_t v) { return bits_float(static_cast<uint32_t>(v >> 32)); };
  const uint64_t a_first = pack(a[0], a[1]), a_second = pack(a[2], a[3]), b_both = pack(b[0], b[1]);
  float rows[2][8], cols[2][8];
  for (int q = 0; q < 4; ++q) {  // k = q from a[0], a[1], b[0]; k = q + 4 from a[2], a[3], b[1]
    const uint64_t first = __shfl_sync(kFullWarpMask, a_first, g * 4 + q);
    const uint64_t second = __shfl_sync(kFullWarpMask, a_second, g * 4 + q);
    const uint64_t col0 = __shfl_sync(kFullWarpMask, b_both, (2 * t) * 4 + q);
    const uint64_t col1 = __shfl_sync(kFullWarpMask, b_both, (2 * t + 1) * 4 + q);
    rows[0][q] = low_of(first);
    rows[1][q] = high_of(first);
    rows[0][q + 4] = low_of(second);
    rows[1][q + 4] = high_of(second);
    cols[0][q] = low_of(col0);
    cols[0][q + 4] = high_of(col0);
    cols[1][q] = low_of(col1);
    cols[1][q + 4] = high_of(col1);
  }
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 2; ++c) d[2 * r + c] = tf32_mma_dot8(d[2 * r + c], rows[r], cols[c]);
  }
#endif
}

// acc += A B in 3xTF32 from split operands: small terms first.
__device__ __forceinline__ void mma_tf32x3_m16n8k8(float (&acc)[4], const float (&a_hi)[4], const float (&a_lo)[4],
                                                    const float (&b_hi)[2], const float (&b_lo)[2]) {
  mma_tf32_m16n8k8(acc, a_lo, b_hi);
  mma_tf32_m16n8k8(acc, a_hi, b_lo);
  mma_tf32_m16n8k8(acc, a_hi, b_hi);
}

}  // namespace dsch_ext
