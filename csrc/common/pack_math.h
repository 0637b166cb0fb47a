// Bit packing arithmetic shared by the CPU and CUDA pack/unpack kernels.
//
// Layout (faiss's): bit i of byte j is dimension 8*j + i; a code value is
// the bit 1 when it is > 0 (true for bool). Dimensions past nbits in the
// last byte are 0.
#pragma once

#include <cstdint>
#include <type_traits>

#include "macros.h"

namespace dsch_ext {

// Half and BFloat16 compare as float: their own operators are ambiguous or
// disabled in some CUDA builds (__CUDA_NO_HALF_OPERATORS__).
template <typename T>
DSCH_HOST_DEVICE auto comparable_value(T v) {
  if constexpr (std::is_arithmetic_v<T>) {
    return v;
  } else {
    return static_cast<float>(v);
  }
}

template <typename T>
DSCH_HOST_DEVICE bool code_value_is_one(T v) {
  const auto c = comparable_value(v);
  return c > decltype(c)(0);
}

template <typename T>
DSCH_HOST_DEVICE bool code_value_is_nan(T v) {
  const auto c = comparable_value(v);
  return c != c;  // false for integers and bool
}

// Byte `byte` of the packed row of `row` (nbits values).
template <typename T>
DSCH_HOST_DEVICE uint8_t pack_code_byte(const T* row, int64_t nbits, int64_t byte) {
  uint8_t out = 0;
  const int64_t first = byte * 8;
DSCH_UNROLL
  for (int i = 0; i < 8; ++i) {
    const int64_t dim = first + i;
    if (dim < nbits && code_value_is_one(row[dim])) out |= static_cast<uint8_t>(1u << i);
  }
  return out;
}

// Dimension `dim` of a packed row as +1 / -1.
DSCH_HOST_DEVICE float unpack_code_value(const uint8_t* row, int64_t dim) {
  return ((row[dim >> 3] >> (dim & 7)) & 1) ? 1.0f : -1.0f;
}

}  // namespace dsch_ext
