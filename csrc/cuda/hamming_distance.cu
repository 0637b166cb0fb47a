// CUDA kernel of dsch_ext::hamming_distance: the full [nq, ndb] int32
// matrix. One thread per database row holds the row in registers and loops
// over a block of queries; writes are coalesced along the database.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/checks.h"
#include "../common/code_width.h"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kQueriesPerBlock = 16;

template <typename CW>
__global__ void hamming_distance_kernel(const uint8_t* __restrict__ queries,
                                        const uint8_t* __restrict__ database, int64_t nq,
                                        int64_t ndb, int64_t nbytes, int32_t* __restrict__ out) {
  using Word = typename CW::word_t;
  const int64_t nwords = words_per_row<CW>(nbytes);
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= ndb) return;
  const Word* row = reinterpret_cast<const Word*>(database) + j * nwords;
  Word reg[CW::kFixedWords > 0 ? CW::kFixedWords : 1];
  if constexpr (CW::kFixedWords > 0) {
#pragma unroll
    for (int w = 0; w < CW::kFixedWords; ++w) reg[w] = row[w];
    row = reg;
  }
  for (int64_t q0 = static_cast<int64_t>(blockIdx.y) * kQueriesPerBlock; q0 < nq;
       q0 += static_cast<int64_t>(gridDim.y) * kQueriesPerBlock) {
    const int64_t q1 = q0 + kQueriesPerBlock < nq ? q0 + kQueriesPerBlock : nq;
    for (int64_t i = q0; i < q1; ++i) {
      const Word* q = reinterpret_cast<const Word*>(queries) + i * nwords;
      out[i * ndb + j] = CW::distance(q, row, nwords);
    }
  }
}

at::Tensor hamming_distance_cuda(const at::Tensor& queries_in, const at::Tensor& database_in) {
  check_query_database(queries_in, database_in);
  const c10::cuda::CUDAGuard guard(queries_in.device());
  const at::Tensor queries = contiguous_aligned(queries_in);
  const at::Tensor database = contiguous_aligned(database_in);
  const int64_t nq = queries.size(0), ndb = database.size(0), nbytes = queries.size(1);
  at::Tensor out = at::empty({nq, ndb}, queries.options().dtype(at::kInt));
  if (nq == 0) return out;
  const dim3 grid(static_cast<unsigned>((ndb + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min<int64_t>((nq + kQueriesPerBlock - 1) / kQueriesPerBlock, 65535)));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_code_width(nbytes, [&](auto cw) {
    using CW = decltype(cw);
    hamming_distance_kernel<CW><<<grid, kThreads, 0, stream>>>(
        queries.const_data_ptr<uint8_t>(), database.const_data_ptr<uint8_t>(), nq, ndb, nbytes,
        out.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CUDA, m) { m.impl("hamming_distance", &hamming_distance_cuda); }

}  // namespace dsch_ext
