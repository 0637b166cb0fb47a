// CPU kernel of dsch_ext::hamming_range: every database code within a
// Hamming radius of each query, as (lims, distances, indices) in CSR form;
// query i's results are [lims[i], lims[i + 1]) in database index order.
//
// The scan is hamming_topk's (hamming_scan.h) with a fixed bound: query
// blocks x database tiles, spread over threads by (query block, database
// split), each item appending its hits to per-(query, split) lists; the
// lists are then concatenated in split order, which is index order.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "../common/code_width.h"
#include "hamming_scan.h"

namespace dsch_ext {
namespace {

// Bits a hit keeps for its distance: enough for the code width's largest,
// 8 * nbytes (16 bits up to 65,535-bit codes; the index has the rest).
int distance_bits(int64_t nbytes) {
  int bits = 1;
  while ((int64_t{1} << bits) <= 8 * nbytes) ++bits;
  return bits;
}

// Hits of one (query, database split), each packed as index << distance bits
// | distance. An append is a compare, a store and an increment: the growth
// path is out of line, so a hit in the scan's hot loop stays cheap.
class RangeHits {
 public:
  void push(int d, int64_t j, int shift) {
    if (size_ == static_cast<int64_t>(store_.size())) grow();
    store_[size_++] = static_cast<uint64_t>(j) << shift | static_cast<uint64_t>(d);
  }
  int64_t size() const { return size_; }
  const uint64_t* begin() const { return store_.data(); }
  const uint64_t* end() const { return store_.data() + size_; }
  void release() {
    std::vector<uint64_t>().swap(store_);
    size_ = 0;
  }

 private:
  __attribute__((noinline)) void grow() { store_.resize(std::max<size_t>(256, 2 * store_.size())); }
  std::vector<uint64_t> store_;
  int64_t size_ = 0;
};

// Appends every code under a fixed bound (a scan sink, hamming_scan.h).
struct RangeSink {
  RangeHits* hits;  // one per query of the block
  int limit;        // accept distance < limit
  int shift;        // distance_bits
  int bound(int) const { return limit; }
  int push(int a, int d, int64_t j) {
    hits[a].push(d, j, shift);
    return limit;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> hamming_range_cpu(const at::Tensor& queries_in,
                                                                 const at::Tensor& database_in, int64_t radius,
                                                                 bool exclusive) {
  check_query_database(queries_in, database_in, /*allow_empty_database=*/true);
  check_range_radius(radius);
  const at::Tensor queries = contiguous_aligned(queries_in);
  const at::Tensor database = contiguous_aligned(database_in);
  const int64_t nq = queries.size(0), ndb = database.size(0), nbytes = queries.size(1);
  const int limit = range_limit(radius, exclusive, hamming_num_bins(nbytes));
  at::Tensor lims = at::zeros({nq + 1}, queries.options().dtype(at::kLong));
  if (nq == 0 || ndb == 0 || limit == 0) {
    return {lims, at::empty({0}, queries.options().dtype(at::kInt)),
            at::empty({0}, queries.options().dtype(at::kLong))};
  }

  const int shift = distance_bits(nbytes);
  TORCH_CHECK(ndb < (int64_t{1} << (63 - shift)), "hamming_range: ", ndb, " database codes of ", 8 * nbytes,
              " bits are more than a hit can index (2^", 63 - shift, ")");
  const uint8_t* q = queries.const_data_ptr<uint8_t>();
  const uint8_t* db = database.const_data_ptr<uint8_t>();
  const ScanPlan plan(nq, ndb, at::get_num_threads());
  std::vector<RangeHits> hits(static_cast<size_t>(nq * plan.nsplit));  // [query, split]
  dispatch_code_width(nbytes, [&](auto width) {
    using Width = decltype(width);
    at::parallel_for(0, plan.items(), 1, [&](int64_t i0, int64_t i1) {
      std::vector<RangeHits> block(static_cast<size_t>(plan.qblock));
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t b = item / plan.nsplit, s = item % plan.nsplit;
        const int64_t qa = b * plan.qblock, count = std::min(nq, qa + plan.qblock) - qa;
        const int64_t da = s * plan.split_rows, de = std::min(ndb, da + plan.split_rows);
        RangeSink sink{block.data(), limit, shift};
        scan_queries<Width>(q + qa * nbytes, nbytes, count, db, da, de, sink);
        for (int64_t a = 0; a < count; ++a) hits[(qa + a) * plan.nsplit + s] = std::move(block[a]);
        for (auto& h : block) h = RangeHits();
      }
    });
  });

  int64_t* lim = lims.data_ptr<int64_t>();
  for (int64_t i = 0; i < nq; ++i) {
    int64_t n = 0;
    for (int64_t s = 0; s < plan.nsplit; ++s) n += hits[i * plan.nsplit + s].size();
    lim[i + 1] = lim[i] + n;
  }
  at::Tensor out_dist = at::empty({lim[nq]}, queries.options().dtype(at::kInt));
  at::Tensor out_index = at::empty({lim[nq]}, queries.options().dtype(at::kLong));
  int32_t* od = out_dist.data_ptr<int32_t>();
  int64_t* oi = out_index.data_ptr<int64_t>();
  at::parallel_for(0, nq, 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      int64_t pos = lim[i];
      for (int64_t s = 0; s < plan.nsplit; ++s) {
        RangeHits& h = hits[i * plan.nsplit + s];
        for (const uint64_t hit : h) {
          od[pos] = static_cast<int32_t>(hit & ((uint64_t{1} << shift) - 1));
          oi[pos++] = static_cast<int64_t>(hit >> shift);
        }
        h.release();
      }
    }
  });
  return {lims, out_dist, out_index};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("hamming_range", &hamming_range_cpu); }

}  // namespace dsch_ext
