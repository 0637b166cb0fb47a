// The query-tiled Hamming scan shared by the CUDA search kernels
// (hamming_topk.cu, hamming_range.cu).
//
// A launch covers a (database chunk x query tile) grid. A block stages its
// chunk's codes in shared memory, a stage at a time; each of its warps holds
// a few queries of the tile in registers and walks the stage 32 codes at a
// time, in index order, so a staged code serves every query of the tile and
// the per-pair work is xor, popcount and the visitor's compare. A visitor
// decides what a pair does (count, collect, histogram); its calls are
// warp-uniform, so it may use warp ballots, and its per-query state lives in
// registers:
//   start(a, q, chunk)          before the chunk, for query q (slot a of the warp);
//   idle(a)                     instead, for a slot past nq or not active: its state
//                               must make the visits of that slot match nothing;
//   visit(a, q, d, valid, j)    for 32 codes at once (one per lane; lanes past the
//                               chunk have valid = false), for every slot (with
//                               kMaskIdleSlots, an idle slot's lanes are all invalid);
//   finish(a, q, chunk)         after the chunk, for the active slots.
// `active` (optional, one byte per query) restricts a launch to some queries:
// a tile with none of them is skipped as a whole, so a pass for a few
// queries costs little more than the launch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../common/code_width.h"
#include "block_scan.cuh"
#include "device_runtime.cuh"
#include "launch_constants.cuh"

namespace dsch_ext {

constexpr int kScanWarps = 8;
constexpr int kScanThreads = kScanWarps * 32;
constexpr int kMaxQueriesPerWarp = 4;
constexpr int64_t kScanStageBytes = launch::kScanStageBytes;  // shared memory per stage
constexpr int64_t kMaxCudaCodeBytes = 1024;                   // 8192 bits (histograms in shared memory)

// Queries a warp keeps in registers: fewer for wide codes (register budget).
template <typename Width>
constexpr int queries_per_warp() {
  constexpr int nw = Width::kFixedWords * static_cast<int>(sizeof(typename Width::word_t)) / 8;
  if constexpr (Width::kFixedWords == 0) {
    return 1;
  } else {
    return nw >= 8 ? 1 : (nw >= 4 ? 2 : kMaxQueriesPerWarp);
  }
}

template <typename Width>
constexpr int tile_queries() {
  return kScanWarps * queries_per_warp<Width>();
}

// How a stage holds its codes, one code per lane when the scan reads them.
// Row-major (code c's words at c * nwords + w), except for fixed widths of
// 4 or more 64-bit words, whose rows are 32 bytes or more apart, so that
// the lanes' loads of one word would fall into a few banks (a 256-bit code
// per lane: 8 wavefronts a 64-bit load, 1024-bit: 32). Those are swizzled:
// word w of code c sits at column (w + c / R) % NW of its row, R the codes
// per 128-byte line, so the 32 lanes' loads of word w cover every bank (2
// wavefronts, the least a 64-bit load takes). The layout's name is in the
// kernel's, where the static bound reads it.
struct RowStage {
  template <int NW>
  __device__ __forceinline__ static int column(int64_t, int w) {
    return w;
  }
};
struct SwizzledStage {
  template <int NW>
  __device__ __forceinline__ static int column(int64_t c, int w) {
    constexpr int kRowsPerLine = 16 / NW > 1 ? 16 / NW : 1;  // 128 bytes / (8 NW bytes)
    return static_cast<int>((w + c / kRowsPerLine) & (NW - 1));
  }
};
template <typename Width>
using StageLayoutOf = std::conditional_t<sizeof(typename Width::word_t) == 8 && (Width::kFixedWords >= 4) &&
                                             (Width::kFixedWords & (Width::kFixedWords - 1)) == 0,
                                         SwizzledStage, RowStage>;

// The grid of a tiled scan: enough (chunk, tile) blocks to fill every SM a
// few times over, chunks of at least min_chunk_rows codes.
struct TiledScanPlan {
  int64_t nchunks = 1, chunk_rows = 1, stage_rows = 32;
  dim3 grid;
  size_t smem = 0;

  template <typename Width>
  static TiledScanPlan make(int64_t nq, int64_t ndb, int64_t nbytes, const at::Device& device,
                            int64_t min_chunk_rows) {
    TiledScanPlan p;
    const int64_t ntiles = (nq + tile_queries<Width>() - 1) / tile_queries<Width>();
    const int64_t want = 4 * static_cast<int64_t>(gpu::multiprocessor_count(device));
    p.nchunks = std::max<int64_t>(1, (want + ntiles - 1) / ntiles);
    p.nchunks = std::min({p.nchunks, std::max<int64_t>(1, ndb / min_chunk_rows), gpu::max_grid_x()});
    p.chunk_rows = (ndb + p.nchunks - 1) / p.nchunks;
    p.nchunks = (ndb + p.chunk_rows - 1) / p.chunk_rows;
    p.stage_rows = std::max<int64_t>(32, kScanStageBytes / nbytes / 32 * 32);
    p.smem = static_cast<size_t>(p.stage_rows * nbytes);
    p.grid = dim3(static_cast<unsigned>(p.nchunks), static_cast<unsigned>(std::min(ntiles, gpu::max_grid_yz())));
    return p;
  }
};

// Whether any of queries [first, first + count) (< nq) is active (every
// thread computes the same answer, so a block can branch on it).
__device__ __forceinline__ bool tile_has_active(const uint8_t* active, int64_t first, int64_t nq, int count) {
  if (active == nullptr) return true;
  for (int i = 0; i < count && first + i < nq; ++i)
    if (active[first + i]) return true;
  return false;
}

// The scan of chunk blockIdx.x for query tiles blockIdx.y, + gridDim.y, ...
// `stage` is the launch's dynamic shared memory (plan.smem bytes).
template <typename Width, typename Layout, typename Visitor>
__device__ __forceinline__ void tiled_scan(const uint8_t* __restrict__ queries, const uint8_t* __restrict__ database,
                                           int64_t nq, int64_t ndb, int64_t nbytes, int64_t chunk_rows,
                                           int64_t stage_rows, const uint8_t* __restrict__ active,
                                           typename Width::word_t* stage, Visitor& visitor) {
  using Word = typename Width::word_t;
  constexpr int QW = queries_per_warp<Width>();
  constexpr int NW = Width::kFixedWords > 0 ? Width::kFixedWords : 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t nwords = words_per_row<Width>(nbytes);
  const int64_t chunk = blockIdx.x;
  const int64_t begin = chunk * chunk_rows;
  const int64_t end = begin + chunk_rows < ndb ? begin + chunk_rows : ndb;
  const Word* db = reinterpret_cast<const Word*>(database);
  const Word* qrows = reinterpret_cast<const Word*>(queries);
  for (int64_t tile = blockIdx.y; tile * tile_queries<Width>() < nq; tile += gridDim.y) {
    if (!tile_has_active(active, tile * tile_queries<Width>(), nq, tile_queries<Width>())) continue;
    // This warp's queries; a query past nq or inactive is skipped (warp-uniform).
    int64_t q[QW];
    bool on[QW];
    Word qreg[QW][NW];
    DSCH_UNROLL
    for (int a = 0; a < QW; ++a) {
      q[a] = tile * tile_queries<Width>() + warp * QW + a;
      on[a] = q[a] < nq && (active == nullptr || active[q[a]]);
      const Word* row = qrows + (q[a] < nq ? q[a] : 0) * nwords;
      if constexpr (Width::kFixedWords > 0) {
        DSCH_UNROLL
        for (int w = 0; w < NW; ++w) qreg[a][w] = row[w];
      }
      if (on[a]) {
        visitor.start(a, q[a], chunk);
      } else {
        visitor.idle(a);
      }
    }
    // A warp with no active slot (a tile of fewer queries than slots) stages its share of
    // the codes but visits none: few queries cost their own slots only. A vote, so ptxas sees
    // the visit loop's bound as warp-uniform.
    bool any_on = false;
    DSCH_UNROLL
    for (int a = 0; a < QW; ++a) any_on = any_on || on[a];
    const bool warp_busy = __any_sync(kFullWarpMask, any_on);
    for (int64_t s0 = begin; s0 < end; s0 += stage_rows) {
      const int64_t n = end - s0 < stage_rows ? end - s0 : stage_rows;
      __syncthreads();  // the previous stage is consumed
      for (int64_t i = threadIdx.x; i < n * nwords; i += blockDim.x) {
        if constexpr (std::is_same_v<Layout, SwizzledStage>) {
          const int64_t c = i / NW;
          stage[c * NW + Layout::template column<NW>(c, static_cast<int>(i % NW))] = db[s0 * nwords + i];
        } else {
          stage[i] = db[s0 * nwords + i];
        }
      }
      __syncthreads();
      const int64_t visits = warp_busy ? n : 0;
      for (int64_t c0 = 0; c0 < visits; c0 += 32) {
        const int64_t c = c0 + lane;
        const bool valid = c < n;
        const Word* row = stage + (valid ? c : 0) * nwords;
        // Every slot of the warp visits, an idle one too (its visitor state matches nothing,
        // or, for visitors that cannot say so in their state, no lane is valid): a branch on
        // on[a] would put the visitors' warp collectives under a condition ptxas cannot see
        // is warp-uniform (divergent-collective fallbacks in the hot loop), and costs a
        // branch per query.
        DSCH_UNROLL
        for (int a = 0; a < QW; ++a) {
          int d;
          if constexpr (std::is_same_v<Layout, SwizzledStage>) {
            d = 0;
            DSCH_UNROLL
            for (int w = 0; w < NW; ++w) {
              d += popcount_word(static_cast<Word>(qreg[a][w] ^ row[Layout::template column<NW>(c, w)]));
            }
          } else if constexpr (Width::kFixedWords > 0) {
            d = hamming_fixed<Word, NW>(qreg[a], row);
          } else {
            d = hamming_words<Word>(qrows + (on[a] ? q[a] : 0) * nwords, row, nwords);
          }
          visitor.visit(a, q[a], d, Visitor::kMaskIdleSlots ? valid && on[a] : valid, s0 + c);
        }
      }
    }
    DSCH_UNROLL
    for (int a = 0; a < QW; ++a)
      if (on[a]) visitor.finish(a, q[a], chunk);
  }
}

// A launch of the tiled scan with `visitor` (copied per thread: its state
// lives in registers).
template <typename Width, typename Visitor, typename Layout>
__global__ void __launch_bounds__(kScanThreads, 1)
    tiled_scan_kernel(const uint8_t* __restrict__ queries, const uint8_t* __restrict__ database, int64_t nq,
                      int64_t ndb, int64_t nbytes, int64_t chunk_rows, int64_t stage_rows,
                      const uint8_t* __restrict__ active, Visitor visitor) {
  DSCH_DYNAMIC_SHARED(typename Width::word_t, stage);
  Visitor v = visitor;
  tiled_scan<Width, Layout>(queries, database, nq, ndb, nbytes, chunk_rows, stage_rows, active, stage, v);
}

template <typename Width, typename Visitor>
void launch_tiled_scan(const char* name, const TiledScanPlan& plan, gpu::Stream stream, const uint8_t* queries,
                       const uint8_t* database, int64_t nq, int64_t ndb, int64_t nbytes, const uint8_t* active,
                       const Visitor& visitor) {
  gpu::launch(name, &tiled_scan_kernel<Width, Visitor, StageLayoutOf<Width>>, plan.grid, kScanThreads, plan.smem,
              stream, queries, database, nq, ndb, nbytes, plan.chunk_rows, plan.stage_rows, active, visitor);
}

// How many of the lanes below this one are set in `ballot` (its slot among
// the set lanes when it is set).
__device__ __forceinline__ int lanes_before(unsigned ballot) {
  return __popc(ballot & ((1u << (threadIdx.x & 31)) - 1u));
}

// Exclusive rank of this lane among the warp's lanes with `flag`, and the
// warp's count (every lane of the warp must call).
__device__ __forceinline__ int warp_rank(bool flag, int* count) {
  const unsigned ballot = __ballot_sync(kFullWarpMask, flag);
  *count = __popc(ballot);
  return lanes_before(ballot);
}

// Sum over the warp (every lane gets it).
__device__ __forceinline__ int64_t warp_sum(int64_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullWarpMask, v, o);
  return v;
}

}  // namespace dsch_ext
