// CUDA kernel of dsch_ext::hamming_range: every database code within a
// Hamming radius of each query, as (lims, distances, indices) in CSR form,
// query i's hits at [lims[i], lims[i + 1]) in database index order.
//
// Query-tiled scan, twice over a (database chunk x query tile) grid:
//   - a block stages database codes in shared memory, a stage at a time, and
//     each of its warps holds a few queries of the tile in registers, so a
//     staged code serves every query of the tile (per pair: xor, popcount,
//     compare);
//   - a warp walks the stage 32 codes at a time in index order; the count
//     pass sums the hits per (query, chunk), the collect pass writes each hit
//     at its offset (warp ballot ranks, so index order holds without atomics).
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
#include "block_scan.cuh"
#include "device_runtime.cuh"

namespace dsch_ext {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int64_t kStageBytes = gpu::tuned(16384, 512);  // shared memory per stage
constexpr int64_t kMinChunkRows = gpu::tuned(16384, 96);
constexpr int64_t kMaxCudaCodeBytes = 1024;

// Queries a warp keeps in registers: fewer for wide codes (register budget).
template <typename CW>
constexpr int queries_per_warp() {
  constexpr int nw = CW::kFixedWords * static_cast<int>(sizeof(typename CW::word_t)) / 8;
  if constexpr (CW::kFixedWords == 0) {
    return 1;
  } else {
    return nw >= 8 ? 1 : (nw >= 4 ? 2 : 4);
  }
}

template <typename CW>
constexpr int tile_queries() {
  return kWarps * queries_per_warp<CW>();
}

// Codes per stage: a multiple of 32, at least 32.
inline int64_t stage_codes(int64_t nbytes) { return std::max<int64_t>(32, kStageBytes / nbytes / 32 * 32); }

// One pass over chunk blockIdx.x for the query tiles blockIdx.y, +gridDim.y, ...
// kCollect == false: counts[q, chunk] = hits. kCollect == true: the hits of
// (q, chunk) go to out[offsets[q, chunk] ...] in index order.
template <typename CW, bool kCollect>
__global__ void __launch_bounds__(kThreads)
    range_scan_kernel(const uint8_t* __restrict__ queries, const uint8_t* __restrict__ database, int64_t nq,
                      int64_t ndb, int64_t nbytes, int64_t chunk_rows, int64_t stage_rows, int limit,
                      int64_t* __restrict__ counts_or_offsets, int32_t* __restrict__ out_dist,
                      int64_t* __restrict__ out_index) {
  using Word = typename CW::word_t;
  constexpr int QW = queries_per_warp<CW>();
  constexpr int NW = CW::kFixedWords > 0 ? CW::kFixedWords : 1;
  DSCH_DYNAMIC_SHARED(Word, stage);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t nwords = words_per_row<CW>(nbytes);
  const int64_t nchunks = gridDim.x;
  const int64_t begin = blockIdx.x * chunk_rows;
  const int64_t end = begin + chunk_rows < ndb ? begin + chunk_rows : ndb;
  const Word* db = reinterpret_cast<const Word*>(database);
  for (int64_t tile = blockIdx.y; tile * tile_queries<CW>() < nq; tile += gridDim.y) {
    // This warp's queries (a query past nq is skipped; the test is warp-uniform).
    int64_t q[QW];
    Word qreg[QW][NW];
    int64_t pos[QW];
    DSCH_UNROLL
    for (int a = 0; a < QW; ++a) {
      q[a] = tile * tile_queries<CW>() + warp * QW + a;
      const Word* row = reinterpret_cast<const Word*>(queries) + (q[a] < nq ? q[a] : 0) * nwords;
      if constexpr (CW::kFixedWords > 0) {
        DSCH_UNROLL
        for (int w = 0; w < NW; ++w) qreg[a][w] = row[w];
      }
      pos[a] = (kCollect && q[a] < nq) ? counts_or_offsets[q[a] * nchunks + blockIdx.x] : 0;
    }
    for (int64_t s0 = begin; s0 < end; s0 += stage_rows) {
      const int64_t n = end - s0 < stage_rows ? end - s0 : stage_rows;
      __syncthreads();  // the previous stage is consumed
      for (int64_t w = threadIdx.x; w < n * nwords; w += blockDim.x) stage[w] = db[s0 * nwords + w];
      __syncthreads();
      for (int64_t c0 = 0; c0 < n; c0 += 32) {
        const int64_t c = c0 + lane;
        const bool valid = c < n;
        const Word* row = stage + (valid ? c : 0) * nwords;
        DSCH_UNROLL
        for (int a = 0; a < QW; ++a) {
          if (q[a] >= nq) continue;
          int d;
          if constexpr (CW::kFixedWords > 0) {
            d = hamming_fixed<Word, NW>(qreg[a], row);
          } else {
            d = hamming_words<Word>(reinterpret_cast<const Word*>(queries) + q[a] * nwords, row, nwords);
          }
          const bool hit = valid && d < limit;
          if constexpr (kCollect) {
            const unsigned ballot = __ballot_sync(kFullWarpMask, hit);
            if (hit) {
              const int64_t slot = pos[a] + __popc(ballot & ((1u << lane) - 1u));
              out_dist[slot] = d;
              out_index[slot] = s0 + c;
            }
            pos[a] += __popc(ballot);
          } else {
            pos[a] += hit;
          }
        }
      }
    }
    if constexpr (!kCollect) {
      DSCH_UNROLL
      for (int a = 0; a < QW; ++a) {
        if (q[a] >= nq) continue;
        int64_t total = pos[a];
        for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(kFullWarpMask, total, o);
        if (lane == 0) counts_or_offsets[q[a] * nchunks + blockIdx.x] = total;
      }
    }
  }
}

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
  const int64_t stage_rows = stage_codes(nbytes);
  const size_t smem = static_cast<size_t>(stage_rows * nbytes);

  at::Tensor lims, out_dist, out_index;
  dispatch_code_width(nbytes, [&](auto cw) {
    using CW = decltype(cw);
    // Enough (chunk, query tile) blocks to fill every SM a few times over.
    const int64_t ntiles = (nq + tile_queries<CW>() - 1) / tile_queries<CW>();
    const int64_t want = 4 * static_cast<int64_t>(gpu::multiprocessor_count(queries.device()));
    int64_t nchunks = std::max<int64_t>(1, (want + ntiles - 1) / ntiles);
    nchunks = std::min({nchunks, std::max<int64_t>(1, ndb / kMinChunkRows), gpu::max_grid_x()});
    const int64_t chunk_rows = (ndb + nchunks - 1) / nchunks;
    nchunks = (ndb + chunk_rows - 1) / chunk_rows;
    const dim3 grid(static_cast<unsigned>(nchunks), static_cast<unsigned>(std::min(ntiles, gpu::max_grid_yz())));

    at::Tensor counts = at::empty({nq, nchunks}, long_opts);
    gpu::launch("hamming_range_count", &range_scan_kernel<CW, false>, grid, kThreads, smem, stream, q, db, nq, ndb,
                nbytes, chunk_rows, stage_rows, limit, counts.data_ptr<int64_t>(), static_cast<int32_t*>(nullptr),
                static_cast<int64_t*>(nullptr));
    const at::Tensor inclusive = at::cumsum(counts.view({-1}), 0).view({nq, nchunks});
    lims = at::cat({at::zeros({1}, long_opts), inclusive.select(1, nchunks - 1)});
    const at::Tensor offsets = inclusive.sub(counts).contiguous();
    const int64_t total = lims[nq].item<int64_t>();  // the output's size: the one host sync
    out_dist = at::empty({total}, int_opts);
    out_index = at::empty({total}, long_opts);
    if (total == 0) return;
    gpu::launch("hamming_range_collect", &range_scan_kernel<CW, true>, grid, kThreads, smem, stream, q, db, nq, ndb,
                nbytes, chunk_rows, stage_rows, limit, offsets.data_ptr<int64_t>(), out_dist.data_ptr<int32_t>(),
                out_index.data_ptr<int64_t>());
  });
  return {lims, out_dist, out_index};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("hamming_range", &hamming_range_cuda); }

}  // namespace dsch_ext
