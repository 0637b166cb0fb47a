// CPU kernel of dsch_ext::unpack_bits: uint8 [N, ceil(nbits / 8)] -> float32
// [N, nbits] of +1 / -1 (the inverse of pack_bits on sign codes).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/pack_math.h"

namespace dsch_ext {
namespace {

at::Tensor unpack_bits_cpu(const at::Tensor& packed_in, int64_t nbits) {
  check_unpack_width(packed_in, nbits);
  const at::Tensor packed = packed_in.contiguous();
  const int64_t n = packed.size(0), nbytes = packed.size(1);
  at::Tensor out = at::empty({n, nbits}, packed.options().dtype(at::kFloat));
  if (n == 0) return out;
  const uint8_t* p = packed.const_data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n, 1024, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < nbits; ++j) o[r * nbits + j] = unpack_code_value(p + r * nbytes, j);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("unpack_bits", &unpack_bits_cpu); }

}  // namespace dsch_ext
