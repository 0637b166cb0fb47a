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
// (dim + 8) eps |x| |c| (center_math.h), with either split below. For v in
// [2^e, 2^(e+1)), hi is a multiple of 2^(e-10) within 2^(e-11) of v, so
// lo = v - hi is a multiple of fp32's 2^(e-23) below 2^12 of them: at most 12
// significant bits against TF32's 11, so reading lo as TF32, rounded or
// truncated, loses at most its last bit, 2^(e-23) <= 2^-23 |v|. A product
// a b = (a_hi + a_lo)(b_hi + b_lo) then errs by the dropped a_lo b_lo
// (<= 2^-22 |a b|) and a_hi, b_hi times the other side's lost bit (2^-23 |a b|
// each, to 2^-11): 2^-21 |a b|, 4 units of 2^-23, and summed over the
// coordinates at most 4 units of |x| |c| (Cauchy-Schwarz). The tensor cores'
// accumulation aligns and truncates a block of products rather than rounding
// each sum to nearest: up to ~2 units of the running sum (<= |x| |c|) an
// addition, 3 dim additions. 8 units a coordinate, plus 64, covers both with
// room; the tests check the per-product bound on the model of each split.
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
// bits, a truncation that loses at most lo's last bit, 2^-23 |v| (above), as
// rounding lo would: its products err within kTf32x3Epsilon like the staged
// split's. The error takes the sign of lo, which rounding hi leaves either
// way: a split that truncated hi too would make every lo, and so every
// error, lean one way (several times the error on tight clusters, past the
// E-step's 1e-5). Past fp32's range hi is infinite and lo -hi, as the rounded
// split gives; a NaN's hi may be anything, but lo = NaN - hi is a NaN that
// survives the tensor cores' truncation (the subtraction sets its quiet bit).
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
