// The expanded 'full' route of the CPU E-step (gmm_log_resp.cpp describes the
// routes): the quadratic form x'Px - 2x'P mu + mu'P mu as one GEMM of each
// point's packed products by per-component coefficients, then every entry its
// rounding bound leaves within kExpandedMargin nats of the row's best
// recomputed exactly in the stable form.
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/triu_indices.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "gmm_cpu_routes.h"

namespace dsch_ext::gmm_cpu {
namespace {

// Exact (stable-form) weighted log probability of point x under component c:
// y = x L_c into `y`, then the shared arithmetic of gmm_math.h.
template <typename T>
void exact_full_entry_impl(const T* x, const T* chol_c, const T* b_c, T log_const_c, int64_t dim, T* y, T* out) {
  std::memset(y, 0, sizeof(T) * dim);
  for (int64_t i = 0; i < dim; ++i) {
    const T xi = x[i];
    const T* lrow = chol_c + i * dim;
#if defined(_OPENMP)
#pragma omp simd
#endif
    for (int64_t j = 0; j < dim; ++j) y[j] += xi * lrow[j];
  }
  *out = gmm_weighted_log_prob<T>(kGmmFull, y, nullptr, b_c, log_const_c, dim);
}
DSCH_CPU_CLONES void exact_full_entry_float(const float* x, const float* l, const float* b, float lc, int64_t dim,
                                            float* y, float* out) {
  exact_full_entry_impl<float>(x, l, b, lc, dim, y, out);
}
DSCH_CPU_CLONES void exact_full_entry_double(const double* x, const double* l, const double* b, double lc, int64_t dim,
                                             double* y, double* out) {
  exact_full_entry_impl<double>(x, l, b, lc, dim, y, out);
}

// Packed products of one point: x_i x_j (i <= j), x, 1; returns ||phi||.
template <typename T>
double pack_point_impl(const T* x, int64_t dim, T* phi) {
  int64_t f = 0;
  for (int64_t i = 0; i < dim; ++i) {
    const T xi = x[i];
    for (int64_t j = i; j < dim; ++j) phi[f + j - i] = xi * x[j];
    f += dim - i;
  }
  std::memcpy(phi + f, x, sizeof(T) * dim);
  phi[f + dim] = T(1);
  double sq = 0;
  for (int64_t t = 0; t <= f + dim; ++t) sq += static_cast<double>(phi[t]) * static_cast<double>(phi[t]);
  return std::sqrt(sq);
}
DSCH_CPU_CLONES double pack_point_float(const float* x, int64_t dim, float* phi) { return pack_point_impl(x, dim, phi); }
DSCH_CPU_CLONES double pack_point_double(const double* x, int64_t dim, double* phi) {
  return pack_point_impl(x, dim, phi);
}
double pack_point(const float* x, int64_t dim, float* phi) { return pack_point_float(x, dim, phi); }
double pack_point(const double* x, int64_t dim, double* phi) { return pack_point_double(x, dim, phi); }

}  // namespace

// Coefficients of the expanded form, computed in float64 and stored in x's
// dtype. The rounding error of one entry (a dot product of length F in that
// dtype) is at most gamma_F * ||phi_n|| * ||coef_k|| (Cauchy-Schwarz on the
// standard inner-product bound; the coefficients' and the products' own
// rounding to that dtype adds at most eps ||phi_n|| ||coef_k|| each); the
// float64 coefficients carry the rounding of P = L L^T, P mu and mu'P mu,
// bounded by gamma_D ||L_k||_F^2 (1 + ||mu_k||)^2 per unit of ||phi_n||.
// scale_k adds them, with gamma doubled: a safe margin, since only the
// candidate set (never a returned value) depends on it.
ExpandedFull prepare_expanded_full(const at::Tensor& means_in, const at::Tensor& prec_chol, const at::Tensor& log_const_in) {
  const at::ScalarType dtype = means_in.scalar_type();
  const at::Tensor means = means_in.to(at::kDouble);
  const at::Tensor log_const = log_const_in.to(at::kDouble);
  const int64_t k = means.size(0), d = means.size(1);
  ExpandedFull e;
  e.chol = prec_chol.contiguous();
  const at::Tensor chol = e.chol.to(at::kDouble);
  const at::Tensor prec = at::bmm(chol, chol.transpose(1, 2));                 // [K, D, D]
  const at::Tensor v = at::bmm(prec, means.unsqueeze(2)).squeeze(2);            // [K, D]
  const at::Tensor c = v.mul(means).sum(1);                                     // [K]
  const at::Tensor iu = at::triu_indices(d, d, 0, at::TensorOptions().dtype(at::kLong));
  const at::Tensor rows = iu.select(0, 0), cols = iu.select(0, 1);
  const at::Tensor flat = rows.mul(d).add(cols).to(means.device());
  at::Tensor quad = prec.reshape({k, d * d}).index_select(1, flat);            // [K, D(D+1)/2]
  const at::Tensor off_diag = rows.ne(cols).to(means.device(), at::kDouble);
  quad = quad.mul(off_diag.add(1.0)).mul(-0.5);                                 // 2 P_ij off the diagonal
  const at::Tensor konst = log_const.sub(c.mul(0.5)).unsqueeze(1);
  const at::Tensor coef = at::cat({quad, v, konst}, 1);                         // [K, F]
  e.coef = coef.t().to(dtype).contiguous();
  const double f = static_cast<double>(coef.size(1) + 2 * d);
  const double eps = dtype == at::kFloat ? static_cast<double>(std::numeric_limits<float>::epsilon())
                                         : std::numeric_limits<double>::epsilon();
  const double eps64 = std::numeric_limits<double>::epsilon();
  const double gamma = 2.0 * f * eps / (1.0 - f * eps);
  const double gamma64 = 2.0 * f * eps64 / (1.0 - f * eps64);
  const at::Tensor chol_sq = chol.pow(2).sum({1, 2});
  const at::Tensor mu_term = means.norm(2, 1).add(1.0).pow(2);
  // ||coef_k|| for the GEMM's rounding, |log_const_k| for the rounding of the constant column.
  const at::Tensor coef_norm = coef.norm(2, 1).add(log_const.abs());
  e.scale = coef_norm.mul(gamma).add(chol_sq.mul(mu_term).mul(gamma64)).contiguous();
  return e;
}

void exact_full_entry(const float* x, const float* l, const float* b, float lc, int64_t dim, float* y, float* out) {
  exact_full_entry_float(x, l, b, lc, dim, y, out);
}
void exact_full_entry(const double* x, const double* l, const double* b, double lc, int64_t dim, double* y,
                      double* out) {
  exact_full_entry_double(x, l, b, lc, dim, y, out);
}

// The expanded route for the rows of `xr` ([rows, D], contiguous), written to
// `out_rows` ([rows, K], contiguous). Returns false (rows undefined) when the
// stable route should be taken instead.
template <typename T>
bool expanded_rows(const GmmPrepared& g, const ExpandedFull& e, Workspace<T>& w, const at::Tensor& xr,
                   at::Tensor out_rows) {
  const int64_t rows = xr.size(0), dim = g.x.size(1), k = g.b.size(0), f = e.coef.size(0);
  const T* x = xr.const_data_ptr<T>();
  if (!w.phi.defined() || w.phi.size(0) < rows) w.phi = at::empty({std::max(rows, kExpandedRowBlock), f}, xr.options());
  w.norms.resize(std::max<size_t>(w.norms.size(), rows));
  w.y.resize(dim);
  T* ph = w.phi.template data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r) w.norms[r] = pack_point(x + r * dim, dim, ph + r * f);
  at::mm_out(out_rows, w.phi.narrow(0, 0, rows), e.coef);
  T* orow = out_rows.template data_ptr<T>();
  const double* scale = e.scale.const_data_ptr<double>();
  const T* chol = e.chol.const_data_ptr<T>();
  const T* b = g.b.const_data_ptr<T>();
  const T* lc = g.log_const.const_data_ptr<T>();
  // An exact entry reads all of L_c (32 KB at D = 64, rarely in cache): ~5 us, against
  // ~0.1 us an entry for the stable GEMM route, so a few per row already tip the balance.
  // Candidates first (every row's cut, and the count against the budget), exact work after.
  const int64_t budget = rows * std::max<int64_t>(2, k / kExactPerRowDivisor);
  w.top.resize(std::max<size_t>(w.top.size(), rows));  // the rows' cuts
  int64_t candidates = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* o = orow + r * k;
    const double an = w.norms[r];
    double floor_max = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < k; ++c) floor_max = std::max(floor_max, static_cast<double>(o[c]) - an * scale[c]);
    if (!std::isfinite(floor_max)) return false;
    const double cut = floor_max - kExpandedMargin;
    w.top[r] = cut;
    for (int64_t c = 0; c < k; ++c) candidates += static_cast<double>(o[c]) + an * scale[c] >= cut;
    if (candidates > budget) return false;
  }
  for (int64_t r = 0; r < rows; ++r) {
    T* o = orow + r * k;
    const double an = w.norms[r];
    w.cand.clear();
    for (int64_t c = 0; c < k; ++c) {
      if (static_cast<double>(o[c]) + an * scale[c] >= w.top[r]) w.cand.push_back(c);
    }
    for (int64_t c : w.cand) {
      exact_full_entry(x + r * dim, chol + c * dim * dim, b + c * dim, lc[c], dim, w.y.data(), o + c);
    }
  }
  return true;
}

template bool expanded_rows<float>(const GmmPrepared&, const ExpandedFull&, Workspace<float>&, const at::Tensor&,
                                   at::Tensor);
template bool expanded_rows<double>(const GmmPrepared&, const ExpandedFull&, Workspace<double>&, const at::Tensor&,
                                    at::Tensor);

}  // namespace dsch_ext::gmm_cpu
