// CUDA kernel of dsch_ext::hamming_distance: the full [nq, ndb] int32
// matrix. One thread per database row holds the row in registers (fixed code
// widths) and loops over a block of queries; writes are coalesced along the
// database. Grid-stride over database rows (x) and query blocks (y).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/checks.h"
#include "../common/code_width.h"
#include "device_runtime.cuh"
#include "launch_constants.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kQueriesPerBlock = launch::kDistanceQueriesPerBlock;

template <typename Width>
__device__ __forceinline__ void distances_of_row(const uint8_t* __restrict__ queries, const typename Width::word_t* row,
                                                 int64_t nq, int64_t ndb, int64_t nwords, int64_t j,
                                                 int32_t* __restrict__ out) {
  using Word = typename Width::word_t;
  for (int64_t q0 = static_cast<int64_t>(blockIdx.y) * kQueriesPerBlock; q0 < nq;
       q0 += static_cast<int64_t>(gridDim.y) * kQueriesPerBlock) {
    const int64_t q1 = q0 + kQueriesPerBlock < nq ? q0 + kQueriesPerBlock : nq;
    for (int64_t i = q0; i < q1; ++i) {
      const Word* q = reinterpret_cast<const Word*>(queries) + i * nwords;
      out[i * ndb + j] = Width::distance(q, row, nwords);
    }
  }
}

template <typename Width>
__global__ void hamming_distance_kernel(const uint8_t* __restrict__ queries, const uint8_t* __restrict__ database,
                                        int64_t nq, int64_t ndb, int64_t nbytes, int32_t* __restrict__ out) {
  using Word = typename Width::word_t;
  const int64_t nwords = words_per_row<Width>(nbytes);
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < ndb;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Word* row = reinterpret_cast<const Word*>(database) + j * nwords;
    if constexpr (Width::kFixedWords > 0) {
      Word reg[Width::kFixedWords];  // constant indices only: registers
DSCH_UNROLL
      for (int w = 0; w < Width::kFixedWords; ++w) reg[w] = row[w];
      distances_of_row<Width>(queries, reg, nq, ndb, nwords, j, out);
    } else {
      distances_of_row<Width>(queries, row, nq, ndb, nwords, j, out);
    }
  }
}

at::Tensor hamming_distance_cuda(const at::Tensor& queries_in, const at::Tensor& database_in) {
  check_query_database(queries_in, database_in);
  const gpu::DeviceGuard guard(queries_in.device());
  const at::Tensor queries = contiguous_aligned(queries_in);
  const at::Tensor database = contiguous_aligned(database_in);
  const int64_t nq = queries.size(0), ndb = database.size(0), nbytes = queries.size(1);
  at::Tensor out = at::empty({nq, ndb}, queries.options().dtype(at::kInt));
  if (nq == 0) return out;
  const dim3 grid(gpu::grid_for(ndb, kThreads),
                  static_cast<unsigned>(std::min<int64_t>((nq + kQueriesPerBlock - 1) / kQueriesPerBlock,
                                                          gpu::max_grid_yz())));
  dispatch_code_width(nbytes, [&](auto width) {
    using Width = decltype(width);
    gpu::launch("hamming_distance", &hamming_distance_kernel<Width>, grid, kThreads, 0, gpu::current_stream(),
                queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(), nq, ndb, nbytes,
                out.data_ptr<int32_t>());
  });
  return out;
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("hamming_distance", &hamming_distance_cuda); }

}  // namespace dsch_ext
