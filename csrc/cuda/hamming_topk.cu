// CUDA kernel of dsch_ext::hamming_topk: exact k nearest codes by Hamming
// distance, sorted by (distance, database index), any k <= ndb.
//
// Selection by counting with a sampled threshold, in two passes of the
// query-tiled scan (hamming_tiled_scan.cuh), so every code loaded serves a
// whole tile of queries and few queries still fill the GPU (the database is
// split into chunks across blocks):
//   0. sample: per query, a histogram of the distances to a strided sample
//      of the database (a tiled pass over the gathered sample rows, about a
//      16th of the database) gives a bound b, set so that about 1.5 k codes
//      are expected at distance < b (the CPU scan's rule);
//   1. count: per (query, chunk), the codes at distance < b;
//   2. collect: each chunk writes those codes, in index order, to the
//      query's candidate list (offsets from exclusive sums over chunks);
//   3. select: per query, a histogram of its candidates' distances gives the
//      exact threshold (topk_threshold, shared with the CPU), and a stable
//      counting placement writes the first k by (distance, index).
// A query whose sample misled it (fewer than k codes under b, or more than
// the candidate list holds) is redone exactly before the collect: a
// histogram pass over its tiles only gives the true threshold t, the count
// pass runs again with t, and the collect keeps every code below t and the
// lowest-index codes at t. Flags and thresholds stay on the device: no host
// synchronisation, and a tile without a flagged query is skipped whole.
// Counts are 64-bit end to end: a database may hold 2^31 codes or more.
#include <ATen/ops/arange.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "../common/checks.h"
#include "../common/code_width.h"
#include "device_runtime.cuh"
#include "launch_constants.cuh"
#include "hamming_tiled_scan.cuh"

namespace dsch_ext {
namespace {

constexpr int kBlockThreads = 256;
constexpr int64_t kMinChunkRows = launch::kScanMinChunkRows;
using launch::kListFactor, launch::kListOverExpected, launch::kListSlack, launch::kMaxSample, launch::kMinSample,
    launch::kSamplePerK;
constexpr int64_t kMinSampleHits = 4;

// Counts per (query, chunk): [0] codes at distance < threshold[q], [1] codes
// at exactly threshold[q].
struct CountVisitor {
  const int32_t* threshold;
  int64_t nchunks;
  int64_t* counts;  // [nq, nchunks, 2]
  int t[kMaxQueriesPerWarp] = {};
  int64_t below[kMaxQueriesPerWarp] = {}, at[kMaxQueriesPerWarp] = {};

  static constexpr bool kMaskIdleSlots = false;
  __device__ void start(int a, int64_t q, int64_t) {
    t[a] = threshold[q];
    below[a] = at[a] = 0;
  }
  __device__ void idle(int a) { t[a] = -1; }  // no distance is below or at -1
  __device__ void visit(int a, int64_t, int d, bool valid, int64_t) {
    below[a] += valid && d < t[a];
    at[a] += valid && d == t[a];
  }
  __device__ void finish(int a, int64_t q, int64_t chunk) {
    const int64_t b = warp_sum(below[a]), e = warp_sum(at[a]);
    if ((threadIdx.x & 31) == 0) {
      counts[(q * nchunks + chunk) * 2] = b;
      counts[(q * nchunks + chunk) * 2 + 1] = e;
    }
  }
};

// Distance histogram per query (the exact redo): hist[q, d] += codes at d.
struct HistogramVisitor {
  int nbins;
  unsigned long long* hist;  // [nq, nbins]

  static constexpr bool kMaskIdleSlots = true;  // the histogram's row is the query's: nothing to match
  __device__ void start(int, int64_t, int64_t) {}
  __device__ void idle(int) {}
  __device__ void visit(int, int64_t q, int d, bool valid, int64_t) {
    // One atomic per distinct distance in the warp, not one per lane.
    const unsigned peers = __match_any_sync(kFullWarpMask, valid ? d : -1);
    const int lane = threadIdx.x & 31;
    if (valid && lane == __ffs(static_cast<int>(peers)) - 1) {
      atomicAdd(&hist[q * nbins + d], static_cast<unsigned long long>(__popc(peers)));
    }
  }
  __device__ void finish(int, int64_t, int64_t) {}
};

// Writes the candidates of (query, chunk) in index order: codes below
// threshold[q] from offset [0] on, codes at it after below_total[q] from
// offset [1] on, as long as their rank among the ties is < ties_wanted[q].
struct CollectVisitor {
  const int32_t* threshold;
  const int64_t* offsets;  // [nq, nchunks, 2], exclusive over chunks
  const int64_t* below_total;
  const int64_t* ties_wanted;
  int64_t nchunks, capacity;
  int32_t* cand_dist;  // [nq, capacity]
  int64_t* cand_index;
  int t[kMaxQueriesPerWarp] = {};
  // Next slots in the query's list (below: from the chunk's offset; ties:
  // after every code below) and the end of the ties' slots.
  int64_t below_slot[kMaxQueriesPerWarp] = {};
  int64_t tie_slot[kMaxQueriesPerWarp] = {};
  int64_t tie_end[kMaxQueriesPerWarp] = {};

  static constexpr bool kMaskIdleSlots = false;
  __device__ void idle(int a) { t[a] = -1; }  // no distance is below or at -1
  __device__ void start(int a, int64_t q, int64_t chunk) {
    t[a] = threshold[q];
    below_slot[a] = q * capacity + offsets[(q * nchunks + chunk) * 2];
    tie_slot[a] = q * capacity + below_total[q] + offsets[(q * nchunks + chunk) * 2 + 1];
    tie_end[a] = q * capacity + below_total[q] + ties_wanted[q];
  }
  __device__ void visit(int a, int64_t, int d, bool valid, int64_t j) {
    const bool is_below = valid && d < t[a], is_tie = valid && d == t[a];
    int nb = 0, nt = 0;
    const int rb = warp_rank(is_below, &nb), rt = warp_rank(is_tie, &nt);
    if (is_below) {
      cand_dist[below_slot[a] + rb] = d;
      cand_index[below_slot[a] + rb] = j;
    }
    if (is_tie && tie_slot[a] + rt < tie_end[a]) {
      cand_dist[tie_slot[a] + rt] = d;
      cand_index[tie_slot[a] + rt] = j;
    }
    below_slot[a] += nb;
    tie_slot[a] += nt;
  }
  __device__ void finish(int, int64_t, int64_t) {}
};

// Scan 3: query q's n[q] candidates (index order within each distance) ->
// its first k by (distance, index): a histogram gives the threshold, then one
// warp places the candidates in order, a stable counting sort (ranks among
// equal distances from __match_any_sync).
__global__ void topk_select_kernel(int64_t nq, int64_t k, int64_t capacity, int nbins,
                                   const int32_t* __restrict__ cand_dist, const int64_t* __restrict__ cand_index,
                                   const int64_t* __restrict__ n_cand, int32_t* __restrict__ out_dist,
                                   int64_t* __restrict__ out_index) {
  DSCH_DYNAMIC_SHARED(unsigned, next);  // per distance: its next output slot
  DSCH_SHARED_ARRAY(int, shared_t, 1);
  const int lane = threadIdx.x & 31;
  for (int64_t q = blockIdx.x; q < nq; q += gridDim.x) {
    const int64_t n = n_cand[q];
    const int32_t* dist = cand_dist + q * capacity;
    const int64_t* index = cand_index + q * capacity;
    for (int b = threadIdx.x; b < nbins; b += blockDim.x) next[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) atomicAdd(&next[dist[i]], 1u);
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t n_below = 0;
      shared_t[0] = topk_threshold(next, nbins, k, &n_below);
      unsigned start = 0;
      for (int b = 0; b < nbins; ++b) {
        const unsigned c = next[b];
        next[b] = start;
        start += c;
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      const int t = shared_t[0];
      for (int64_t base = 0; base < n; base += 32) {
        const int64_t i = base + lane;
        const int d = i < n ? dist[i] : -1;
        const bool keep = d >= 0 && d <= t;
        const unsigned peers = __match_any_sync(kFullWarpMask, keep ? d : -2 - lane);
        const int64_t pos = keep ? next[d] + __popc(peers & ((1u << lane) - 1u)) : k;
        __syncwarp();
        if (keep && lane == __ffs(static_cast<int>(peers)) - 1) next[d] += __popc(peers);
        __syncwarp();
        if (pos < k) {
          out_dist[q * k + pos] = d;
          out_index[q * k + pos] = index[i];
        }
      }
    }
    __syncthreads();
  }
}

// The sampled bound's plan: sample size and stride, the sample codes wanted
// under the bound (about 1.5 k codes of the database expected there), and
// the candidate list's length.
struct SamplePlan {
  int64_t sample, stride, want, capacity;
  SamplePlan(int64_t ndb, int64_t k) {
    sample = std::min({kSamplePerK * (ndb / k), kMaxSample, ndb / 16});
    sample = std::max(sample, std::min(kMinSample, ndb));
    stride = std::max<int64_t>(1, ndb / sample);
    want = std::max(kMinSampleHits, (3 * k * sample + 2 * ndb - 1) / (2 * ndb));
    const int64_t expected = want * (ndb / sample);
    capacity = std::min(ndb, std::max({kListFactor * k, k + kListSlack, kListOverExpected * expected}));
  }
};

std::tuple<at::Tensor, at::Tensor> hamming_topk_cuda(const at::Tensor& queries_in,
                                                     const at::Tensor& database_in, int64_t k) {
  check_query_database(queries_in, database_in);
  check_topk_k(k, database_in);
  TORCH_CHECK(queries_in.size(1) <= kMaxCudaCodeBytes, "hamming_topk on CUDA supports codes of up to ",
              kMaxCudaCodeBytes * 8, " bits, got queries of shape ", queries_in.sizes());
  const gpu::DeviceGuard guard(queries_in.device());
  const at::Tensor queries = contiguous_aligned(queries_in);
  const at::Tensor database = contiguous_aligned(database_in);
  const int64_t nq = queries.size(0), ndb = database.size(0), nbytes = queries.size(1);
  const auto int_opts = queries.options().dtype(at::kInt);
  const auto long_opts = queries.options().dtype(at::kLong);
  if (nq == 0) return {at::empty({0, k}, int_opts), at::empty({0, k}, long_opts)};
  const int nbins = hamming_num_bins(nbytes);
  const SamplePlan sampling(ndb, k);
  const int64_t capacity = sampling.capacity;
  TORCH_CHECK(capacity <= std::numeric_limits<int32_t>::max(), "hamming_topk on CUDA supports k up to 2^29, got k = ",
              k);
  const gpu::Stream stream = gpu::current_stream();
  const uint8_t* q = queries.const_data_ptr<uint8_t>();
  const uint8_t* db = database.const_data_ptr<uint8_t>();
  const unsigned per_query_grid = static_cast<unsigned>(std::min(nq, gpu::max_grid_x()));
  at::Tensor out_dist = at::empty({nq, k}, int_opts);
  at::Tensor out_index = at::empty({nq, k}, long_opts);

  dispatch_code_width(nbytes, [&](auto width) {
    using Width = decltype(width);
    const auto plan = TiledScanPlan::make<Width>(nq, ndb, nbytes, queries.device(), kMinChunkRows);
    // The sampled bound: a histogram pass over rows 0, stride, 2 stride, ... gathered once;
    // bound = 1 + the first distance where the sample's count reaches `want`.
    const at::Tensor sample_rows = database.index_select(0, at::arange(sampling.sample, long_opts).mul_(sampling.stride));
    const auto sample_plan = TiledScanPlan::make<Width>(nq, sampling.sample, nbytes, queries.device(), kMinChunkRows);
    at::Tensor sample_hist = at::zeros({nq, nbins}, long_opts);
    const HistogramVisitor sample_histogram{nbins,
                                            reinterpret_cast<unsigned long long*>(sample_hist.data_ptr<int64_t>())};
    launch_tiled_scan<Width>("hamming_topk_sample", sample_plan, stream, q, sample_rows.const_data_ptr<uint8_t>(), nq,
                          sampling.sample, nbytes, nullptr, sample_histogram);
    at::Tensor threshold = at::cumsum(sample_hist, 1).lt(sampling.want).sum(1).add_(1).clamp_max_(nbins).to(at::kInt);
    at::Tensor counts = at::empty({nq, plan.nchunks, 2}, long_opts);
    const CountVisitor count{threshold.const_data_ptr<int32_t>(), plan.nchunks, counts.data_ptr<int64_t>(), {}, {}, {}};
    launch_tiled_scan<Width>("hamming_topk_count", plan, stream, q, db, nq, ndb, nbytes, nullptr, count);

    // The exact redo of the queries the sample misled (tiles without one are skipped).
    const at::Tensor sampled_total = counts.select(2, 0).sum(1);
    const at::Tensor redo = sampled_total.lt(k).logical_or_(sampled_total.gt(capacity));
    const at::Tensor redo_flags = redo.to(at::kByte);
    const uint8_t* active = redo_flags.const_data_ptr<uint8_t>();
    at::Tensor hist = at::zeros({nq, nbins}, long_opts);
    const HistogramVisitor histogram{nbins, reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>())};
    launch_tiled_scan<Width>("hamming_topk_histogram", plan, stream, q, db, nq, ndb, nbytes, active, histogram);
    const at::Tensor exact_t = at::cumsum(hist, 1).lt(k).sum(1).to(at::kInt);  // topk_threshold per row
    threshold = at::where(redo, exact_t, threshold).contiguous();
    const CountVisitor recount{threshold.const_data_ptr<int32_t>(), plan.nchunks, counts.data_ptr<int64_t>(), {}, {}, {}};
    launch_tiled_scan<Width>("hamming_topk_recount", plan, stream, q, db, nq, ndb, nbytes, active, recount);

    const at::Tensor offsets = at::cumsum(counts, 1).sub_(counts).contiguous();
    const at::Tensor below_total = counts.select(2, 0).sum(1).contiguous();
    const at::Tensor ties_wanted = at::where(redo, below_total.neg().add_(k), at::zeros_like(below_total)).contiguous();
    const at::Tensor n_cand = below_total.add(at::minimum(counts.select(2, 1).sum(1), ties_wanted)).contiguous();
    at::Tensor cand_dist = at::empty({nq, capacity}, int_opts);
    at::Tensor cand_index = at::empty({nq, capacity}, long_opts);
    const CollectVisitor collect{threshold.const_data_ptr<int32_t>(), offsets.const_data_ptr<int64_t>(),
                                 below_total.const_data_ptr<int64_t>(), ties_wanted.const_data_ptr<int64_t>(),
                                 plan.nchunks, capacity, cand_dist.data_ptr<int32_t>(), cand_index.data_ptr<int64_t>(),
                                 {}, {}, {}};
    launch_tiled_scan<Width>("hamming_topk_collect", plan, stream, q, db, nq, ndb, nbytes, nullptr, collect);
    gpu::launch("hamming_topk_select", &topk_select_kernel, per_query_grid, kBlockThreads, nbins * sizeof(unsigned),
                stream, nq, k, capacity, nbins, cand_dist.const_data_ptr<int32_t>(),
                cand_index.const_data_ptr<int64_t>(), n_cand.const_data_ptr<int64_t>(), out_dist.data_ptr<int32_t>(),
                out_index.data_ptr<int64_t>());
  });
  return {out_dist, out_index};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("hamming_topk", &hamming_topk_cuda); }

}  // namespace dsch_ext
