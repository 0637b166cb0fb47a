// CPU kernel of dsch_ext::hamming_topk: exact k nearest codes by Hamming
// distance, sorted by (distance, database index).
//
// Selection counts distances instead of keeping a heap: each query keeps an
// append-only candidate buffer of (distance, index) in index order and a
// strict bound; when the buffer fills, a histogram over it gives the
// threshold t (topk_threshold), the buffer is cut to exactly k (everything
// below t, then the lowest-index candidates at t) and the bound becomes t.
// Once the bound settles almost every code is rejected by one compare, so
// the scan costs a load, a xor, a popcount and a branch per code for any k.
//
// Work is blocked over query blocks x database tiles (a tile is reused by
// every query of the block from L1/L2) and spread over threads by query
// block; with few queries the database is split as well and the per-split
// results are merged with the same rule.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/checks.h"
#include "../common/code_width.h"
#include "hamming_scan.h"

namespace dsch_ext {
namespace {

constexpr int64_t kSampleTarget = 16;  // sample codes per kept candidate: rows / k * 16 of them
constexpr int64_t kSampleMargin = 3;   // the sampled bound aims at 3 k candidates in the range

// Candidate buffer of one query over one database range.
struct CountingTopk {
  int64_t k = 0;
  int64_t cap = 0;
  int64_t n = 0;
  int bound = 0;  // accept only distance < bound
  int64_t pushed = 0;  // candidates offered since the scan began (a sampled bound's check)
  int32_t* dist = nullptr;
  int64_t* index = nullptr;

  // Cut the buffer to exactly min(k, n) entries: every candidate below the
  // threshold t plus the lowest-index ones at t. Later codes at distance t
  // come after k better-or-equal, lower-index candidates, so bound = t.
  void compact(int32_t* hist, int nbins) {
    if (n <= k) return;
    std::fill(hist, hist + nbins, 0);
    for (int64_t i = 0; i < n; ++i) ++hist[dist[i]];
    int64_t n_below = 0;
    const int t = topk_threshold(hist, nbins, k, &n_below);
    int64_t ties_left = k - n_below;
    int64_t w = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int d = dist[i];
      if (d < t || (d == t && ties_left-- > 0)) {
        dist[w] = d;
        index[w] = index[i];
        ++w;
      }
    }
    n = w;
    bound = t;
  }

  // Write the kept candidates sorted by (distance, index): a stable counting
  // sort of a buffer already in index order. Returns the number written.
  int64_t finish(int32_t* hist, int nbins, int32_t* out_dist, int64_t* out_index) {
    compact(hist, nbins);
    std::fill(hist, hist + nbins, 0);
    for (int64_t i = 0; i < n; ++i) ++hist[dist[i]];
    int32_t start = 0;
    for (int d = 0; d < nbins; ++d) {
      const int32_t c = hist[d];
      hist[d] = start;
      start += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int32_t pos = hist[dist[i]]++;
      out_dist[pos] = dist[i];
      out_index[pos] = index[i];
    }
    return n;
  }
};

// CountingTopk buffers as a scan sink (hamming_scan.h).
struct TopkSink {
  CountingTopk* states;
  int32_t* hist;
  int nbins;
  int bound(int a) const { return states[a].bound; }
  int push(int a, int d, int64_t j) {
    CountingTopk& s = states[a];
    ++s.pushed;
    s.dist[s.n] = d;
    s.index[s.n] = j;
    if (++s.n == s.cap) s.compact(hist, nbins);
    return s.bound;
  }
};

// Histogram of one query's distances to `count` contiguous rows (the
// sampled bound). 64-bit words go through a function compiled for the
// CPU's popcount instruction (the baseline build would call a bit-trick
// popcount); other word sizes are rare and use the generic loop.
DSCH_CPU_CLONES void sample_histogram_u64(const uint64_t* q, const uint64_t* rows, int64_t nwords, int64_t count,
                                          int64_t* hist) {
  for (int64_t i = 0; i < count; ++i) ++hist[hamming_words<uint64_t>(q, rows + i * nwords, nwords)];
}

template <typename Word>
void sample_histogram(const Word* q, const Word* rows, int64_t nwords, int64_t count, int64_t* hist) {
  if constexpr (std::is_same_v<Word, uint64_t>) {
    sample_histogram_u64(q, rows, nwords, count, hist);
  } else {
    for (int64_t i = 0; i < count; ++i) ++hist[hamming_words<Word>(q, rows + i * nwords, nwords)];
  }
}

// Scan database rows [db_begin, db_end) for queries [q_begin, q_end) and
// write each query's sorted top-min(k, rows) to out (row stride out_stride).
template <typename Width>
void scan_range(const uint8_t* queries, const uint8_t* database, int64_t nbytes,
                int64_t q_begin, int64_t q_end, int64_t db_begin, int64_t db_end, int64_t k,
                int32_t* out_dist, int64_t* out_index, int64_t out_stride, int64_t* out_count) {
  using Word = typename Width::word_t;
  const int64_t nwords = words_per_row<Width>(nbytes);
  const int nbins = hamming_num_bins(nbytes);
  const int64_t rows = db_end - db_begin;
  const int64_t keep = std::min(k, rows);
  // Room for k kept candidates plus a tile's worth of new ones, so a buffer
  // compacts at most about once per tile.
  const int64_t cap = keep + std::max<int64_t>(keep, 1024) + 1;

  const int64_t nq = q_end - q_begin;
  std::vector<int32_t> dist_buf(static_cast<size_t>(nq * cap));
  std::vector<int64_t> index_buf(static_cast<size_t>(nq * cap));
  std::vector<int32_t> hist(static_cast<size_t>(nbins));
  std::vector<CountingTopk> state(static_cast<size_t>(nq));
  for (int64_t i = 0; i < nq; ++i) {
    state[i].k = keep;
    state[i].cap = cap;
    state[i].bound = nbins;
    state[i].dist = dist_buf.data() + i * cap;
    state[i].index = index_buf.data() + i * cap;
  }

  const Word* db = reinterpret_cast<const Word*>(database);
  // Queries [qa, qa + count) of this range (states from &state[qa]) over every tile.
  auto scan_block = [&](int64_t qa, int64_t count) {
    TopkSink sink{state.data() + qa, hist.data(), nbins};
    scan_queries<Width>(queries + (q_begin + qa) * nbytes, nbytes, count, database, db_begin, db_end, sink);
  };
  // A starting bound from a strided sample when k is large next to the range: without
  // one the first codes all enter the buffer and the bound only settles after many
  // compactions (most of the time of a k = 1000 search). The bound keeps the sample's
  // distances up to where ~kSampleMargin k codes of the range are expected; the answer
  // stays exact whenever at least k codes were offered under it (then every code of the
  // top k was), and a query for which fewer were is scanned again without it.
  const int64_t sample = (kSampleTarget * rows + keep - 1) / keep;
  const bool sampled = keep >= 1 && sample * 8 <= rows;
  if (sampled) {
    const int64_t stride = rows / sample;
    const int64_t want = (kSampleMargin * keep * sample + rows - 1) / rows;  // sample codes under the bound
    std::vector<Word> rows_sampled(static_cast<size_t>(sample * nwords));  // contiguous, shared by the queries
    for (int64_t i = 0; i < sample; ++i) {
      std::copy_n(db + (db_begin + i * stride) * nwords, nwords, rows_sampled.data() + i * nwords);
    }
    std::vector<int64_t> shist(static_cast<size_t>(nbins));
    for (int64_t qi = 0; qi < nq; ++qi) {
      const Word* qw = reinterpret_cast<const Word*>(queries + (q_begin + qi) * nbytes);
      std::fill(shist.begin(), shist.end(), 0);
      sample_histogram<Word>(qw, rows_sampled.data(), nwords, sample, shist.data());
      int64_t below = 0;
      int t = 0;
      while (t < nbins && below + shist[t] < want) below += shist[t++];
      state[qi].bound = std::min(nbins, t + 1);  // accept distances <= t
    }
  }
  scan_block(0, nq);
  if (sampled) {
    for (int64_t qi = 0; qi < nq; ++qi) {
      if (state[qi].pushed >= keep || state[qi].bound == nbins) continue;
      state[qi].n = 0;  // the sample misled this query (adversarial order): scan it again, unbounded
      state[qi].pushed = 0;
      state[qi].bound = nbins;
      scan_block(qi, 1);
    }
  }
  for (int64_t qi = 0; qi < nq; ++qi) {
    out_count[qi] = state[qi].finish(hist.data(), nbins, out_dist + qi * out_stride,
                                     out_index + qi * out_stride);
  }
}

// Merge per-split results (each sorted by (distance, index), splits in
// index order) into the first k by (distance, index).
void merge_splits(const int32_t* part_dist, const int64_t* part_index, const int64_t* part_count,
                  int64_t nsplit, int64_t part_stride, int64_t k, int nbins,
                  int32_t* out_dist, int64_t* out_index) {
  std::vector<int64_t> hist(static_cast<size_t>(nbins), 0);
  for (int64_t s = 0; s < nsplit; ++s)
    for (int64_t i = 0; i < part_count[s]; ++i) ++hist[part_dist[s * part_stride + i]];
  std::vector<int64_t> next(static_cast<size_t>(nbins));
  int64_t start = 0;
  for (int d = 0; d < nbins; ++d) {
    next[d] = start;
    start += hist[d];
  }
  // Concatenation in split order is index order within each distance, so a
  // stable placement by distance yields (distance, index) order.
  for (int64_t s = 0; s < nsplit; ++s) {
    for (int64_t i = 0; i < part_count[s]; ++i) {
      const int32_t d = part_dist[s * part_stride + i];
      const int64_t pos = next[d]++;
      if (pos < k) {
        out_dist[pos] = d;
        out_index[pos] = part_index[s * part_stride + i];
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> hamming_topk_cpu(const at::Tensor& queries_in,
                                                    const at::Tensor& database_in, int64_t k) {
  check_query_database(queries_in, database_in);
  check_topk_k(k, database_in);
  const at::Tensor queries = contiguous_aligned(queries_in);
  const at::Tensor database = contiguous_aligned(database_in);
  const int64_t nq = queries.size(0), ndb = database.size(0), nbytes = queries.size(1);
  at::Tensor out_dist = at::empty({nq, k}, queries.options().dtype(at::kInt));
  at::Tensor out_index = at::empty({nq, k}, queries.options().dtype(at::kLong));
  if (nq == 0) return {out_dist, out_index};

  const uint8_t* q = queries.data_ptr<uint8_t>();
  const uint8_t* db = database.data_ptr<uint8_t>();
  int32_t* od = out_dist.data_ptr<int32_t>();
  int64_t* oi = out_index.data_ptr<int64_t>();
  const int nbins = hamming_num_bins(nbytes);

  const ScanPlan plan(nq, ndb, at::get_num_threads());
  const int64_t qblock = plan.qblock, nblocks = plan.nblocks, nsplit = plan.nsplit;

  dispatch_code_width(nbytes, [&](auto width) {
    using Width = decltype(width);
    if (nsplit == 1) {
      std::vector<int64_t> counts(static_cast<size_t>(nq));
      at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t qa = b * qblock, qb = std::min(nq, qa + qblock);
          scan_range<Width>(q, db, nbytes, qa, qb, 0, ndb, k, od + qa * k, oi + qa * k, k,
                         counts.data() + qa);
        }
      });
      return;
    }
    // Few queries: (query block, database split) work items, then a merge.
    const int64_t split_rows = plan.split_rows;
    std::vector<int32_t> part_dist(static_cast<size_t>(nq * nsplit * k));
    std::vector<int64_t> part_index(static_cast<size_t>(nq * nsplit * k));
    std::vector<int64_t> part_count(static_cast<size_t>(nq * nsplit));
    at::parallel_for(0, nblocks * nsplit, 1, [&](int64_t i0, int64_t i1) {
      std::vector<int64_t> counts(static_cast<size_t>(qblock));
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t b = item / nsplit, s = item % nsplit;
        const int64_t qa = b * qblock, qb = std::min(nq, qa + qblock);
        const int64_t da = s * split_rows, dbe = std::min(ndb, da + split_rows);
        // Part layout [query, split, k]: row stride nsplit * k.
        scan_range<Width>(q, db, nbytes, qa, qb, da, dbe, k,
                       part_dist.data() + (qa * nsplit + s) * k,
                       part_index.data() + (qa * nsplit + s) * k, nsplit * k, counts.data());
        for (int64_t qi = qa; qi < qb; ++qi) part_count[qi * nsplit + s] = counts[qi - qa];
      }
    });
    at::parallel_for(0, nq, 1, [&](int64_t a, int64_t b) {
      for (int64_t qi = a; qi < b; ++qi) {
        merge_splits(part_dist.data() + qi * nsplit * k, part_index.data() + qi * nsplit * k,
                     part_count.data() + qi * nsplit, nsplit, k, k, nbins, od + qi * k,
                     oi + qi * k);
      }
    });
  });
  return {out_dist, out_index};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("hamming_topk", &hamming_topk_cpu); }

}  // namespace dsch_ext
