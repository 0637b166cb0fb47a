// Gaussian-mixture E-step arithmetic shared by the CPU and CUDA kernels.
//
// With precision Cholesky factors L (precision = L L^T, scikit-learn's
// precisions_cholesky_), the log density of point x under component k is
//   log N(x | mu_k) = -0.5 (D log 2pi + ||(x - mu_k) L_k||^2) + log det L_k.
// The squared norm is computed as ||a - b_k||^2 with b_k = mu_k L_k and
//   full:      a = x L_k   (one GEMM over all components: [N, D] x [D, K D])
//   tied:      a = x L     (one [N, D] x [D, D] GEMM, shared by all k)
//   diag:      a = x . p_k (elementwise, p_k = diagonal precision Cholesky)
//   spherical: a = x p_k   (scalar p_k)
// i.e. exactly scikit-learn's formulation, as a difference of transformed
// vectors, not the expanded x'Px - 2x'Pmu + mu'Pmu, which cancels badly in
// float32 when precisions are large (tight clusters).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "macros.h"

namespace dsch_ext {

enum GmmCovariance : int { kGmmFull = 0, kGmmTied = 1, kGmmDiag = 2, kGmmSpherical = 3 };

constexpr double kLog2Pi = 1.8378770664093454835606594728112;

// a p - b: one coordinate of a diagonal or spherical component (tied is p = 1).
template <typename T>
DSCH_HOST_DEVICE T gmm_scaled_diff(T a, T p, T b) {
  return gpu_multiply_add(a, p, -b);
}

// y_d of one point and one component (see the table above).
template <typename T>
DSCH_HOST_DEVICE T gmm_transformed_diff(int cov, const T* __restrict__ a, const T* __restrict__ p,
                                        const T* __restrict__ b, int64_t d) {
  if (cov == kGmmDiag) return gmm_scaled_diff(a[d], p[d], b[d]);
  if (cov == kGmmSpherical) return gmm_scaled_diff(a[d], p[0], b[d]);
  return a[d] - b[d];
}

// log N(x | k) + log w_k for one point and one component. `a` is the
// transformed point (x L_k for full, x L for tied, x itself for diag /
// spherical), `p` the diagonal precision Cholesky of k (diag) or its scalar
// (spherical, p[0]), `b` = mu_k L_k, `log_const` = log det L_k + log w_k -
// 0.5 D log 2pi.
template <typename T>
DSCH_HOST_DEVICE T gmm_weighted_log_prob(int cov, const T* __restrict__ a, const T* __restrict__ p,
                                         const T* __restrict__ b, T log_const, int64_t dim) {
  T sq = 0;
  DSCH_SIMD_SUM(sq)
  for (int64_t d = 0; d < dim; ++d) {
    const T y = gmm_transformed_diff(cov, a, p, b, d);
    sq = gpu_multiply_add(y, y, sq);
  }
  return log_const - T(0.5) * sq;
}

// The same for four components at once (the host's inner kernel): four
// independent sums keep the FMA units busy instead of waiting on one chain.
template <typename T>
DSCH_HOST_DEVICE void gmm_weighted_log_prob4(int cov, const T* const a[4], const T* const p[4], const T* const b[4],
                                             const T log_const[4], int64_t dim, T out[4]) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  DSCH_SIMD_SUM4(s0, s1, s2, s3)
  for (int64_t d = 0; d < dim; ++d) {
    const T y0 = gmm_transformed_diff(cov, a[0], p[0], b[0], d);
    const T y1 = gmm_transformed_diff(cov, a[1], p[1], b[1], d);
    const T y2 = gmm_transformed_diff(cov, a[2], p[2], b[2], d);
    const T y3 = gmm_transformed_diff(cov, a[3], p[3], b[3], d);
    s0 = gpu_multiply_add(y0, y0, s0);
    s1 = gpu_multiply_add(y1, y1, s1);
    s2 = gpu_multiply_add(y2, y2, s2);
    s3 = gpu_multiply_add(y3, y3, s3);
  }
  out[0] = log_const[0] - T(0.5) * s0;
  out[1] = log_const[1] - T(0.5) * s1;
  out[2] = log_const[2] - T(0.5) * s2;
  out[3] = log_const[3] - T(0.5) * s3;
}

// exp for float32 log-sum-exp on the host: Cephes' polynomial (about 1 ulp on
// the range that matters), written with plain arithmetic so the compiler
// vectorises the loop around it; libm's expf is a scalar call per element and
// was a large share of the E-step. Its multiply-adds are fused in the FMA
// clones and round twice in the baseline one (an fmaf there is a libm call per
// term, which stopped the loop vectorising): a difference of about an ulp.
// Inputs below -87 return ~1e-38 instead of 0, which is negligible in a sum
// that contains exp(0) = 1.
DSCH_HOST_DEVICE float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : x;  // plain selects: fminf is a libm call unless -ffinite-math-only
  x = x > 88.0f ? 88.0f : x;
  // round(x / ln 2) by truncation after an offset (x >= -87, so the offset
  // keeps the argument positive): no floorf call, which would stop the loop
  // from vectorising.
  const float n = static_cast<float>(static_cast<int32_t>(x * 1.44269504088896341f + 126.5f)) - 126.0f;
  float r = gpu_multiply_add(n, -0.693359375f, x);
  r = gpu_multiply_add(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = gpu_multiply_add(p, r, 1.3981999507e-3f);
  p = gpu_multiply_add(p, r, 8.3334519073e-3f);
  p = gpu_multiply_add(p, r, 4.1665795894e-2f);
  p = gpu_multiply_add(p, r, 1.6666665459e-1f);
  p = gpu_multiply_add(p, r, 5.0000001201e-1f);
  const float e = gpu_multiply_add(p, r * r, r) + 1.0f;
  const int32_t bits = static_cast<int32_t>(n + 127.0f) << 23;
  return e * bits_float(static_cast<uint32_t>(bits));
}

// exp for the float64 log-sum-exp on the host, for the same reason as
// fast_expf (libm's exp was about a quarter of a diagonal float64 E-step):
// x = n ln 2 + r with n = round(x / ln 2) taken from the low bits of
// x / ln 2 + 1.5 2^52 (no float-to-integer conversion, which AVX2 lacks for
// doubles, and no floor call), ln 2 in two parts so that r is exact to 2^-60,
// and exp(r) by its Taylor series to r^13 (|r| <= ln 2 / 2: the rest is below
// 0.05 ulp); then 2^n from n's bits. About an ulp from -708 to 709; 0 below
// -708, where exp(x) is under double's normal range and nothing next to the
// row's exp(0) = 1; NaN stays NaN.
DSCH_HOST_DEVICE double fast_exp(double x) {
  const double c = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);  // plain selects, as in fast_expf
  constexpr double kShift = 6755399441055744.0;                      // 1.5 2^52
  const double shifted = c * 1.4426950408889634 + kShift;            // n in the low mantissa bits
  const double n = shifted - kShift;
  double r = gpu_multiply_add(n, -6.93147180369123816490e-01, c);    // ln 2's high part: n times it is exact
  r = gpu_multiply_add(n, -1.90821492927058770002e-10, r);
  double p = 1.0 / 6227020800.0;                                     // 1 / 13!
  p = gpu_multiply_add(p, r, 1.0 / 479001600.0);
  p = gpu_multiply_add(p, r, 1.0 / 39916800.0);
  p = gpu_multiply_add(p, r, 1.0 / 3628800.0);
  p = gpu_multiply_add(p, r, 1.0 / 362880.0);
  p = gpu_multiply_add(p, r, 1.0 / 40320.0);
  p = gpu_multiply_add(p, r, 1.0 / 5040.0);
  p = gpu_multiply_add(p, r, 1.0 / 720.0);
  p = gpu_multiply_add(p, r, 1.0 / 120.0);
  p = gpu_multiply_add(p, r, 1.0 / 24.0);
  p = gpu_multiply_add(p, r, 1.0 / 6.0);
  p = gpu_multiply_add(p, r, 0.5);
  const double e = gpu_multiply_add(p, r * r, r) + 1.0;
  // n + 1023 (1 to 2046) is the low bits of `shifted` plus 1023; shifted into the exponent field.
  const uint64_t scale = (double_bits(shifted) + 1023u) << 52;
  const double out = e * bits_double(scale);
  return x < -708.0 ? 0.0 : out;
}

// Offset of component k's transformed point within a row of `a`.
DSCH_HOST_DEVICE int64_t gmm_a_offset(int cov, int64_t k, int64_t dim) {
  return cov == kGmmFull ? k * dim : 0;
}

// Offset of component k's precision factor within p (diag: [K, D], spherical: [K]).
DSCH_HOST_DEVICE int64_t gmm_p_offset(int cov, int64_t k, int64_t dim) {
  return cov == kGmmDiag ? k * dim : (cov == kGmmSpherical ? k : 0);
}

}  // namespace dsch_ext
