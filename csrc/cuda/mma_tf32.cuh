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
// The emulation (also the code for GPUs before sm_80) gathers each lane's rows of A and columns of B by warp
// shuffles (so the emulator checks that all 32 lanes take part, as the
// instruction requires) and accumulates the 8 exact products into C in k
// order, rounding each sum to nearest. The GPU's accumulation order and
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
#else
  // The emulation, and a build for a GPU before sm_80 (no TF32 tensor cores): the same
  // product from shuffles and fp32 adds, slower but the same answers.
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int g = lane / 4, t = lane % 4;
  float rows[2][8], cols[2][8];
  for (int k = 0; k < 8; ++k) {
    const int hi = k / 4;  // k >= 4 lives in a[2], a[3] and b[1]
    const int src_a = g * 4 + k % 4;
    rows[0][k] = __shfl_sync(kFullWarpMask, a[2 * hi], src_a);
    rows[1][k] = __shfl_sync(kFullWarpMask, a[2 * hi + 1], src_a);
    cols[0][k] = __shfl_sync(kFullWarpMask, b[hi], (2 * t) * 4 + k % 4);
    cols[1][k] = __shfl_sync(kFullWarpMask, b[hi], (2 * t + 1) * 4 + k % 4);
  }
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 2; ++c) {
      float acc = d[2 * r + c];
      for (int k = 0; k < 8; ++k) {
        const float pa = bits_float(float_bits(rows[r][k]) & 0xffffe000u);
        const float pb = bits_float(float_bits(cols[c][k]) & 0xffffe000u);
        const float product = pa * pb;  // exact: 11 x 11 significant bits
        acc = acc + product;
      }
      d[2 * r + c] = acc;
    }
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
