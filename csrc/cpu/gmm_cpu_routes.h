// The CPU E-step's routes (gmm_log_resp.cpp, gmm_log_resp_expanded.cpp,
// gmm_log_resp_pruned.cpp): what one route needs of another. Internal to the
// CPU kernel; gmm_log_resp.cpp's comment describes the routes.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "../common/gmm_prepare.h"

namespace dsch_ext::gmm_cpu {

constexpr int64_t kRowBlock = 64;            // points per task
constexpr int64_t kFullBlockColumns = 4096;  // transformed columns per GEMM (64 components at D = 64)
constexpr int64_t kExpandedRowBlock = 128;   // points per task on the expanded float64 route
constexpr int64_t kExpandedMinDim = 8;       // below this the stable GEMM is as cheap
constexpr int64_t kExpandedMinComponents = 512;  // below this the stable route is as fast (see choose_route)
constexpr int64_t kWideDim = 512;            // from here the stable route works a component at a time
constexpr int64_t kWideRowBlock = 512;       // points per stable GEMM at D >= kWideDim
constexpr double kExpandedMargin = 40.0;     // nats: exp(-40) = 4e-18
constexpr int64_t kPruneColumns = 8;         // columns of L_k in the pruned route's bound
constexpr int64_t kPruneRowBlock = 128;      // points per bound GEMM on the pruned route
constexpr double kPruneRelativeSlack = 1e-9; // h of the pruned route's rounding bound
constexpr int64_t kExactPerRowDivisor = 128; // exact recomputations worth doing per row: K / 128
constexpr int64_t kRetryAfter = 7;           // blocks a task sends past a route that just did not pay

// A task's scratch for the expanded and pruned routes.
template <typename T>
struct Workspace {
  at::Tensor phi;            // [rows, F] packed products
  at::Tensor hard_out;       // [rows, K] rows the pruned route hands to the expanded one
  std::vector<double> norms, vals, top;
  std::vector<T> y;
  std::vector<int64_t> cand, best, hard;
};

// Which route the 'full' E-step takes (DSCH_EXT_GMM_ROUTE=stable|expanded
// overrides the choice, for tests and benchmarks).
enum class FullRoute { kStable, kExpanded };

// The expanded (and, with a floor, pruned) route reads the points' packed
// products, D(D+1)/2 numbers per point whatever K is, so it only pays once K
// is large: measured on two cores against the stable GEMM it is 1.6-2x faster
// at K = 1000 and D = 16-64, level at K = 256 and slower below (at K = 4,
// D = 64 2.6x slower; at D = 1024 9x, with a [rows, D^2/2] buffer). In float32
// the stable GEMM catches up again from D = 128.
inline FullRoute choose_route(int64_t k, int64_t dim, bool is_double) {
  const bool fits = dim >= kExpandedMinDim && dim <= (is_double ? 128 : 64);
  return fits && k >= kExpandedMinComponents ? FullRoute::kExpanded : FullRoute::kStable;
}

// --- the stable route (gmm_log_resp.cpp)

// Points per task on the stable route, and per GEMM ([rows, D] x [D, C D])
// for 'full'. Below kWideDim: about kTaskEntries transformed numbers (64
// points by 4096 columns at K D >= 2048, up to 2048 points for few small
// components, where a task's fixed costs would dominate), L2-sized, so the
// transformed points and their log probabilities stay in cache until the
// row is normalised. At D >= kWideDim the GEMM is all the cost and the D x D
// panel dominates it: 512 points amortise packing it (64 ran at ~60% of BLAS
// speed), one component at a time keeps the buffer at 512 x D.
constexpr int64_t kTaskEntries = int64_t{1} << 17;
constexpr int64_t kMaxRowBlock = 2048;
inline int64_t stable_rows_per_task(int64_t k, int64_t dim) {
  if (dim >= kWideDim) return kWideRowBlock;
  return std::clamp<int64_t>(kTaskEntries / std::max<int64_t>(1, k * dim), kRowBlock, kMaxRowBlock);
}
inline int64_t stable_full_components_per_gemm(int64_t dim) {
  return dim >= kWideDim ? 1 : std::max<int64_t>(1, kFullBlockColumns / dim);
}

// Log probabilities of the rows of `x_rows` ([rows, D], contiguous) into
// `orow` (row stride K), not yet normalised; `buffer` is the task's scratch.
template <typename T>
void stable_full_rows(const GmmPrepared& g, const at::Tensor& x_rows, at::Tensor& buffer, T* orow);

// Log-sum-exp of each row subtracted in place; entries more than -log_floor
// below the row's maximum become -inf and stay out of the sum.
void normalize_rows_dispatch(float* out, float* norm, int64_t rows, int64_t k, double log_floor);
void normalize_rows_dispatch(double* out, double* norm, int64_t rows, int64_t k, double log_floor);

// --- the expanded route (gmm_log_resp_expanded.cpp)

// The expanded 'full' route's per-call tensors (see the file comment).
struct ExpandedFull {
  at::Tensor coef;   // [F, K] in x's dtype, F = D(D+1)/2 + D + 1: packed -0.5 P_k, P_k mu_k, log_const_k - 0.5 mu_k'P_k mu_k
  at::Tensor scale;  // [K] float64: a bound on sum_f |coef_fk| |error| scales (see below), times gamma_F
  at::Tensor chol;   // [K, D, D] contiguous precision Cholesky factors (x's dtype), for the exact recomputation
};

ExpandedFull prepare_expanded_full(const at::Tensor& means, const at::Tensor& prec_chol, const at::Tensor& log_const);

// The expanded route for the rows of `xr` ([rows, D], contiguous) into
// `out_rows` ([rows, K], contiguous); false (rows undefined) when the stable
// route should be taken instead.
template <typename T>
bool expanded_rows(const GmmPrepared& g, const ExpandedFull& e, Workspace<T>& w, const at::Tensor& xr,
                   at::Tensor out_rows);

// The stable form of one entry: y = x L_c into `y`, then gmm_math.h.
void exact_full_entry(const float* x, const float* l, const float* b, float lc, int64_t dim, float* y, float* out);
void exact_full_entry(const double* x, const double* l, const double* b, double lc, int64_t dim, double* y,
                      double* out);

// --- the pruned route (gmm_log_resp_pruned.cpp)

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

PrunedFull prepare_pruned_full(const at::Tensor& means, const at::Tensor& chol, const at::Tensor& b);

// The whole float64 E-step on the pruned route: normalised log
// responsibilities into `out` / `out_norm`. `expanded` gives the expanded
// route (prepared on first use; null when its coefficients are not finite)
// for the rows the bounds cannot settle.
void pruned_e_step(const GmmPrepared& g, const PrunedFull& pr, double log_floor,
                   const std::function<const ExpandedFull*()>& expanded, at::Tensor& out, at::Tensor& out_norm);

}  // namespace dsch_ext::gmm_cpu
