// CPU kernel of dsch_ext::mih_build: the multi-index tables of packed codes
// (mih.h): for each substring the codes sorted by its value (positions
// ascending within a value), a directory of offsets and, for substrings wider
// than 24 bits, the low bits of each entry's value. One table per task.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "mih.h"

namespace dsch_ext {
namespace {

// One table: positions sorted by (substring value, position), the directory of
// the values' top bits, and the low bits of wide substrings. A narrow substring
// is one counting sort; a wide one sorts by its low bits first (stably), then
// by its top bits, keeping the values beside the order so the second pass
// streams instead of reading codes at random.
void build_table(const uint8_t* c, int64_t n, int64_t nbytes, const mih::Layout& layout, int j, int32_t* dir,
                 int32_t* pos, uint8_t* suf) {
  const int bit = layout.bit[j], width = layout.width[j], sbits = layout.suffix_bits[j];
  const int64_t tops = int64_t{1} << (width - sbits);
  auto value = [&](int64_t i) { return mih::substring(c + i * nbytes, nbytes, bit, width); };
  std::vector<int32_t> order;
  std::vector<uint32_t> values;
  if (sbits) {
    std::vector<int64_t> start((size_t{1} << sbits) + 1, 0);
    const uint32_t low = (1u << sbits) - 1;
    for (int64_t i = 0; i < n; ++i) ++start[(value(i) & low) + 1];
    for (size_t v = 1; v < start.size(); ++v) start[v] += start[v - 1];
    order.resize(static_cast<size_t>(n));
    values.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t v = value(i);
      const int64_t slot = start[v & low]++;
      order[slot] = static_cast<int32_t>(i);
      values[slot] = v;
    }
  }
  auto row = [&](int64_t t) { return sbits ? int64_t{order[t]} : t; };
  auto value_at = [&](int64_t t) { return sbits ? values[t] : value(t); };
  for (int64_t t = 0; t < n; ++t) ++dir[(value_at(t) >> sbits) + 1];
  for (int64_t v = 0; v < tops; ++v) dir[v + 1] += dir[v];
  // Place each code at its top bits' next free slot: dir[v] walks to dir[v + 1]
  // (the next entry's start), so afterwards dir[v] is entry v + 1's start.
  for (int64_t t = 0; t < n; ++t) {
    const uint32_t v = value_at(t);
    const int32_t slot = dir[v >> sbits]++;
    pos[slot] = static_cast<int32_t>(row(t));
    if (sbits) suf[slot] = static_cast<uint8_t>(v & ((1u << sbits) - 1));
  }
  for (int64_t v = tops; v > 0; --v) dir[v] = dir[v - 1];
  dir[0] = 0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mih_build_cpu(const at::Tensor& codes_in, c10::IntArrayRef widths) {
  check_packed_codes(codes_in, "codes", /*allow_empty_rows=*/true);
  TORCH_CHECK(codes_in.device().is_cpu(), "mih_build runs on the CPU, got codes on ", codes_in.device());
  const at::Tensor codes = codes_in.contiguous();
  const int64_t n = codes.size(0), nbytes = codes.size(1);
  TORCH_CHECK(n < (int64_t{1} << 31) - 1, "mih_build: ", n, " codes are more than a table indexes (2^31 - 2); "
              "shard the index");
  const mih::Layout layout(widths, nbytes);
  at::Tensor directory = at::zeros({layout.directory_size()}, codes.options().dtype(at::kInt));
  at::Tensor positions = at::empty({layout.m, n}, codes.options().dtype(at::kInt));
  at::Tensor suffixes = at::empty({layout.has_suffixes ? layout.m : 0, n}, codes.options().dtype(at::kByte));
  const uint8_t* c = codes.const_data_ptr<uint8_t>();
  int32_t* dir_all = directory.data_ptr<int32_t>();
  int32_t* pos_all = positions.data_ptr<int32_t>();
  uint8_t* suf_all = layout.has_suffixes ? suffixes.data_ptr<uint8_t>() : nullptr;
  at::parallel_for(0, layout.m, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      build_table(c, n, nbytes, layout, static_cast<int>(j), dir_all + layout.dir_offset[j], pos_all + j * n,
                  suf_all ? suf_all + j * n : nullptr);
    }
  });
  return {directory, positions, suffixes};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsch_ext, CPU, m) { m.impl("mih_build", &mih_build_cpu); }

}  // namespace dsch_ext
