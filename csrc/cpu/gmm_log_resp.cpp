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
// the stable form to rounding. (The float32 bound is ~1e4 nats for 10,000
// points in [-1, 1]^64 under 1000 components, yet leaves about one candidate
// per point: entries differ by far more there.) Blocks where too many
// entries would need recomputing (near-identical components) fall back to
// the stable GEMM.
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
// The expanded and pruned routes only pay for many components
// (choose_route); DSCH_EXT_GMM_ROUTE=stable or =expanded forces one route
// wherever it applies (benchmarks, tests).
//
// This file: the stable route, the normalisation and the choice of route;
// the expanded route is gmm_log_resp_expanded.cpp, the pruned one
// gmm_log_resp_pruned.cpp, what they share gmm_cpu_routes.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/isposinf.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <tuple>
#include <type_traits>

#include "finite_scan.h"
#include "gmm_cpu_routes.h"

namespace dsch_ext::gmm_cpu {
namespace {

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

// exp of an entry against its row's best: both SIMD-friendly (gmm_math.h).
template <typename T>
T row_exp(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return fast_expf(x);
  } else {
    return fast_exp(x);
  }
}

// Log-sum-exp of each row, subtracted in place (rows still in cache); see
// normalize_rows_dispatch (log_floor = -inf keeps everything). Entries more
// than -log_floor below the row's best leave the sum and become -inf. Both
// loops are selects and arithmetic only, so they vectorise; a row is written
// once.
template <typename T>
void normalize_rows(T* out, T* out_norm, int64_t rows, int64_t k, T log_floor) {
  constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    T* o = out + r * k;
    T mx = kMinusInf;
#if defined(_OPENMP)
#pragma omp simd reduction(max : mx)
#endif
    for (int64_t c = 0; c < k; ++c) mx = o[c] > mx ? o[c] : mx;
    const T cut = mx + log_floor;  // -inf without a floor
    T s = 0;
    DSCH_SIMD_SUM(s)
    for (int64_t c = 0; c < k; ++c) {
      // exp for every entry, times 0 or 1: a select of the sum (GCC's AVX clones, float32) or a
      // conditional call keeps the loop scalar.
      const T kept = o[c] < cut ? T(0) : T(1);
      s += kept * row_exp(o[c] - mx);
    }
    const T norm = mx + std::log(s);
    for (int64_t c = 0; c < k; ++c) o[c] = o[c] < cut ? kMinusInf : o[c] - norm;
    out_norm[r] = norm;
  }
}

// Non-template entry points, compiled for AVX2+FMA and the baseline and
// picked at load time (DSCH_CPU_CLONES): the E-step's inner loop is the hot spot.
DSCH_CPU_CLONES DSCH_NO_TRAPPING_MATH void normalize_rows_float(float* out, float* norm, int64_t rows, int64_t k,
                                                                float log_floor) {
  normalize_rows<float>(out, norm, rows, k, log_floor);
}
DSCH_CPU_CLONES DSCH_NO_TRAPPING_MATH void normalize_rows_double(double* out, double* norm, int64_t rows, int64_t k,
                                                                 double log_floor) {
  normalize_rows<double>(out, norm, rows, k, log_floor);
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

}  // namespace

void normalize_rows_dispatch(float* out, float* norm, int64_t rows, int64_t k, double log_floor) {
  normalize_rows_float(out, norm, rows, k, static_cast<float>(log_floor));
}
void normalize_rows_dispatch(double* out, double* norm, int64_t rows, int64_t k, double log_floor) {
  normalize_rows_double(out, norm, rows, k, log_floor);
}

// The stable 'full' route for the rows of `x_rows` ([rows, D], contiguous
// rows): log probabilities into `orow` (row stride k), not yet normalised.
// `buffer` is the task's [rows per GEMM, C D] scratch.
template <typename scalar_t>
void stable_full_rows(const GmmPrepared& g, const at::Tensor& x_rows, at::Tensor& buffer, scalar_t* orow) {
  const int64_t rows = x_rows.size(0), dim = g.x.size(1), k = g.b.size(0);
  const scalar_t* p = g.p.const_data_ptr<scalar_t>();
  const scalar_t* b = g.b.const_data_ptr<scalar_t>();
  const scalar_t* lc = g.log_const.const_data_ptr<scalar_t>();
  const int64_t comp_block = stable_full_components_per_gemm(dim);
  const int64_t gemm_rows = std::min(rows, stable_rows_per_task(k, dim));
  if (!buffer.defined() || buffer.size(0) < gemm_rows) {
    buffer = at::empty({gemm_rows, std::min(k, comp_block) * dim}, g.x.options());
  }
  for (int64_t s0 = 0; s0 < rows; s0 += gemm_rows) {
    const int64_t srows = std::min(gemm_rows, rows - s0);
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

template void stable_full_rows<float>(const GmmPrepared&, const at::Tensor&, at::Tensor&, float*);
template void stable_full_rows<double>(const GmmPrepared&, const at::Tensor&, at::Tensor&, double*);

namespace {

// The stable route for rows [r0, r0 + rows): log probabilities into `orow`
// (row stride k), not yet normalised. `a_all` holds the transformed points for 'tied'.
// choose_route, unless DSCH_EXT_GMM_ROUTE says otherwise.
FullRoute full_route(int64_t k, int64_t dim, bool is_double) {
  const char* env = std::getenv("DSCH_EXT_GMM_ROUTE");
  const c10::string_view route = env == nullptr ? "" : env;
  if (route == "stable") return FullRoute::kStable;
  if (route == "expanded") return FullRoute::kExpanded;
  TORCH_CHECK(route.empty() || route == "auto", "DSCH_EXT_GMM_ROUTE must be stable, expanded or auto, got '",
              route, "'");
  return choose_route(k, dim, is_double);
}

template <typename scalar_t>
void stable_block(const GmmPrepared& g, const at::Tensor& a_all, at::Tensor& buffer, int64_t r0, int64_t rows,
                  scalar_t* orow) {
  const int64_t dim = g.x.size(1), k = g.b.size(0);
  if (g.cov == kGmmFull) return stable_full_rows<scalar_t>(g, g.x.narrow(0, r0, rows), buffer, orow);
  gmm_block_dispatch(g.cov, a_all.const_data_ptr<scalar_t>() + r0 * dim, dim, 0, k, g.p.const_data_ptr<scalar_t>(),
                     g.b.const_data_ptr<scalar_t>(), g.log_const.const_data_ptr<scalar_t>(), k, dim, rows, orow);
}

std::tuple<at::Tensor, at::Tensor> gmm_log_resp_cpu(const at::Tensor& x_in, const at::Tensor& means,
                                                    const at::Tensor& prec_chol, const at::Tensor& log_weights,
                                                    c10::string_view covariance_type, double resp_floor) {
  const GmmPrepared g = prepare_gmm(x_in, means, prec_chol, log_weights, covariance_type);
  TORCH_CHECK(all_finite_cpu(g.x), "x contains NaN or Inf (shape ", x_in.sizes(), ")");
  TORCH_CHECK(all_finite_cpu(means), "means contains NaN or Inf (shape ", means.sizes(), ")");
  TORCH_CHECK(all_finite_cpu(prec_chol), "precisions_chol contains NaN or Inf (shape ", prec_chol.sizes(), ")");
  // A log weight of -inf is a component of weight 0 (never responsible); NaN or +inf is not a weight.
  TORCH_CHECK(!at::isnan(log_weights).logical_or(at::isposinf(log_weights)).any().item<bool>(),
              "log_weights contains NaN or +Inf (shape ", log_weights.sizes(), ")");
  TORCH_CHECK(resp_floor >= 0.0 && resp_floor < 1.0, "resp_floor must be in [0, 1), got ", resp_floor);
  const double log_floor = resp_floor > 0 ? std::log(resp_floor) : -std::numeric_limits<double>::infinity();
  const int64_t n = g.x.size(0), dim = g.x.size(1), k = g.b.size(0);
  at::Tensor out = at::empty({n, k}, g.x.options());
  at::Tensor out_norm = at::empty({n}, g.x.options());
  if (n == 0) return {out, out_norm};
  const bool fast = g.cov == kGmmFull && dim >= kExpandedMinDim &&
                    full_route(k, dim, g.x.scalar_type() == at::kDouble) == FullRoute::kExpanded;
  const at::Tensor means_c = means.contiguous();
  ExpandedFull e;
  bool expanded = false, prepared = false;  // e prepared; with finite coefficients
  auto prepare_expanded = [&] {
    e = prepare_expanded_full(means_c, prec_chol, g.log_const);
    expanded = at::isfinite(e.scale).all().item<bool>() && at::isfinite(e.coef).all().item<bool>();
    prepared = true;
  };
  const std::function<const ExpandedFull*()> expanded_route = [&]() -> const ExpandedFull* {
    if (!prepared) prepare_expanded();
    return expanded ? &e : nullptr;
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
    if (pruned) {
      if constexpr (std::is_same_v<scalar_t, double>) {
        pruned_e_step(g, pr, log_floor, expanded_route, out, out_norm);
        return;
      }
    }
    // Blocks of points per task; for 'full' each task also walks the
    // components in blocks, transforming its points by those precision
    // factors with a single-threaded GEMM into a small per-task buffer
    // (L2-sized), so neither the transformed points nor the log
    // probabilities ever leave the cache before the row is normalised.
    int64_t block = kExpandedRowBlock;
    if (!expanded) {
      // At least two tasks a thread, for balance.
      const int64_t per_task = (n + 2 * at::get_num_threads() - 1) / (2 * at::get_num_threads());
      block = std::max(kRowBlock, std::min(stable_rows_per_task(k, dim), per_task));
    }
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
}  // namespace dsch_ext::gmm_cpu

namespace dsch_ext {
TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("gmm_log_resp", &gmm_cpu::gmm_log_resp_cpu); }
}  // namespace dsch_ext
