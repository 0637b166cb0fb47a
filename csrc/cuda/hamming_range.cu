// CUDA kernel of dsch_ext::hamming_range: every database code within a
// Hamming radius of each query, as (lims, distances, indices) in CSR form,
// query i's hits at [lims[i], lims[i + 1]) in database index order.
//
// Two passes of the query-tiled scan (hamming_tiled_scan.cuh): the count
// pass sums the hits per (query, chunk), the collect pass writes each hit at
// its offset (warp ballot ranks over codes taken in index order, so index
// order holds without atomics).
// Between the passes, torch ops on the device turn the counts into lims and
// per-(query, chunk) offsets. The total is read on the host once: the output
// size depends on the data, so this op (alone among the ops) synchronises.
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../common/checks.h"
#include "../common/code_width.h"
#include "device_runtime.cuh"
#include "launch_constants.cuh"
#include "hamming_tiled_scan.cuh"

namespace dsch_ext {
namespace {

constexpr int64_t kMinChunkRows = launch::kScanMinChunkRows;

// Count pass: counts[q, chunk] = hits (distance < limit).
struct RangeCountVisitor {
  int limit;
  int64_t nchunks;
  int64_t* counts;
  int hits[kMaxQueriesPerWarp] = {};  // this lane's (a chunk holds < 2^31 codes per lane)
  int below[kMaxQueriesPerWarp] = {};  // the slot's limit: `limit`, or 0 for an idle slot

  static constexpr bool kMaskIdleSlots = false;
  __device__ void start(int a, int64_t, int64_t) {
    hits[a] = 0;
    below[a] = limit;
  }
  __device__ void idle(int a) { below[a] = 0; }
  __device__ void visit(int a, int64_t, int d, bool valid, int64_t) { hits[a] += valid && d < below[a]; }
  __device__ void finish(int a, int64_t q, int64_t chunk) {
    const int64_t total = warp_sum(hits[a]);
    if ((threadIdx.x & 31) == 0) counts[q * nchunks + chunk] = total;
  }
};

// Collect pass: the hits of (q, chunk) go to out[offsets[q, chunk] ...] in
// index order.
struct RangeCollectVisitor {
  int limit;
  int64_t nchunks;
  const int64_t* offsets;
  int32_t* out_dist;
  int64_t* out_index;
  int64_t slot[kMaxQueriesPerWarp] = {};  // the next output slot
  int below[kMaxQueriesPerWarp] = {};  // the slot's limit: `limit`, or 0 for an idle slot

  static constexpr bool kMaskIdleSlots = false;
  __device__ void start(int a, int64_t q, int64_t chunk) {
    slot[a] = offsets[q * nchunks + chunk];
    below[a] = limit;
  }
  __device__ void idle(int a) { below[a] = 0; }
  __device__ void visit(int a, int64_t, int d, bool valid, int64_t j) {
    const bool hit = valid && d < below[a];
    // Most visits have no hit in the warp: the ballot alone (the same on every lane, so the
    // branch on it is uniform), no ranks and no slot update.
    const unsigned ballot = __ballot_sync(kFullWarpMask, hit);
    if (ballot == 0) return;
    const int rank = __popc(ballot & ((1u << (threadIdx.x & 31)) - 1u));
    if (hit) {
      out_dist[slot[a] + rank] = d;
      out_index[slot[a] + rank] = j;
    }
    slot[a] += __popc(ballot);
  }
  __device__ void finish(int, int64_t, int64_t) {}
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> hamming_range_cuda(const at::Tensor& queries_in,
                                                                  const at::Tensor& database_in, int64_t radius,
                                                                  bool exclusive) {
  check_query_database(queries_in, database_in, /*allow_empty_database=*/true);
  check_range_radius(radius);
  TORCH_CHECK(queries_in.size(1) <= kMaxCudaCodeBytes, "hamming_range on CUDA supports codes of up to ",
              kMaxCudaCodeBytes * 8, " bits, got queries of shape ", queries_in.sizes());
  const gpu::DeviceGuard guard(queries_in.device());
  const at::Tensor queries = contiguous_aligned(queries_in);
  const at::Tensor database = contiguous_aligned(database_in);
  const int64_t nq = queries.size(0), ndb = database.size(0), nbytes = queries.size(1);
  const int limit = range_limit(radius, exclusive, hamming_num_bins(nbytes));
  const auto long_opts = queries.options().dtype(at::kLong);
  const auto int_opts = queries.options().dtype(at::kInt);
  if (nq == 0 || ndb == 0 || limit == 0) {
    return {at::zeros({nq + 1}, long_opts), at::empty({0}, int_opts), at::empty({0}, long_opts)};
  }
  const gpu::Stream stream = gpu::current_stream();
  const uint8_t* q = queries.const_data_ptr<uint8_t>();
  const uint8_t* db = database.const_data_ptr<uint8_t>();

  at::Tensor lims, out_dist, out_index;
  dispatch_code_width(nbytes, [&](auto width) {
    using Width = decltype(width);
    const auto plan = TiledScanPlan::make<Width>(nq, ndb, nbytes, queries.device(), kMinChunkRows);
    at::Tensor counts = at::empty({nq, plan.nchunks}, long_opts);
    const RangeCountVisitor count{limit, plan.nchunks, counts.data_ptr<int64_t>(), {}};
    launch_tiled_scan<Width>("hamming_range_count", plan, stream, q, db, nq, ndb, nbytes, nullptr, count);
    const at::Tensor inclusive = at::cumsum(counts.view({-1}), 0).view({nq, plan.nchunks});
    lims = at::cat({at::zeros({1}, long_opts), inclusive.select(1, plan.nchunks - 1)});
    const at::Tensor offsets = inclusive.sub(counts).contiguous();
    const int64_t total = lims[nq].item<int64_t>();  // the output's size: the one host sync
    out_dist = at::empty({total}, int_opts);
    out_index = at::empty({total}, long_opts);
    if (total == 0) return;
    const RangeCollectVisitor collect{limit, plan.nchunks, offsets.const_data_ptr<int64_t>(),
                                      out_dist.data_ptr<int32_t>(), out_index.data_ptr<int64_t>(), {}};
    launch_tiled_scan<Width>("hamming_range_collect", plan, stream, q, db, nq, ndb, nbytes, nullptr, collect);
  });
  return {lims, out_dist, out_index};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("hamming_range", &hamming_range_cuda); }

}  // namespace dsch_ext
