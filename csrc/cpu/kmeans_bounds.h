// The building blocks of the bounded k-means assignment pass
// (kmeans_bounded_assign.cpp): register tiles of inner products between points
// and one group of centres, the rounding bounds that keep the skipped centres
// exact, and what a pass reads about the centres.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../common/center_checks.h"
#include "center_stats.h"

namespace dsch_ext::bounded_kmeans {

constexpr int kMaxVectors = 8;                  // accumulators of one group chunk (registers)

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int width = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int width = 4;
};

// The rounding of the bounds; that of a computed squared distance is
// expanded_sqdist_error (center_math.h).
template <typename T>
struct Rounding {
  int64_t dim;
  T rel;  // relative margin of the comparisons
  Rounding(int64_t dim) : dim(dim), rel(T(32) * std::numeric_limits<T>::epsilon()) {}
  // Bound on the rounding error of a point's computed squared distances.
  T error(T x_sqnorm, T c_sqnorm_max) const {
    return expanded_sqdist_error(dim, x_sqnorm, c_sqnorm_max, std::numeric_limits<T>::epsilon());
  }
  // Bounds on the Euclidean distance from a computed squared distance v
  // whose error is at most err.
  T upper(T v, T err) const { return std::sqrt(std::max(v, T(0)) + err) * (T(1) + rel); }
  T lower(T v, T err) const {
    if (!(v < std::numeric_limits<T>::infinity())) return v;
    return std::sqrt(std::max(v - err, T(0))) * (T(1) - rel);
  }
};

// vals[r][c] = csq[c] - 2 <x_r, c_c> for R points and NV vectors of columns
// of one group stored transposed ([D][stride], columns padded with zeros and
// csq = +inf): an R x NV register tile, so each centre value loaded serves R
// points and each broadcast point value NV vectors of centres.
template <typename T, int R, int NV>
inline void tile_values(const T* const* x, const T* ct, int64_t stride, int64_t dim, const T* csq, T* vals,
                        int64_t vals_stride) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t d = 0; d < dim; ++d) {
    const T* row = ct + d * stride;
    V c[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&c[v], row + v * W, sizeof(V));
    for (int r = 0; r < R; ++r) {
      const V xd = V{} + x[r][d];
      for (int v = 0; v < NV; ++v) acc[r][v] += xd * c[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      T a[W];
      std::memcpy(a, &acc[r][v], sizeof(V));
      for (int w = 0; w < W; ++w) vals[r * vals_stride + v * W + w] = csq[v * W + w] - T(2) * a[w];
    }
}

// Values of R points against all `width` (padded) columns of one group.
template <typename T, int R>
inline void group_tile_values(const T* const* x, const T* ct, int64_t width, int64_t dim, const T* csq, T* vals,
                              int64_t vals_stride) {
  constexpr int W = Vec<T>::width;
  int64_t c0 = 0;
  for (; c0 + 2 * W <= width; c0 += 2 * W)
    tile_values<T, R, 2>(x, ct + c0, width, dim, csq + c0, vals + c0, vals_stride);
  if (c0 < width) tile_values<T, R, 1>(x, ct + c0, width, dim, csq + c0, vals + c0, vals_stride);
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t dim) {
  T acc = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : acc)
#endif
  for (int64_t d = 0; d < dim; ++d) acc += a[d] * b[d];
  return acc;
}

// Everything one pass reads about the centres.
template <typename T>
struct Centres {
  int64_t k, dim, groups;
  const T* rows;              // [K, D], group order
  const int64_t* order;       // [K]: original index
  const int64_t* offsets;     // [T + 1]
  const int64_t* group_of;    // [K]
  const T* csq;               // [K]
  T csq_max;
  // Transposed, padded copy for the bounded pass: group g is a [D][P_g]
  // block at ct + pad_offsets[g] * D, its |c|^2 at csq_pad + pad_offsets[g].
  const T* ct;
  const T* csq_pad;
  const int64_t* pad_offsets;  // [T + 1]
};

// A point still in play in a block of the bounded pass.
template <typename T>
struct Candidate {
  int64_t row;
  int64_t old_j;  // its centre before the pass
  T old_v;        // and the value of it
  T err;          // bound on the rounding error of its values
  T best_v;
  int64_t best_j;
  bool old_examined;
  T best_direct;  // direct squared distance to best_j, NaN until needed
};

template <typename T>
inline T min_of(const T* v, int64_t n) {
  T m = std::numeric_limits<T>::infinity();
#if defined(_OPENMP)
#pragma omp simd reduction(min : m)
#endif
  for (int64_t t = 0; t < n; ++t) m = v[t] < m ? v[t] : m;
  return m;
}

}  // namespace dsch_ext::bounded_kmeans
