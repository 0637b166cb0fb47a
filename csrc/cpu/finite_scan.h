// Whether every entry of a CPU floating tensor is finite, in one pass over its
// bits (an exponent of all ones is Inf or NaN). at::isfinite(t).all() writes
// a bool tensor first: 3.5 ms for 20,000 x 64 doubles on one core, more than
// the E-step of one component it guards.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace dsch_ext {

inline bool all_finite_cpu(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "all_finite_cpu", [&] {
    using Bits = std::conditional_t<sizeof(scalar_t) == 8, uint64_t, uint32_t>;
    constexpr Bits kExponent = sizeof(scalar_t) == 8 ? Bits(0x7ff0000000000000ULL) : Bits(0x7f800000U);
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    at::parallel_for(0, c.numel(), int64_t{1} << 16, [&](int64_t begin, int64_t end) {
      Bits any = 0;  // an OR of comparisons: the loop vectorises
      for (int64_t i = begin; i < end; ++i) {
        Bits bits;
        std::memcpy(&bits, p + i, sizeof(bits));
        any |= Bits((bits & kExponent) == kExponent);
      }
      if (any != 0) bad.store(true, std::memory_order_relaxed);
    });
  });
  return !bad.load();
}

}  // namespace dsch_ext
