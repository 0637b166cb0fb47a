// The hit path shared by the vector Hamming scans (hamming_scan_avx2.h,
// hamming_scan_avx512.h): after a compare of 8 codes, the lanes under the
// bound are offered to the scan's push in increasing code index (the
// tie-break needs index order), one branch per hit.
#pragma once

#include <cstdint>

namespace dsch_ext {

// Lanes::code[l] is the code (0-7) in lane l, Lanes::lane[c] the lane of
// code c; `mask` has bit l set for each lane under the bound, lane_dist the
// lanes' distances; the codes are j .. j + 7. *bound is query a's bound, kept
// up to date from push's returns.
template <typename Lanes, typename Push>
inline void offer_lanes(unsigned mask, const int64_t* lane_dist, int64_t j, int a, int* bound, Push& push) {
  unsigned codes = 0;
  for (int l = 0; l < 8; ++l) codes |= ((mask >> l) & 1u) << Lanes::code[l];
  while (codes) {
    const int c = __builtin_ctz(codes);
    codes &= codes - 1;
    const int d = static_cast<int>(lane_dist[Lanes::lane[c]]);
    if (d < *bound) *bound = push(a, d, j + c);
  }
}

}  // namespace dsch_ext
