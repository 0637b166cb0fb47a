// Input validation and output set-up for the centre-distance ops (host only).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include "center_math.h"
#include "checks.h"

namespace dsch_ext {

inline int parse_center_metric(c10::string_view metric) {
  return parse_choice(metric, "metric", {{"sqeuclidean", kSqEuclidean}, {"cosine", kCosine}, {"dot", kDot}});
}

inline void check_points_centers(const at::Tensor& x, const at::Tensor& centers) {
  check_float_matrix(x, "x", "[N, D]");
  TORCH_CHECK(centers.dim() == 2, "centers must be 2-D [K, D], got shape ", centers.sizes());
  TORCH_CHECK(centers.scalar_type() == x.scalar_type(), "centers must have x's dtype ",
              x.scalar_type(), ", got ", centers.scalar_type(), " with shape ", centers.sizes());
  TORCH_CHECK(x.device() == centers.device(), "x and centers must be on the same device, got x on ",
              x.device(), " and centers on ", centers.device());
  TORCH_CHECK(centers.size(0) > 0, "centers is empty (shape ", centers.sizes(), "): need K >= 1");
  TORCH_CHECK(x.size(1) == centers.size(1), "x and centers have different dimensions: x shape ",
              x.sizes(), " vs centers shape ", centers.sizes());
}

// grad and distances of _center_distances_backward: [N, K] like the forward's
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

// nearest_center's inputs, checked and contiguous, and its outputs (index int64
// [N], squared distance [N]) allocated: the part both backends share.
struct NearestCenterCall {
  at::Tensor x, centers, index, distance;
};

inline NearestCenterCall start_nearest_center(const at::Tensor& x, const at::Tensor& centers) {
  check_points_centers(x, centers);
  NearestCenterCall call{x.contiguous(), centers.contiguous(), {}, {}};
  call.index = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  call.distance = at::empty({x.size(0)}, x.options());
  return call;
}

}  // namespace dsch_ext
