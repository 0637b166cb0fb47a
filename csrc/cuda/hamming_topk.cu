// CUDA kernel of dsch_ext::hamming_topk: exact k nearest codes by Hamming
// distance, sorted by (distance, database index), any k <= ndb.
//
// Selection with a sampled threshold and one pass of the query-tiled scan
// over the database (hamming_tiled_scan.cuh), so every code loaded serves a
// whole tile of queries and few queries still fill the GPU (the database is
// split into chunks across blocks):
//   0. sample: per query, a histogram of the distances to a strided sample
//      of the database (a tiled pass over the gathered sample rows, about a
//      16th of the database) gives a bound b, set so that about 1.5 k codes
//      are expected at distance < b (the CPU scan's rule);
//   1. append: every code at distance < b goes to the query's candidate
//      list as a (distance, index) key, one atomic per warp with a hit;
//      the list keeps its first `capacity` keys and counts them all;
//   2. select: per query, the k smallest keys of its list, in order (a
//      key orders by distance, then index: ties go to the lower index).
// A query whose sample misled it (fewer than k codes under b, or more than
// its list holds) is redone exactly before the select: a histogram pass
// over its tiles gives the true threshold t, a count pass the codes below
// and at t per chunk, and an ordered collect keeps every code below t and
// the lowest-index codes at t. Flags and thresholds stay on the device: no
// host synchronisation, and a tile without a flagged query is skipped whole.
// Counts are 64-bit end to end: a database may hold 2^31 codes or more.
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/zeros.h>
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
    launch::kSamplePerK, launch::kSelectBytes;
constexpr int64_t kMinSampleHits = 4;

// A candidate as one int64 key that orders by (distance, index): the
// distance above bit 48, the database index below (so databases up to 2^48
// codes; a distance is at most 8192). An empty list slot holds kNoKey.
constexpr int kKeyIndexBits = 48;
constexpr int64_t kKeyIndexMask = (int64_t{1} << kKeyIndexBits) - 1;
constexpr int64_t kNoKey = std::numeric_limits<int64_t>::max();
__device__ __forceinline__ int64_t candidate_key(int d, int64_t j) {
  return (static_cast<int64_t>(d) << kKeyIndexBits) | j;
}

// The one pass: every code at distance < threshold[q] is appended to query
// q's list. A warp's hits for a query take one atomic on found[q] (every
// lane of the warp calls visit, and the ballot is the same on every lane, so
// the branch on it is uniform); slots past the list's capacity are counted,
// not written, and such a query is redone.
struct AppendVisitor {
  const int32_t* threshold;
  unsigned long long* found;  // [nq]: codes under the threshold, written or not
  int64_t capacity;
  int64_t* keys;  // [nq, capacity]
  int t[kMaxQueriesPerWarp] = {};

  static constexpr bool kMaskIdleSlots = false;
  __device__ void start(int a, int64_t q, int64_t) { t[a] = threshold[q]; }
  __device__ void idle(int a) { t[a] = -1; }  // no distance is below -1
  __device__ void visit(int a, int64_t q, int d, bool valid, int64_t j) {
    const bool hit = valid && d < t[a];
    const unsigned ballot = __ballot_sync(kFullWarpMask, hit);
    if (ballot == 0) return;
    const int lane = threadIdx.x & 31;
    unsigned long long base = 0;
    if (lane == 0) base = atomicAdd(&found[q], static_cast<unsigned long long>(__popc(ballot)));
    base = __shfl_sync(kFullWarpMask, base, 0);
    const unsigned long long slot = base + static_cast<unsigned>(lanes_before(ballot));
    if (hit && slot < static_cast<unsigned long long>(capacity)) keys[q * capacity + slot] = candidate_key(d, j);
  }
  __device__ void finish(int, int64_t, int64_t) {}
};

// Counts per (query, chunk) for the exact redo: [0] codes at distance <
// threshold[q], [1] codes at exactly threshold[q].
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

// Distance histogram per query (the sample and the exact redo): hist[q, d] += codes at d.
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

// The exact redo's collect: writes the keys of (query, chunk) in index
// order, codes below threshold[q] from offset [0] on, codes at it after
// below_total[q] from offset [1] on, as long as their rank among the ties
// keeps them in the first k.
struct CollectVisitor {
  const int32_t* threshold;
  const int64_t* offsets;  // [nq, nchunks, 2], exclusive over chunks
  const int64_t* below_total;
  int64_t nchunks, capacity, k;
  int64_t* keys;  // [nq, capacity]
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
    tie_end[a] = q * capacity + k;
  }
  __device__ void visit(int a, int64_t, int d, bool valid, int64_t j) {
    const bool is_below = valid && d < t[a], is_tie = valid && d == t[a];
    int nb = 0, nt = 0;
    const int rb = warp_rank(is_below, &nb), rt = warp_rank(is_tie, &nt);
    if (is_below) keys[below_slot[a] + rb] = candidate_key(d, j);
    if (is_tie && tie_slot[a] + rt < tie_end[a]) keys[tie_slot[a] + rt] = candidate_key(d, j);
    below_slot[a] += nb;
    tie_slot[a] += nt;
  }
  __device__ void finish(int, int64_t, int64_t) {}
};

// After the append: flags[q] = whether query q is redone (fewer than k
// codes under its bound, or more than its list holds), and slots past the
// query's candidates get kNoKey (a redone list holds exactly k: its redo
// writes slots [0, k)), so that the select sees only candidates.
__global__ void flag_redo_kernel(int64_t nq, int64_t k, int64_t capacity, const int64_t* __restrict__ found,
                                 uint8_t* __restrict__ flags, int64_t* __restrict__ keys) {
  for (int64_t q = blockIdx.y; q < nq; q += gridDim.y) {
    const bool redo = found[q] < k || found[q] > capacity;
    if (blockIdx.x == 0 && threadIdx.x == 0) flags[q] = redo;
    for (int64_t i = (redo ? k : found[q]) + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
         i < capacity; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      keys[q * capacity + i] = kNoKey;
    }
  }
}

// The redo's threshold per flagged query from its full histogram (the rule
// shared with the CPU scan).
__global__ void exact_threshold_kernel(int64_t nq, int nbins, int64_t k, const uint8_t* __restrict__ flags,
                                       const int64_t* __restrict__ hist, int32_t* __restrict__ threshold) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < nq;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n_below = 0;
    if (flags[q]) threshold[q] = topk_threshold(hist + q * nbins, nbins, k, &n_below);
  }
}

// The redo's counts [q, chunk, 2] -> exclusive sums over chunks in place
// (each chunk's first slot among the codes below / at the threshold) and
// below_total[q], for the flagged queries.
__global__ void chunk_offsets_kernel(int64_t nq, int64_t nchunks, const uint8_t* __restrict__ flags,
                                     int64_t* __restrict__ counts, int64_t* __restrict__ below_total) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < nq;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (!flags[q]) continue;
    int64_t below = 0, at = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      int64_t* row = counts + (q * nchunks + c) * 2;
      const int64_t b = row[0], e = row[1];
      row[0] = below;
      row[1] = at;
      below += b;
      at += e;
    }
    below_total[q] = below;
  }
}

// The selected keys of n neighbours -> their distances and indices.
__global__ void split_keys_kernel(int64_t n, const int64_t* __restrict__ keys, int32_t* __restrict__ dist,
                                  int64_t* __restrict__ index) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t key = keys[i];
    dist[i] = static_cast<int32_t>(key >> kKeyIndexBits);
    index[i] = key & kKeyIndexMask;
  }
}

// The sampled bound per query, from the sample's distance histogram (cum(b)
// = sample codes at distance < b): b = the least with cum(b) >= want (about
// 1.5 k codes of the database expected under it). Where cum(b) > roomy
// (half the list's capacity, in sample codes: a crowded last distance would
// overflow the list and send the query to the exact redo), b steps down to
// the largest bound with cum <= roomy, but not below the least with cum >=
// low (about 1.1 k expected).
__global__ void sampled_bound_kernel(int64_t nq, int nbins, const int64_t* __restrict__ hist, int64_t want,
                                     int64_t low, int64_t roomy, int32_t* __restrict__ bound) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < nq;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int under_want = 0, under_low = 0, within_roomy = 0;  // distances d with cum(d + 1) < want, ...
    int64_t cum = 0;
    for (int d = 0; d < nbins; ++d) {
      cum += hist[q * nbins + d];
      under_want += cum < want;
      under_low += cum < low;
      within_roomy += cum <= roomy;
    }
    const int b = under_want + 1 < nbins ? under_want + 1 : nbins;
    const int b_low = under_low + 1 < nbins ? under_low + 1 : nbins;
    const int stepped = within_roomy > b_low ? within_roomy : b_low;
    bound[q] = stepped < b ? stepped : b;
  }
}

// The sampled bound's plan: sample size and stride, the sample codes wanted
// under the bound (about 1.5 k codes of the database expected there, at
// least about 1.1 k when the list would crowd), the candidate list's length
// and half of it in sample codes.
struct SamplePlan {
  int64_t sample, stride, want, low, capacity, roomy;
  SamplePlan(int64_t ndb, int64_t k) {
    sample = std::min({kSamplePerK * (ndb / k), kMaxSample, ndb / 16});
    sample = std::max(sample, std::min(kMinSample, ndb));
    stride = std::max<int64_t>(1, ndb / sample);
    want = std::max(kMinSampleHits, (3 * k * sample + 2 * ndb - 1) / (2 * ndb));
    low = std::max(kMinSampleHits, std::min(want, (11 * k * sample + 10 * ndb - 1) / (10 * ndb)));
    const int64_t expected = want * (ndb / sample);
    capacity = std::min(ndb, std::max({kListFactor * k, k + kListSlack, kListOverExpected * expected}));
    roomy = capacity / 2 / (ndb / sample);
  }
};

std::tuple<at::Tensor, at::Tensor> hamming_topk_cuda(const at::Tensor& queries_in,
                                                     const at::Tensor& database_in, int64_t k) {
  check_query_database(queries_in, database_in);
  check_topk_k(k, database_in);
  TORCH_CHECK(queries_in.size(1) <= kMaxCudaCodeBytes, "hamming_topk on CUDA supports codes of up to ",
              kMaxCudaCodeBytes * 8, " bits, got queries of shape ", queries_in.sizes());
  TORCH_CHECK(database_in.size(0) <= kKeyIndexMask + 1, "hamming_topk on CUDA supports databases of up to 2^",
              kKeyIndexBits, " codes, got database of shape ", database_in.sizes());
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
  const gpu::Stream stream = gpu::current_stream();
  const uint8_t* q = queries.const_data_ptr<uint8_t>();
  const uint8_t* db = database.const_data_ptr<uint8_t>();
  at::Tensor keys = at::empty({nq, capacity}, long_opts);
  const unsigned query_grid = gpu::grid_for(nq, kBlockThreads);
  const dim3 list_grid(gpu::grid_for(capacity, kBlockThreads), static_cast<unsigned>(std::min(nq, gpu::max_grid_yz())));

  dispatch_code_width(nbytes, [&](auto width) {
    using Width = decltype(width);
    const auto plan = TiledScanPlan::make<Width>(nq, ndb, nbytes, queries.device(), kMinChunkRows);
    const auto sample_plan = TiledScanPlan::make<Width>(nq, sampling.sample, nbytes, queries.device(), kMinChunkRows);
    // Every counter in one zeroed buffer (one memset): the sample's histogram, the append's
    // counts, the redo's histogram and per-chunk counts; the rest needs no zeros.
    const int64_t n_hist = nq * nbins, n_counts = nq * plan.nchunks * 2;
    const at::Tensor zeroed = at::zeros({2 * n_hist + nq + n_counts}, long_opts);
    int64_t* const sample_hist = zeroed.data_ptr<int64_t>();
    int64_t* const found = sample_hist + n_hist;
    int64_t* const hist = found + nq;
    int64_t* const counts = hist + n_hist;
    const at::Tensor thresholds = at::empty({2, nq}, int_opts);  // the sampled bound, the redo's exact threshold
    int32_t* const bound = thresholds.data_ptr<int32_t>();
    int32_t* const exact_t = bound + nq;
    const at::Tensor below_total = at::empty({nq}, long_opts);
    const at::Tensor redo_flags = at::empty({nq}, queries.options());
    const uint8_t* const active = redo_flags.const_data_ptr<uint8_t>();

    // The sampled bound: a histogram pass over rows 0, stride, 2 stride, ... gathered once.
    const at::Tensor sample_rows =
        database.index_select(0, at::arange(0, sampling.sample * sampling.stride, sampling.stride, long_opts));
    const HistogramVisitor sample_histogram{nbins, reinterpret_cast<unsigned long long*>(sample_hist)};
    launch_tiled_scan<Width>("hamming_topk_sample", sample_plan, stream, q, sample_rows.const_data_ptr<uint8_t>(), nq,
                             sampling.sample, nbytes, nullptr, sample_histogram);
    gpu::launch("hamming_topk_bound", &sampled_bound_kernel, query_grid, kBlockThreads, 0, stream, nq, nbins,
                static_cast<const int64_t*>(sample_hist), sampling.want, sampling.low, sampling.roomy, bound);
    // The one pass.
    const AppendVisitor append{bound, reinterpret_cast<unsigned long long*>(found), capacity, keys.data_ptr<int64_t>(),
                               {}};
    launch_tiled_scan<Width>("hamming_topk_append", plan, stream, q, db, nq, ndb, nbytes, nullptr, append);
    gpu::launch("hamming_topk_flag_redo", &flag_redo_kernel, list_grid, kBlockThreads, 0, stream, nq, k, capacity,
                static_cast<const int64_t*>(found), redo_flags.data_ptr<uint8_t>(), keys.data_ptr<int64_t>());

    // The exact redo of the queries the sample misled (tiles without one are skipped).
    const HistogramVisitor histogram{nbins, reinterpret_cast<unsigned long long*>(hist)};
    launch_tiled_scan<Width>("hamming_topk_histogram", plan, stream, q, db, nq, ndb, nbytes, active, histogram);
    gpu::launch("hamming_topk_exact_threshold", &exact_threshold_kernel, query_grid, kBlockThreads, 0, stream, nq,
                nbins, k, active, static_cast<const int64_t*>(hist), exact_t);
    const CountVisitor count{exact_t, plan.nchunks, counts, {}, {}, {}};
    launch_tiled_scan<Width>("hamming_topk_count", plan, stream, q, db, nq, ndb, nbytes, active, count);
    gpu::launch("hamming_topk_chunk_offsets", &chunk_offsets_kernel, query_grid, kBlockThreads, 0, stream, nq,
                plan.nchunks, active, counts, below_total.data_ptr<int64_t>());
    const CollectVisitor collect{exact_t, counts, below_total.const_data_ptr<int64_t>(), plan.nchunks, capacity, k,
                                 keys.data_ptr<int64_t>(), {}, {}, {}, {}};
    launch_tiled_scan<Width>("hamming_topk_collect", plan, stream, q, db, nq, ndb, nbytes, active, collect);
  });
  // The select, a group of queries per topk call (its outputs beside the lists stay small).
  at::Tensor out_dist = at::empty({nq, k}, int_opts);
  at::Tensor out_index = at::empty({nq, k}, long_opts);
  const int64_t group = std::max<int64_t>(1, kSelectBytes / (16 * k));
  for (int64_t first = 0; first < nq; first += group) {
    const int64_t n = std::min(group, nq - first);
    const at::Tensor selected =
        std::get<0>(at::topk(keys.narrow(0, first, n), k, 1, /*largest=*/false, /*sorted=*/true)).contiguous();
    gpu::launch("hamming_topk_split", &split_keys_kernel, gpu::grid_for(n * k, kBlockThreads), kBlockThreads, 0, stream,
                n * k, selected.const_data_ptr<int64_t>(), out_dist.data_ptr<int32_t>() + first * k,
                out_index.data_ptr<int64_t>() + first * k);
  }
  return {out_dist, out_index};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("hamming_topk", &hamming_topk_cuda); }

}  // namespace dsch_ext
