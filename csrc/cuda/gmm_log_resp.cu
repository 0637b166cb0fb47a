// CUDA kernel of dsch_ext::gmm_log_resp: the GMM E-step, in the stable form
// of gmm_math.h (differences of transformed vectors, never the expanded
// quadratic), with no N x K x D intermediate:
//   - 'full', float32, D <= 128: the tensor-core pair scan with the split at
//     use (pair_tile_mma.cuh, 3xTF32) over the columns of every L_k, each
//     component padded to one 64-column tile (two above D = 64): x L_k stays
//     in the tile, its epilogue subtracts b_k, sums the squares over the
//     component's columns and folds its log probability into a running
//     log-sum-exp.
//   - 'diag', 'spherical', 'tied': the register-tiled pair scan
//     (pair_tile.cuh) with (a p_k - b_k)^2 as the pair's accumulation ('tied'
//     after one x L GEMM, p = 1) and the log-sum-exp folded in its epilogue.
//   - 'full' in float64 or D > 128: x L_k by one GEMM per block of points into
//     a fixed buffer, then a block per point (the exact route).
// Column groups keep partial (max, sum-exp) per point; a normalise kernel
// (one warp per point) merges them and rewrites the row once. resp_floor > 0
// cuts entries more than -log(resp_floor) below the row's best to -inf, as on
// the CPU. GEMMs run in full fp32 whatever torch's TF32 switch says; points
// with NaN or Inf get NaN rows (no host sync to raise).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>

#include "../common/gmm_prepare.h"
#include "block_scan.cuh"
#include "device_runtime.cuh"
#include "launch_constants.cuh"
#include "pair_tile_mma.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kFullBufferElements = launch::kGmmFullBufferElements;
constexpr int kTileMaxDim = kSplitAtUseMaxDim;  // 'full' float32 on the tensor cores up to this D

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
      s = fused_multiply_add(s, e, T(1));
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
    return fused_multiply_add(y, y, acc);
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

// 'full', float32, D <= 128, on the tensor-core tile: column c * 64 T + j of
// the scan is coordinate j of x L_c (zeros past D), so T column tiles (one, or
// two above D = 64) are one component, and no column group splits one
// (align_pair_groups). visit sums (x L_c - b_c)^2 over a thread's 4 columns;
// end_tile completes the sum over the half-warp (every lane then holds the
// same log probability and running log-sum-exp) and, at a component's last
// tile, writes its entry. With T = 2 the first tile's pass is the same code
// with the result discarded (selects, no branch): the kernel's cost, and the
// static bound read from its SASS, are those of the path that runs.
template <int T>
struct FullGmmVisitor {
  struct State {
    LogSumExp<float> lse;
    float sq;
  };
  float* out;             // [n, k]
  const float* b;         // [k * T * kPairTileCols]: b_c padded with zeros
  const float* log_const;
  int64_t n, k;           // points, components
  float* part_max;        // [groups, n]
  float* part_sum;

  __device__ __forceinline__ void start(State& s) const { s = {{-INFINITY, 0.0f}, 0.0f}; }
  __device__ __forceinline__ void visit(State& s, int64_t, int64_t col, float a) const {
    const float y = a - b[col];
    s.sq = fused_multiply_add(y, y, s.sq);
  }
  __device__ __forceinline__ void end_tile(State (&state)[4], int64_t p0, int64_t c0) const {
    const int64_t tile = c0 / kPairTileCols;
    const bool last = (tile + 1) % T == 0;  // the component's sums go on in its next tile otherwise
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int64_t comp = tile / T;
    DSCH_UNROLL
    for (int i = 0; i < 4; ++i) {
      float sq = state[i].sq;
      for (int offset = 8; offset > 0; offset >>= 1) sq += __shfl_xor_sync(kFullWarpMask, sq, offset, 16);
      state[i].sq = last ? 0.0f : state[i].sq;  // this thread's own share goes on; the sum is redone
      const float lp = log_const[comp] - 0.5f * sq;
      const int64_t point = p0 + ty * 4 + i;
      if (last && tx == 0 && point < n) out[point * k + comp] = lp;
      state[i].lse.add(last ? lp : -INFINITY);  // -inf adds nothing
    }
  }
  __device__ __forceinline__ void finish(State& s, int64_t point, int group, bool writer) const {
    if (!writer) return;
    part_max[group * n + point] = s.lse.m;
    part_sum[group * n + point] = s.lse.s;
  }
};

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

// The exact route ('full' in float64 or D > 128): a block per point over the
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

// 'full', float32, D <= 128: returns the number of component groups written to the partials.
int64_t tile_full_route(const GmmPrepared& g, const at::Tensor& prec_chol, at::Tensor& out, at::Tensor& part_max,
                        at::Tensor& part_sum) {
  const int64_t n = g.x.size(0), dim = g.x.size(1), k = g.b.size(0);
  const int64_t tiles = (dim + kPairTileCols - 1) / kPairTileCols, width = tiles * kPairTileCols;
  // Row c * width + j: column j of L_c (so the tile's B side), and b_c's coordinate j; zeros past
  // D, and in the kernel's layout: padded to its dimension, each 8 coordinates interleaved.
  const int dp = split_at_use_dim(dim);
  const at::Tensor padded =
      at::constant_pad_nd(prec_chol.transpose(1, 2), {0, dp - dim, 0, width - dim}).contiguous();
  const at::Tensor columns = interleave_for_split_at_use(padded.view({k * width, dp}));
  const at::Tensor b_columns = at::constant_pad_nd(g.b, {0, width - dim}).contiguous();
  const PairTilePlan plan =
      align_pair_groups(plan_pair_tiles(n, k * width, dim, gpu::multiprocessor_count(g.x.device())), tiles);
  const int64_t groups = pair_groups(plan);
  part_max = at::empty({groups, n}, g.x.options());
  part_sum = at::empty({groups, n}, g.x.options());
  const gpu::Stream stream = gpu::current_stream();
  const auto launch = [&](auto dp_constant, auto tiles_per_component) {
    using Visitor = FullGmmVisitor<decltype(tiles_per_component)::value>;
    const Visitor visitor{out.data_ptr<float>(), b_columns.const_data_ptr<float>(),
                          g.log_const.const_data_ptr<float>(), n, k, part_max.data_ptr<float>(),
                          part_sum.data_ptr<float>()};
    gpu::launch("gmm_full_tiles", &pair_tile_mma_split_at_use_kernel<decltype(dp_constant)::value, Visitor>,
                pair_tile_grid(plan), kPairThreads, 0, stream, plan, g.x.const_data_ptr<float>(),
                columns.const_data_ptr<float>(), visitor);
  };
  using One = std::integral_constant<int, 1>;
  switch (dp) {
    case 16: launch(std::integral_constant<int, 16>{}, One{}); break;
    case 32: launch(std::integral_constant<int, 32>{}, One{}); break;
    case 64: launch(std::integral_constant<int, 64>{}, One{}); break;
    default: launch(std::integral_constant<int, kSplitAtUseMaxDim>{}, std::integral_constant<int, 2>{});
  }
  return groups;
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
  const bool on_tiles = g.cov == kGmmFull && g.x.scalar_type() == at::kFloat && dim <= kTileMaxDim;
  if (g.cov == kGmmFull && !on_tiles) {
    exact_full_route(g, log_floor, out, out_norm);
    return {out, out_norm};
  }
  at::Tensor part_max, part_sum;
  const int64_t groups = on_tiles ? tile_full_route(g, prec_chol, out, part_max, part_sum)
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
