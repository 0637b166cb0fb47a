// The CPU Hamming scan shared by hamming_topk and hamming_range: a block of
// queries against database rows [begin, end), tile by tile, offering every
// code under a query's bound to a sink in increasing index order.
//
// A Sink provides
//   int bound(int a)                       accept distances < bound(a) for query a;
//   int push(int a, int d, int64_t j)      take code j at distance d, return the new bound.
// Top-k's sink keeps a counting candidate buffer whose bound tightens; range
// search's appends to a list under a fixed bound. Both go through the same
// loops, so both select codes by the same arithmetic (hamming_math.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <type_traits>

#include <c10/util/Exception.h>

#include "../common/code_width.h"
#include "hamming_scan_avx2.h"
#include "hamming_scan_avx512.h"

namespace dsch_ext {

constexpr int64_t kScanTileBytes = 32 * 1024;

// How a search of nq queries over ndb codes is cut into work items: query
// blocks of up to 16 queries, as many as a multiple of the thread count (so
// parallel_for's static split stays balanced), and, only when there are too
// few blocks to keep every thread busy, database splits of at least 16K rows.
// Item i is (block i / nsplit, split i % nsplit).
struct ScanPlan {
  int64_t qblock, nblocks, nsplit, split_rows;

  ScanPlan(int64_t nq, int64_t ndb, int64_t nthreads) {
    constexpr int64_t kQueryBlock = 16;
    nblocks = (nq + kQueryBlock - 1) / kQueryBlock;
    nblocks = std::min(nq, (nblocks + nthreads - 1) / nthreads * nthreads);
    qblock = (nq + nblocks - 1) / nblocks;
    nblocks = (nq + qblock - 1) / qblock;
    nsplit = 1;
    if (nblocks < 2 * nthreads) {
      nsplit = std::min<int64_t>((2 * nthreads + nblocks - 1) / nblocks, ndb / 16384);
      nsplit = std::max<int64_t>(nsplit, 1);
    }
    split_rows = (ndb + nsplit - 1) / nsplit;
  }
  int64_t items() const { return nblocks * nsplit; }
};

// Queries scanned together per database row: the row is loaded once and
// compared with each of them, which saves row loads and loop overhead even
// when some query words spill to the stack (measured on Zen 2: 8 / 4 / 2
// queries for 1 / 2 / 4-word codes beat both fewer and more).
template <typename Width>
constexpr int queries_per_pass() {
  constexpr int nw = Width::kFixedWords;
  if constexpr (nw == 0) {
    return 1;
  } else {
    return nw >= 8 ? 1 : (nw >= 4 ? 2 : (nw >= 2 ? 4 : 8));
  }
}

// Codes [t0, t1) against NQ consecutive queries (query a of the group is
// query a0 + a of the sink). The query words are copied to locals whose
// address never escapes, so they live in registers even though the push
// path stores to memory.
template <typename Width, int NQ, typename Sink>
void scan_tile(const uint8_t* query_rows, int64_t nbytes, const typename Width::word_t* db, int64_t nwords,
               int64_t t0, int64_t t1, int a0, Sink& sink) {
  using Word = typename Width::word_t;
  constexpr int NW = Width::kFixedWords > 0 ? Width::kFixedWords : 1;
  Word qw[NQ][NW];
  const Word* qptr[NQ];
  int bound[NQ];
  for (int a = 0; a < NQ; ++a) {
    qptr[a] = reinterpret_cast<const Word*>(query_rows + a * nbytes);
    if constexpr (Width::kFixedWords > 0) {
      for (int w = 0; w < NW; ++w) qw[a][w] = qptr[a][w];
    }
    bound[a] = sink.bound(a0 + a);
  }
  for (int64_t j = t0; j < t1; ++j) {
    const Word* row = db + j * nwords;
    DSCH_UNROLL
    for (int a = 0; a < NQ; ++a) {
      int d;
      if constexpr (Width::kFixedWords > 0) {
        d = hamming_fixed<Word, NW>(qw[a], row);
      } else {
        d = hamming_words<Word>(qptr[a], row, nwords);
      }
      if (d < bound[a]) bound[a] = sink.push(a0 + a, d, j);
    }
  }
}

// The instruction sets of the scan, narrowest first.
enum class ScanIsa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest scan this CPU runs, capped by the environment variable
// DSCH_EXT_HAMMING_SCAN (avx512, avx2 or scalar; read on every call, so tests
// can run each path on one machine).
inline ScanIsa cpu_scan_isa() {
  ScanIsa isa = cpu_has_avx512_popcount() ? ScanIsa::kAvx512 : (cpu_has_avx2() ? ScanIsa::kAvx2 : ScanIsa::kScalar);
  const char* cap = std::getenv("DSCH_EXT_HAMMING_SCAN");
  if (cap == nullptr || cap[0] == 0) return isa;
  const std::string_view want(cap);
  ScanIsa limit = ScanIsa::kAvx512;
  if (want == "scalar") {
    limit = ScanIsa::kScalar;
  } else if (want == "avx2") {
    limit = ScanIsa::kAvx2;
  } else {
    TORCH_CHECK(want == "avx512", "DSCH_EXT_HAMMING_SCAN must be avx512, avx2 or scalar, got '", want, "'");
  }
  return std::min(isa, limit);
}

// The vector scans exist for 64-, 128- and 256-bit codes.
template <typename Width>
ScanIsa scan_isa() {
  if constexpr (std::is_same_v<typename Width::word_t, uint64_t> &&
                (Width::kFixedWords == 1 || Width::kFixedWords == 2 || Width::kFixedWords == 4)) {
    return cpu_scan_isa();
  } else {
    return ScanIsa::kScalar;
  }
}

// Queries [0, nq) of the sink over codes [t0, t1) (a multiple of 8 codes)
// with a vector scan, in groups of queries that share each loaded code vector.
template <typename Width, typename Sink>
void scan_tile_vector(ScanIsa isa, const uint8_t* query_rows, int64_t nbytes, int64_t nq,
                      const typename Width::word_t* db, int64_t t0, int64_t t1, Sink& sink) {
  if constexpr (std::is_same_v<typename Width::word_t, uint64_t> &&
                (Width::kFixedWords == 1 || Width::kFixedWords == 2 || Width::kFixedWords == 4)) {
    constexpr int NW = Width::kFixedWords;
    constexpr int NQ = 4;
    auto run = [&](auto group_tag, int64_t qi) {
      constexpr int G = decltype(group_tag)::value;
      const uint64_t* qrows[G];
      int bounds[G];
      for (int a = 0; a < G; ++a) {
        qrows[a] = reinterpret_cast<const uint64_t*>(query_rows + (qi + a) * nbytes);
        bounds[a] = sink.bound(static_cast<int>(qi + a));
      }
      auto push = [&](int a, int d, int64_t j) { return sink.push(static_cast<int>(qi + a), d, j); };
#if DSCH_HAVE_AVX512_SCAN
      if (isa == ScanIsa::kAvx512) return scan_tile_avx512<NW, G>(qrows, db, t0, t1, bounds, push);
#endif
#if DSCH_HAVE_AVX2_SCAN
      if (isa == ScanIsa::kAvx2) return scan_tile_avx2<NW, G>(qrows, db, t0, t1, bounds, push);
#endif
      TORCH_INTERNAL_ASSERT(false, "scan_tile_vector called without a vector scan");
    };
    int64_t qi = 0;
    for (; qi + NQ <= nq; qi += NQ) run(std::integral_constant<int, NQ>{}, qi);
    for (; qi < nq; ++qi) run(std::integral_constant<int, 1>{}, qi);
  } else {
    (void)isa, (void)query_rows, (void)nbytes, (void)nq, (void)db, (void)t0, (void)t1, (void)sink;
    TORCH_INTERNAL_ASSERT(false, "scan_tile_vector called for a width without a vector scan");
  }
}

// Queries [0, nq) (rows at query_rows) over database rows [begin, end), in
// tiles that stay in L1/L2 while every query of the block passes over them.
template <typename Width, typename Sink>
void scan_queries(const uint8_t* query_rows, int64_t nbytes, int64_t nq, const uint8_t* database, int64_t begin,
                  int64_t end, Sink& sink) {
  using Word = typename Width::word_t;
  const Word* db = reinterpret_cast<const Word*>(database);
  const int64_t nwords = words_per_row<Width>(nbytes);
  const int64_t tile = std::max<int64_t>(256, kScanTileBytes / nbytes);
  constexpr int kGroup = queries_per_pass<Width>();
  const ScanIsa isa = scan_isa<Width>();
  for (int64_t t0 = begin; t0 < end; t0 += tile) {
    const int64_t t1 = std::min(end, t0 + tile);
    if (isa != ScanIsa::kScalar) {
      // Whole groups of 8 codes with vectors; the scalar loop takes the rest.
      const int64_t t8 = t0 + (t1 - t0) / 8 * 8;
      if (t8 > t0) scan_tile_vector<Width>(isa, query_rows, nbytes, nq, db, t0, t8, sink);
      if (t8 == t1) continue;
      for (int64_t qi = 0; qi < nq; ++qi)
        scan_tile<Width, 1>(query_rows + qi * nbytes, nbytes, db, nwords, t8, t1, static_cast<int>(qi), sink);
      continue;
    }
    int64_t qi = 0;
    for (; qi + kGroup <= nq; qi += kGroup)
      scan_tile<Width, kGroup>(query_rows + qi * nbytes, nbytes, db, nwords, t0, t1, static_cast<int>(qi), sink);
    for (; qi < nq; ++qi)
      scan_tile<Width, 1>(query_rows + qi * nbytes, nbytes, db, nwords, t0, t1, static_cast<int>(qi), sink);
  }
}

}  // namespace dsch_ext
