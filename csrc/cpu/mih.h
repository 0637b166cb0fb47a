// Multi-index hashing (Norouzi, Punjani and Fleet, TPAMI 2014), shared by
// mih_build.cpp, mih_topk.cpp and mih_range.cpp: exact Hamming search that
// looks codes up instead of scanning them.
//
// A code of nbits bits is cut into m substrings of s_j <= 32 consecutive bits
// (bit i of the code is bit i % 8 of byte i / 8, faiss's layout). Table j is
// the codes sorted by substring j, then by position: positions_j [N]. Its
// directory_j [2^p_j + 1], p_j = min(s_j, 24), holds where the codes of each
// value of the substring's top p_j bits start; substrings wider than 24 bits
// keep their low s_j - p_j bits beside the positions (suffixes_j [N], uint8),
// so a value's codes are found by a binary search inside its directory
// entry, and a 32-bit substring costs 64 MB of directory, not 16 GB. Wide
// substrings matter from about 10^8 codes, where the paper's choice of
// s ~ log2 N (fewer, emptier buckets) leaves 24 bits behind. A code at distance d from the query
// is at distance <= floor(d / m) from it in some substring, so probing every
// substring value within a growing radius of the query's finds every code in
// order of a lower bound on its distance:
//
//   after probing radius rho in substrings 0..j and rho - 1 in the others, a
//   code not yet seen differs in at least rho + 1 bits in each of the first
//   j + 1 substrings and rho in the rest, so its distance is at least
//   m rho + j + 1 (the "bound"); and a substring of s bits probed to radius s
//   has shown every code.
//
// Top-k stops once k codes at distance < bound are known (all codes within
// the k-th distance are then seen, so ties go to the lower position exactly
// as in the flat scan); range search stops once bound > radius. A code is
// seen again in another table; it is counted once, from its substring
// distances (it was seen before iff an earlier step's radius already covered
// one of them), without any per-query memory of what was seen.
//
// Work is counted in flat-scan code pairs (kProbeCost per probed substring
// value, kCandidateCost per code looked at); a query whose work passes the
// caller's budget stops and is reported (probes as -(probes + 1)), for the
// flat scan.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/checks.h"
#include "../common/hamming_math.h"

namespace dsch_ext::mih {

constexpr int kMaxSubstringBits = 32;
constexpr int kDirectoryBits = 24;  // a directory of at most 2^24 + 1 int32 offsets: 64 MB
constexpr int kMaxSubstrings = 64;
// In units of one query-code pair of the batched flat scan (fitted on 2 cores
// at 10^6 codes: a candidate costs 150-320 pairs, a probe about 60): a probe
// is a directory read (a cache miss on large tables), a candidate a random
// code read, its popcount, the duplicate check and the heap.
constexpr int64_t kProbeCost = 64;
constexpr int64_t kCandidateCost = 200;

// Where the substrings lie in a code: substring j is bits [bit[j], bit[j] + width[j]).
struct Layout {
  int m = 0;
  int nbits = 0;
  int bit[kMaxSubstrings + 1] = {};
  int width[kMaxSubstrings] = {};
  int suffix_bits[kMaxSubstrings] = {};  // the low bits kept beside the positions (width - 24, or 0)
  int64_t dir_offset[kMaxSubstrings + 1] = {};  // table j's directory starts at dir_offset[j]
  bool has_suffixes = false;

  Layout(c10::IntArrayRef widths, int64_t code_bytes) {
    m = static_cast<int>(widths.size());
    TORCH_CHECK(m >= 1 && m <= kMaxSubstrings, "widths must list 1 to ", kMaxSubstrings,
                " substring widths, got ", widths.size());
    for (int j = 0; j < m; ++j) {
      TORCH_CHECK(widths[j] >= 1 && widths[j] <= kMaxSubstringBits, "widths[", j, "] must be in [1, ",
                  kMaxSubstringBits, "], got ", widths[j]);
      width[j] = static_cast<int>(widths[j]);
      suffix_bits[j] = std::max(0, width[j] - kDirectoryBits);
      has_suffixes = has_suffixes || suffix_bits[j] > 0;
      bit[j + 1] = bit[j] + width[j];
      dir_offset[j + 1] = dir_offset[j] + (int64_t{1} << (width[j] - suffix_bits[j])) + 1;
    }
    nbits = bit[m];
    TORCH_CHECK(nbits <= 8 * code_bytes && nbits > 8 * (code_bytes - 1), "the substring widths add up to ", nbits,
                " bits, which is not the code length of codes with ", code_bytes, " bytes");
  }
  int64_t directory_size() const { return dir_offset[m]; }
};

// Bits [bit, bit + width) of a code of `nbytes` bytes (width <= 32).
inline uint32_t substring(const uint8_t* code, int64_t nbytes, int bit, int width) {
  const int64_t byte = bit >> 3;
  uint64_t word = 0;
  std::memcpy(&word, code + byte, static_cast<size_t>(std::min<int64_t>(8, nbytes - byte)));
  return static_cast<uint32_t>((word >> (bit & 7)) & ((uint64_t{1} << width) - 1));
}

// XOR of two codes into `out` (nbytes bytes),
// and its popcount.
inline int xor_distance(const uint8_t* a, const uint8_t* b, int64_t nbytes, uint8_t* out) {
  int d = 0;
  int64_t i = 0;
  for (; i + 8 <= nbytes; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    x ^= y;
    std::memcpy(out + i, &x, 8);
    d += popcount64(x);
  }
  for (; i < nbytes; ++i) {
    out[i] = a[i] ^ b[i];
    d += popcount32(out[i]);
  }
  return d;
}

// Every s-bit value at Hamming distance exactly r from `center`, in
// increasing order of the flipped-bit mask (Gosper's next-combination step),
// until visit returns false. Returns false if it was stopped.
template <typename F>
bool for_each_at_distance(uint32_t center, int s, int r, F&& visit) {
  if (r == 0) return visit(center);
  if (r > s) return true;
  const uint64_t limit = uint64_t{1} << s;
  for (uint64_t mask = (uint64_t{1} << r) - 1; mask < limit;) {
    if (!visit(center ^ static_cast<uint32_t>(mask))) return false;
    const uint64_t low = mask & (~mask + 1), ripple = mask + low;
    mask = (((ripple ^ mask) >> 2) / low) | ripple;
  }
  return true;
}

// C(s, r): the probes of one substring at one radius.
inline int64_t probes_at(int s, int r) {
  if (r < 0 || r > s) return 0;
  int64_t c = 1;
  for (int i = 1; i <= r; ++i) c = c * (s - r + i) / i;
  return c;
}

// One query's walk over (radius, substring) steps. `level[i]` is the radius
// substring i has been probed to (-1: not yet).
struct Walk {
  const Layout& layout;
  int level[kMaxSubstrings];
  int rho = 0, j = 0;  // the next step

  explicit Walk(const Layout& l) : layout(l) { std::fill(level, level + l.m, -1); }

  bool done() const { return rho > kMaxSubstringBits; }

  // Every code with distance < bound() has been seen (a huge value once
  // some substring is exhausted: then every code has).
  int64_t bound() const {
    int64_t b = 0;
    for (int i = 0; i < layout.m; ++i) {
      if (level[i] >= layout.width[i]) return int64_t{1} << 40;
      b += level[i] + 1;
    }
    return b;
  }

  // Whether a code with substring distances `sub` was seen before the current
  // step (substring j at radius rho), from the radii already probed.
  bool seen_before(const int* sub) const {
    for (int i = 0; i < layout.m; ++i) {
      if (i != j && sub[i] <= level[i]) return true;
    }
    return false;
  }

  void advance() {
    level[j] = rho;
    if (++j == layout.m) {
      j = 0;
      ++rho;
    }
  }
};

// One query's probing, shared by top-k and range search: `step` probes the
// walk's current (radius, substring) and offers every code seen for the first
// time to `take(d, position)`; false when the budget ran out.
struct Prober {
  const Layout& layout;
  const uint8_t* codes;
  int64_t nbytes;
  const int32_t* directory;
  const int32_t* positions;  // [m, N]
  const uint8_t* suffixes;   // [m, N] where layout.has_suffixes
  int64_t n;
  int64_t budget;

  const uint8_t* query = nullptr;
  uint32_t query_sub[kMaxSubstrings] = {};
  std::vector<uint8_t> diff;  // the query XOR a code
  int64_t probes = 0, candidates = 0;

  Prober(const Layout& l, const uint8_t* c, int64_t nb, const int32_t* dir, const int32_t* pos, const uint8_t* suf,
         int64_t rows, int64_t max_work)
      : layout(l), codes(c), nbytes(nb), directory(dir), positions(pos), suffixes(suf), n(rows), budget(max_work),
        diff(static_cast<size_t>(nb), 0) {}

  void start(const uint8_t* q) {
    query = q;
    probes = candidates = 0;
    for (int i = 0; i < layout.m; ++i) query_sub[i] = substring(q, nbytes, layout.bit[i], layout.width[i]);
  }

  int64_t work() const { return probes * kProbeCost + candidates * kCandidateCost; }

  // The step's substring values go in chunks of kChunk: each value's directory
  // entry is prefetched as it is made, then the chunk's positions gathered
  // (each code prefetched), then the codes compared, so the cache misses of a
  // chunk overlap instead of following one another.
  template <typename Take>
  bool step(const Walk& walk, Take&& take) {
    const int j = walk.j, rho = walk.rho;
    const int32_t* dir = directory + layout.dir_offset[j];
    const int32_t* pos = positions + static_cast<int64_t>(j) * n;
    const int sbits = layout.suffix_bits[j];
    const uint8_t* suf = sbits ? suffixes + static_cast<int64_t>(j) * n : nullptr;
    int nvalues = 0;
    auto flush = [&]() {
      // The chunk's work is known from the directory before any code is read: a
      // query stops before a heavy bucket (clustered codes share substrings), not
      // after it.
      int64_t found = 0;
      for (int v = 0; v < nvalues; ++v) {
        const uint32_t value = chunk_values[v], top = value >> sbits;
        int32_t lo = dir[top], hi = dir[top + 1];
        if (sbits) {  // the entries of this value: sorted by suffix inside the directory entry
          const auto range = std::equal_range(suf + lo, suf + hi, static_cast<uint8_t>(value & ((1u << sbits) - 1)));
          lo = static_cast<int32_t>(range.first - suf);
          hi = static_cast<int32_t>(range.second - suf);
        }
        chunk_lo[v] = lo;
        chunk_hi[v] = hi;
        found += hi - lo;
      }
      probes += nvalues;
      candidates += found;
      const int count = nvalues;
      nvalues = 0;
      if (work() > budget) return false;
      gathered.clear();
      for (int v = 0; v < count; ++v) {
        for (int32_t t = chunk_lo[v]; t < chunk_hi[v]; ++t) {
          __builtin_prefetch(codes + static_cast<int64_t>(pos[t]) * nbytes);
          gathered.push_back(pos[t]);
        }
      }
      for (const int32_t p : gathered) {
        const int d = xor_distance(query, codes + static_cast<int64_t>(p) * nbytes, nbytes, diff.data());
        int sub[kMaxSubstrings];
        for (int i = 0; i < layout.m; ++i) {
          sub[i] = i == j ? rho : popcount32(substring(diff.data(), nbytes, layout.bit[i], layout.width[i]));
        }
        if (!walk.seen_before(sub)) take(d, p);
      }
      return true;
    };
    const bool finished = for_each_at_distance(query_sub[j], layout.width[j], rho, [&](uint32_t value) {
      __builtin_prefetch(dir + (value >> sbits));
      chunk_values[nvalues++] = value;
      return nvalues < kChunk || flush();
    });
    return finished && (nvalues == 0 || flush());
  }

 private:
  static constexpr int kChunk = 32;
  uint32_t chunk_values[kChunk] = {};
  int32_t chunk_lo[kChunk] = {}, chunk_hi[kChunk] = {};
  std::vector<int32_t> gathered;
};

// The inputs both searches check the same way.
inline void check_tables(const at::Tensor& queries, const at::Tensor& codes, const at::Tensor& directory,
                         const at::Tensor& positions, const at::Tensor& suffixes, const Layout& layout) {
  check_query_database(queries, codes, /*allow_empty_database=*/true);
  TORCH_CHECK(queries.device().is_cpu(), "the multi-index tables are searched on the CPU, got queries on ",
              queries.device());
  TORCH_CHECK(directory.scalar_type() == at::kInt && directory.dim() == 1 &&
                  directory.size(0) == layout.directory_size(),
              "directory must be int32 [", layout.directory_size(), "] (from mih_build), got ",
              directory.scalar_type(), " with shape ", directory.sizes());
  TORCH_CHECK(positions.scalar_type() == at::kInt && positions.dim() == 2 && positions.size(0) == layout.m &&
                  positions.size(1) == codes.size(0),
              "positions must be int32 [", layout.m, ", ", codes.size(0), "] (from mih_build), got ",
              positions.scalar_type(), " with shape ", positions.sizes());
  const int64_t rows = layout.has_suffixes ? layout.m : 0;
  TORCH_CHECK(suffixes.scalar_type() == at::kByte && suffixes.dim() == 2 && suffixes.size(0) == rows &&
                  suffixes.size(1) == codes.size(0),
              "suffixes must be uint8 [", rows, ", ", codes.size(0), "] (from mih_build), got ",
              suffixes.scalar_type(), " with shape ", suffixes.sizes());
}

}  // namespace dsch_ext::mih
