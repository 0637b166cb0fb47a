// The operator schemas of dsch_ext, all in one place: DSCH_EXT_OP_SCHEMAS(X)
// calls X(schema) for each. csrc/dsch_ext.cpp defines them in the dsch_ext
// namespace (torch.ops.dsch_ext); the test-only emulation library defines
// the same schemas in dsch_ext_emulated, with the CUDA kernels compiled for
// the CPU emulation behind them.
#pragma once

// clang-format off
#define DSCH_EXT_OP_SCHEMAS(X)                                                                        \
  /* Binary codes, faiss's packed layout: bit i of byte j is dimension 8j+i. */                       \
  X("pack_bits(Tensor codes) -> Tensor")                                                              \
  X("unpack_bits(Tensor packed, int nbits) -> Tensor")                                                \
  /* Hamming search over packed codes. */                                                             \
  X("hamming_distance(Tensor queries, Tensor database) -> Tensor")                                    \
  X("hamming_topk(Tensor queries, Tensor database, int k) -> (Tensor, Tensor)")                       \
  /* Every code within radius of each query: (lims int64 [nq + 1], distances int32 [total],           \
     indices int64 [total]), query i's hits at [lims[i], lims[i + 1]) in index order; d <= radius,    \
     or d < radius (faiss's convention) when exclusive. */                                            \
  X("hamming_range(Tensor queries, Tensor database, int radius, bool exclusive=False) -> "             \
    "(Tensor, Tensor, Tensor)")                                                                       \
  /* Multi-index hashing (CPU): tables of codes [N, W] cut into substrings of the given widths       \
     (<= 32 bits each, adding up to the code length): directory int32 [sum(2^min(w, 24) + 1)],       \
     positions int32 [m, N] and, where a width passes 24 bits, suffixes uint8 [m, N] (else [0, N]).  \
     The searches return hamming_topk's / hamming_range's answers plus work int64 [nq, 3] (probes,   \
     codes looked at, their cost in flat-scan code pairs); a query whose cost passes max_work stops, \
     its probes reported as -(probes + 1) and its results left for the caller. */                    \
  X("mih_build(Tensor codes, int[] widths) -> (Tensor, Tensor, Tensor)")                              \
  X("mih_topk(Tensor queries, Tensor codes, Tensor directory, Tensor positions, Tensor suffixes, "     \
    "int[] widths, int k, int max_work) -> (Tensor, Tensor, Tensor)")                                 \
  X("mih_range(Tensor queries, Tensor codes, Tensor directory, Tensor positions, Tensor suffixes, "    \
    "int[] widths, int radius, bool exclusive, int max_work) -> (Tensor, Tensor, Tensor, Tensor)")    \
  /* Distances between points x [N, D] and centres [K, D]; metric is 'sqeuclidean',                   \
     'cosine' (1 - cos) or 'dot' (-<x, c>): smaller is closer. */                                     \
  X("center_distances(Tensor x, Tensor centers, str metric) -> Tensor")                               \
  X("_center_distances_backward(Tensor grad, Tensor x, Tensor centers, Tensor distances, "             \
    "str metric) -> (Tensor, Tensor)")                                                                \
  /* Index (int64 [N]) and squared Euclidean distance [N] of the nearest centre. */                   \
  X("nearest_center(Tensor x, Tensor centers) -> (Tensor, Tensor)")                                   \
  /* One k-means assignment pass that skips the centres its bounds rule out (Yinyang;                 \
     KMeans' CPU path). Centres [K, D] sorted into groups (group_offsets [T + 1]); order [K]          \
     their original indices (ties to the lower); labels [N] (sorted rows), upper [N] (bound           \
     on the distance to the point's centre) and lower [N, T] (per group, bound on the                 \
     distance to its other centres, stored + total_drift[g]) are updated in place; drift [K]:         \
     how far each centre moved since the last pass. exact=True computes every distance and            \
     (re)starts the bounds. Returns the number of point-centre distances computed (int64). */        \
  X("_kmeans_bounded_assign(Tensor x, Tensor x_sqnorm, Tensor centers, Tensor order, "                 \
    "Tensor group_offsets, Tensor drift, Tensor total_drift, Tensor(a!) labels, Tensor(b!) upper, "   \
    "Tensor(c!) lower, bool exact) -> Tensor")                                                        \
  /* GMM E-step: log responsibilities [N, K] and per-point log likelihood [N] from means              \
     [K, D], precision Cholesky factors (full [K, D, D], tied [D, D], diag [K, D], spherical          \
     [K]) and log weights [K]. resp_floor > 0: entries more than -log(resp_floor) below the           \
     row's best are -inf and left out of the log-sum-exp. */                                         \
  X("gmm_log_resp(Tensor x, Tensor means, Tensor precisions_chol, Tensor log_weights, "               \
    "str covariance_type, float resp_floor=0.0) -> (Tensor, Tensor)")                                 \
  /* Per-segment Gram matrices [K, D, D] of rows [M, D] grouped by offsets [K + 1] (CSR):             \
     the sparse full-covariance M-step's second moments. */                                          \
  X("segment_gram(Tensor rows, Tensor offsets) -> Tensor")
// clang-format on
