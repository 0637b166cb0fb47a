// CUDA kernel of dsch_ext::center_distances: the register-tiled pair scan
// (pair_tile.cuh) computes each <x, c> and writes the distance straight from
// registers (center_math.h's epilogue), so the N x K result is written once
// and never read back. float32 products run on the tensor cores in 3xTF32
// (fp32 accuracy, tf32_math.h), float64 ones as FMAs; never plain TF32,
// whatever torch's switch says (the epilogue's cancellation in
// |x|^2 + |c|^2 - 2<x, c> would turn TF32's ~1e-3 relative error into wrong
// distances).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/center_checks.h"
#include "center_stats.cuh"
#include "pair_tile_mma.cuh"

namespace dsch_ext {
namespace {

template <typename T>
struct DistanceVisitor {
  struct State {};
  T* out;
  int64_t k;
  int metric;
  const T* x_stat;
  const T* c_stat;

  __device__ __forceinline__ void start(State&) const {}
  __device__ __forceinline__ void visit(State&, int64_t point, int64_t col, T dot) const {
    out[point * k + col] = center_distance_from_dot<T>(metric, dot, x_stat[point], c_stat[col]);
  }
  __device__ __forceinline__ void finish(State&, int64_t, int, bool) const {}
};

at::Tensor center_distances_cuda(const at::Tensor& x_in, const at::Tensor& centers_in, c10::string_view metric_name) {
  check_points_centers(x_in, centers_in);
  const int metric = parse_center_metric(metric_name);
  const gpu::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const int64_t n = x.size(0), k = centers.size(0);
  const auto x_stats = center_row_stats_cuda(x, metric);
  const auto c_stats = center_row_stats_cuda(centers, metric);
  at::Tensor out = at::empty({n, k}, x.options());
  const PairTilePlan plan = plan_pair_tiles(n, k, x.size(1), gpu::multiprocessor_count(x.device()));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_distances_cuda", [&] {
    const DistanceVisitor<scalar_t> visitor{out.data_ptr<scalar_t>(), k, metric,
                                            x_stats.first.const_data_ptr<scalar_t>(),
                                            c_stats.first.const_data_ptr<scalar_t>()};
    launch_dot_tiles<scalar_t>("center_distance_tiles", plan, x, centers, visitor, gpu::current_stream());
  });
  return out;
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("center_distances", &center_distances_cuda); }

}  // namespace dsch_ext
