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
  // Distances between points x [N, D] and centres [K, D]; metric is
  // 'sqeuclidean', 'cosine' (1 - cos) or 'dot' (-<x, c>): smaller is closer.
  m.def("center_distances(Tensor x, Tensor centers, str metric) -> Tensor");
  m.def(
      "center_distances_backward(Tensor grad, Tensor x, Tensor centers, Tensor distances, "
      "str metric) -> (Tensor, Tensor)");
  // Index (int64 [N]) and squared Euclidean distance [N] of the nearest centre.
  m.def("nearest_center(Tensor x, Tensor centers) -> (Tensor, Tensor)");
  // GMM E-step: log responsibilities [N, K] and per-point log likelihood [N]
  // from means [K, D], precision Cholesky factors (full [K, D, D], tied
  // [D, D], diag [K, D], spherical [K]) and log weights [K]. resp_floor > 0:
  // entries more than -log(resp_floor) below the row's best are -inf and left
  // out of the log-sum-exp.
  m.def(
      "gmm_log_resp(Tensor x, Tensor means, Tensor precisions_chol, Tensor log_weights, "
      "str covariance_type, float resp_floor=0.0) -> (Tensor, Tensor)");
  // Per-segment Gram matrices [K, D, D] of rows [M, D] grouped by offsets
  // [K + 1] (CSR): the sparse full-covariance M-step's second moments.
  m.def("segment_gram(Tensor rows, Tensor offsets) -> Tensor");
}
