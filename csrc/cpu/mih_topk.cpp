// CPU kernel of dsch_ext::mih_topk: exact k nearest codes by multi-index
// hashing (mih.h), the flat scan's answer and tie order (distance, then lower
// position). Queries run in parallel, each walking the (radius, substring)
// steps until k codes lie below the walk's bound; a histogram of the distances
// seen gives the k-th distance, and only codes within it are kept. A query
// whose work passes `max_work` stops: its probes are reported as
// -(probes + 1) and its row (distances -1) is for the caller to fill (the
// flat scan).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

#include "mih.h"

namespace dsch_ext {
namespace {

// The distances seen so far, and the smallest distance with k codes at or below it.
struct DistanceCounts {
  std::vector<int64_t> hist;
  int64_t total = 0;
  explicit DistanceCounts(int nbins) : hist(static_cast<size_t>(nbins), 0) {}
  void clear() {
    std::fill(hist.begin(), hist.end(), 0);
    total = 0;
  }
  void add(int d) {
    ++hist[d];
    ++total;
  }
  int kth(int64_t k) const {  // requires total >= k
    int64_t below = 0;
    return topk_threshold(hist.data(), static_cast<int>(hist.size()), k, &below);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> mih_topk_cpu(const at::Tensor& queries_in, const at::Tensor& codes_in,
                                                            const at::Tensor& directory, const at::Tensor& positions,
                                                            const at::Tensor& suffixes, c10::IntArrayRef widths,
                                                            int64_t k, int64_t max_work) {
  const mih::Layout layout(widths, codes_in.size(1));
  mih::check_tables(queries_in, codes_in, directory, positions, suffixes, layout);
  check_topk_k(k, codes_in);
  const at::Tensor queries = queries_in.contiguous(), codes = codes_in.contiguous();
  const at::Tensor dir = directory.contiguous(), pos = positions.contiguous(), suf = suffixes.contiguous();
  const int64_t nq = queries.size(0), n = codes.size(0), nbytes = codes.size(1);
  at::Tensor out_d = at::empty({nq, k}, queries.options().dtype(at::kInt));
  at::Tensor out_i = at::empty({nq, k}, queries.options().dtype(at::kLong));
  at::Tensor work = at::empty({nq, 3}, queries.options().dtype(at::kLong));
  const uint8_t* q = queries.const_data_ptr<uint8_t>();
  int32_t* od = out_d.data_ptr<int32_t>();
  int64_t* oi = out_i.data_ptr<int64_t>();
  int64_t* ow = work.data_ptr<int64_t>();
  at::parallel_for(0, nq, 1, [&](int64_t a0, int64_t a1) {
    mih::Prober prober(layout, codes.const_data_ptr<uint8_t>(), nbytes, dir.const_data_ptr<int32_t>(),
                       pos.const_data_ptr<int32_t>(),
                       layout.has_suffixes ? suf.const_data_ptr<uint8_t>() : nullptr, n, max_work);
    DistanceCounts counts(hamming_num_bins(nbytes));
    std::vector<std::pair<int32_t, int32_t>> kept;  // (distance, position) within the k-th distance so far
    for (int64_t a = a0; a < a1; ++a) {
      prober.start(q + a * nbytes);
      counts.clear();
      kept.clear();
      int keep = 8 * static_cast<int>(nbytes);  // the k-th distance once k codes are seen
      bool within_budget = true;
      for (mih::Walk walk(layout); !walk.done(); walk.advance()) {
        if (counts.total >= k && counts.kth(k) < walk.bound()) break;
        within_budget = prober.step(walk, [&](int d, int32_t p) {
          counts.add(d);
          if (d <= keep) kept.emplace_back(d, p);
        });
        if (!within_budget) break;
        if (counts.total >= k) {
          keep = counts.kth(k);
          if (kept.size() > static_cast<size_t>(4 * k + 1024)) {  // drop what the k-th distance rules out
            kept.erase(std::remove_if(kept.begin(), kept.end(), [&](const auto& e) { return e.first > keep; }),
                       kept.end());
          }
        }
      }
      ow[3 * a] = within_budget ? prober.probes : -(prober.probes + 1);
      ow[3 * a + 1] = prober.candidates;
      ow[3 * a + 2] = prober.work();
      if (!within_budget) {  // a defined row (distance -1) until the caller fills it
        std::fill(od + a * k, od + (a + 1) * k, -1);
        std::fill(oi + a * k, oi + (a + 1) * k, int64_t{-1});
        continue;
      }
      std::partial_sort(kept.begin(), kept.begin() + k, kept.end());  // (distance, position): the flat scan's order
      for (int64_t r = 0; r < k; ++r) {
        od[a * k + r] = kept[r].first;
        oi[a * k + r] = kept[r].second;
      }
    }
  });
  return {out_d, out_i, work};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("mih_topk", &mih_topk_cpu); }

}  // namespace dsch_ext
