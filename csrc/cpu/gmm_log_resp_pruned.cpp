// The pruned float64 'full' route of the CPU E-step (resp_floor > 0;
// gmm_log_resp.cpp describes the routes): an upper bound on every log
// probability from a few columns of each precision factor, the exact value of
// the best-bounded component, and exact values only where the bound cannot
// rule an entry out of the floor; rows the bounds cannot settle go to the
// expanded route.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <tuple>
#include <vector>

#include "gmm_cpu_routes.h"

namespace dsch_ext::gmm_cpu {

// Rounding bound of the partial sum q = sum_t (x L_jt - b_jt)^2 over the
// chosen columns: each term's error is below d_t = gamma (||x|| + ||mu||)
// ||L_jt|| + eps |y_t|; with E^2 = sum d_t^2 and 2 sqrt(q) E <= h q + E^2 / h,
// |q_computed - q| <= q (h + gamma_m + 2 eps^2 (1 + 1/h)) + 2 (1 + 1/h) gamma^2
// (||x|| + ||mu_k||)^2 s_k^2, s_k^2 the chosen columns' squared norms.
// slack_k holds 2 (1 + 1/h) gamma^2 s_k^2 (gamma doubled for safety).
PrunedFull prepare_pruned_full(const at::Tensor& means, const at::Tensor& chol, const at::Tensor& b) {
  const int64_t k = means.size(0), d = means.size(1);
  PrunedFull pr;
  pr.m = kPruneColumns;  // the route needs D >= kExpandedMinDim >= kPruneColumns
  const at::Tensor col_sq = chol.pow(2).sum(1);                              // [K, D]: ||L_k[:, j]||^2
  const at::Tensor cols = std::get<1>(col_sq.topk(pr.m, 1));                 // [K, m]
  const at::Tensor picked = chol.gather(2, cols.unsqueeze(1).expand({k, d, pr.m}));  // [K, D, m]
  pr.columns = picked.contiguous();
  pr.chol = chol;
  pr.b = b.gather(1, cols).reshape({k * pr.m}).contiguous();
  pr.mu_norm = means.norm(2, 1).contiguous();
  const double eps = std::numeric_limits<double>::epsilon();
  const double gamma = 2.0 * static_cast<double>(d + 2) * eps;
  pr.slack = col_sq.gather(1, cols).sum(1).mul(2.0 * (1.0 + 1.0 / kPruneRelativeSlack) * gamma * gamma).contiguous();
  return pr;
}

namespace {

// The pruned route's bounds, fused: for rows x [rows, D] and every component
// c, q = ||x C_c - bsel_c||^2 over its kPruneColumns chosen columns C_c
// ([D, 8], row-major) and the bound lc_c - 0.5 (q relative - (||x|| +
// ||mu_c||)^2 slack_c), written to out (row stride k). Four rows share each
// loaded column vector; components go in L2-sized blocks. The same multiply-
// adds as a GEMM, but the [rows, 8 K] product never reaches memory.
DSCH_CPU_CLONES void prune_bounds(const double* x, int64_t rows, int64_t dim, const double* columns,
                                  const double* bsel, const double* lc, const double* mun, const double* slack,
                                  const double* xnorm, double relative, int64_t k, double* out) {
  static_assert(kPruneColumns == 8, "prune_bounds holds one component's 8 columns in one 8-lane vector");
  // GCC vector extension: 8 doubles, one AVX-512 register (two AVX2 ones). Eight rows give
  // eight independent multiply-add chains, enough to hide the FMA latency; written as plain
  // arrays, the compiler turned the loops around into one chain per row.
  typedef double v8 __attribute__((vector_size(64)));
  constexpr int R = 8;
  const int64_t comp_block = std::max<int64_t>(1, (256 << 10) / (dim * kPruneColumns * 8));
  for (int64_t c0 = 0; c0 < k; c0 += comp_block) {
    const int64_t c1 = std::min(k, c0 + comp_block);
    for (int64_t r0 = 0; r0 < rows; r0 += R) {
      const int nr = static_cast<int>(std::min<int64_t>(R, rows - r0));
      const double* xr[R];
      for (int j = 0; j < R; ++j) xr[j] = x + (r0 + std::min(j, nr - 1)) * dim;
      for (int64_t c = c0; c < c1; ++c) {
        const double* col = columns + c * dim * kPruneColumns;
        v8 acc[R];
        for (int j = 0; j < R; ++j) acc[j] = v8{0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t i = 0; i < dim; ++i) {
          v8 lv;
          std::memcpy(&lv, col + i * kPruneColumns, sizeof(lv));
#pragma GCC unroll 8
          for (int j = 0; j < R; ++j) acc[j] += xr[j][i] * lv;
        }
        v8 bc;
        std::memcpy(&bc, bsel + c * kPruneColumns, sizeof(bc));
        for (int j = 0; j < nr; ++j) {
          const v8 y = acc[j] - bc;
          const v8 y2 = y * y;
          double q = 0;
          for (int t = 0; t < kPruneColumns; ++t) q += y2[t];
          const double xm = xnorm[r0 + j] + mun[c];
          out[(r0 + j) * k + c] = lc[c] - 0.5 * (q * relative - xm * xm * slack[c]);
        }
      }
    }
  }
}

// Rows [r0, r0 + rows) (at most kPruneRowBlock) on the pruned route: log
// probabilities into the output rows, -inf where the floor cuts for sure.
// Rows whose best component leaves too many others within reach of their
// bounds (points no component explains, whose partial bounds are all alike)
// are appended to w.hard for the expanded route (flush_hard_rows).
void pruned_rows(const GmmPrepared& g, const PrunedFull& pr, double log_floor, Workspace<double>& w, at::Tensor& out,
                 int64_t r0, int64_t rows) {
  const int64_t dim = g.x.size(1), k = g.b.size(0), m = pr.m;
  const double* x = g.x.const_data_ptr<double>() + r0 * dim;
  double* orow = out.narrow(0, r0, rows).data_ptr<double>();
  const double* lc = g.log_const.const_data_ptr<double>();
  const double* bsel = pr.b.const_data_ptr<double>();
  const double* mun = pr.mu_norm.const_data_ptr<double>();
  const double* slack = pr.slack.const_data_ptr<double>();
  const double* chol = pr.chol.const_data_ptr<double>();
  const double* b = g.b.const_data_ptr<double>();
  const double relative = 1.0 - (kPruneRelativeSlack + 2.0 * static_cast<double>(m + 2) *
                                 std::numeric_limits<double>::epsilon() + 1e-15);
  // Upper bounds into the output rows.
  w.y.resize(dim);
  w.norms.resize(std::max<size_t>(w.norms.size(), rows));
  for (int64_t r = 0; r < rows; ++r) {
    double sq = 0;
    for (int64_t i = 0; i < dim; ++i) sq += x[r * dim + i] * x[r * dim + i];
    w.norms[r] = std::sqrt(sq);
  }
  prune_bounds(x, rows, dim, pr.columns.const_data_ptr<double>(), bsel, lc, mun, slack, w.norms.data(), relative, k,
               orow);
  const double cut_width = -log_floor;
  const int64_t max_survivors = std::max<int64_t>(2, k / kExactPerRowDivisor);  // beyond: the expanded GEMM
  for (int64_t r = 0; r < rows; ++r) {
    double* o = orow + r * k;
    const double* xp = x + r * dim;
    int64_t best = 0;
    for (int64_t c = 1; c < k; ++c) best = o[c] > o[best] ? c : best;
    double top;
    exact_full_entry(xp, chol + best * dim * dim, b + best * dim, lc[best], dim, w.y.data(), &top);
    const double cut = top - cut_width;
    w.cand.clear();
    for (int64_t c = 0; c < k; ++c) {
      if (c != best && o[c] >= cut) w.cand.push_back(c);
    }
    if (!std::isfinite(top) || static_cast<int64_t>(w.cand.size()) > max_survivors) {
      w.hard.push_back(r0 + r);  // computed later with others like it
      continue;
    }
    w.vals.resize(w.cand.size());
    for (size_t i = 0; i < w.cand.size(); ++i) {
      const int64_t c = w.cand[i];
      exact_full_entry(xp, chol + c * dim * dim, b + c * dim, lc[c], dim, w.y.data(), &w.vals[i]);
    }
    std::fill(o, o + k, -std::numeric_limits<double>::infinity());
    o[best] = top;
    for (size_t i = 0; i < w.cand.size(); ++i) o[w.cand[i]] = w.vals[i];
  }
}

// The rows the pruned route handed over (w.hard, absolute indices), on the
// expanded route in one GEMM (the stable one, row by row, if that fails or
// e is null).
bool flush_hard_rows(const GmmPrepared& g, const ExpandedFull* e, Workspace<double>& w, at::Tensor& buffer,
                     at::Tensor& out) {
  using scalar_t = double;
  if (w.hard.empty()) return true;
  const int64_t nh = static_cast<int64_t>(w.hard.size()), k = g.b.size(0);
  const at::Tensor idx = at::tensor(w.hard, at::TensorOptions().dtype(at::kLong));
  if (!w.hard_out.defined() || w.hard_out.size(0) < nh) w.hard_out = at::empty({nh, k}, g.x.options());
  at::Tensor hard_out = w.hard_out.narrow(0, 0, nh);
  scalar_t* o = out.data_ptr<scalar_t>();
  const at::Tensor x_hard = g.x.index_select(0, idx);
  const bool expanded_ok = e != nullptr && expanded_rows<scalar_t>(g, *e, w, x_hard, hard_out);
  if (!expanded_ok) stable_full_rows<scalar_t>(g, x_hard, buffer, hard_out.template data_ptr<scalar_t>());
  const scalar_t* ho = hard_out.const_data_ptr<scalar_t>();
  for (int64_t i = 0; i < nh; ++i) std::memcpy(o + w.hard[i] * k, ho + i * k, sizeof(scalar_t) * k);
  w.hard.clear();
  return expanded_ok;
}

}  // namespace

void pruned_e_step(const GmmPrepared& g, const PrunedFull& pr, double log_floor,
                   const std::function<const ExpandedFull*()>& expanded, at::Tensor& out, at::Tensor& out_norm) {
  const int64_t n = g.x.size(0), k = g.b.size(0);
  double* o = out.data_ptr<double>();
  double* on = out_norm.data_ptr<double>();
  // 1. Bounds and exact values where they are few; the other rows collected.
  std::vector<int64_t> hard;
  std::mutex hard_mutex;
  const int64_t nsub = (n + kPruneRowBlock - 1) / kPruneRowBlock;
  at::parallel_for(0, nsub, 1, [&](int64_t t0, int64_t t1) {
    Workspace<double> w;
    int64_t skip = 0;  // after a block the bound mostly failed, the next kRetryAfter go straight on
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * kPruneRowBlock, rows = std::min(kPruneRowBlock, n - r0);
      if (skip > 0) {
        --skip;
        for (int64_t r = r0; r < r0 + rows; ++r) w.hard.push_back(r);
        continue;
      }
      const size_t before = w.hard.size();
      pruned_rows(g, pr, log_floor, w, out, r0, rows);
      if (static_cast<int64_t>(w.hard.size() - before) * 4 > rows * 3) skip = kRetryAfter;
    }
    const std::lock_guard<std::mutex> lock(hard_mutex);
    hard.insert(hard.end(), w.hard.begin(), w.hard.end());
  });
  // 2. The collected rows on the expanded route, a GEMM's worth at a time.
  if (!hard.empty()) {
    std::sort(hard.begin(), hard.end());
    const ExpandedFull* e = expanded();
    const int64_t nh = static_cast<int64_t>(hard.size());
    const int64_t nchunks = (nh + kExpandedRowBlock - 1) / kExpandedRowBlock;
    at::parallel_for(0, nchunks, 1, [&](int64_t t0, int64_t t1) {
      Workspace<double> w;
      at::Tensor buffer;
      int64_t skip = 0;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t h0 = t * kExpandedRowBlock, h1 = std::min(nh, h0 + kExpandedRowBlock);
        w.hard.assign(hard.begin() + h0, hard.begin() + h1);
        const bool try_expanded = e != nullptr && skip == 0;
        skip = skip > 0 ? skip - 1 : 0;
        if (!flush_hard_rows(g, try_expanded ? e : nullptr, w, buffer, out) && try_expanded) {
          skip = kRetryAfter;
        }
      }
    });
  }
  // 3. Normalise.
  at::parallel_for(0, (n + kRowBlock - 1) / kRowBlock, 1, [&](int64_t t0, int64_t t1) {
    const int64_t r0 = t0 * kRowBlock, r1 = std::min(n, t1 * kRowBlock);
    normalize_rows_dispatch(o + r0 * k, on + r0, r1 - r0, k, log_floor);
  });
}

}  // namespace dsch_ext::gmm_cpu
