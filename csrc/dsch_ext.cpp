// The operator schemas of the dsch_ext library, all in one place.
//
// Kernels live in cpu/<op>.cpp and cuda/<op>.cu (TORCH_LIBRARY_IMPL per
// dispatch key); fake (meta) kernels and autograd are registered from
// Python in dsch_ext/_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(dsch_ext, m) {
  // Binary codes, faiss's packed layout: bit i of byte j is dimension 8j+i.
  m.def("pack_bits(Tensor codes) -> Tensor");
  m.def("unpack_bits(Tensor packed, int nbits) -> Tensor");
  // Hamming search over packed codes.
  m.def("hamming_distance(Tensor queries, Tensor database) -> Tensor");
  m.def("hamming_topk(Tensor queries, Tensor database, int k) -> (Tensor, Tensor)");
}
