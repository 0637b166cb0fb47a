// CUDA kernel of dsch_ext::hamming_topk: exact k nearest codes by Hamming
// distance, sorted by (distance, database index), any k <= ndb.
//
// Selection by counting, in three scans of a (database chunk x query) grid,
// so few queries still fill the GPU and k has no cap:
//   1. histogram: per query, how many codes fall at each distance 0..nbits;
//      -> threshold t and n_below = count(distance < t) (topk_threshold's
//      rule, computed with torch ops on the device, no host sync);
//   2. count: per (query, chunk), codes below t and codes at t;
//      -> exclusive sums over chunks give each chunk its output offsets;
//   3. collect: each chunk writes its codes below t, in index order, to the
//      first n_below slots, and its codes at t whose global rank among the
//      ties is < k - n_below after them (lowest indices win the ties).
// A stable sort of each row by distance then yields (distance, index) order.
// Counts are 64-bit end to end: a database may hold 2^31 codes or more.
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../common/checks.h"
#include "../common/code_width.h"
#include "block_scan.cuh"
#include "device_runtime.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMinChunkRows = gpu::tuned(4096, 7);
constexpr int64_t kMaxCudaCodeBytes = 1024;  // 8192 bits: histogram fits shared memory

// Query row q: for the fixed code widths its words live in registers (indexed
// only by unrolled constants, so they never go to local memory); otherwise
// it is read from global memory word by word.
template <typename CW>
struct QueryRow {
  using Word = typename CW::word_t;
  static constexpr int kRegWords = CW::kFixedWords > 0 ? CW::kFixedWords : 1;
  Word reg[kRegWords];
  const Word* global;
  __device__ QueryRow(const uint8_t* queries, int64_t q, int64_t nwords) {
    global = reinterpret_cast<const Word*>(queries) + q * nwords;
    if constexpr (CW::kFixedWords > 0) {
DSCH_UNROLL
      for (int w = 0; w < CW::kFixedWords; ++w) reg[w] = global[w];
    }
  }
  __device__ int distance(const uint8_t* database, int64_t j, int64_t nwords) const {
    const Word* row = reinterpret_cast<const Word*>(database) + j * nwords;
    if constexpr (CW::kFixedWords > 0) {
      return hamming_fixed<Word, CW::kFixedWords>(reg, row);
    } else {
      return hamming_words<Word>(global, row, nwords);
    }
  }
};

// Scan 1: hist[q, d] += number of codes of this chunk at distance d.
template <typename CW>
__global__ void topk_histogram_kernel(const uint8_t* __restrict__ queries,
                                      const uint8_t* __restrict__ database, int64_t nq,
                                      int64_t ndb, int64_t nbytes, int64_t chunk_rows,
                                      unsigned long long* __restrict__ hist) {
  DSCH_DYNAMIC_SHARED(int, shared_hist);
  const int nbins = hamming_num_bins(nbytes);
  const int64_t nwords = words_per_row<CW>(nbytes);
  const int64_t begin = blockIdx.x * chunk_rows;
  const int64_t end = begin + chunk_rows < ndb ? begin + chunk_rows : ndb;
  for (int64_t q = blockIdx.y; q < nq; q += gridDim.y) {
    for (int b = threadIdx.x; b < nbins; b += blockDim.x) shared_hist[b] = 0;
    __syncthreads();
    const QueryRow<CW> query(queries, q, nwords);
    // Uniform trip count so whole warps meet at __match_any_sync.
    for (int64_t base = begin; base < end; base += blockDim.x) {
      const int64_t j = base + threadIdx.x;
      const bool valid = j < end;
      const unsigned active = __ballot_sync(kFullWarpMask, valid);
      if (valid) {
        const int d = query.distance(database, j, nwords);
        // Random codes crowd a few bins: one atomic per distinct distance
        // in the warp instead of one per lane.
        const unsigned peers = __match_any_sync(active, d);
        if ((threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&shared_hist[d], __popc(peers));
      }
    }
    __syncthreads();
    for (int b = threadIdx.x; b < nbins; b += blockDim.x) {
      const int c = shared_hist[b];
      if (c) atomicAdd(&hist[q * nbins + b], static_cast<unsigned long long>(c));
    }
    __syncthreads();
  }
}

// Scan 2: counts[q, chunk] = (codes below t[q], codes at t[q]).
template <typename CW>
__global__ void topk_count_kernel(const uint8_t* __restrict__ queries,
                                  const uint8_t* __restrict__ database, int64_t nq, int64_t ndb,
                                  int64_t nbytes, int64_t chunk_rows,
                                  const int64_t* __restrict__ threshold,
                                  int64_t* __restrict__ counts) {
  DSCH_SHARED_ARRAY(int, block_counts, 2);
  const int64_t nwords = words_per_row<CW>(nbytes);
  const int64_t nchunks = gridDim.x;
  const int64_t begin = blockIdx.x * chunk_rows;
  const int64_t end = begin + chunk_rows < ndb ? begin + chunk_rows : ndb;
  for (int64_t q = blockIdx.y; q < nq; q += gridDim.y) {
    if (threadIdx.x < 2) block_counts[threadIdx.x] = 0;
    __syncthreads();
    const QueryRow<CW> query(queries, q, nwords);
    const int t = static_cast<int>(threshold[q]);
    int below = 0, at = 0;
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      const int d = query.distance(database, j, nwords);
      below += d < t;
      at += d == t;
    }
    if (below) atomicAdd(&block_counts[0], below);
    if (at) atomicAdd(&block_counts[1], at);
    __syncthreads();
    if (threadIdx.x < 2) counts[(q * nchunks + blockIdx.x) * 2 + threadIdx.x] = block_counts[threadIdx.x];
    __syncthreads();
  }
}

// Scan 3: write the chunk's selected codes at their final slots (before the
// distance sort). offsets[q, chunk] = (codes below t, codes at t) in earlier
// chunks.
template <typename CW>
__global__ void topk_collect_kernel(const uint8_t* __restrict__ queries,
                                    const uint8_t* __restrict__ database, int64_t nq,
                                    int64_t ndb, int64_t nbytes, int64_t chunk_rows, int64_t k,
                                    const int64_t* __restrict__ threshold,
                                    const int64_t* __restrict__ n_below,
                                    const int64_t* __restrict__ offsets,
                                    const int64_t* __restrict__ counts,
                                    int32_t* __restrict__ out_dist, int64_t* __restrict__ out_index) {
  DSCH_SHARED_ARRAY(int, warp_totals, 33);
  const int64_t nwords = words_per_row<CW>(nbytes);
  const int64_t nchunks = gridDim.x;
  const int64_t begin = blockIdx.x * chunk_rows;
  const int64_t end = begin + chunk_rows < ndb ? begin + chunk_rows : ndb;
  for (int64_t q = blockIdx.y; q < nq; q += gridDim.y) {
    const QueryRow<CW> query(queries, q, nwords);
    const int t = static_cast<int>(threshold[q]);
    const int64_t below_total = n_below[q];
    const int64_t ties_wanted = k - below_total;
    int64_t below_pos = offsets[(q * nchunks + blockIdx.x) * 2];
    int64_t tie_rank = offsets[(q * nchunks + blockIdx.x) * 2 + 1];
    const int64_t below_end = below_pos + counts[(q * nchunks + blockIdx.x) * 2];
    int32_t* row_dist = out_dist + q * k;
    int64_t* row_index = out_index + q * k;
    for (int64_t base = begin; base < end; base += blockDim.x) {
      // Nothing left to write once this chunk's codes below t are out and
      // the ties wanted are taken (block-uniform, so no thread is left at a
      // barrier).
      if (below_pos >= below_end && tie_rank >= ties_wanted) break;
      const int64_t j = base + threadIdx.x;
      const bool valid = j < end;
      const int d = valid ? query.distance(database, j, nwords) : -1;
      const bool is_below = valid && d < t;
      const bool is_tie = valid && d == t;
      int n_b = 0, n_t = 0;
      const int rb = block_exclusive_rank(is_below, warp_totals, &n_b);
      const int rt = block_exclusive_rank(is_tie, warp_totals, &n_t);
      if (is_below) {
        row_dist[below_pos + rb] = d;
        row_index[below_pos + rb] = j;
      }
      if (is_tie && tie_rank + rt < ties_wanted) {
        row_dist[below_total + tie_rank + rt] = d;
        row_index[below_total + tie_rank + rt] = j;
      }
      below_pos += n_b;
      tie_rank += n_t;
    }
  }
}

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
  if (nq == 0) {
    return {at::empty({0, k}, int_opts), at::empty({0, k}, queries.options().dtype(at::kLong))};
  }
  const int nbins = hamming_num_bins(nbytes);

  // Enough (chunk, query) blocks to fill every SM a few times over.
  const int64_t want_blocks = 4 * static_cast<int64_t>(gpu::multiprocessor_count(queries.device()));
  int64_t nchunks = std::max<int64_t>(1, (want_blocks + nq - 1) / nq);
  nchunks = std::min(nchunks, std::max<int64_t>(1, (ndb + kMinChunkRows - 1) / kMinChunkRows));
  nchunks = std::min(nchunks, gpu::max_grid_x());
  const int64_t chunk_rows = (ndb + nchunks - 1) / nchunks;
  nchunks = (ndb + chunk_rows - 1) / chunk_rows;
  const dim3 grid(static_cast<unsigned>(nchunks), static_cast<unsigned>(std::min<int64_t>(nq, gpu::max_grid_yz())));
  const gpu::Stream stream = gpu::current_stream();
  const uint8_t* q = queries.const_data_ptr<uint8_t>();
  const uint8_t* db = database.const_data_ptr<uint8_t>();

  const auto long_opts = queries.options().dtype(at::kLong);
  at::Tensor hist = at::zeros({nq, nbins}, long_opts);
  at::Tensor counts = at::empty({nq, nchunks, 2}, long_opts);
  at::Tensor out_dist = at::empty({nq, k}, int_opts);
  at::Tensor out_index = at::empty({nq, k}, queries.options().dtype(at::kLong));

  dispatch_code_width(nbytes, [&](auto cw) {
    using CW = decltype(cw);
    gpu::launch("hamming_topk_histogram", &topk_histogram_kernel<CW>, grid, kThreads, nbins * sizeof(int), stream,
                q, db, nq, ndb, nbytes, chunk_rows,
                reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>()));

    // topk_threshold on the device: t = first d with cum[d] >= k.
    const at::Tensor cum = at::cumsum(hist, 1);
    const at::Tensor threshold = cum.lt(k).sum(1);  // int64 [nq]
    const at::Tensor cum_padded = at::cat({at::zeros({nq, 1}, cum.options()), cum}, 1);
    const at::Tensor n_below = at::gather(cum_padded, 1, threshold.unsqueeze(1)).squeeze(1).contiguous();

    gpu::launch("hamming_topk_count", &topk_count_kernel<CW>, grid, kThreads, 0, stream, q, db, nq, ndb, nbytes,
                chunk_rows, threshold.const_data_ptr<int64_t>(), counts.data_ptr<int64_t>());
    const at::Tensor inclusive = at::cumsum(counts, 1);
    const at::Tensor offsets = inclusive.sub(counts).contiguous();

    gpu::launch("hamming_topk_collect", &topk_collect_kernel<CW>, grid, kThreads, 0, stream, q, db, nq, ndb, nbytes,
                chunk_rows, k, threshold.const_data_ptr<int64_t>(), n_below.const_data_ptr<int64_t>(),
                offsets.const_data_ptr<int64_t>(), counts.const_data_ptr<int64_t>(), out_dist.data_ptr<int32_t>(),
                out_index.data_ptr<int64_t>());
  });

  // Rows hold the codes below t in index order, then the ties at t: a
  // stable sort by distance gives (distance, index) order.
  auto [sorted_dist, order] = at::sort(out_dist, /*stable=*/true, /*dim=*/1, /*descending=*/false);
  return {sorted_dist, at::gather(out_index, 1, order)};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("hamming_topk", &hamming_topk_cuda); }

}  // namespace dsch_ext
