// CUDA kernel of dsch_ext::gmm_log_resp: the GMM E-step. 'full' transforms
// blocks of points by all K precision factors with one cuBLAS GEMM into a
// fixed-size buffer; then one thread block per point computes the weighted
// log probability of every component (gmm_math.h, the CPU's arithmetic),
// reduces max and sum-exp across the block, and writes the normalised row
// once. resp_floor > 0 cuts entries more than -log(resp_floor) below the
// row's best to -inf, as on the CPU (which also prunes the work; here every
// entry is computed). The GEMMs run in full fp32 whatever torch's TF32 switch
// says; points with NaN or Inf get NaN rows (no host sync to raise).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../common/gmm_prepare.h"
#include "block_scan.cuh"
#include "device_runtime.cuh"

namespace dsch_ext {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kFullBufferElements = gpu::tuned(32 << 20, 1000);  // 128 MB of float32 per block of points

template <typename T>
__global__ void gmm_rows_kernel(int cov, const T* __restrict__ a, int64_t a_stride, const T* __restrict__ p,
                                const T* __restrict__ b, const T* __restrict__ log_const, int64_t rows,
                                int64_t k, int64_t dim, T log_floor, T* __restrict__ out, T* __restrict__ out_norm) {
  DSCH_SHARED_ARRAY(T, scratch, 33);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* ar = a + r * a_stride;
    T* o = out + r * k;
    T mx = -INFINITY;
    for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
      const T lp = gmm_weighted_log_prob<T>(cov, ar + gmm_a_offset(cov, c, dim), p + gmm_p_offset(cov, c, dim),
                                            b + c * dim, log_const[c], dim);
      o[c] = lp;
      mx = max(mx, lp);
    }
    mx = block_reduce_max(mx, scratch);
    T s = 0;
    const T cut = mx + log_floor;  // -inf without a floor
    for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
      if (o[c] < cut) {
        o[c] = -INFINITY;  // this thread wrote o[c] above and is the only one to touch it
      } else {
        s += exp(o[c] - mx);
      }
    }
    const T norm = mx + log(block_reduce_sum(s, scratch));
    for (int64_t c = threadIdx.x; c < k; c += blockDim.x) o[c] -= norm;
    if (threadIdx.x == 0) out_norm[r] = norm;
  }
}

std::tuple<at::Tensor, at::Tensor> gmm_log_resp_cuda(const at::Tensor& x_in, const at::Tensor& means,
                                                     const at::Tensor& prec_chol, const at::Tensor& log_weights,
                                                     c10::string_view covariance_type, double resp_floor) {
  const gpu::DeviceGuard guard(x_in.device());
  const GmmPrepared g = prepare_gmm(x_in, means, prec_chol, log_weights, covariance_type, /*check_finite=*/false);
  TORCH_CHECK(resp_floor >= 0.0 && resp_floor < 1.0, "resp_floor must be in [0, 1), got ", resp_floor);
  const double log_floor = resp_floor > 0 ? std::log(resp_floor) : -INFINITY;
  const int64_t n = g.x.size(0), dim = g.x.size(1), k = g.b.size(0);
  at::Tensor out = at::empty({n, k}, g.x.options());
  at::Tensor out_norm = at::empty({n}, g.x.options());
  if (n == 0) return {out, out_norm};
  const gpu::Stream stream = gpu::current_stream();
  const at::NoTF32Guard full_fp32;
  AT_DISPATCH_FLOATING_TYPES(g.x.scalar_type(), "gmm_log_resp_cuda", [&] {
    const scalar_t* p = g.p.const_data_ptr<scalar_t>();
    const scalar_t* b = g.b.const_data_ptr<scalar_t>();
    const scalar_t* lc = g.log_const.const_data_ptr<scalar_t>();
    auto launch = [&](const scalar_t* a, int64_t a_stride, int64_t r0, int64_t rows) {
      gpu::launch("gmm_rows", &gmm_rows_kernel<scalar_t>, gpu::grid_for(rows, 1), kThreads, 0, stream, g.cov, a,
                  a_stride, p, b, lc, rows, k, dim, static_cast<scalar_t>(log_floor),
                  out.data_ptr<scalar_t>() + r0 * k, out_norm.data_ptr<scalar_t>() + r0);
    };
    if (g.cov == kGmmFull) {
      const int64_t block = std::max<int64_t>(1, std::min<int64_t>(n, kFullBufferElements / (k * dim)));
      at::Tensor buffer = at::empty({block, k * dim}, g.x.options());
      for (int64_t r0 = 0; r0 < n; r0 += block) {
        const int64_t rows = std::min(block, n - r0);
        at::Tensor a = buffer.narrow(0, 0, rows);
        at::mm_out(a, g.x.narrow(0, r0, rows), g.transform);
        launch(a.const_data_ptr<scalar_t>(), k * dim, r0, rows);
      }
    } else {
      const at::Tensor a = g.cov == kGmmTied ? at::mm(g.x, g.transform) : g.x;
      launch(a.const_data_ptr<scalar_t>(), dim, 0, n);
    }
  });
  return {out, out_norm};
}

}  // namespace

DSCH_EXT_GPU_IMPL(m) { m.impl("gmm_log_resp", &gmm_log_resp_cuda); }

}  // namespace dsch_ext
