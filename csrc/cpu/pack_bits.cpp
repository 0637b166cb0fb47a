// CPU kernel of dsch_ext::pack_bits: [N, B] codes (float, int or bool) ->
// uint8 [N, ceil(B / 8)] in faiss's bit layout. NaN is rejected: its sign,
// and so its bit, is undefined.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>

#include "../common/checks.h"
#include "../common/pack_math.h"

namespace dsch_ext {
namespace {

at::Tensor pack_bits_cpu(const at::Tensor& codes_in) {
  check_pack_codes(codes_in);
  const at::Tensor codes = codes_in.contiguous();
  const int64_t n = codes.size(0), nbits = codes.size(1), nbytes = (nbits + 7) / 8;
  at::Tensor out = at::empty({n, nbytes}, codes.options().dtype(at::kByte));
  if (n == 0) return out;
  uint8_t* o = out.data_ptr<uint8_t>();
  std::atomic<bool> saw_nan{false};
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, codes.scalar_type(),
                             "pack_bits_cpu", [&] {
    const scalar_t* c = codes.const_data_ptr<scalar_t>();
    at::parallel_for(0, n, 1024, [&](int64_t r0, int64_t r1) {
      bool nan = false;
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = c + r * nbits;
        for (int64_t j = 0; j < nbits; ++j) nan |= code_value_is_nan(row[j]);
        for (int64_t b = 0; b < nbytes; ++b) o[r * nbytes + b] = pack_code_byte(row, nbits, b);
      }
      if (nan) saw_nan.store(true, std::memory_order_relaxed);
    });
  });
  TORCH_CHECK(!saw_nan.load(), "codes contains NaN (shape ", codes.sizes(),
              "): its bit is undefined");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("pack_bits", &pack_bits_cpu); }

}  // namespace dsch_ext
