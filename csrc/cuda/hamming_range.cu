// CUDA kernel of dsch_ext::hamming_range: every database code within a
// Hamming radius of each query, as (lims, distances, indices) in CSR form,
// query i's hits at [lims[i], lims[i + 1]) in database index order.
//
// One pass of the query-tiled scan (hamming_tiled_scan.cuh) counts the hits
// of each (query, chunk) and writes the first `segment` of them, in index
// order (warp ballot ranks over codes taken in index order, no atomics), to
// the pair's own segment of a buffer of at most kRangeSegmentBytes; torch ops
// on the device turn the counts into lims and per-(query, chunk) offsets, and
// a copy kernel moves the segments into place. Where some pair has more hits
// than its segment holds, a second pass writes every hit at its offset
// instead. The total and the largest count are read on the host once: the
// output size depends on the data, so this op (alone among the ops)
// synchronises.
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
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
constexpr int64_t kRangeSegmentBytes = launch::kRangeSegmentBytes;
constexpr int kCopyThreads = 128;

// The one pass: counts[q, chunk] = hits (distance < limit), the first
// `segment` of them written in index order to the pair's segment. The count
// grows by the ballot's popcount, the same on every lane.
struct RangeSegmentVisitor {
  int limit;
  int64_t nchunks, segment;
  int64_t* counts;     // [nq, nchunks]
  int32_t* seg_dist;   // [nq, nchunks, segment]
  int64_t* seg_index;
  int64_t base[kMaxQueriesPerWarp] = {};  // the pair's segment
  int64_t n[kMaxQueriesPerWarp] = {};     // its hits so far
  int below[kMaxQueriesPerWarp] = {};     // the slot's limit: `limit`, or 0 for an idle slot

  static constexpr bool kMaskIdleSlots = false;
  __device__ void start(int a, int64_t q, int64_t chunk) {
    base[a] = (q * nchunks + chunk) * segment;
    n[a] = 0;
    below[a] = limit;
  }
  __device__ void idle(int a) { below[a] = 0; }
  __device__ void visit(int a, int64_t, int d, bool valid, int64_t j) {
    const bool hit = valid && d < below[a];
    // Most visits have no hit in the warp: the ballot alone (the same on every lane, so the
    // branch on it is uniform).
    const unsigned ballot = __ballot_sync(kFullWarpMask, hit);
    if (ballot == 0) return;
    const int64_t slot = n[a] + lanes_before(ballot);
    if (hit && slot < segment) {
      seg_dist[base[a] + slot] = d;
      seg_index[base[a] + slot] = j;
    }
    n[a] += __popc(ballot);
  }
  __device__ void finish(int a, int64_t q, int64_t chunk) {
    if ((threadIdx.x & 31) == 0) counts[q * nchunks + chunk] = n[a];
  }
};

// Each (query, chunk) pair's segment -> the output at the pair's offset
// (every pair fits its segment).
__global__ void copy_segments_kernel(int64_t npairs, int64_t segment, const int64_t* __restrict__ counts,
                                     const int64_t* __restrict__ offsets, const int32_t* __restrict__ seg_dist,
                                     const int64_t* __restrict__ seg_index, int32_t* __restrict__ out_dist,
                                     int64_t* __restrict__ out_index) {
  for (int64_t p = blockIdx.y; p < npairs; p += gridDim.y) {
    for (int64_t i = threadIdx.x; i < counts[p]; i += blockDim.x) {
      out_dist[offsets[p] + i] = seg_dist[p * segment + i];
      out_index[offsets[p] + i] = seg_index[p * segment + i];
    }
  }
}

// The second pass, where a segment overflowed: the hits of (q, chunk) go to
// out[offsets[q, chunk] ...] in index order.
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
    const int rank = lanes_before(ballot);
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
    // Slots a pair's segment holds: the buffer's budget over the pairs, at most a chunk's
    // codes (none when that is under a warp's worth: the pass then only counts).
    const int64_t npairs = nq * plan.nchunks;
    int64_t segment = kRangeSegmentBytes / (npairs * static_cast<int64_t>(sizeof(int32_t) + sizeof(int64_t)));
    segment = std::min(segment, plan.chunk_rows);
    if (segment < 32) segment = 0;
    at::Tensor counts = at::empty({nq, plan.nchunks}, long_opts);
    const at::Tensor seg_dist = at::empty({npairs * segment}, int_opts);
    const at::Tensor seg_index = at::empty({npairs * segment}, long_opts);
    const RangeSegmentVisitor one_pass{limit, plan.nchunks, segment, counts.data_ptr<int64_t>(),
                                       seg_dist.data_ptr<int32_t>(), seg_index.data_ptr<int64_t>(), {}, {}, {}};
    launch_tiled_scan<Width>("hamming_range_segments", plan, stream, q, db, nq, ndb, nbytes, nullptr, one_pass);
    const at::Tensor inclusive = at::cumsum(counts.view({-1}), 0).view({nq, plan.nchunks});
    lims = at::cat({at::zeros({1}, long_opts), inclusive.select(1, plan.nchunks - 1)});
    const at::Tensor offsets = inclusive.sub(counts).contiguous();
    // The output's size and whether every pair fit its segment: the one host sync.
    const at::Tensor summary = at::stack({lims[nq], counts.max()}).cpu();
    const int64_t total = summary.const_data_ptr<int64_t>()[0], most = summary.const_data_ptr<int64_t>()[1];
    out_dist = at::empty({total}, int_opts);
    out_index = at::empty({total}, long_opts);
    if (total == 0) return;
    if (most <= segment) {
      const dim3 grid(1, static_cast<unsigned>(std::min(npairs, gpu::max_grid_yz())));
      gpu::launch("hamming_range_copy", &copy_segments_kernel, grid, kCopyThreads, 0, stream, npairs, segment,
                  counts.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(),
                  seg_dist.const_data_ptr<int32_t>(), seg_index.const_data_ptr<int64_t>(),
                  out_dist.data_ptr<int32_t>(), out_index.data_ptr<int64_t>());
      return;
    }
    const RangeCollectVisitor collect{limit, plan.nchunks, offsets.const_data_ptr<int64_t>(),
                                      out_dist.data_ptr<int32_t>(), out_index.data_ptr<int64_t>(), {}};
    launch_tiled_scan<Width>("hamming_range_collect", plan, stream, q, db, nq, ndb, nbytes, nullptr, collect);
  });
  return {lims, out_dist, out_index};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("hamming_range", &hamming_range_cuda); }

}  // namespace dsch_ext
