// Input validation for the centre-distance ops (host only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string_view>

#include "center_math.h"

namespace dsch_ext {

inline int parse_center_metric(c10::string_view metric_name) {
  const std::string_view metric(metric_name.data(), metric_name.size());
  if (metric == "sqeuclidean") return kSqEuclidean;
  if (metric == "cosine") return kCosine;
  if (metric == "dot") return kDot;
  TORCH_CHECK(false, "metric must be 'sqeuclidean', 'cosine' or 'dot', got '", metric, "'");
  return -1;
}

inline void check_points_centers(const at::Tensor& x, const at::Tensor& centers) {
  TORCH_CHECK(x.dim() == 2, "x must be 2-D [N, D], got shape ", x.sizes());
  TORCH_CHECK(centers.dim() == 2, "centers must be 2-D [K, D], got shape ", centers.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "x must be float32 or float64, got ", x.scalar_type(), " with shape ", x.sizes());
  TORCH_CHECK(centers.scalar_type() == x.scalar_type(), "centers must have x's dtype ",
              x.scalar_type(), ", got ", centers.scalar_type(), " with shape ", centers.sizes());
  TORCH_CHECK(x.device() == centers.device(), "x and centers must be on the same device, got x on ",
              x.device(), " and centers on ", centers.device());
  TORCH_CHECK(centers.size(0) > 0, "centers is empty (shape ", centers.sizes(), "): need K >= 1");
  TORCH_CHECK(x.size(1) == centers.size(1), "x and centers have different dimensions: x shape ",
              x.sizes(), " vs centers shape ", centers.sizes());
  TORCH_CHECK(x.size(1) > 0, "x has zero dimensions (shape ", x.sizes(), ")");
}

// grad and distances of center_distances_backward: [N, K] like the forward's
// output, on x's device.
inline void check_center_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& centers,
                                  const at::Tensor& distances) {
  const int64_t n = x.size(0), k = centers.size(0);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == n && grad.size(1) == k && grad.sizes() == distances.sizes(),
              "grad and distances must be [N, K] = [", n, ", ", k, "], got grad shape ", grad.sizes(),
              " and distances shape ", distances.sizes());
  TORCH_CHECK(grad.device() == x.device() && distances.device() == x.device(),
              "grad and distances must be on x's device ", x.device(), ", got grad (shape ", grad.sizes(), ") on ",
              grad.device(), " and distances (shape ", distances.sizes(), ") on ", distances.device());
  TORCH_CHECK(grad.is_floating_point() && distances.is_floating_point(),
              "grad and distances must be floating point, got ", grad.scalar_type(), " and ",
              distances.scalar_type());
}

}  // namespace dsch_ext
