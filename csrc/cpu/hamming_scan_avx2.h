// AVX2 scans for the CPU Hamming search (64/128/256-bit codes), for CPUs
// without AVX-512 VPOPCNTDQ.
//
// Compiled with function-level target attributes, so the library still runs
// on older CPUs: the scan calls these only when the CPU reports avx2 at run
// time (hamming_scan.h decides). AVX2 has no vector popcount: each byte's
// count comes from two 4-bit table look-ups (vpshufb) and vpsadbw sums the
// bytes of each 64-bit lane, so a step compares 8 codes with a query in
// about ten vector instructions and one branch, where the scalar scan needs
// eight xor / popcount / compare / branch groups. Lanes under the bound go
// to the same push as the scalar scan, in increasing index order, so every
// path selects exactly the same codes.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DSCH_HAVE_AVX2_SCAN 1
#include <immintrin.h>

#include <cstdint>

#include "hamming_scan_lanes.h"

namespace dsch_ext {

inline bool cpu_has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2");
  return supported;
}

#define DSCH_AVX2 __attribute__((target("avx2,popcnt")))

// Per-64-bit-lane popcount of v.
DSCH_AVX2 inline __m256i avx2_popcount_lanes(__m256i v) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
  const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
}

DSCH_AVX2 inline __m256i avx2_xor_popcount(const uint64_t* rows, __m256i qv) {
  return avx2_popcount_lanes(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows)), qv));
}

// Distances of 8 consecutive codes (NW 64-bit words each) from a query held
// in `qv`, as two vectors of four 64-bit lanes: lane l (0-3 of d0, 4-7 of d1)
// belongs to code code[l].
template <int NW>
struct Avx2Lanes;

template <>
struct Avx2Lanes<1> {
  static constexpr int code[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  static constexpr int lane[8] = {0, 1, 2, 3, 4, 5, 6, 7};  // lane of code c
  DSCH_AVX2 static inline __m256i query(const uint64_t* q) { return _mm256_set1_epi64x(static_cast<long long>(q[0])); }
  DSCH_AVX2 static inline void distances(const uint64_t* rows, __m256i qv, __m256i* d0, __m256i* d1) {
    *d0 = avx2_xor_popcount(rows, qv);
    *d1 = avx2_xor_popcount(rows + 4, qv);
  }
};

template <>
struct Avx2Lanes<2> {
  static constexpr int code[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  static constexpr int lane[8] = {0, 2, 1, 3, 4, 6, 5, 7};  // lane of code c
  DSCH_AVX2 static inline __m256i query(const uint64_t* q) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  }
  // Vector i holds codes 2i and 2i + 1; adding the low and high words of
  // two vectors gives [c(2i), c(2i+2), c(2i+1), c(2i+3)].
  DSCH_AVX2 static inline __m256i pair_sums(__m256i a, __m256i b) {
    return _mm256_add_epi64(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
  }
  DSCH_AVX2 static inline void distances(const uint64_t* rows, __m256i qv, __m256i* d0, __m256i* d1) {
    *d0 = pair_sums(avx2_xor_popcount(rows, qv), avx2_xor_popcount(rows + 4, qv));
    *d1 = pair_sums(avx2_xor_popcount(rows + 8, qv), avx2_xor_popcount(rows + 12, qv));
  }
};

template <>
struct Avx2Lanes<4> {
  static constexpr int code[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  static constexpr int lane[8] = {0, 1, 2, 3, 4, 5, 6, 7};  // lane of code c
  DSCH_AVX2 static inline __m256i query(const uint64_t* q) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  }
  // Four codes of one vector each -> [c0, c1, c2, c3].
  DSCH_AVX2 static inline __m256i four_sums(const uint64_t* rows, __m256i qv) {
    const __m256i s0 = avx2_xor_popcount(rows, qv), s1 = avx2_xor_popcount(rows + 4, qv);
    const __m256i s2 = avx2_xor_popcount(rows + 8, qv), s3 = avx2_xor_popcount(rows + 12, qv);
    // [c0 w0+w1, c1 w0+w1, c0 w2+w3, c1 w2+w3] and the same for c2, c3.
    const __m256i t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(s0, s1), _mm256_unpackhi_epi64(s0, s1));
    const __m256i t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(s2, s3), _mm256_unpackhi_epi64(s2, s3));
    return _mm256_add_epi64(_mm256_permute2x128_si256(t01, t23, 0x20), _mm256_permute2x128_si256(t01, t23, 0x31));
  }
  DSCH_AVX2 static inline void distances(const uint64_t* rows, __m256i qv, __m256i* d0, __m256i* d1) {
    *d0 = four_sums(rows, qv);
    *d1 = four_sums(rows + 16, qv);
  }
};

// Scan codes [t0, t1) (t1 - t0 a multiple of 8) for NQ queries. `push(a, d,
// j)` offers code j at distance d to query a and returns its new bound.
template <int NW, int NQ, typename Push>
DSCH_AVX2 void scan_tile_avx2(const uint64_t* const* qrows, const uint64_t* db, int64_t t0, int64_t t1, int* bounds,
                              Push&& push) {
  __m256i qv[NQ], bv[NQ];
  for (int a = 0; a < NQ; ++a) {
    qv[a] = Avx2Lanes<NW>::query(qrows[a]);
    bv[a] = _mm256_set1_epi64x(bounds[a]);
  }
  alignas(32) int64_t lane_dist[8];
  for (int64_t j = t0; j < t1; j += 8) {
    const uint64_t* rows = db + j * NW;
    // Every query's compare first (independent chains, no branch between
    // them), then one branch for the step, taken only when some lane hits.
    __m256i d0[NQ], d1[NQ];
    int m[NQ];
    int any = 0;
    for (int a = 0; a < NQ; ++a) {
      Avx2Lanes<NW>::distances(rows, qv[a], &d0[a], &d1[a]);
      const int m0 = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(bv[a], d0[a])));
      const int m1 = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(bv[a], d1[a])));
      m[a] = m0 | m1 << 4;
      any |= m[a];
    }
    if (!any) continue;
    for (int a = 0; a < NQ; ++a) {
      if (!m[a]) continue;
      _mm256_store_si256(reinterpret_cast<__m256i*>(lane_dist), d0[a]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(lane_dist + 4), d1[a]);
      offer_lanes<Avx2Lanes<NW>>(static_cast<unsigned>(m[a]), lane_dist, j, a, &bounds[a], push);
      bv[a] = _mm256_set1_epi64x(bounds[a]);
    }
  }
}

}  // namespace dsch_ext
#else
#define DSCH_HAVE_AVX2_SCAN 0
namespace dsch_ext {
inline bool cpu_has_avx2() { return false; }
}  // namespace dsch_ext
#endif
