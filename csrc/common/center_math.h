// Centre-distance arithmetic shared by the CPU and CUDA kernels.
//
// Every metric is a distance (smaller is closer) computed from the inner
// product dot = <x, c> and one statistic per row of x and of centres:
//   sqeuclidean  ||x - c||^2 = max(|x|^2 + |c|^2 - 2 dot, 0)   stats |x|^2, |c|^2
//   cosine       1 - dot / (max(|x|, eps) max(|c|, eps))       stats 1 / max(|.|, eps)
//   dot          -dot                                          no stats
// The inner products come from one GEMM; these functions are its epilogue.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace dsch_ext {

enum CenterMetric : int { kSqEuclidean = 0, kCosine = 1, kDot = 2 };

// Norms below this are clamped for 'cosine' (torch.nn.functional.cosine_similarity's eps).
constexpr double kCosineEps = 1e-8;

// Row statistic from the squared norm (see the table above).
template <typename T>
DSCH_HOST_DEVICE T center_row_stat(int metric, T sqnorm) {
  if (metric == kSqEuclidean) return sqnorm;
  if (metric == kCosine) {
    const T norm = sqrt(sqnorm);
    return T(1) / (norm > T(kCosineEps) ? norm : T(kCosineEps));
  }
  return T(0);
}

template <typename T>
DSCH_HOST_DEVICE T center_distance_from_dot(int metric, T dot, T x_stat, T c_stat) {
  if (metric == kSqEuclidean) {
    const T d = x_stat + c_stat - T(2) * dot;
    return d < T(0) ? T(0) : d;  // NaN (a non-finite row on CUDA) stays NaN
  }
  if (metric == kCosine) return gpu_multiply_add(-(dot * x_stat), c_stat, T(1));
  return -dot;
}

// Backward helpers. With grad g_ij of distance d_ij:
//   sqeuclidean: dx_i = 2 (sum_j g_ij) x_i - 2 (G C)_i
//   cosine:      dx_i = rx_i^2 (sum_j g_ij s_ij) x_i - rx_i (G (rc . C))_i,  s = 1 - d
//   dot:         dx_i = -(G C)_i
// and symmetrically for the centres. `center_grad_weight` is the term summed
// over the other side (g or g*s), `center_self_scale` its factor on x_i, and
// `center_gemm_scale` the factor on the GEMM term.
template <typename T>
DSCH_HOST_DEVICE T center_grad_weight(int metric, T grad, T distance) {
  return metric == kCosine ? grad * (T(1) - distance) : grad;
}

// rstat: the row's statistic; sqnorm: its squared norm (cosine's eps clamp
// makes the norm a constant, so that term then vanishes).
template <typename T>
DSCH_HOST_DEVICE T center_self_scale(int metric, T rstat, T sqnorm) {
  if (metric == kSqEuclidean) return T(2);
  if (metric == kCosine) return sqrt(sqnorm) > T(kCosineEps) ? rstat * rstat : T(0);
  return T(0);
}

template <typename T>
DSCH_HOST_DEVICE T center_gemm_scale(int metric, T rstat) {
  if (metric == kSqEuclidean) return T(-2);
  if (metric == kCosine) return -rstat;
  return T(-1);
}

// Nearest-centre scan: a strictly smaller value wins, so ties keep the lower
// index when centres are visited in increasing order.
template <typename T>
DSCH_HOST_DEVICE bool nearer_center(T value, int64_t index, T best_value, int64_t best_index) {
  return value < best_value || (value == best_value && index < best_index);
}

// Nearest centre with exact ties. A squared distance computed as
// |x|^2 + |c|^2 - 2 <x, c> (a GEMM's inner product, any summation order) is
// within expanded_sqdist_error of the exact value, so two equal centres can
// come out of a GEMM unequal. The nearest-centre kernels therefore take every
// centre whose expanded value is within twice that of the best, recompute
// those few directly (direct_sqdist: the same arithmetic for every centre, so
// equal centres give equal values) and keep the smallest, ties to the lower
// index.
template <typename T>
DSCH_HOST_DEVICE T expanded_sqdist_error(int64_t dim, T x_sqnorm, T c_sqnorm_max, T eps) {
  const T scale = sqrt(x_sqnorm) + sqrt(c_sqnorm_max);
  return T(dim + 8) * eps * scale * scale;
}

// The direct sum rounds each step once on every build (fused_multiply_add): the
// CPU and CUDA ops must break a tie alike. A libm call on a host without FMA,
// fine for the few candidates rechecked.
template <typename T>
DSCH_HOST_DEVICE T direct_sqdist(const T* x, const T* c, int64_t dim) {
  T acc = 0;
  for (int64_t d = 0; d < dim; ++d) {
    const T diff = x[d] - c[d];
    acc = fused_multiply_add(diff, diff, acc);
  }
  return acc;
}

}  // namespace dsch_ext
