// AVX-512 VPOPCNTDQ scans for the CPU Hamming search (64/128/256-bit codes).
//
// Compiled with function-level target attributes, so the library still runs
// on CPUs without AVX-512: the scan calls these only when the CPU reports
// avx512f + avx512vpopcntdq at run time (hamming_scan.h decides). Eight codes are compared per step: one vector xor + popcount per
// query, and the per-code sums of multi-word codes are formed with two
// unpack/shuffle rounds. A lane below the query's bound goes through the same
// CountingTopk::push as the scalar scan, in increasing index order, so both
// paths select exactly the same codes.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DSCH_HAVE_AVX512_SCAN 1
#include <immintrin.h>

#include <cstdint>

#include "hamming_scan_lanes.h"

namespace dsch_ext {

inline bool cpu_has_avx512_popcount() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
  return supported;
}

#define DSCH_AVX512 __attribute__((target("avx512f,avx512vpopcntdq,avx512bw,avx512dq")))

// Distances of 8 consecutive codes (of NW 64-bit words) from a query held in
// `qv` (the query's words repeated across the register). Lane l of the
// result belongs to code kLaneCode<NW>[l].
template <int NW>
struct Avx512Lanes;

template <>
struct Avx512Lanes<1> {
  static constexpr int code[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  static constexpr int lane[8] = {0, 1, 2, 3, 4, 5, 6, 7};  // lane of code c
  DSCH_AVX512 static inline __m512i query(const uint64_t* q) { return _mm512_set1_epi64(static_cast<long long>(q[0])); }
  DSCH_AVX512 static inline __m512i distances(const uint64_t* rows, __m512i qv) {
    return _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(rows), qv));
  }
};

template <>
struct Avx512Lanes<2> {
  static constexpr int code[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  static constexpr int lane[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // lane of code c
  DSCH_AVX512 static inline __m512i query(const uint64_t* q) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  }
  DSCH_AVX512 static inline __m512i distances(const uint64_t* rows, __m512i qv) {
    const __m512i v0 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(rows), qv));
    const __m512i v1 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(rows + 8), qv));
    return _mm512_add_epi64(_mm512_unpacklo_epi64(v0, v1), _mm512_unpackhi_epi64(v0, v1));
  }
};

template <>
struct Avx512Lanes<4> {
  static constexpr int code[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  static constexpr int lane[8] = {0, 2, 1, 3, 4, 6, 5, 7};  // lane of code c
  DSCH_AVX512 static inline __m512i query(const uint64_t* q) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
  }
  DSCH_AVX512 static inline __m512i distances(const uint64_t* rows, __m512i qv) {
    const __m512i v0 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(rows), qv));
    const __m512i v1 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(rows + 8), qv));
    const __m512i v2 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(rows + 16), qv));
    const __m512i v3 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(rows + 24), qv));
    // 128-bit lane j of s01: [sum of v0's lane j, sum of v1's lane j]; codes c0|c1 in v0, c2|c3 in v1.
    const __m512i s01 = _mm512_add_epi64(_mm512_unpacklo_epi64(v0, v1), _mm512_unpackhi_epi64(v0, v1));
    const __m512i s23 = _mm512_add_epi64(_mm512_unpacklo_epi64(v2, v3), _mm512_unpackhi_epi64(v2, v3));
    const __m512i x = _mm512_shuffle_i64x2(s01, s23, 0x88);  // lanes 0, 2 of each
    const __m512i y = _mm512_shuffle_i64x2(s01, s23, 0xDD);  // lanes 1, 3 of each
    return _mm512_add_epi64(x, y);
  }
};

// Scan codes [t0, t1) (t1 - t0 a multiple of 8) for NQ queries. `push(a, d,
// j)` offers code j at distance d to query a and returns its new bound.
template <int NW, int NQ, typename Push>
DSCH_AVX512 void scan_tile_avx512(const uint64_t* const* qrows, const uint64_t* db, int64_t t0, int64_t t1,
                                  int* bounds, Push&& push) {
  __m512i qv[NQ], bv[NQ];
  for (int a = 0; a < NQ; ++a) {
    qv[a] = Avx512Lanes<NW>::query(qrows[a]);
    bv[a] = _mm512_set1_epi64(bounds[a]);
  }
  alignas(64) int64_t lane_dist[8];
  for (int64_t j = t0; j < t1; j += 8) {
    const uint64_t* rows = db + j * NW;
    for (int a = 0; a < NQ; ++a) {
      const __m512i d = Avx512Lanes<NW>::distances(rows, qv[a]);
      __mmask8 m = _mm512_cmplt_epi64_mask(d, bv[a]);
      if (m) {
        _mm512_store_si512(lane_dist, d);
        offer_lanes<Avx512Lanes<NW>>(m, lane_dist, j, a, &bounds[a], push);
        bv[a] = _mm512_set1_epi64(bounds[a]);
      }
    }
  }
}

}  // namespace dsch_ext
#else
#define DSCH_HAVE_AVX512_SCAN 0
namespace dsch_ext {
inline bool cpu_has_avx512_popcount() { return false; }
}  // namespace dsch_ext
#endif
