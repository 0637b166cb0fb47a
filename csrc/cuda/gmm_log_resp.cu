// CUDA kernel of dsch_ext::gmm_log_resp: the GMM E-step, in the stable form
// of gmm_math.h (differences of transformed vectors, never the expanded
// quadratic), with no N x K x D intermediate:
//   - 'full', float32, D <= 64: one fused kernel. A block keeps 64 points in
//     shared memory and walks its share of the components: it stages L_k and
//     b_k, forms the 64 x D block of x L_k in registers (a 4 x D/16 micro-tile
//     a thread), subtracts b_k, reduces the squares over the half-warp, and
//     buffers the log probabilities of 16 components before writing them out
//     row-contiguously and folding them into a running log-sum-exp.
//   - 'diag', 'spherical', 'tied': the register-tiled pair scan
//     (pair_tile.cuh) with (a p_k - b_k)^2 as the pair's accumulation ('tied'
//     after one x L GEMM, p = 1) and the log-sum-exp folded in its epilogue.
//   - 'full' in float64 or D > 64: x L_k by one GEMM per block of points into
//     a fixed buffer, then a block per point (the exact route).
// Column groups keep partial (max, sum-exp) per point; a normalise kernel
// (one warp per point) merges them and rewrites the row once. resp_floor > 0
// cuts entries more than -log(resp_floor) below the row's best to -inf, as on
// the CPU. GEMMs run in full fp32 whatever torch's TF32 switch says; points
// with NaN or Inf get NaN rows (no host sync to raise).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../common/gmm_prepare.h"
#include "block_scan.cuh"
#include "device_runtime.cuh"
#include "launch_constants.cuh"
#include "pair_tile.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kFullBufferElements = launch::kGmmFullBufferElements;
constexpr int kFusedMaxDim = 64;
constexpr int kFusedRows = 64;         // points a block keeps
constexpr int kFusedComponents = 16;   // log probabilities buffered before a write
constexpr int kFusedStride = kFusedRows + 4;

// A running log-sum-exp: m the largest value seen, s = sum exp(v - m).
// -inf entries (components of weight 0) add nothing; NaN makes s NaN.
template <typename T>
struct LogSumExp {
  T m, s;
  __device__ __forceinline__ void add(T v) {
    // One exp either way: the larger of the two becomes the reference.
    const bool larger = v > m;
    const T e = exp(larger ? m - v : v - m);
    if (larger) {
      s = s * e + T(1);
      m = v;
    } else if (v != -INFINITY) {
      s += e;
    }
  }
  __device__ __forceinline__ void merge(T om, T os) {
    const T mx = max(m, om);
    s = (m == -INFINITY ? T(0) : s * exp(m - mx)) + (om == -INFINITY ? T(0) : os * exp(om - mx));
    m = mx;
  }
};

// a p - b per coordinate, squared and summed (gmm_math.h).
struct ScaledDiffPair {
  static constexpr int kOperands = 2;
  template <typename T>
  __device__ __forceinline__ static T step(T acc, T a, const T* pb) {
    const T y = gmm_scaled_diff(a, pb[0], pb[1]);
    return fma(y, y, acc);
  }
};

template <typename T>
struct GmmVisitor {
  using State = LogSumExp<T>;
  T* out;  // [n, k]
  const T* log_const;
  int64_t n, k;
  T* part_max;  // [groups, n]
  T* part_sum;

  __device__ __forceinline__ void start(State& s) const { s = {-INFINITY, T(0)}; }
  __device__ __forceinline__ void visit(State& s, int64_t point, int64_t col, T sq) const {
    const T lp = log_const[col] - T(0.5) * sq;
    out[point * k + col] = lp;
    s.add(lp);
  }
  __device__ __forceinline__ void finish(State& s, int64_t point, int group, bool writer) const {
    for (int offset = 8; offset > 0; offset >>= 1)
      s.merge(__shfl_xor_sync(kFullWarpMask, s.m, offset, 16), __shfl_xor_sync(kFullWarpMask, s.s, offset, 16));
    if (!writer) return;
    part_max[group * n + point] = s.m;
    part_sum[group * n + point] = s.s;
  }
};

struct FusedPlan {
  int64_t n, k, dim;
  int64_t per_group;  // components a grid.y group walks (a multiple of kFusedComponents)
};

// 'full', float32, D <= DP (DP = 16, 32 or 64; coordinates past D are zeros).
template <int DP>
__global__ void __launch_bounds__(kThreads, 2) gmm_full_fused_kernel(FusedPlan plan, const float* __restrict__ x,
                                                                  const float* __restrict__ prec_chol,
                                                                  const float* __restrict__ b,
                                                                  const float* __restrict__ log_const,
                                                                  float* __restrict__ out, float* __restrict__ part_max,
                                                                  float* __restrict__ part_sum) {
  constexpr int kCols = DP / 16;  // output coordinates a thread holds
  DSCH_SHARED_ARRAY(float, x_tile, DP * kFusedStride);  // [d][point]
  DSCH_SHARED_ARRAY(float, l_tile, DP * DP);            // [d][e] of L_k
  DSCH_SHARED_ARRAY(float, b_tile, DP);
  DSCH_SHARED_ARRAY(float, lp_tile, kFusedRows * (kFusedComponents + 1));
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t dim = plan.dim;
  const int64_t c_begin = blockIdx.y * plan.per_group;
  const int64_t c_end = min(plan.k, c_begin + plan.per_group);
  for (int64_t p0 = blockIdx.x * int64_t{kFusedRows}; p0 < plan.n; p0 += static_cast<int64_t>(gridDim.x) * kFusedRows) {
    __syncthreads();  // the previous tile's readers are done
    for (int e = threadIdx.x; e < kFusedRows * DP; e += kThreads) {
      const int r = e / DP, d = e % DP;
      x_tile[d * kFusedStride + r] = p0 + r < plan.n && d < dim ? x[(p0 + r) * dim + d] : 0.0f;
    }
    LogSumExp<float> row_lse{-INFINITY, 0.0f};  // threads 0..63: point p0 + threadIdx.x
    for (int64_t c0 = c_begin; c0 < c_end; c0 += kFusedComponents) {
      const int comps = static_cast<int>(min(int64_t{kFusedComponents}, c_end - c0));
      for (int kk = 0; kk < comps; ++kk) {
        const int64_t comp = c0 + kk;
        __syncthreads();  // l_tile's previous readers are done
        for (int e = threadIdx.x; e < DP * DP; e += kThreads) {
          const int d = e / DP, f = e % DP;
          l_tile[e] = d < dim && f < dim ? prec_chol[(comp * dim + d) * dim + f] : 0.0f;
        }
        if (threadIdx.x < DP) b_tile[threadIdx.x] = threadIdx.x < dim ? b[comp * dim + threadIdx.x] : 0.0f;
        __syncthreads();
        float acc[4][kCols] = {};
        DSCH_UNROLL_BY(8)  // fully unrolled, the compiler hoists every load and runs out of registers
        for (int d = 0; d < DP; ++d) {
          float xv[4], lv[kCols];
          DSCH_UNROLL
          for (int i = 0; i < 4; ++i) xv[i] = x_tile[d * kFusedStride + ty * 4 + i];
          DSCH_UNROLL
          for (int j = 0; j < kCols; ++j) lv[j] = l_tile[d * DP + tx * kCols + j];
          DSCH_UNROLL
          for (int i = 0; i < 4; ++i) {
            DSCH_UNROLL
            for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(xv[i], lv[j], acc[i][j]);
          }
        }
        DSCH_UNROLL
        for (int i = 0; i < 4; ++i) {
          float sq = 0.0f;
          DSCH_UNROLL
          for (int j = 0; j < kCols; ++j) {
            const float y = acc[i][j] - b_tile[tx * kCols + j];
            sq = fmaf(y, y, sq);
          }
          for (int offset = 8; offset > 0; offset >>= 1) sq += __shfl_xor_sync(kFullWarpMask, sq, offset, 16);
          if (tx == 0) lp_tile[(ty * 4 + i) * (kFusedComponents + 1) + kk] = log_const[comp] - 0.5f * sq;
        }
      }
      __syncthreads();
      for (int e = threadIdx.x; e < kFusedRows * kFusedComponents; e += kThreads) {
        const int r = e / kFusedComponents, kk = e % kFusedComponents;
        if (kk < comps && p0 + r < plan.n) out[(p0 + r) * plan.k + c0 + kk] = lp_tile[r * (kFusedComponents + 1) + kk];
      }
      if (threadIdx.x < kFusedRows) {
        for (int kk = 0; kk < comps; ++kk) row_lse.add(lp_tile[threadIdx.x * (kFusedComponents + 1) + kk]);
      }
    }
    if (threadIdx.x < kFusedRows && p0 + threadIdx.x < plan.n) {
      part_max[blockIdx.y * plan.n + p0 + threadIdx.x] = row_lse.m;
      part_sum[blockIdx.y * plan.n + p0 + threadIdx.x] = row_lse.s;
    }
  }
}

// One warp per point: merges the groups' (max, sum-exp), recounts the sum
// over the entries the floor keeps (only when there is a floor), and
// rewrites the row as log responsibilities.
template <typename T>
__global__ void gmm_normalise_kernel(T* __restrict__ out, T* __restrict__ out_norm, const T* __restrict__ part_max,
                                     const T* __restrict__ part_sum, int64_t groups, int64_t n, int64_t k,
                                     T log_floor) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x / 32;
  for (int64_t r = blockIdx.x * warps + threadIdx.x / 32; r < n; r += static_cast<int64_t>(gridDim.x) * warps) {
    LogSumExp<T> lse{-INFINITY, T(0)};
    if (lane < groups) lse = {part_max[lane * n + r], part_sum[lane * n + r]};
    for (int offset = 16; offset > 0; offset >>= 1)
      lse.merge(__shfl_xor_sync(kFullWarpMask, lse.m, offset), __shfl_xor_sync(kFullWarpMask, lse.s, offset));
    T* o = out + r * k;
    const T cut = lse.m + log_floor;  // -inf without a floor
    if (log_floor != -INFINITY) {
      T s = 0;
      for (int64_t c = lane; c < k; c += 32) s += o[c] < cut ? T(0) : exp(o[c] - lse.m);
      for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(kFullWarpMask, s, offset);
      lse.s = s;
    }
    const T norm = lse.m + log(lse.s);
    for (int64_t c = lane; c < k; c += 32) o[c] = o[c] < cut ? -INFINITY : o[c] - norm;
    if (lane == 0) out_norm[r] = norm;
  }
}

// The exact route ('full' in float64 or D > 64): a block per point over the
// GEMM's transformed rows, log-sum-exp reduced across the block.
template <typename T>
__global__ void gmm_rows_kernel(int cov, const T* __restrict__ a, int64_t a_stride, const T* __restrict__ p,
                                const T* __restrict__ b, const T* __restrict__ log_const, int64_t rows,
                                int64_t k, int64_t dim, T log_floor, T* __restrict__ out, T* __restrict__ out_norm) {
  DSCH_SHARED_ARRAY(T, scratch, 33);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* ar = a + r * a_stride;
    T* o = out + r * k;
    T mx = -INFINITY;
    for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
      const T lp = gmm_weighted_log_prob<T>(cov, ar + gmm_a_offset(cov, c, dim), p + gmm_p_offset(cov, c, dim),
                                            b + c * dim, log_const[c], dim);
      o[c] = lp;
      mx = max(mx, lp);
    }
    mx = block_reduce_max(mx, scratch);
    T s = 0;
    const T cut = mx + log_floor;  // -inf without a floor
    for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
      if (o[c] < cut) {
        o[c] = -INFINITY;  // this thread wrote o[c] above and is the only one to touch it
      } else {
        s += exp(o[c] - mx);
      }
    }
    const T norm = mx + log(block_reduce_sum(s, scratch));
    for (int64_t c = threadIdx.x; c < k; c += blockDim.x) o[c] -= norm;
    if (threadIdx.x == 0) out_norm[r] = norm;
  }
}

void exact_full_route(const GmmPrepared& g, double log_floor, at::Tensor& out, at::Tensor& out_norm) {
  const int64_t n = g.x.size(0), dim = g.x.size(1), k = g.b.size(0);
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(n, kFullBufferElements / (k * dim)));
  at::Tensor buffer = at::empty({block, k * dim}, g.x.options());
  AT_DISPATCH_FLOATING_TYPES(g.x.scalar_type(), "gmm_log_resp_cuda_exact", [&] {
    for (int64_t r0 = 0; r0 < n; r0 += block) {
      const int64_t rows = std::min(block, n - r0);
      at::Tensor a = buffer.narrow(0, 0, rows);
      at::mm_out(a, g.x.narrow(0, r0, rows), g.transform);
      gpu::launch("gmm_rows", &gmm_rows_kernel<scalar_t>, gpu::grid_for(rows, 1), kThreads, 0, gpu::current_stream(),
                  g.cov, a.const_data_ptr<scalar_t>(), k * dim, g.p.const_data_ptr<scalar_t>(),
                  g.b.const_data_ptr<scalar_t>(), g.log_const.const_data_ptr<scalar_t>(), rows, k, dim,
                  static_cast<scalar_t>(log_floor), out.data_ptr<scalar_t>() + r0 * k,
                  out_norm.data_ptr<scalar_t>() + r0);
    }
  });
}

// 'full', float32, D <= 64: returns the number of component groups written to the partials.
int64_t fused_full_route(const GmmPrepared& g, const at::Tensor& prec_chol, at::Tensor& out, at::Tensor& part_max,
                         at::Tensor& part_sum) {
  const int64_t n = g.x.size(0), dim = g.x.size(1), k = g.b.size(0);
  const int64_t point_tiles = (n + kFusedRows - 1) / kFusedRows;
  const int64_t chunks = (k + kFusedComponents - 1) / kFusedComponents;
  const int64_t sms = gpu::multiprocessor_count(g.x.device());
  const int64_t groups =
      std::max<int64_t>(1, std::min<int64_t>({(4 * sms + point_tiles - 1) / point_tiles, chunks, 32, gpu::max_grid_yz()}));
  const FusedPlan plan{n, k, dim, ((chunks + groups - 1) / groups) * kFusedComponents};
  const int64_t used = (k + plan.per_group - 1) / plan.per_group;
  part_max = at::empty({used, n}, g.x.options());
  part_sum = at::empty({used, n}, g.x.options());
  const at::Tensor L = prec_chol.contiguous();
  const dim3 grid(gpu::grid_for(n, kFusedRows), static_cast<unsigned>(used));
  auto run = [&](auto kernel) {
    gpu::launch("gmm_full_fused", kernel, grid, kThreads, 0, gpu::current_stream(), plan, g.x.const_data_ptr<float>(),
                L.const_data_ptr<float>(), g.b.const_data_ptr<float>(), g.log_const.const_data_ptr<float>(),
                out.data_ptr<float>(), part_max.data_ptr<float>(), part_sum.data_ptr<float>());
  };
  if (dim <= 16) {
    run(&gmm_full_fused_kernel<16>);
  } else if (dim <= 32) {
    run(&gmm_full_fused_kernel<32>);
  } else {
    run(&gmm_full_fused_kernel<64>);
  }
  return used;
}

// 'diag', 'spherical' and 'tied' by the pair scan: returns the number of groups.
int64_t pair_route(const GmmPrepared& g, at::Tensor& out, at::Tensor& part_max, at::Tensor& part_sum) {
  const int64_t n = g.x.size(0), dim = g.x.size(1), k = g.b.size(0);
  at::Tensor a = g.x, scale;
  if (g.cov == kGmmTied) {
    a = at::mm(g.x, g.transform);
    scale = at::ones({k, dim}, g.x.options());
  } else {
    scale = (g.cov == kGmmSpherical ? g.p.unsqueeze(1).expand({k, dim}) : g.p).contiguous();
  }
  const PairTilePlan plan = plan_pair_tiles(n, k, dim, gpu::multiprocessor_count(g.x.device()));
  const int64_t groups = pair_groups(plan);
  part_max = at::empty({groups, n}, g.x.options());
  part_sum = at::empty({groups, n}, g.x.options());
  AT_DISPATCH_FLOATING_TYPES(g.x.scalar_type(), "gmm_log_resp_cuda_pairs", [&] {
    const GmmVisitor<scalar_t> visitor{out.data_ptr<scalar_t>(), g.log_const.const_data_ptr<scalar_t>(), n, k,
                                       part_max.data_ptr<scalar_t>(), part_sum.data_ptr<scalar_t>()};
    launch_pair_tiles<scalar_t, ScaledDiffPair>("gmm_pair_tiles", plan, a.const_data_ptr<scalar_t>(),
                                                scale.const_data_ptr<scalar_t>(), g.b.const_data_ptr<scalar_t>(),
                                                visitor, gpu::current_stream());
  });
  return groups;
}

std::tuple<at::Tensor, at::Tensor> gmm_log_resp_cuda(const at::Tensor& x_in, const at::Tensor& means,
                                                     const at::Tensor& prec_chol, const at::Tensor& log_weights,
                                                     c10::string_view covariance_type, double resp_floor) {
  const gpu::DeviceGuard guard(x_in.device());
  const at::NoTF32Guard full_fp32;  // b_k = mu_k L_k and and the 'tied' and exact-route GEMMs
  const GmmPrepared g = prepare_gmm(x_in, means, prec_chol, log_weights, covariance_type);
  TORCH_CHECK(resp_floor >= 0.0 && resp_floor < 1.0, "resp_floor must be in [0, 1), got ", resp_floor);
  const double log_floor = resp_floor > 0 ? std::log(resp_floor) : -INFINITY;
  const int64_t n = g.x.size(0), dim = g.x.size(1), k = g.b.size(0);
  at::Tensor out = at::empty({n, k}, g.x.options());
  at::Tensor out_norm = at::empty({n}, g.x.options());
  if (n == 0) return {out, out_norm};
  const bool fused = g.cov == kGmmFull && g.x.scalar_type() == at::kFloat && dim <= kFusedMaxDim;
  if (g.cov == kGmmFull && !fused) {
    exact_full_route(g, log_floor, out, out_norm);
    return {out, out_norm};
  }
  at::Tensor part_max, part_sum;
  const int64_t groups = fused ? fused_full_route(g, prec_chol, out, part_max, part_sum)
                               : pair_route(g, out, part_max, part_sum);
  AT_DISPATCH_FLOATING_TYPES(g.x.scalar_type(), "gmm_normalise_cuda", [&] {
    gpu::launch("gmm_normalise", &gmm_normalise_kernel<scalar_t>, gpu::grid_for(n, kThreads / 32), kThreads, 0,
                gpu::current_stream(), out.data_ptr<scalar_t>(), out_norm.data_ptr<scalar_t>(),
                part_max.const_data_ptr<scalar_t>(), part_sum.const_data_ptr<scalar_t>(), groups, n, k,
                static_cast<scalar_t>(log_floor));
  });
  return {out, out_norm};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("gmm_log_resp", &gmm_log_resp_cuda); }

}  // namespace dsch_ext
