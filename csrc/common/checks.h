// Input validation shared by every backend of every op.
//
// User errors are TORCH_CHECKs whose message names the argument and its
// shape; nothing here launches work. Non-contiguous inputs are not errors:
// the callers make them contiguous.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace dsch_ext {

// The enum value of a string argument (metric, covariance type), or one error
// that names the argument and lists what it accepts.
inline int parse_choice(c10::string_view given, const char* arg_name,
                        std::initializer_list<std::pair<const char*, int>> choices) {
  const std::string_view value(given.data(), given.size());
  std::string accepted;
  for (const auto& choice : choices) {
    if (value == choice.first) return choice.second;
    accepted += (accepted.empty() ? "'" : ", '") + std::string(choice.first) + "'";
  }
  TORCH_CHECK(false, arg_name, " must be one of ", accepted, ", got '", value, "'");
  return -1;
}

// A float32 / float64 matrix [rows, D] with D >= 1 (rows may be 0).
inline void check_float_matrix(const at::Tensor& t, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D ", shape, ", got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type(), " with shape ", t.sizes());
  TORCH_CHECK(t.size(1) > 0, name, " has zero dimensions (shape ", t.sizes(), ")");
}

// A packed code matrix: uint8 [rows, nbytes] with nbytes >= 1.
inline void check_packed_codes(const at::Tensor& t, const char* name, bool allow_empty_rows) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.scalar_type() == at::kByte, name,
              " must be packed codes of dtype uint8 (see dsch_ext.pack_bits), got dtype ",
              t.scalar_type(), " with shape ", t.sizes());
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D [rows, code bytes], got shape ", t.sizes());
  TORCH_CHECK(t.size(1) > 0, name, " has zero code bytes (shape ", t.sizes(), ")");
  TORCH_CHECK(allow_empty_rows || t.size(0) > 0, name, " is empty (shape ", t.sizes(), ")");
}

// queries [nq, nbytes] and database [ndb, nbytes] on one device, same width
// (ndb >= 1 unless allow_empty_database: a range search of nothing is empty).
inline void check_query_database(const at::Tensor& queries, const at::Tensor& database,
                                 bool allow_empty_database = false) {
  check_packed_codes(queries, "queries", /*allow_empty_rows=*/true);
  check_packed_codes(database, "database", allow_empty_database);
  TORCH_CHECK(queries.device() == database.device(),
              "queries and database must be on the same device, got queries on ",
              queries.device(), " and database on ", database.device());
  TORCH_CHECK(queries.size(1) == database.size(1),
              "queries and database have different code widths: queries shape ",
              queries.sizes(), " (", queries.size(1) * 8, " bits) vs database shape ",
              database.sizes(), " (", database.size(1) * 8, " bits)");
}

// codes [N, nbits] for pack_bits: 2-D, nbits >= 1, real or bool.
inline void check_pack_codes(const at::Tensor& codes) {
  TORCH_CHECK(codes.dim() == 2, "codes must be 2-D [N, nbits], got shape ", codes.sizes());
  TORCH_CHECK(codes.size(1) > 0, "codes has zero bits per code (shape ", codes.sizes(), ")");
  TORCH_CHECK(!codes.is_complex(), "codes must be real or bool, got dtype ", codes.scalar_type());
}

// packed [N, W] and the nbits unpack_bits restores: W == ceil(nbits / 8).
inline void check_unpack_width(const at::Tensor& packed, int64_t nbits) {
  check_packed_codes(packed, "packed", /*allow_empty_rows=*/true);
  TORCH_CHECK(nbits >= 1 && (nbits + 7) / 8 == packed.size(1), "nbits = ", nbits, " does not fit packed of shape ",
              packed.sizes(), ": it needs ", (packed.size(1) - 1) * 8 + 1, "..", packed.size(1) * 8);
}

// A range search's radius: distances <= radius (< radius when exclusive).
inline void check_range_radius(int64_t radius) {
  TORCH_CHECK(radius >= 0, "radius must be >= 0, got radius = ", radius);
}

inline void check_topk_k(int64_t k, const at::Tensor& database) {
  TORCH_CHECK(k >= 1 && k <= database.size(0), "k must be in [1, ndb] = [1, ",
              database.size(0), "] for database of shape ", database.sizes(), ", got k = ", k);
}

// The fixed-width kernels read rows as 16/32/64-bit words; a tensor whose
// data pointer is not aligned to 16 bytes (a row slice of a larger tensor)
// is copied once so those reads stay aligned on every backend.
inline at::Tensor contiguous_aligned(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

}  // namespace dsch_ext
