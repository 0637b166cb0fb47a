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

// log N(x | k) + log w_k for one point and one component. `a` is the
// transformed point (x L_k for full, x L for tied, x itself for diag /
// spherical), `p` the diagonal precision Cholesky of k (diag) or its scalar
// (spherical, p[0]), `b` = mu_k L_k, `log_const` = log det L_k + log w_k -
// 0.5 D log 2pi.
template <typename T>
DSCH_HOST_DEVICE T gmm_weighted_log_prob(int cov, const T* __restrict__ a, const T* __restrict__ p,
                                         const T* __restrict__ b, T log_const, int64_t dim) {
  T sq = 0;
  if (cov == kGmmDiag) {
    DSCH_SIMD_SUM(sq)
    for (int64_t d = 0; d < dim; ++d) {
      const T y = a[d] * p[d] - b[d];
      sq += y * y;
    }
  } else if (cov == kGmmSpherical) {
    const T s = p[0];
    DSCH_SIMD_SUM(sq)
    for (int64_t d = 0; d < dim; ++d) {
      const T y = a[d] * s - b[d];
      sq += y * y;
    }
  } else {
    DSCH_SIMD_SUM(sq)
    for (int64_t d = 0; d < dim; ++d) {
      const T y = a[d] - b[d];
      sq += y * y;
    }
  }
  return log_const - T(0.5) * sq;
}

// exp for float32 log-sum-exp on the host: Cephes' polynomial (about 1 ulp on
// the range that matters), written with plain arithmetic so the compiler
// vectorises the loop around it; libm's expf is a scalar call per element and
// was a large share of the E-step. Inputs below -87 return ~1e-38 instead of
// 0, which is negligible in a sum that contains exp(0) = 1.
DSCH_HOST_DEVICE float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = floorf(x * 1.44269504088896341f + 0.5f);
  float r = fmaf(n, -0.693359375f, x);
  r = fmaf(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  const float e = fmaf(p, r * r, r) + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
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
