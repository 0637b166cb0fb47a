// CPU kernel of dsch_ext::gmm_log_resp: the GMM E-step. For every point,
// the weighted log density of every component (gmm_math.h), then a stable
// log-sum-exp; returns log responsibilities [N, K] and the per-point log
// likelihood [N]. Each row of the output is written once with log
// probabilities and normalised in place while it is still in cache.
//
// 'full' transforms each block of points by a block of precision factors with
// one BLAS GEMM ([rows, D] x [D, C D]) into a per-task buffer first; the other
// types work on the points directly ('tied' after one [N, D] x [D, D] GEMM).
//
// 'full' with D >= 8 takes a faster route with the same answer: the
// expanded form x'Px - 2x'P mu + mu'P mu as ONE GEMM of the points' packed
// products [rows, D(D+1)/2 + D + 1] by a per-component coefficient matrix
// (half the multiply-adds of x L_k, at full GEMM efficiency; coefficients
// computed in float64, the GEMM in x's dtype). The expanded form cancels when
// precisions are large, so it is only used to find, per point, the
// components that can matter: every entry whose rigorous rounding error
// bound leaves it within kExpandedMargin nats of the row's maximum is
// recomputed exactly with the stable form above. The others keep expanded
// values whose responsibilities are below exp(-kExpandedMargin) both before
// and after rounding, so responsibilities and log-likelihoods are those of
// the stable form to rounding. (The float32 bound is ~1e4 nats on G1's
// data, yet leaves about one candidate per point: entries differ by far
// more there.) Blocks where too many entries would need recomputing
// (near-identical components) fall back to the stable GEMM.
//
// resp_floor > 0 sets to -inf (responsibility 0) every entry more than
// -log(resp_floor) below its row's best and leaves it out of the log-sum-exp,
// on every route and backend. The float64 'full' route then also prunes: an
// upper bound on each log probability from the m = 8 largest columns of L_k
// (a partial sum of ||(x - mu_k) L_k||^2, with its rounding bound), one GEMM
// of 1/8 the stable form's work at D = 64; the best-bounded component is
// computed exactly, and only the components whose bound reaches within the
// floor of it are computed exactly too (about one per point on mixtures of
// tight components). The cut entries would be -inf under the floor anyway.
// DSCH_EXT_GMM_STABLE=1 forces the stable form everywhere (benchmarks, tests).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/triu_indices.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/gmm_prepare.h"

namespace dsch_ext {
namespace {

constexpr int64_t kRowBlock = 64;            // points per task
constexpr int64_t kFullBlockColumns = 4096;  // transformed columns per GEMM (64 components at D = 64)
constexpr int64_t kExpandedRowBlock = 128;   // points per task on the expanded float64 route
constexpr int64_t kExpandedMinDim = 8;       // below this the stable GEMM is as cheap
constexpr double kExpandedMargin = 40.0;     // nats: exp(-40) = 4e-18
constexpr int64_t kPruneColumns = 8;         // columns of L_k in the pruned route's bound
constexpr int64_t kPruneRowBlock = 128;      // points per bound GEMM on the pruned route
constexpr double kPruneRelativeSlack = 1e-9; // h of the pruned route's rounding bound
constexpr int64_t kExactPerRowDivisor = 128; // exact recomputations worth doing per row: K / 128
constexpr int64_t kRetryAfter = 7;           // blocks a task sends past a route that just did not pay

// Weighted log probabilities of rows [0, rows) x components [c0, c1): `a`
// holds the transformed rows (row stride a_stride; for 'full' only the
// columns of components c0.. are present, starting at a), written to out
// (row stride k). COV and DIM (0: runtime `dim`) are compile-time so the
// per-pair loop is unrolled and branch-free for the common code lengths.
template <typename T, int COV, int DIM>
void gmm_block(const T* a, int64_t a_stride, int64_t c0, int64_t c1, const T* p, const T* b, const T* log_const,
               int64_t k, int64_t dim_rt, int64_t rows, T* out) {
  const int64_t dim = DIM > 0 ? DIM : dim_rt;
  for (int64_t r = 0; r < rows; ++r) {
    const T* ar = a + r * a_stride;
    T* o = out + r * k;
    int64_t c = c0;
    for (; c + 4 <= c1; c += 4) {
      const T* as[4];
      const T* ps[4];
      const T* bs[4];
      for (int j = 0; j < 4; ++j) {
        as[j] = COV == kGmmFull ? ar + (c + j - c0) * dim : ar;
        ps[j] = p + gmm_p_offset(COV, c + j, dim);
        bs[j] = b + (c + j) * dim;
      }
      gmm_weighted_log_prob4<T>(COV, as, ps, bs, log_const + c, dim, o + c);
    }
    for (; c < c1; ++c) {
      const T* ac = COV == kGmmFull ? ar + (c - c0) * dim : ar;
      o[c] = gmm_weighted_log_prob<T>(COV, ac, p + gmm_p_offset(COV, c, dim), b + c * dim, log_const[c], dim);
    }
  }
}

template <typename T, int COV>
void gmm_block_dim(const T* a, int64_t s, int64_t c0, int64_t c1, const T* p, const T* b, const T* lc, int64_t k,
                   int64_t dim, int64_t rows, T* out) {
  switch (dim) {
    case 16: return gmm_block<T, COV, 16>(a, s, c0, c1, p, b, lc, k, dim, rows, out);
    case 32: return gmm_block<T, COV, 32>(a, s, c0, c1, p, b, lc, k, dim, rows, out);
    case 64: return gmm_block<T, COV, 64>(a, s, c0, c1, p, b, lc, k, dim, rows, out);
    case 128: return gmm_block<T, COV, 128>(a, s, c0, c1, p, b, lc, k, dim, rows, out);
    default: return gmm_block<T, COV, 0>(a, s, c0, c1, p, b, lc, k, dim, rows, out);
  }
}

template <typename T>
void gmm_block_any(int cov, const T* a, int64_t s, int64_t c0, int64_t c1, const T* p, const T* b, const T* lc,
                   int64_t k, int64_t dim, int64_t rows, T* out) {
  switch (cov) {
    case kGmmFull: return gmm_block_dim<T, kGmmFull>(a, s, c0, c1, p, b, lc, k, dim, rows, out);
    case kGmmTied: return gmm_block_dim<T, kGmmTied>(a, s, c0, c1, p, b, lc, k, dim, rows, out);
    case kGmmDiag: return gmm_block_dim<T, kGmmDiag>(a, s, c0, c1, p, b, lc, k, dim, rows, out);
    default: return gmm_block_dim<T, kGmmSpherical>(a, s, c0, c1, p, b, lc, k, dim, rows, out);
  }
}

// Log-sum-exp of each row, subtracted in place (rows still in cache). Entries
// more than -log_floor below the row's maximum become -inf and stay out of the
// sum (log_floor = -inf keeps everything).
template <typename T>
void normalize_rows(T* out, T* out_norm, int64_t rows, int64_t k, T log_floor) {
  for (int64_t r = 0; r < rows; ++r) {
    T* o = out + r * k;
    T mx = -std::numeric_limits<T>::infinity();
#if defined(_OPENMP)
#pragma omp simd reduction(max : mx)
#endif
    for (int64_t c = 0; c < k; ++c) mx = o[c] > mx ? o[c] : mx;
    T s = 0;
    if (log_floor > -std::numeric_limits<T>::infinity()) {
      const T cut = mx + log_floor;
      for (int64_t c = 0; c < k; ++c) {
        if (o[c] < cut) {
          o[c] = -std::numeric_limits<T>::infinity();
        } else {
          s += std::exp(o[c] - mx);
        }
      }
    } else if constexpr (std::is_same_v<T, float>) {
      DSCH_SIMD_SUM(s)
      for (int64_t c = 0; c < k; ++c) s += fast_expf(o[c] - mx);
    } else {
      // exp(-746) is 0 in float64: skipping those terms changes nothing, and with 1000
      // components most are there, where libm's exp takes its slow underflow path.
      for (int64_t c = 0; c < k; ++c) {
        const T t = o[c] - mx;
        if (t > T(-746)) s += std::exp(t);
      }
    }
    const T norm = mx + std::log(s);
    for (int64_t c = 0; c < k; ++c) o[c] -= norm;
    out_norm[r] = norm;
  }
}

// Non-template entry points, compiled for AVX2+FMA and the baseline and
// picked at load time (DSCH_CPU_CLONES): the E-step's inner loop is the hot spot.
DSCH_CPU_CLONES void normalize_rows_float(float* out, float* norm, int64_t rows, int64_t k, float log_floor) {
  normalize_rows<float>(out, norm, rows, k, log_floor);
}
DSCH_CPU_CLONES void normalize_rows_double(double* out, double* norm, int64_t rows, int64_t k, double log_floor) {
  normalize_rows<double>(out, norm, rows, k, log_floor);
}
void normalize_rows_dispatch(float* out, float* norm, int64_t rows, int64_t k, double log_floor) {
  normalize_rows_float(out, norm, rows, k, static_cast<float>(log_floor));
}
void normalize_rows_dispatch(double* out, double* norm, int64_t rows, int64_t k, double log_floor) {
  normalize_rows_double(out, norm, rows, k, log_floor);
}
DSCH_CPU_CLONES void gmm_block_float(int cov, const float* a, int64_t s, int64_t c0, int64_t c1, const float* p,
                                     const float* b, const float* lc, int64_t k, int64_t dim, int64_t rows,
                                     float* out) {
  gmm_block_any<float>(cov, a, s, c0, c1, p, b, lc, k, dim, rows, out);
}
DSCH_CPU_CLONES void gmm_block_double(int cov, const double* a, int64_t s, int64_t c0, int64_t c1, const double* p,
                                      const double* b, const double* lc, int64_t k, int64_t dim, int64_t rows,
                                      double* out) {
  gmm_block_any<double>(cov, a, s, c0, c1, p, b, lc, k, dim, rows, out);
}
void gmm_block_dispatch(int cov, const float* a, int64_t s, int64_t c0, int64_t c1, const float* p, const float* b,
                        const float* lc, int64_t k, int64_t dim, int64_t rows, float* out) {
  gmm_block_float(cov, a, s, c0, c1, p, b, lc, k, dim, rows, out);
}
void gmm_block_dispatch(int cov, const double* a, int64_t s, int64_t c0, int64_t c1, const double* p,
                        const double* b, const double* lc, int64_t k, int64_t dim, int64_t rows, double* out) {
  gmm_block_double(cov, a, s, c0, c1, p, b, lc, k, dim, rows, out);
}

// The stable 'full' route for the rows of `x_rows` ([rows, D], contiguous
// rows): log probabilities into `orow` (row stride k), not yet normalised.
// `buffer` is the task's [kRowBlock, C D] scratch.
template <typename scalar_t>
void stable_full_rows(const GmmPrepared& g, const at::Tensor& x_rows, at::Tensor& buffer, scalar_t* orow) {
  const int64_t rows = x_rows.size(0), dim = g.x.size(1), k = g.b.size(0);
  const scalar_t* p = g.p.const_data_ptr<scalar_t>();
  const scalar_t* b = g.b.const_data_ptr<scalar_t>();
  const scalar_t* lc = g.log_const.const_data_ptr<scalar_t>();
  const int64_t comp_block = std::max<int64_t>(1, kFullBlockColumns / dim);
  if (!buffer.defined()) buffer = at::empty({kRowBlock, std::min(k, comp_block) * dim}, g.x.options());
  for (int64_t s0 = 0; s0 < rows; s0 += kRowBlock) {
    const int64_t srows = std::min(kRowBlock, rows - s0);
    const at::Tensor xr = x_rows.narrow(0, s0, srows);
    for (int64_t c0 = 0; c0 < k; c0 += comp_block) {
      const int64_t c1 = std::min(k, c0 + comp_block);
      at::Tensor a = buffer.narrow(0, 0, srows).narrow(1, 0, (c1 - c0) * dim);
      at::mm_out(a, xr, g.transform.narrow(1, c0 * dim, (c1 - c0) * dim));
      gmm_block_dispatch(g.cov, a.const_data_ptr<scalar_t>(), a.stride(0), c0, c1, p, b, lc, k, dim, srows,
                         orow + s0 * k);
    }
  }
}

// The stable route for rows [r0, r0 + rows): log probabilities into `orow`
// (row stride k), not yet normalised. `a_all` holds the transformed points for 'tied'.
template <typename scalar_t>
void stable_block(const GmmPrepared& g, const at::Tensor& a_all, at::Tensor& buffer, int64_t r0, int64_t rows,
                  scalar_t* orow) {
  const int64_t dim = g.x.size(1), k = g.b.size(0);
  if (g.cov == kGmmFull) return stable_full_rows<scalar_t>(g, g.x.narrow(0, r0, rows), buffer, orow);
  gmm_block_dispatch(g.cov, a_all.const_data_ptr<scalar_t>() + r0 * dim, dim, 0, k, g.p.const_data_ptr<scalar_t>(),
                     g.b.const_data_ptr<scalar_t>(), g.log_const.const_data_ptr<scalar_t>(), k, dim, rows, orow);
}

// The expanded 'full' route's per-call tensors (see the file comment).
struct ExpandedFull {
  at::Tensor coef;   // [F, K] in x's dtype, F = D(D+1)/2 + D + 1: packed -0.5 P_k, P_k mu_k, log_const_k - 0.5 mu_k'P_k mu_k
  at::Tensor scale;  // [K] float64: a bound on sum_f |coef_fk| |error| scales (see below), times gamma_F
  at::Tensor chol;   // [K, D, D] contiguous precision Cholesky factors (x's dtype), for the exact recomputation
};

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
void exact_full_entry(const float* x, const float* l, const float* b, float lc, int64_t dim, float* y, float* out) {
  exact_full_entry_float(x, l, b, lc, dim, y, out);
}
void exact_full_entry(const double* x, const double* l, const double* b, double lc, int64_t dim, double* y,
                      double* out) {
  exact_full_entry_double(x, l, b, lc, dim, y, out);
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

// A task's scratch for the expanded and pruned routes.
template <typename T>
struct Workspace {
  at::Tensor phi;            // [rows, F] packed products
  at::Tensor hard_out;       // [rows, K] rows the pruned route hands to the expanded one
  std::vector<double> norms, vals, top;
  std::vector<T> y;
  std::vector<int64_t> cand, best, hard;
};

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

// The pruned float64 'full' route (resp_floor > 0): a cheap upper bound on
// every log probability from m of the D columns of each L_k, the exact value
// of the best-bounded component, and exact values only where the bound
// cannot rule the entry out of the floor. See the file comment.
struct PrunedFull {
  int64_t m = 0;
  at::Tensor columns;    // [K, D, m]: per component, its m columns of L_k with the largest norms
  at::Tensor b;          // [K m]: the same columns of b_k = mu_k L_k
  at::Tensor mu_norm;    // [K]: ||mu_k||
  at::Tensor slack;      // [K]: S_k of the rounding bound (below)
  at::Tensor chol;       // [K, D, D] contiguous precision Cholesky factors, for the exact values
};


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
template <typename scalar_t>
bool flush_hard_rows(const GmmPrepared& g, const ExpandedFull* e, Workspace<scalar_t>& w, at::Tensor& buffer,
                     at::Tensor& out) {
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

std::tuple<at::Tensor, at::Tensor> gmm_log_resp_cpu(const at::Tensor& x_in, const at::Tensor& means,
                                                    const at::Tensor& prec_chol, const at::Tensor& log_weights,
                                                    c10::string_view covariance_type, double resp_floor) {
  const GmmPrepared g = prepare_gmm(x_in, means, prec_chol, log_weights, covariance_type, /*check_finite=*/true);
  TORCH_CHECK(resp_floor >= 0.0 && resp_floor < 1.0, "resp_floor must be in [0, 1), got ", resp_floor);
  const double log_floor = resp_floor > 0 ? std::log(resp_floor) : -std::numeric_limits<double>::infinity();
  const int64_t n = g.x.size(0), dim = g.x.size(1), k = g.b.size(0);
  at::Tensor out = at::empty({n, k}, g.x.options());
  at::Tensor out_norm = at::empty({n}, g.x.options());
  if (n == 0) return {out, out_norm};
  const char* stable_env = std::getenv("DSCH_EXT_GMM_STABLE");
  const bool fast = g.cov == kGmmFull && dim >= kExpandedMinDim &&
                    !(stable_env != nullptr && stable_env[0] != '\0' && stable_env[0] != '0');
  const at::Tensor means_c = means.contiguous();
  ExpandedFull e;
  bool expanded = false;  // e prepared, with finite coefficients
  auto prepare_expanded = [&] {
    e = prepare_expanded_full(means_c, prec_chol, g.log_const);
    expanded = at::isfinite(e.scale).all().item<bool>() && at::isfinite(e.coef).all().item<bool>();
  };
  PrunedFull pr;
  bool pruned = fast && resp_floor > 0 && g.x.scalar_type() == at::kDouble;
  if (pruned) {
    pr = prepare_pruned_full(means_c, prec_chol.contiguous(), g.b);
    pruned = at::isfinite(pr.columns).all().item<bool>() && at::isfinite(pr.slack).all().item<bool>();
  }
  if (fast && !pruned) prepare_expanded();
  AT_DISPATCH_FLOATING_TYPES(g.x.scalar_type(), "gmm_log_resp_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* on = out_norm.data_ptr<scalar_t>();
    const at::Tensor a_all = g.cov == kGmmTied ? at::mm(g.x, g.transform) : g.x;
    if constexpr (std::is_same_v<scalar_t, double>) {
      if (pruned) {
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
          prepare_expanded();
          const int64_t nh = static_cast<int64_t>(hard.size());
          const int64_t nchunks = (nh + kExpandedRowBlock - 1) / kExpandedRowBlock;
          at::parallel_for(0, nchunks, 1, [&](int64_t t0, int64_t t1) {
            Workspace<double> w;
            at::Tensor buffer;
            int64_t skip = 0;
            for (int64_t t = t0; t < t1; ++t) {
              const int64_t h0 = t * kExpandedRowBlock, h1 = std::min(nh, h0 + kExpandedRowBlock);
              w.hard.assign(hard.begin() + h0, hard.begin() + h1);
              const bool try_expanded = expanded && skip == 0;
              skip = skip > 0 ? skip - 1 : 0;
              if (!flush_hard_rows<double>(g, try_expanded ? &e : nullptr, w, buffer, out) && try_expanded) {
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
        return;
      }
    }
    // Blocks of points per task; for 'full' each task also walks the
    // components in blocks, transforming its points by those precision
    // factors with a single-threaded GEMM into a small per-task buffer
    // (L2-sized), so neither the transformed points nor the log
    // probabilities ever leave the cache before the row is normalised.
    const int64_t block = expanded ? kExpandedRowBlock : kRowBlock;
    const int64_t nblocks = (n + block - 1) / block;
    at::parallel_for(0, nblocks, 1, [&](int64_t t0, int64_t t1) {
      at::Tensor buffer;
      Workspace<scalar_t> w;
      int64_t skip = 0;  // after the expanded route fell back, the next kRetryAfter blocks go stable
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * block, rows = std::min(block, n - r0);
        scalar_t* orow = o + r0 * k;
        bool done = false;
        if (expanded && skip == 0) {
          done = expanded_rows<scalar_t>(g, e, w, g.x.narrow(0, r0, rows), out.narrow(0, r0, rows));
          if (!done) skip = kRetryAfter;
        } else if (skip > 0) {
          --skip;
        }
        // The stable route (and the expanded route's fallback, for the whole block).
        if (!done) stable_block<scalar_t>(g, a_all, buffer, r0, rows, orow);
        normalize_rows_dispatch(orow, on + r0, rows, k, log_floor);
      }
    });
  });
  return {out, out_norm};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("gmm_log_resp", &gmm_log_resp_cpu); }

}  // namespace dsch_ext
