// Compile-time code widths for the Hamming kernels.
//
// dispatch_code_width(nbytes, f) calls f(CodeWidth<Word, NW>{}) with the
// widest word type that divides the row and, for the common code lengths
// (16, 32, 64, 128, 256, 512, 1024 bits), a fixed word count so the query
// stays in registers and the popcount loop is unrolled. Other lengths use a
// runtime word count (uint64 words when nbytes % 8 == 0, else bytes).
#pragma once

#include <cstdint>

#include "hamming_math.h"

namespace dsch_ext {

template <typename Word, int NW>  // NW > 0: fixed, NW == 0: runtime nwords
struct CodeWidth {
  using word_t = Word;
  static constexpr int kFixedWords = NW;

  DSCH_HOST_DEVICE static int distance(const Word* a, const Word* b, int64_t nwords) {
    if constexpr (NW > 0) {
      return hamming_fixed<Word, NW>(a, b);
    } else {
      return hamming_words<Word>(a, b, nwords);
    }
  }
};

template <typename F>
void dispatch_code_width(int64_t nbytes, F&& f) {
  switch (nbytes) {
    case 2: return f(CodeWidth<uint16_t, 1>{});
    case 4: return f(CodeWidth<uint32_t, 1>{});
    case 8: return f(CodeWidth<uint64_t, 1>{});
    case 16: return f(CodeWidth<uint64_t, 2>{});
    case 32: return f(CodeWidth<uint64_t, 4>{});
    case 64: return f(CodeWidth<uint64_t, 8>{});
    case 128: return f(CodeWidth<uint64_t, 16>{});
    default: break;
  }
  if (nbytes % 8 == 0) return f(CodeWidth<uint64_t, 0>{});
  if (nbytes % 4 == 0) return f(CodeWidth<uint32_t, 0>{});
  return f(CodeWidth<uint8_t, 0>{});
}

// Words per row for a width (rows are nbytes apart, Word divides nbytes).
template <typename Width>
constexpr int64_t words_per_row(int64_t nbytes) {
  return nbytes / static_cast<int64_t>(sizeof(typename Width::word_t));
}

}  // namespace dsch_ext
