// CPU kernel of dsch_ext::hamming_distance: the full [nq, ndb] int32 matrix
// of Hamming distances, blocked over query x database tiles and spread over
// threads by tile.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/checks.h"
#include "../common/code_width.h"

namespace dsch_ext {
namespace {

constexpr int64_t kQueryTile = 16;
constexpr int64_t kTileBytes = 32 * 1024;

at::Tensor hamming_distance_cpu(const at::Tensor& queries_in, const at::Tensor& database_in) {
  check_query_database(queries_in, database_in);
  const at::Tensor queries = contiguous_aligned(queries_in);
  const at::Tensor database = contiguous_aligned(database_in);
  const int64_t nq = queries.size(0), ndb = database.size(0), nbytes = queries.size(1);
  at::Tensor out = at::empty({nq, ndb}, queries.options().dtype(at::kInt));
  if (nq == 0) return out;
  const uint8_t* q = queries.data_ptr<uint8_t>();
  const uint8_t* db = database.data_ptr<uint8_t>();
  int32_t* o = out.data_ptr<int32_t>();
  const int64_t db_tile = std::max<int64_t>(64, kTileBytes / nbytes);
  const int64_t nqt = (nq + kQueryTile - 1) / kQueryTile;
  const int64_t ndt = (ndb + db_tile - 1) / db_tile;

  dispatch_code_width(nbytes, [&](auto width) {
    using Width = decltype(width);
    using Word = typename Width::word_t;
    const int64_t nwords = words_per_row<Width>(nbytes);
    at::parallel_for(0, nqt * ndt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t qa = (t / ndt) * kQueryTile, qb = std::min(nq, qa + kQueryTile);
        const int64_t da = (t % ndt) * db_tile, dbe = std::min(ndb, da + db_tile);
        for (int64_t i = qa; i < qb; ++i) {
          const Word* qi = reinterpret_cast<const Word*>(q + i * nbytes);
          const Word* base = reinterpret_cast<const Word*>(db);
          int32_t* row = o + i * ndb;
          for (int64_t j = da; j < dbe; ++j) row[j] = Width::distance(qi, base + j * nwords, nwords);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("hamming_distance", &hamming_distance_cpu); }

}  // namespace dsch_ext
