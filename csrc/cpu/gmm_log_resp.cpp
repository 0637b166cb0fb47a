// CPU kernel of dsch_ext::gmm_log_resp: the GMM E-step. For every point,
// the weighted log density of every component (gmm_math.h), then a stable
// log-sum-exp; returns log responsibilities [N, K] and the per-point log
// likelihood [N]. Each row of the output is written once with log
// probabilities and normalised in place while it is still in cache.
//
// 'full' transforms each block of points by a block of precision factors with
// one BLAS GEMM ([rows, D] x [D, C D]) into a per-task buffer first; the other
// types work on the points directly ('tied' after one [N, D] x [D, D] GEMM).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../common/gmm_prepare.h"

namespace dsch_ext {
namespace {

constexpr int64_t kRowBlock = 64;            // points per task
constexpr int64_t kFullBlockColumns = 4096;  // transformed columns per GEMM (64 components at D = 64)

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

// Log-sum-exp of each row, subtracted in place (rows still in cache).
template <typename T>
void normalize_rows(T* out, T* out_norm, int64_t rows, int64_t k) {
  for (int64_t r = 0; r < rows; ++r) {
    T* o = out + r * k;
    T mx = -std::numeric_limits<T>::infinity();
#if defined(_OPENMP)
#pragma omp simd reduction(max : mx)
#endif
    for (int64_t c = 0; c < k; ++c) mx = o[c] > mx ? o[c] : mx;
    T s = 0;
    if constexpr (std::is_same_v<T, float>) {
      DSCH_SIMD_SUM(s)
      for (int64_t c = 0; c < k; ++c) s += fast_expf(o[c] - mx);
    } else {
      for (int64_t c = 0; c < k; ++c) s += std::exp(o[c] - mx);
    }
    const T norm = mx + std::log(s);
    for (int64_t c = 0; c < k; ++c) o[c] -= norm;
    out_norm[r] = norm;
  }
}

// Non-template entry points, compiled for AVX2+FMA and the baseline and
// picked at load time (DSCH_CPU_CLONES): the E-step's inner loop is the hot spot.
DSCH_CPU_CLONES void normalize_rows_float(float* out, float* norm, int64_t rows, int64_t k) {
  normalize_rows<float>(out, norm, rows, k);
}
DSCH_CPU_CLONES void normalize_rows_double(double* out, double* norm, int64_t rows, int64_t k) {
  normalize_rows<double>(out, norm, rows, k);
}
void normalize_rows_dispatch(float* out, float* norm, int64_t rows, int64_t k) {
  normalize_rows_float(out, norm, rows, k);
}
void normalize_rows_dispatch(double* out, double* norm, int64_t rows, int64_t k) {
  normalize_rows_double(out, norm, rows, k);
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

std::tuple<at::Tensor, at::Tensor> gmm_log_resp_cpu(const at::Tensor& x_in, const at::Tensor& means,
                                                    const at::Tensor& prec_chol, const at::Tensor& log_weights,
                                                    c10::string_view covariance_type) {
  const GmmPrepared g = prepare_gmm(x_in, means, prec_chol, log_weights,
                                    std::string_view(covariance_type.data(), covariance_type.size()));
  const int64_t n = g.x.size(0), dim = g.x.size(1), k = g.b.size(0);
  at::Tensor out = at::empty({n, k}, g.x.options());
  at::Tensor out_norm = at::empty({n}, g.x.options());
  if (n == 0) return {out, out_norm};
  AT_DISPATCH_FLOATING_TYPES(g.x.scalar_type(), "gmm_log_resp_cpu", [&] {
    const scalar_t* p = g.p.const_data_ptr<scalar_t>();
    const scalar_t* b = g.b.const_data_ptr<scalar_t>();
    const scalar_t* lc = g.log_const.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* on = out_norm.data_ptr<scalar_t>();
    // Blocks of kRowBlock points per task; for 'full' each task also walks the
    // components in blocks, transforming its points by those precision
    // factors with a single-threaded GEMM into a small per-task buffer
    // (L2-sized), so neither the transformed points nor the log
    // probabilities ever leave the cache before the row is normalised.
    const at::Tensor a_all = g.cov == kGmmTied ? at::mm(g.x, g.transform) : g.x;
    const int64_t comp_block = std::max<int64_t>(1, kFullBlockColumns / dim);
    const int64_t nblocks = (n + kRowBlock - 1) / kRowBlock;
    at::parallel_for(0, nblocks, 1, [&](int64_t t0, int64_t t1) {
      at::Tensor buffer;
      if (g.cov == kGmmFull) buffer = at::empty({kRowBlock, std::min(k, comp_block) * dim}, g.x.options());
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kRowBlock, rows = std::min(kRowBlock, n - r0);
        scalar_t* orow = o + r0 * k;
        if (g.cov == kGmmFull) {
          const at::Tensor xr = g.x.narrow(0, r0, rows);
          for (int64_t c0 = 0; c0 < k; c0 += comp_block) {
            const int64_t c1 = std::min(k, c0 + comp_block);
            at::Tensor a = buffer.narrow(0, 0, rows).narrow(1, 0, (c1 - c0) * dim);
            at::mm_out(a, xr, g.transform.narrow(1, c0 * dim, (c1 - c0) * dim));
            gmm_block_dispatch(g.cov, a.const_data_ptr<scalar_t>(), a.stride(0), c0, c1, p, b, lc, k, dim, rows,
                               orow);
          }
        } else {
          gmm_block_dispatch(g.cov, a_all.const_data_ptr<scalar_t>() + r0 * dim, dim, 0, k, p, b, lc, k, dim, rows,
                             orow);
        }
        normalize_rows_dispatch(orow, on + r0, rows, k);
      }
    });
  });
  return {out, out_norm};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("gmm_log_resp", &gmm_log_resp_cpu); }

}  // namespace dsch_ext
