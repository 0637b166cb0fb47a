// The 3xTF32 split shared by the tensor-core kernels, their CPU emulation and
// the tests' model of them.
//
// A TF32 value is an fp32 value with the low 13 mantissa bits zero (10
// explicit bits, fp32's exponent). Each operand v is split into
//   hi = tf32_round(v),  lo = tf32_round(v - hi)
// (v - hi is exact in fp32), and a product as a_lo b_hi + a_hi b_lo + a_hi b_hi
// in fp32 accumulation, small terms first. The product of two TF32 values is
// exact in fp32, so the dropped a_lo b_lo (<= 2^-22 |a b|) and the
// accumulation are the only errors: about fp32's accuracy at a third of the
// tensor cores' TF32 rate, where one TF32 product alone errs by ~2^-11.
#pragma once

#include <cstdint>

#include "macros.h"

namespace dsch_ext {

// Relative rounding unit of a 3xTF32 inner product, for bounds of the form
// (dim + 8) eps |x| |c| (center_math.h): the dropped lo * lo term (2^-22 a
// product), the splits' rounding and the tensor cores' accumulation, which
// aligns and truncates a block of products rather than rounding each sum to
// nearest (up to ~2 units of 2^-23 an addition). 8 fp32 epsilons covers them
// all with room.
constexpr float kTf32x3Epsilon = 9.5367431640625e-07f;  // 2^-20

// v rounded to TF32, to nearest with ties away from zero (the rounding of
// cvt.rna.tf32.f32), in integer arithmetic so both compilers round alike.
// Overflow rounds to infinity; NaN stays a quiet NaN (its payload may lie
// in the bits the tensor cores ignore).
DSCH_HOST_DEVICE float tf32_round(float v) {
  const uint32_t bits = float_bits(v);
  if ((bits & 0x7f800000u) == 0x7f800000u) return (bits & 0x007fffffu) != 0 ? bits_float(0x7fc00000u) : v;
  return bits_float((bits + 0x1000u) & 0xffffe000u);
}

// The residual of the split: exact difference, then rounded to TF32.
DSCH_HOST_DEVICE float tf32_residual(float v, float hi) { return tf32_round(v - hi); }

// The split of the split-at-use tensor-core kernel (pair_tile_mma.cuh), made
// where a value is used: hi is v rounded to TF32 (to nearest, ties away, as
// tf32_round but with no special cases: an add and an AND) and lo = v - hi,
// exact in fp32, is passed whole; the tensor cores read its top 10 explicit
// bits, a truncation (error < 2^-10 |lo| <= 2^-21 |v|). A product then errs by
// at most about 1.25 2^-20 |a b| (the two truncated lo terms and the dropped
// lo lo), with the sign of lo, which rounding hi leaves either way: a split
// that truncated hi too would make every lo, and so every error, lean one way
// (several times the error on tight clusters, past the E-step's 1e-5). Past
// fp32's range hi is infinite and lo -hi, as the rounded split gives; a NaN's
// hi may be anything, but lo = NaN - hi is a NaN that survives the tensor
// cores' truncation (the subtraction sets its quiet bit). Inside the full
// E-step's 1e-5 (tested); not used where a tie bound relies on kTf32x3Epsilon.
DSCH_HOST_DEVICE void tf32_split_at_use(float v, float& hi, float& lo) {
  hi = bits_float((float_bits(v) + 0x1000u) & 0xffffe000u);
  lo = v - hi;
}

// One output of an m16n8k8 TF32 tensor-core product as the emulation forms it
// (mma_tf32.cuh): acc plus the 8 products of a row of A and a column of B in
// k order, each sum rounded to nearest. Like the tensor cores it ignores the
// operands' low 13 bits; the products of TF32 values are exact in fp32.
DSCH_HOST_DEVICE float tf32_mma_dot8(float acc, const float (&row)[8], const float (&col)[8]) {
  for (int k = 0; k < 8; ++k) {
    const float a = bits_float(float_bits(row[k]) & 0xffffe000u);
    const float b = bits_float(float_bits(col[k]) & 0xffffe000u);
    acc = acc + a * b;
  }
  return acc;
}

}  // namespace dsch_ext
