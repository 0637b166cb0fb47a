// CPU kernel of dsch_ext::nearest_center: index and squared Euclidean
// distance of each point's nearest centre, ties to the lower index.
//
// Points are taken in blocks (for_each_dot_block, center_stats.h): one BLAS
// GEMM gives a block's inner products with every centre in a small per-thread
// buffer, then a scan picks each row's minimum of |c|^2 - 2 <x, c> (|x|^2 is
// constant along the row); the centres within rounding of it, if more than
// one, are compared on directly computed distances (center_math.h: equal
// centres tie exactly, the lower index wins). Extra memory is O(N + K) plus
// one block buffer per thread, never N x K.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "../common/center_checks.h"
#include "center_stats.h"

namespace dsch_ext {
namespace {

// min_j |c_j|^2 - 2 dots[j] and its lowest index: a vectorised min, then the
// first index that attains it (the same answer as nearer_center's scan).
template <typename T>
T nearest_in_row_impl(const T* dots, const T* c_sqnorm, int64_t k, int64_t* best_j) {
  T best = std::numeric_limits<T>::infinity();
#if defined(_OPENMP)
#pragma omp simd reduction(min : best)
#endif
  for (int64_t j = 0; j < k; ++j) {
    const T v = c_sqnorm[j] - T(2) * dots[j];
    best = v < best ? v : best;
  }
  int64_t j = 0;
  while (j < k - 1 && !(c_sqnorm[j] - T(2) * dots[j] == best)) ++j;
  *best_j = j;
  return best;
}

DSCH_CPU_CLONES float nearest_in_row(const float* dots, const float* cs, int64_t k, int64_t* best_j) {
  return nearest_in_row_impl<float>(dots, cs, k, best_j);
}
DSCH_CPU_CLONES double nearest_in_row(const double* dots, const double* cs, int64_t k, int64_t* best_j) {
  return nearest_in_row_impl<double>(dots, cs, k, best_j);
}

// How many centres have |c_j|^2 - 2 dots[j] <= limit.
template <typename T>
int64_t count_within_impl(const T* dots, const T* c_sqnorm, int64_t k, T limit) {
  int64_t count = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : count)
#endif
  for (int64_t j = 0; j < k; ++j) count += c_sqnorm[j] - T(2) * dots[j] <= limit;
  return count;
}

DSCH_CPU_CLONES int64_t count_within(const float* dots, const float* cs, int64_t k, float limit) {
  return count_within_impl<float>(dots, cs, k, limit);
}
DSCH_CPU_CLONES int64_t count_within(const double* dots, const double* cs, int64_t k, double limit) {
  return count_within_impl<double>(dots, cs, k, limit);
}

std::tuple<at::Tensor, at::Tensor> nearest_center_cpu(const at::Tensor& x_in,
                                                      const at::Tensor& centers_in) {
  const NearestCenterCall call = start_nearest_center(x_in, centers_in);
  const at::Tensor &x = call.x, &centers = call.centers, &index = call.index, &distance = call.distance;
  const int64_t n = x.size(0), k = centers.size(0);
  const auto x_stats = center_row_stats_cpu(x, kSqEuclidean, "x");
  const auto c_stats = center_row_stats_cpu(centers, kSqEuclidean, "centers");
  if (n == 0) return {index, distance};
  const int64_t dim = x.size(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nearest_center_cpu", [&] {
    const scalar_t* xs = x_stats.first.const_data_ptr<scalar_t>();
    const scalar_t* cs = c_stats.first.const_data_ptr<scalar_t>();
    int64_t* oi = index.data_ptr<int64_t>();
    scalar_t* od = distance.data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* cp = centers.const_data_ptr<scalar_t>();
    const scalar_t cs_max = *std::max_element(cs, cs + k);
    for_each_dot_block<scalar_t>(x, centers, [&](int64_t b0, int64_t rows, const scalar_t* dp) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = b0 + r;
        int64_t best_j = 0;
        const scalar_t best = nearest_in_row(dp + r * k, cs, k, &best_j);
        const scalar_t margin =
            2 * expanded_sqdist_error(dim, xs[i], cs_max, std::numeric_limits<scalar_t>::epsilon());
        if (count_within(dp + r * k, cs, k, best + margin) > 1) {
          // Near or exact ties: settle them on directly computed distances.
          scalar_t best_d = std::numeric_limits<scalar_t>::infinity();
          for (int64_t j = 0; j < k; ++j) {
            if (!(cs[j] - scalar_t(2) * dp[r * k + j] <= best + margin)) continue;
            const scalar_t d = direct_sqdist(xp + i * dim, cp + j * dim, dim);
            if (d < best_d) {
              best_d = d;
              best_j = j;
            }
          }
          oi[i] = best_j;
          od[i] = best_d;
          continue;
        }
        oi[i] = best_j;
        const scalar_t d = xs[i] + best;
        od[i] = d > scalar_t(0) ? d : scalar_t(0);
      }
    });
  });
  return {index, distance};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("nearest_center", &nearest_center_cpu); }

}  // namespace dsch_ext
