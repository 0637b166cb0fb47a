// CUDA kernel of dsch_ext::_center_distances_backward (formulas in
// center_math.h): the two cross terms G (rc . C) and G^T (rx . X) with the
// gradient's weighted row and column sums, then one combine kernel per side.
//   - float32 with D <= 128: tensor-core passes over the gradient, one per side
//     and 64 coordinates (center_grad_mma_kernel, 3xTF32): each reads the
//     [N, K] gradient once, weights it on the way (cosine), forms the cross
//     term and the sums of the same weights, and writes O((N + K) D)
//     partials; nothing N x K is written. At 64 < D <= 128 the two passes a
//     side read the gradient four times in all, as the GEMM route's two
//     GEMMs and two reductions do, but multiply at the tensor cores' 3xTF32
//     rate, not at the fp32 SIMT rate.
//   - otherwise: torch reductions for the sums and two full-fp32 GEMMs
//     (whatever torch's TF32 switch says).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "../common/center_checks.h"
#include "center_stats.cuh"
#include "pair_tile_mma.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void center_grad_weight_kernel(const T* __restrict__ grad, const T* __restrict__ dist,
                                          int64_t total, int metric, T* __restrict__ weight) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    weight[e] = center_grad_weight<T>(metric, grad[e], dist[e]);
}

// out[r, :] = gemm_scale(stat[r]) * out[r, :] + self_scale(stat[r], sqnorm[r]) * sums[r] * rows[r, :]
template <typename T>
__global__ void center_grad_combine_kernel(T* __restrict__ out, const T* __restrict__ rows,
                                           const T* __restrict__ stat, const T* __restrict__ sqnorm,
                                           const T* __restrict__ sums, int64_t nrows, int64_t dim,
                                           int metric) {
  const int64_t total = nrows * dim;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / dim;
    const T a = center_gemm_scale<T>(metric, stat[r]);
    const T b = center_self_scale<T>(metric, stat[r], sqnorm[r]) * sums[r];
    out[e] = fused_multiply_add(a, out[e], b * rows[e]);
  }
}

// The cross term of one side as a pair scan over the gradient: out[r, :] =
// sum_j g(r, j) other[j, :] and sum[r] = sum_j w(r, j), for r the tile's rows
// (points for kPointsSide, centres for kCentersSide) and j the columns walked (the
// other side), with w = center_grad_weight(g, distance). The plan's n is the
// rows, k the columns walked; grid.y splits the columns into groups, each
// writing its partial out (group, r, :) and sum (group, r), added in order on
// the host. The gradient is [N, K] row-major: a points row is contiguous, a
// centres row strided. A block stages a 64 x 64 tile of the gradient and 64
// columns' vectors, both raw, and runs the tile's products on the tensor cores
// in 3xTF32 with the split at use (tf32_split_at_use), each warp 32 rows x 16
// coordinates; other_t is the other side transposed and padded with zeros,
// [64, col_tiles * 64], so its staging needs no checks.
enum GradSide : int { kPointsSide = 0, kCentersSide = 1 };

// Shared strides: a fragment's 32 lanes read 32 different banks (rows g, columns
// t: 68 g + t = 4 g + t mod 32; the centres' tile is stored column-major, 72 t +
// g = 8 t + g), and a warp's staging stores are conflict-free too.
constexpr int kGradTileStride = kPairTileCols + 4;   // the points' gradient tile, [row][column]
constexpr int kGradTileStrideT = kPairTileRows + 8;  // the centres' gradient tile, [column][row]
constexpr int kGradOtherStride = kPairTileCols + 4;  // the other side, [coordinate][column]
constexpr int kGradDim = 64;                         // coordinates of other_t a pass
constexpr int kGradMaxDim = 128;                     // D on this route: at most two passes a side

// Two blocks a multiprocessor (at most 128 registers a thread, no spills): the
// kernel is bound by reading the gradient, and while one block multiplies a
// staged tile the other's loads are in flight.
template <int Side, bool Cosine>
__global__ void __launch_bounds__(kPairThreads, 2)
    center_grad_mma_kernel(PairTilePlan plan, const float* __restrict__ grad, const float* __restrict__ dist,
                           const float* __restrict__ other_t, float* __restrict__ partial,
                           float* __restrict__ partial_sum) {
  constexpr int kStride = Side == kPointsSide ? kGradTileStride : kGradTileStrideT;
  DSCH_SHARED_ARRAY(float, tile_grad, kPairTileRows * kStride);
  DSCH_SHARED_ARRAY(float, other, kGradDim * kGradOtherStride);
  DSCH_SHARED_ARRAY(float, sums, kPairThreads);
  const MmaLane<> m = MmaLane<>::here();
  const ColumnGroup group = ColumnGroup::of_block(plan);
  const int64_t other_row = plan.col_tiles * kPairTileCols;
  // A thread stages 16 gradient values of one row a tile, at columns j_first + 4 i, and
  // adds their weights into the row's sum: for the points, rows t / 4 (a warp reads 8 rows
  // x 4 adjacent columns, each sector wholly used over two i); for the centres, rows t % 64
  // (a warp reads 32 adjacent centres of one point).
  const int my_row = Side == kPointsSide ? threadIdx.x / 4 : threadIdx.x % 64;
  const int j_first = Side == kPointsSide ? threadIdx.x % 4 : threadIdx.x / 64;
  for (int64_t p0 = blockIdx.x * int64_t{kPairTileRows}; p0 < plan.n;
       p0 += static_cast<int64_t>(gridDim.x) * kPairTileRows) {
    float acc[kMTiles][kNTiles][4] = {};
    float row_sum = 0.0f;
    const int64_t row = p0 + my_row;
    for (int64_t tile = group.first; tile < group.last; ++tile) {
      const int64_t j0 = tile * kPairTileCols;
      __syncthreads();  // the previous tile's fragments are read
      // A full tile (all but the last row and column tiles) takes no checks.
      const float* src = grad + (Side == kPointsSide ? row * plan.k + j0 + j_first : (j0 + j_first) * plan.n + row);
      const int64_t step = Side == kPointsSide ? 4 : 4 * plan.n;
      const auto stage = [&](auto checked) {
        DSCH_UNROLL
        for (int i = 0; i < 16; ++i) {
          const int j = j_first + 4 * i;
          float g = 0.0f, w = 0.0f;
          if (!decltype(checked)::value || (row < plan.n && j0 + j < plan.k)) {
            g = src[i * step];
            w = Cosine ? center_grad_weight<float>(kCosine, g, dist[src - grad + i * step]) : g;
          }
          row_sum += w;
          tile_grad[Side == kPointsSide ? my_row * kStride + j : j * kStride + my_row] = g;
        }
      };
      if (p0 + kPairTileRows <= plan.n && j0 + kPairTileCols <= plan.k) {
        stage(std::false_type{});
      } else {
        stage(std::true_type{});
      }
      DSCH_UNROLL
      for (int i = 0; i < 4; ++i) {  // 64 coordinates x 64 columns as float4s
        const int e = threadIdx.x + i * kPairThreads, d = e / 16, q = e % 16;
        *reinterpret_cast<float4*>(&other[d * kGradOtherStride + 4 * q]) =
            *reinterpret_cast<const float4*>(other_t + d * other_row + j0 + 4 * q);
      }
      __syncthreads();
      DSCH_UNROLL
      for (int s = 0; s < kPairTileCols / 8; ++s) {
        float a_hi[kMTiles][4], a_lo[kMTiles][4];
        DSCH_UNROLL
        for (int mt = 0; mt < kMTiles; ++mt) {
          DSCH_UNROLL
          for (int f = 0; f < 4; ++f) {
            const int r = m.row_base + 16 * mt + m.g + 8 * (f % 2), j = 8 * s + m.t + 4 * (f / 2);
            tf32_split_at_use(tile_grad[Side == kPointsSide ? r * kStride + j : j * kStride + r], a_hi[mt][f],
                              a_lo[mt][f]);
          }
        }
        DSCH_UNROLL
        for (int nt = 0; nt < kNTiles; ++nt) {
          float b_hi[2], b_lo[2];
          DSCH_UNROLL
          for (int f = 0; f < 2; ++f)
            tf32_split_at_use(other[(m.col_base + 8 * nt + m.g) * kGradOtherStride + 8 * s + m.t + 4 * f], b_hi[f],
                              b_lo[f]);
          DSCH_UNROLL
          for (int mt = 0; mt < kMTiles; ++mt) mma_tf32x3_m16n8k8(acc[mt][nt], a_hi[mt], a_lo[mt], b_hi, b_lo);
        }
      }
    }
    // Partials: the fragments' rows g, g + 8 and columns 2t, 2t + 1 of each m16 x n8 product.
    float* const out = partial + blockIdx.y * plan.n * plan.dim;
    DSCH_UNROLL
    for (int mt = 0; mt < kMTiles; ++mt) {
      DSCH_UNROLL
      for (int nt = 0; nt < kNTiles; ++nt) {
        DSCH_UNROLL
        for (int f = 0; f < 4; ++f) {
          const int64_t r = p0 + m.row_base + 16 * mt + m.g + 8 * (f / 2);
          const int d = m.col_base + 8 * nt + 2 * m.t + f % 2;
          if (r < plan.n && d < plan.dim) out[r * plan.dim + d] = acc[mt][nt][f];
        }
      }
    }
    // The row's sum from the threads that staged it: 4 adjacent lanes, or 4 warps' lanes.
    float* const sum_out = partial_sum + blockIdx.y * plan.n;
    if constexpr (Side == kPointsSide) {
      row_sum += __shfl_xor_sync(kFullWarpMask, row_sum, 1);
      row_sum += __shfl_xor_sync(kFullWarpMask, row_sum, 2);
      if (threadIdx.x % 4 == 0 && row < plan.n) sum_out[row] = row_sum;
    } else {
      sums[threadIdx.x] = row_sum;
      __syncthreads();
      if (threadIdx.x < 64 && row < plan.n)
        sum_out[row] = (sums[threadIdx.x] + sums[threadIdx.x + 64]) + (sums[threadIdx.x + 128] + sums[threadIdx.x + 192]);
      __syncthreads();  // sums is free for the next row tile
    }
  }
}

// The cross term and the weights' sums of one side on center_grad_mma_kernel:
// rows [R, D] (the side's own rows, for the plan), other [J, D] (scaled as the
// metric needs). Returns {cross [R, D], sums [R]}, unscaled. The kernel takes
// kGradDim coordinates of the other side at a time; above that each slab of
// them is one more pass over the gradient (at most kGradMaxDim / kGradDim),
// whose sums, the same bits each pass, are taken from the first.
std::pair<at::Tensor, at::Tensor> grad_side_on_tiles(int side, const at::Tensor& grad, const at::Tensor& dist,
                                                     bool cosine, int64_t rows, const at::Tensor& other,
                                                     gpu::Stream stream) {
  const int64_t cols = other.size(0), dim = other.size(1);
  const int64_t slabs = (dim + kGradDim - 1) / kGradDim, slab_dim = slabs == 1 ? dim : kGradDim;
  const PairTilePlan plan = plan_pair_tiles(rows, cols, slab_dim, gpu::multiprocessor_count(grad.device()));
  const int64_t groups = pair_groups(plan), other_row = plan.col_tiles * kPairTileCols;
  const at::Tensor other_t =
      at::constant_pad_nd(other.t(), {0, other_row - cols, 0, slabs * kGradDim - dim}).contiguous();
  at::Tensor partial = at::empty({slabs, groups, rows, slab_dim}, grad.options());
  at::Tensor partial_sum = at::empty({slabs, groups, rows}, grad.options());
  const auto kernel = side == kPointsSide ? (cosine ? &center_grad_mma_kernel<kPointsSide, true>
                                                    : &center_grad_mma_kernel<kPointsSide, false>)
                                         : (cosine ? &center_grad_mma_kernel<kCentersSide, true>
                                                   : &center_grad_mma_kernel<kCentersSide, false>);
  for (int64_t slab = 0; slab < slabs; ++slab)
    gpu::launch("center_grad_tiles", kernel, pair_tile_grid(plan), kPairThreads, 0, stream, plan,
                grad.const_data_ptr<float>(), cosine ? dist.const_data_ptr<float>() : nullptr,
                other_t.const_data_ptr<float>() + slab * kGradDim * other_row, partial[slab].data_ptr<float>(),
                partial_sum[slab].data_ptr<float>());
  // Groups added in order (the same bits every run); slabs side by side, the padding dropped.
  const at::Tensor cross = groups == 1 ? partial.select(1, 0) : at::sum(partial, {1});
  const at::Tensor sums = groups == 1 ? partial_sum[0][0] : at::sum(partial_sum[0], {0});
  if (slabs == 1) return {cross[0], sums};
  return {cross.permute({1, 0, 2}).reshape({rows, slabs * kGradDim}).narrow(1, 0, dim).contiguous(), sums};
}

// The cross terms and the weights' sums by torch: the weights (cosine) in one
// pass, two reductions and two full-fp32 GEMMs. Returns {G C', G^T X', row sums, column sums}.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_terms_by_gemm(const at::Tensor& grad,
                                                                               const at::Tensor& distances_in,
                                                                               int metric, const at::Tensor& c_scaled,
                                                                               const at::Tensor& x_scaled,
                                                                               gpu::Stream stream) {
  const int64_t total = grad.numel();
  at::Tensor weight = grad;
  if (metric == kCosine) {
    const at::Tensor dist = distances_in.contiguous().to(grad.scalar_type());
    weight = at::empty_like(grad);
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "center_grad_weight_cuda", [&] {
      gpu::launch("center_grad_weight", &center_grad_weight_kernel<scalar_t>, gpu::grid_for(total, kThreads), kThreads,
                  0, stream, grad.const_data_ptr<scalar_t>(), dist.const_data_ptr<scalar_t>(), total, metric,
                  weight.data_ptr<scalar_t>());
    });
  }
  const at::NoTF32Guard full_fp32;
  return {at::mm(grad, c_scaled), at::mm(grad.t(), x_scaled), at::sum(weight, {1}), at::sum(weight, {0})};
}

std::tuple<at::Tensor, at::Tensor> center_distances_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& centers_in,
    const at::Tensor& distances_in, c10::string_view metric_name) {
  check_points_centers(x_in, centers_in);
  check_center_backward(grad_in, x_in, centers_in, distances_in);
  const int metric = parse_center_metric(metric_name);
  const int64_t n = x_in.size(0), k = centers_in.size(0);
  const gpu::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const at::Tensor grad = grad_in.contiguous().to(x.scalar_type());
  const auto x_stats = center_row_stats_cuda(x, metric);
  const auto c_stats = center_row_stats_cuda(centers, metric);
  const gpu::Stream stream = gpu::current_stream();
  const at::Tensor c_scaled = metric == kCosine ? centers.mul(c_stats.first.unsqueeze(1)) : centers;
  const at::Tensor x_scaled = metric == kCosine ? x.mul(x_stats.first.unsqueeze(1)) : x;

  at::Tensor grad_x, grad_c, row_sum, col_sum;
  if (x.scalar_type() == at::kFloat && x.size(1) <= kGradMaxDim && n > 0 && k > 0) {
    const at::Tensor dist = metric == kCosine ? distances_in.contiguous().to(x.scalar_type()) : at::Tensor();
    std::tie(grad_x, row_sum) = grad_side_on_tiles(kPointsSide, grad, dist, metric == kCosine, n, c_scaled, stream);
    std::tie(grad_c, col_sum) = grad_side_on_tiles(kCentersSide, grad, dist, metric == kCosine, k, x_scaled, stream);
  } else {
    std::tie(grad_x, grad_c, row_sum, col_sum) = cross_terms_by_gemm(grad, distances_in, metric, c_scaled, x_scaled,
                                                                     stream);
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_grad_combine_cuda", [&] {
    const int64_t dim = x.size(1);
    if (n > 0) {
      gpu::launch("center_grad_combine", &center_grad_combine_kernel<scalar_t>, gpu::grid_for(n * dim, kThreads),
                  kThreads, 0, stream, grad_x.data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                  x_stats.first.const_data_ptr<scalar_t>(), x_stats.second.const_data_ptr<scalar_t>(),
                  row_sum.const_data_ptr<scalar_t>(), n, dim, metric);
    }
    gpu::launch("center_grad_combine", &center_grad_combine_kernel<scalar_t>, gpu::grid_for(k * dim, kThreads),
                kThreads, 0, stream, grad_c.data_ptr<scalar_t>(), centers.const_data_ptr<scalar_t>(),
                c_stats.first.const_data_ptr<scalar_t>(), c_stats.second.const_data_ptr<scalar_t>(),
                col_sum.const_data_ptr<scalar_t>(), k, dim, metric);
  });
  return {grad_x, grad_c};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) {
  m.impl("_center_distances_backward", &center_distances_backward_cuda);
}

}  // namespace dsch_ext
