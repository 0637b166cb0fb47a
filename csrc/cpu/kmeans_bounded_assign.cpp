// CPU kernel of dsch_ext::_kmeans_bounded_assign: one k-means assignment pass
// that skips the centres the triangle inequality rules out (Yinyang k-means,
// Ding et al., ICML 2015), with the answers of the plain pass.
//
// The centres come sorted into T groups (rows [offsets[g], offsets[g+1])).
// Each point keeps an upper bound u on the distance to its centre and, per
// group, a lower bound on the distance to every other centre of the group.
// When centres move by drift[j], u grows by its centre's drift and a group's
// bound falls by the group's largest drift; a group whose bound stays above u
// cannot hold a nearer centre and is not looked at. Group bounds are stored
// lazily as bound + total_drift[g] at the time they were set, so a pass does
// not have to rewrite all N x T of them: the bound now is the stored value
// minus total_drift[g] now.
//
// Exactness: distances are computed as |x|^2 + |c|^2 - 2 <x, c>; every bound
// set from a computed value is widened by a rigorous bound on that value's
// rounding error, and the comparisons carry a relative margin for the
// rounding of the bound updates, so a skipped centre is farther than the
// chosen one in exact arithmetic too. Ties go to the lower original index
// (order[j]), as in nearest_center. Points are independent: the answer does
// not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kmeans_bounds.h"

namespace dsch_ext {
namespace {

using namespace bounded_kmeans;

// The bounded pass over rows [r0, r1), in blocks of kBlock points: first the
// points whose bounds decide them, then, group by group, every remaining
// point that has to look at the group, in register tiles of kTileRows points, then
// each point's new label and bounds.
constexpr int64_t kBlock = 64;
constexpr int kTileRows = 6;  // x 2 vectors of centres: 12 accumulators

template <typename T>
DSCH_CPU_CLONES void bounded_rows(const T* x, const T* xsq, const Centres<T>& cs, const T* drift,
                                  const T* total_drift, int64_t* labels, T* upper, T* lower, int64_t r0,
                                  int64_t r1, int64_t* computed) {
  const T inf = std::numeric_limits<T>::infinity();
  const Rounding<T> rounding(cs.dim);
  const int64_t groups = cs.groups, dim = cs.dim;
  const T f_low = T(1) - rounding.rel, f_drift = T(1) + rounding.rel;
  std::vector<T> drift_margin(groups);
  for (int64_t g = 0; g < groups; ++g) drift_margin[g] = total_drift[g] * f_drift;
  int64_t max_width = 0;
  for (int64_t g = 0; g < groups; ++g) max_width = std::max(max_width, cs.pad_offsets[g + 1] - cs.pad_offsets[g]);
  std::vector<Candidate<T>> cand(kBlock);
  // Per group: the candidates (indices into cand) that look at it and the
  // value of their nearest centre in it.
  std::vector<int32_t> list(groups * kBlock), list_len(groups);
  std::vector<T> res_min(groups * kBlock), vals(kTileRows * max_width);
  int64_t count = 0;
  for (int64_t b0 = r0; b0 < r1; b0 += kBlock) {
    const int64_t b1 = std::min(r1, b0 + kBlock);
    int32_t m = 0;
    std::fill(list_len.begin(), list_len.end(), 0);
    for (int64_t i = b0; i < b1; ++i) {
      const T* li = lower + i * groups;
      const int64_t a = labels[i];
      T u = (upper[i] + drift[a]) * f_drift;
      T lb = inf;
#if defined(_OPENMP)
#pragma omp simd reduction(min : lb)
#endif
      for (int64_t g = 0; g < groups; ++g) {
        const T l = li[g] * f_low - drift_margin[g];
        lb = l < lb ? l : lb;
      }
      if (u < lb) {
        upper[i] = u;
        continue;
      }
      const T err = rounding.error(xsq[i], cs.csq_max);
      const T va = cs.csq[a] - T(2) * dot(x + i * dim, cs.rows + a * dim, dim);
      ++count;
      u = rounding.upper(xsq[i] + va, err);
      if (u < lb) {
        upper[i] = u;
        continue;
      }
      cand[m] = {i, a, va, err, va, a, false, std::numeric_limits<T>::quiet_NaN()};
      for (int64_t g = 0; g < groups; ++g) {  // branch-free: the outcome is a coin toss
        list[g * kBlock + list_len[g]] = m;
        list_len[g] += !(u < li[g] * f_low - drift_margin[g]);
      }
      ++m;
    }
    if (m == 0) continue;
    for (int64_t g = 0; g < groups; ++g) {
      const int32_t len = list_len[g];
      if (len == 0) continue;
      const int64_t j0 = cs.offsets[g], n = cs.offsets[g + 1] - j0;
      const int64_t p0 = cs.pad_offsets[g], width = cs.pad_offsets[g + 1] - p0;
      const T* ct = cs.ct + p0 * dim;
      const T* csq = cs.csq_pad + p0;
      count += n * len;
      for (int32_t t0 = 0; t0 < len; t0 += kTileRows) {
        const int rows = static_cast<int>(std::min<int32_t>(kTileRows, len - t0));
        const T* xr[kTileRows];
        for (int r = 0; r < rows; ++r) xr[r] = x + cand[list[g * kBlock + t0 + r]].row * dim;
        switch (rows) {
          case 1: group_tile_values<T, 1>(xr, ct, width, dim, csq, vals.data(), max_width); break;
          case 2: group_tile_values<T, 2>(xr, ct, width, dim, csq, vals.data(), max_width); break;
          case 3: group_tile_values<T, 3>(xr, ct, width, dim, csq, vals.data(), max_width); break;
          case 4: group_tile_values<T, 4>(xr, ct, width, dim, csq, vals.data(), max_width); break;
          case 5: group_tile_values<T, 5>(xr, ct, width, dim, csq, vals.data(), max_width); break;
          default: group_tile_values<T, kTileRows>(xr, ct, width, dim, csq, vals.data(), max_width); break;
        }
        for (int r = 0; r < rows; ++r) {
          const int32_t slot = t0 + r;
          Candidate<T>& c = cand[list[g * kBlock + slot]];
          const T* v = vals.data() + r * max_width;
          const T m1 = min_of(v, width);  // padding columns are +inf
          res_min[g * kBlock + slot] = m1;
          c.old_examined |= cs.group_of[c.old_j] == g;
          if (m1 <= c.best_v + T(2) * c.err) {
            // Within a group the rows keep the original order: the first
            // row attaining the minimum has the lowest original index.
            int64_t t = 0;
            while (!(v[t] == m1)) ++t;
            const int64_t j = j0 + t;
            if (m1 < c.best_v - T(2) * c.err) {
              c.best_v = m1;
              c.best_j = j;
              c.best_direct = std::numeric_limits<T>::quiet_NaN();
            } else if (j != c.best_j) {
              // Within rounding of each other: direct distances decide
              // (center_math.h), ties to the lower original index.
              const T* xi = x + c.row * dim;
              if (std::isnan(c.best_direct)) c.best_direct = direct_sqdist(xi, cs.rows + c.best_j * dim, dim);
              const T d = direct_sqdist(xi, cs.rows + j * dim, dim);
              if (nearer_center(d, cs.order[j], c.best_direct, cs.order[c.best_j])) {
                c.best_v = m1;
                c.best_j = j;
                c.best_direct = d;
              }
            }
          }
        }
      }
    }
    for (int32_t p = 0; p < m; ++p) {
      const Candidate<T>& c = cand[p];
      labels[c.row] = c.best_j;
      upper[c.row] = rounding.upper(xsq[c.row] + c.best_v, c.err);
      if (c.best_j != c.old_j && !c.old_examined) {
        // The old centre is now one of its group's others.
        const int64_t ga = cs.group_of[c.old_j];
        T& l = lower[c.row * groups + ga];
        l = std::min(l, rounding.lower(xsq[c.row] + c.old_v, c.err) + total_drift[ga]);
      }
    }
    for (int64_t g = 0; g < groups; ++g)
      for (int32_t slot = 0; slot < list_len[g]; ++slot) {
        const Candidate<T>& c = cand[list[g * kBlock + slot]];
        T v = res_min[g * kBlock + slot];
        if (cs.group_of[c.best_j] == g) {
          // The group of the point's centre: its bound is over the others.
          const int64_t j0 = cs.offsets[g], p0 = cs.pad_offsets[g], width = cs.pad_offsets[g + 1] - p0;
          const T* xr[1] = {x + c.row * dim};
          group_tile_values<T, 1>(xr, cs.ct + p0 * dim, width, dim, cs.csq_pad + p0, vals.data(), max_width);
          vals[c.best_j - j0] = inf;
          v = min_of(vals.data(), width);
        }
        lower[c.row * groups + g] = rounding.lower(xsq[c.row] + v, c.err) + total_drift[g];
      }
  }
  *computed += count;
}

// One row of the exact pass from its inner products with every centre (group
// order): values v[j] = |c_j|^2 - 2 <x, c_j> into scratch v, then the label,
// u and every group's bound.
template <typename T>
DSCH_CPU_CLONES void exact_row(const T* x, const T* dots, T* v, T xsq, const Centres<T>& cs,
                               const T* total_drift, int64_t* label, T* upper, T* lower) {
  const T inf = std::numeric_limits<T>::infinity();
  const Rounding<T> rounding(cs.dim);
  const int64_t k = cs.k, groups = cs.groups;
#if defined(_OPENMP)
#pragma omp simd
#endif
  for (int64_t j = 0; j < k; ++j) v[j] = cs.csq[j] - T(2) * dots[j];
  // Each group's minimum (into lower for now), then the overall one.
  T best = inf;
  for (int64_t g = 0; g < groups; ++g) {
    const T m = min_of(v + cs.offsets[g], cs.offsets[g + 1] - cs.offsets[g]);
    lower[g] = m;
    best = m < best ? m : best;
  }
  // The nearest centre: the first row attaining the minimum in each group that
  // attains it (rows keep the original order within a group), the lowest
  // original index across groups.
  int64_t best_j = -1;
  for (int64_t g = 0; g < groups; ++g) {
    if (!(lower[g] == best)) continue;
    int64_t j = cs.offsets[g];
    while (!(v[j] == best)) ++j;
    if (best_j < 0 || cs.order[j] < cs.order[best_j]) best_j = j;
  }
  if (best_j < 0) best_j = 0;  // cannot happen with finite inputs; keep a valid label
  const T err = rounding.error(xsq, cs.csq_max);
  int64_t near = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : near)
#endif
  for (int64_t j = 0; j < k; ++j) near += v[j] <= best + T(2) * err;
  if (near > 1) {
    // Within rounding of each other: direct distances decide (center_math.h).
    T best_d = inf;
    for (int64_t j = 0; j < k; ++j) {
      if (!(v[j] <= best + T(2) * err)) continue;
      const T d = direct_sqdist(x, cs.rows + j * cs.dim, cs.dim);
      if (nearer_center(d, cs.order[j], best_d, cs.order[best_j]) || best_d == inf) {
        best_d = d;
        best_j = j;
      }
    }
  }
  *label = best_j;
  *upper = rounding.upper(xsq + v[best_j], err);
  // The bound of the centre's own group is over its other centres.
  const int64_t gb = cs.group_of[best_j];
  v[best_j] = inf;
  lower[gb] = min_of(v + cs.offsets[gb], cs.offsets[gb + 1] - cs.offsets[gb]);
  for (int64_t g = 0; g < groups; ++g) lower[g] = rounding.lower(xsq + lower[g], err) + total_drift[g];
}

at::Tensor kmeans_bounded_assign_cpu(const at::Tensor& x_in, const at::Tensor& x_sqnorm_in,
                                     const at::Tensor& centers_in, const at::Tensor& order_in,
                                     const at::Tensor& group_offsets_in, const at::Tensor& drift_in,
                                     const at::Tensor& total_drift_in, const at::Tensor& labels,
                                     const at::Tensor& upper, const at::Tensor& lower, bool exact) {
  check_points_centers(x_in, centers_in);
  const int64_t n = x_in.size(0), k = centers_in.size(0), dim = x_in.size(1);
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK(group_offsets_in.dim() == 1 && group_offsets_in.scalar_type() == at::kLong &&
                  group_offsets_in.size(0) >= 2,
              "group_offsets must be int64 [T + 1] with T >= 1, got ", group_offsets_in.scalar_type(),
              " with shape ", group_offsets_in.sizes());
  const int64_t groups = group_offsets_in.size(0) - 1;
  auto check_vec = [&](const at::Tensor& t, const char* name, int64_t len, at::ScalarType type) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == len && t.scalar_type() == type, name, " must be ", type, " [",
                len, "], got ", t.scalar_type(), " with shape ", t.sizes());
    TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
  };
  check_vec(x_sqnorm_in, "x_sqnorm", n, dtype);
  check_vec(order_in, "order", k, at::kLong);
  check_vec(drift_in, "drift", k, dtype);
  check_vec(total_drift_in, "total_drift", groups, dtype);
  check_vec(labels, "labels", n, at::kLong);
  check_vec(upper, "upper", n, dtype);
  TORCH_CHECK(lower.dim() == 2 && lower.size(0) == n && lower.size(1) == groups && lower.scalar_type() == dtype,
              "lower must be ", dtype, " [N, T] = [", n, ", ", groups, "], got ", lower.scalar_type(),
              " with shape ", lower.sizes());
  TORCH_CHECK(labels.is_contiguous() && upper.is_contiguous() && lower.is_contiguous(),
              "labels, upper and lower must be contiguous (they are updated in place)");
  const at::Tensor offsets = group_offsets_in.contiguous();
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[groups] == k, "group_offsets must run from 0 to K = ", k, ", got ",
              off[0], " .. ", off[groups]);
  for (int64_t g = 0; g < groups; ++g)
    TORCH_CHECK(off[g] <= off[g + 1], "group_offsets must be non-decreasing (shape ", offsets.sizes(), ")");
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const at::Tensor x_sqnorm = x_sqnorm_in.contiguous(), order = order_in.contiguous();
  const int64_t* ord = order.const_data_ptr<int64_t>();
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t j = off[g] + 1; j < off[g + 1]; ++j)
      TORCH_CHECK(ord[j - 1] < ord[j], "order must increase within each group (rows ", j - 1, " and ", j,
                  " of group ", g, ")");
  const at::Tensor drift = drift_in.contiguous(), total_drift = total_drift_in.contiguous();

  std::vector<int64_t> group_of(k);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t j = off[g]; j < off[g + 1]; ++j) group_of[j] = g;
  std::atomic<int64_t> computed{0};
  const at::Tensor c_sqnorm = center_row_stats_cpu(centers, kSqEuclidean, "centers").second;

  AT_DISPATCH_FLOATING_TYPES(dtype, "kmeans_bounded_assign_cpu", [&] {
    using T = scalar_t;
    constexpr int W = Vec<T>::width;
    const T* cr = centers.const_data_ptr<T>();
    const T* csq = c_sqnorm.const_data_ptr<T>();
    const T csq_max = *std::max_element(csq, csq + k);
    Centres<T> cs{k, dim, groups, cr, ord, off, group_of.data(), csq, csq_max, nullptr, nullptr, nullptr};
    const T* xs = x.const_data_ptr<T>();
    const T* xsq = x_sqnorm.const_data_ptr<T>();
    const T* td = total_drift.const_data_ptr<T>();
    int64_t* lab = labels.data_ptr<int64_t>();
    T* up = upper.data_ptr<T>();
    T* lo = lower.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i)
      TORCH_CHECK(std::isfinite(xsq[i]), "x_sqnorm[", i, "] is not finite: x contains NaN or Inf (shape ",
                  x.sizes(), ")");
    if (exact) {
      for_each_dot_block<T>(x, centers, [&](int64_t b0, int64_t rows, const T* dp) {
        std::vector<T> v(k);
        for (int64_t r = 0; r < rows; ++r)
          exact_row(xs + (b0 + r) * dim, dp + r * k, v.data(), xsq[b0 + r], cs, td, lab + b0 + r, up + b0 + r,
                    lo + (b0 + r) * groups);
      });
      computed = n * k;
      return;
    }
    // Transposed, padded copy of the centres for the bounded pass.
    std::vector<int64_t> pad_offsets(groups + 1, 0);
    for (int64_t g = 0; g < groups; ++g)
      pad_offsets[g + 1] = pad_offsets[g] + (off[g + 1] - off[g] + W - 1) / W * W;
    const int64_t padded = pad_offsets[groups];
    std::vector<T> ct(padded * dim, T(0)), csq_pad(padded, std::numeric_limits<T>::infinity());
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t width = pad_offsets[g + 1] - pad_offsets[g];
      T* block = ct.data() + pad_offsets[g] * dim;
      for (int64_t j = off[g]; j < off[g + 1]; ++j) {
        const int64_t col = j - off[g];
        csq_pad[pad_offsets[g] + col] = csq[j];
        for (int64_t d = 0; d < dim; ++d) block[d * width + col] = cr[j * dim + d];
      }
    }
    cs.ct = ct.data();
    cs.csq_pad = csq_pad.data();
    cs.pad_offsets = pad_offsets.data();
    const T* dr = drift.const_data_ptr<T>();
    for (int64_t i = 0; i < n; ++i)
      TORCH_CHECK(lab[i] >= 0 && lab[i] < k, "labels[", i, "] = ", lab[i], " is not a centre row in [0, ", k,
                  "): pass exact=True to start the bounds");
    at::parallel_for(0, n, 256, [&](int64_t r0, int64_t r1) {
      int64_t local = 0;
      bounded_rows(xs, xsq, cs, dr, td, lab, up, lo, r0, r1, &local);
      computed += local;
    });
  });
  return at::scalar_tensor(static_cast<double>(computed.load()), at::TensorOptions().dtype(at::kLong));
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("_kmeans_bounded_assign", &kmeans_bounded_assign_cpu); }

}  // namespace dsch_ext
