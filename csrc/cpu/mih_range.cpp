// CPU kernel of dsch_ext::mih_range: every code within a Hamming radius of
// each query by multi-index hashing (mih.h), as hamming_range returns it: CSR
// (lims, distances, indices), each query's hits in position order. A query
// walks the (radius, substring) steps until the walk's bound passes the
// radius; a query whose work passes `max_work` stops, its probes are reported
// as -(probes + 1) and its list is empty, for the caller to fill (the flat scan).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

#include "mih.h"

namespace dsch_ext {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mih_range_cpu(
    const at::Tensor& queries_in, const at::Tensor& codes_in, const at::Tensor& directory,
    const at::Tensor& positions, const at::Tensor& suffixes, c10::IntArrayRef widths, int64_t radius, bool exclusive,
    int64_t max_work) {
  const mih::Layout layout(widths, codes_in.size(1));
  mih::check_tables(queries_in, codes_in, directory, positions, suffixes, layout);
  check_range_radius(radius);
  const at::Tensor queries = queries_in.contiguous(), codes = codes_in.contiguous();
  const at::Tensor dir = directory.contiguous(), pos = positions.contiguous(), suf = suffixes.contiguous();
  const int64_t nq = queries.size(0), n = codes.size(0), nbytes = codes.size(1);
  const int64_t last = exclusive ? radius - 1 : radius;  // keep d <= last
  at::Tensor work = at::zeros({nq, 3}, queries.options().dtype(at::kLong));
  std::vector<std::vector<std::pair<int32_t, int32_t>>> hits(static_cast<size_t>(nq));  // (position, distance)
  const uint8_t* q = queries.const_data_ptr<uint8_t>();
  int64_t* ow = work.data_ptr<int64_t>();
  if (last >= 0 && n > 0) {
    at::parallel_for(0, nq, 1, [&](int64_t a0, int64_t a1) {
      mih::Prober prober(layout, codes.const_data_ptr<uint8_t>(), nbytes, dir.const_data_ptr<int32_t>(),
                         pos.const_data_ptr<int32_t>(),
                       layout.has_suffixes ? suf.const_data_ptr<uint8_t>() : nullptr, n, max_work);
      for (int64_t a = a0; a < a1; ++a) {
        auto& mine = hits[a];
        prober.start(q + a * nbytes);
        bool within_budget = true;
        for (mih::Walk walk(layout); !walk.done() && walk.bound() <= last; walk.advance()) {
          within_budget = prober.step(walk, [&](int d, int32_t p) {
            if (d <= last) mine.emplace_back(p, d);
          });
          if (!within_budget) break;
        }
        ow[3 * a] = within_budget ? prober.probes : -(prober.probes + 1);
        ow[3 * a + 1] = prober.candidates;
        ow[3 * a + 2] = prober.work();
        if (within_budget) {
          std::sort(mine.begin(), mine.end());
        } else {
          std::vector<std::pair<int32_t, int32_t>>().swap(mine);
        }
      }
    });
  }
  at::Tensor lims = at::zeros({nq + 1}, queries.options().dtype(at::kLong));
  int64_t* lim = lims.data_ptr<int64_t>();
  for (int64_t a = 0; a < nq; ++a) lim[a + 1] = lim[a] + static_cast<int64_t>(hits[a].size());
  at::Tensor out_d = at::empty({lim[nq]}, queries.options().dtype(at::kInt));
  at::Tensor out_i = at::empty({lim[nq]}, queries.options().dtype(at::kLong));
  int32_t* od = out_d.data_ptr<int32_t>();
  int64_t* oi = out_i.data_ptr<int64_t>();
  at::parallel_for(0, nq, 1, [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      int64_t at_pos = lim[a];
      for (const auto& [p, d] : hits[a]) {
        od[at_pos] = d;
        oi[at_pos++] = p;
      }
      std::vector<std::pair<int32_t, int32_t>>().swap(hits[a]);
    }
  });
  return {lims, out_d, out_i, work};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("mih_range", &mih_range_cpu); }

}  // namespace dsch_ext
