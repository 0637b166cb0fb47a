// Host-side preparation of the GMM E-step, shared by both backends: checks,
// and the per-component tensors (b_k = mu_k L_k, log constants) computed with
// torch ops on the data's device. O(K D^2), negligible next to the E-step.
// Only the CPU backend scans the inputs for NaN / Inf (gmm_log_resp.cpp): on
// CUDA that scan would stop the stream, so non-finite points there get NaN
// log-likelihoods.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/diagonal.h>
#include <ATen/ops/log.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include "checks.h"
#include "gmm_math.h"

namespace dsch_ext {

inline int parse_gmm_covariance(c10::string_view name) {
  return parse_choice(name, "covariance_type",
                      {{"full", kGmmFull}, {"tied", kGmmTied}, {"diag", kGmmDiag}, {"spherical", kGmmSpherical}});
}

struct GmmPrepared {
  int cov;
  at::Tensor x;           // [N, D] contiguous
  at::Tensor transform;   // full: [D, K*D] (L_k side by side); tied: [D, D]; else undefined
  at::Tensor p;           // diag: [K, D]; spherical: [K]; else undefined (a 1-element dummy)
  at::Tensor b;           // [K, D]: mu_k L_k
  at::Tensor log_const;   // [K]: log det L_k + log w_k - 0.5 D log 2pi
};

inline GmmPrepared prepare_gmm(const at::Tensor& x, const at::Tensor& means, const at::Tensor& prec_chol,
                               const at::Tensor& log_weights, c10::string_view cov_name) {
  const int cov = parse_gmm_covariance(cov_name);
  check_float_matrix(x, "x", "[N, D]");
  const int64_t d = x.size(1);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == d && means.size(0) > 0,
              "means must be [K, D] = [K, ", d, "] with K >= 1, got shape ", means.sizes());
  const int64_t k = means.size(0);
  TORCH_CHECK(log_weights.dim() == 1 && log_weights.size(0) == k, "log_weights must be [K] = [", k,
              "], got shape ", log_weights.sizes());
  switch (cov) {
    case kGmmFull:
      TORCH_CHECK(prec_chol.dim() == 3 && prec_chol.size(0) == k && prec_chol.size(1) == d && prec_chol.size(2) == d,
                  "precisions_chol for 'full' must be [K, D, D] = [", k, ", ", d, ", ", d, "], got shape ", prec_chol.sizes());
      break;
    case kGmmTied:
      TORCH_CHECK(prec_chol.dim() == 2 && prec_chol.size(0) == d && prec_chol.size(1) == d,
                  "precisions_chol for 'tied' must be [D, D] = [", d, ", ", d, "], got shape ", prec_chol.sizes());
      break;
    case kGmmDiag:
      TORCH_CHECK(prec_chol.dim() == 2 && prec_chol.size(0) == k && prec_chol.size(1) == d,
                  "precisions_chol for 'diag' must be [K, D] = [", k, ", ", d, "], got shape ", prec_chol.sizes());
      break;
    default:
      TORCH_CHECK(prec_chol.dim() == 1 && prec_chol.size(0) == k,
                  "precisions_chol for 'spherical' must be [K] = [", k, "], got shape ", prec_chol.sizes());
  }
  for (const at::Tensor* t : {&means, &prec_chol, &log_weights}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "means, precisions_chol and log_weights must have x's dtype ",
                x.scalar_type(), ", got ", t->scalar_type(), " with shape ", t->sizes());
    TORCH_CHECK(t->device() == x.device(), "all inputs must be on x's device ", x.device(), ", got a tensor of shape ",
                t->sizes(), " on ", t->device());
  }

  GmmPrepared g;
  g.cov = cov;
  g.x = x.contiguous();
  const at::Tensor L = prec_chol.contiguous();
  at::Tensor log_det;
  switch (cov) {
    case kGmmFull:
      g.b = at::bmm(means.unsqueeze(1), L).squeeze(1);
      g.transform = L.permute({1, 0, 2}).reshape({d, k * d}).contiguous();
      log_det = at::log(at::diagonal(L, 0, 1, 2)).sum(1);
      g.p = L.new_zeros({1});
      break;
    case kGmmTied:
      g.b = at::mm(means, L);
      g.transform = L;
      log_det = at::log(at::diagonal(L, 0, 0, 1)).sum().expand({k});
      g.p = L.new_zeros({1});
      break;
    case kGmmDiag:
      g.b = means.mul(L);
      g.p = L;
      log_det = at::log(L).sum(1);
      break;
    default:
      g.b = means.mul(L.unsqueeze(1));
      g.p = L;
      log_det = at::log(L).mul(static_cast<double>(d));
  }
  g.b = g.b.contiguous();
  g.log_const = log_det.add(log_weights).sub(0.5 * static_cast<double>(d) * kLog2Pi).contiguous();
  return g;
}

}  // namespace dsch_ext
