// Hamming arithmetic shared by the CPU and CUDA kernels.
//
// Everything here is the per-element math: popcounts, the distance between
// two packed codes, and the threshold rule of the counting top-k. The kernel
// files only decide how the work is split; because both backends call these
// functions, the CPU tests exercise the arithmetic the GPU runs.
//
// Packed layout (faiss's): code row r occupies nbytes = ceil(nbits / 8)
// consecutive bytes; bit i of byte j is dimension 8*j + i. The distance does
// not depend on the bit order, so rows may be read as wider little-endian
// words.
#pragma once

#include <cstdint>
#include <cstring>

#include "macros.h"

namespace dsch_ext {

DSCH_HOST_DEVICE int popcount64(uint64_t x) {
#ifdef __CUDA_ARCH__
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

DSCH_HOST_DEVICE int popcount32(uint32_t x) {
#ifdef __CUDA_ARCH__
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

DSCH_HOST_DEVICE int popcount_word(uint64_t x) { return popcount64(x); }
DSCH_HOST_DEVICE int popcount_word(uint32_t x) { return popcount32(x); }
DSCH_HOST_DEVICE int popcount_word(uint16_t x) { return popcount32(x); }
DSCH_HOST_DEVICE int popcount_word(uint8_t x) { return popcount32(x); }

// Distance between two codes of NW words of type Word (fixed code lengths:
// 16 bits = 1 x uint16, 32 = 1 x uint32, 64·n = n x uint64).
template <typename Word, int NW>
DSCH_HOST_DEVICE int hamming_fixed(const Word* a, const Word* b) {
  int d = 0;
DSCH_UNROLL
  for (int w = 0; w < NW; ++w) d += popcount_word(static_cast<Word>(a[w] ^ b[w]));
  return d;
}

// Distance between two codes of nwords words, any length.
template <typename Word>
DSCH_HOST_DEVICE int hamming_words(const Word* a, const Word* b, int64_t nwords) {
  int d = 0;
  for (int64_t w = 0; w < nwords; ++w) d += popcount_word(static_cast<Word>(a[w] ^ b[w]));
  return d;
}

// Number of distance bins of a code length: distances are 0..nbits.
DSCH_HOST_DEVICE int hamming_num_bins(int64_t nbytes) { return static_cast<int>(nbytes * 8 + 1); }

// The counting top-k rule. Given hist[d] = number of candidates at distance
// d (d = 0..nbins-1) and k <= sum(hist), returns the threshold distance t:
// the smallest d with count(distance <= d) >= k. *n_below receives
// count(distance < t); the top-k is then every candidate below t plus the
// (k - *n_below) lowest-index candidates at exactly t.
template <typename Count>
DSCH_HOST_DEVICE int topk_threshold(const Count* hist, int nbins, int64_t k, int64_t* n_below) {
  int64_t cum = 0;
  for (int d = 0; d < nbins; ++d) {
    if (cum + static_cast<int64_t>(hist[d]) >= k) {
      *n_below = cum;
      return d;
    }
    cum += static_cast<int64_t>(hist[d]);
  }
  *n_below = cum;  // unreachable when k <= sum(hist)
  return nbins - 1;
}

// A range search's strict bound: a code is in range when its distance is
// < range_limit (radius + 1 for the inclusive test d <= radius, radius for
// faiss's exclusive d < radius), capped at nbins (every code).
DSCH_HOST_DEVICE int range_limit(int64_t radius, bool exclusive, int nbins) {
  if (radius >= nbins) return nbins;
  return static_cast<int>(exclusive ? radius : radius + 1);
}

// Bit b of a packed row (LSB-first within each byte).
DSCH_HOST_DEVICE bool packed_bit(const uint8_t* row, int64_t b) {
  return (row[b >> 3] >> (b & 7)) & 1;
}

}  // namespace dsch_ext
