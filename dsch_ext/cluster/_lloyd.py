"""Lloyd's iterations, as scikit-learn runs them: assign every point to its nearest centre,
move each centre to the weighted mean of its points, relocate empty clusters to the points
farthest from their centres (an empty cluster that cannot be relocated, because every point
sits on its centre, takes the centre of the heaviest cluster), stop when the labels no longer
change ("strict convergence") or the squared centre shift is within the tolerance.

The whole-data steps (weights and sums per cluster, the farthest points, the convergence
tests) go through a :class:`~dsch_ext.distributed.shard.Shard`; on one process those are the
plain tensor ops.
"""
from typing import NamedTuple, Optional

import torch

from ..distributed.shard import Shard
from ..ops import nearest_center
from ._bounded import BoundedAssignment


class LloydResult(NamedTuple):
    centers: torch.Tensor
    labels: torch.Tensor  # int64, this rank's rows
    inertia: float  # weighted, over all ranks
    n_iter: int


def cluster_sums(X: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster sums of the rows of X, the same bits every run: ``index_add_`` on the CPU
    (sequential there), a segment reduction over the rows sorted by label elsewhere (where
    ``index_add_`` adds with atomics). O(N D) work and no N x K matrix."""
    if X.device.type == "cpu":
        return X.new_zeros((k, X.shape[1])).index_add_(0, labels, X)
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=k)
    return torch.segment_reduce(X[order], "sum", lengths=counts, axis=0, unsafe=True, initial=0)


def sq_distances_to(X: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Squared distance of every point to its own centre, in row chunks (no N x D temporary)."""
    out = X.new_empty(X.shape[0])
    for start in range(0, X.shape[0], 65536):
        rows = slice(start, start + 65536)
        out[rows] = ((X[rows] - centers[labels[rows]]) ** 2).sum(1)
    return out


def _weighted_sum(values: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    values = values.double()
    return (values @ weight.double() if weight is not None else values.sum()).reshape(1)


class _Assigner:
    """The assignment step: the plain ``nearest_center`` pass, or bounded passes that keep their
    state across iterations (``group_size``: see :class:`BoundedAssignment`)."""

    def __init__(self, X: torch.Tensor, group_size: Optional[int]):
        self.X, self.group_size, self.state = X, group_size, None

    def __call__(self, centers: torch.Tensor):
        """(labels, squared distances, or None where the bounded passes do not have them)."""
        if self.group_size is None:
            return nearest_center(self.X, centers)
        if self.state is None:
            self.state = BoundedAssignment(self.X, centers, self.group_size)
        else:
            self.state.move(centers)
        return self.state.labels_original(), None


def _relocate_empty(X, weight, labels, dist, centers, sums, masses, shard):
    """Move the points farthest from their centres into the empty clusters (the farthest to the
    lowest empty cluster), in ``sums`` / ``masses`` only: the labels are reassigned by the next
    pass. Nothing moves when every point sits on its centre."""
    empty = torch.nonzero(masses == 0).flatten()
    if dist is None:
        dist = sq_distances_to(X, centers, labels)
    if float(shard.comm.max_(dist.max().reshape(1) if dist.numel() else dist.new_zeros(1))) == 0:
        return
    far = shard.farthest(dist, empty.numel())
    far_rows = shard.rows(X, far)
    far_weight = shard.rows(weight[:, None], far)[:, 0] if weight is not None else torch.ones_like(far_rows[:, 0])
    source = shard.rows(labels[:, None], far)[:, 0]
    for i, (src, dst) in enumerate(zip(source.tolist(), empty.tolist())):
        sums[src] -= far_rows[i] * far_weight[i]
        masses[src] -= far_weight[i]
        sums[dst] = far_rows[i] * far_weight[i]
        masses[dst] = far_weight[i]


def _new_centers(sums: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """Weighted means; a cluster still empty takes the centre of the heaviest one (the lowest
    index among equals), as scikit-learn places it."""
    centers = sums / masses.clamp(min=torch.finfo(sums.dtype).tiny)[:, None]
    empty = masses <= 0
    if bool(empty.any()):
        centers[empty] = centers[int(torch.argmax(masses))].clone()
    return centers


def lloyd(X: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float, weight: Optional[torch.Tensor] = None,
          verbose: int = 0, shard: Optional[Shard] = None, group_size: Optional[int] = None) -> LloydResult:
    """Lloyd iterations from ``centers``, weighted by ``weight`` (None: all 1). With ``shard`` X
    is this rank's rows and every rank follows the one-process iteration on the whole data."""
    shard = shard or Shard.local(X.shape[0])
    k = centers.shape[0]
    assign = _Assigner(X, group_size)
    weighted_X = X * weight[:, None] if weight is not None else X
    labels_old, strict, n_iter = None, False, 0
    for n_iter in range(1, max_iter + 1):
        labels, dist = assign(centers)
        masses = torch.bincount(labels, weights=weight, minlength=k).to(X.dtype)
        masses, sums = shard.sum(masses), shard.sum(cluster_sums(weighted_X, labels, k))
        if verbose:
            dist = dist if dist is not None else sq_distances_to(X, centers, labels)
            inertia = float(shard.sum(_weighted_sum(dist, weight)))
            if shard.comm.rank == 0:
                print(f"Iteration {n_iter - 1}, inertia {inertia}.")
        if bool((masses == 0).any()):
            _relocate_empty(X, weight, labels, dist, centers, sums, masses, shard)
        new_centers = _new_centers(sums, masses)
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if labels_old is not None and int(shard.sum(torch.tensor([int(not torch.equal(labels, labels_old))]))) == 0:
            strict = True
            if verbose and shard.comm.rank == 0:
                print(f"Converged at iteration {n_iter - 1}: strict convergence.")
            break
        if shift <= tol:
            if verbose and shard.comm.rank == 0:
                print(f"Converged at iteration {n_iter - 1}: center shift {shift} within tolerance {tol}.")
            break
        labels_old = labels
    dist = None
    if not strict:  # a last assignment, so that the labels match the centres
        labels, dist = assign(centers)
    if dist is None:
        dist = sq_distances_to(X, centers, labels)
    return LloydResult(centers, labels, float(shard.sum(_weighted_sum(dist, weight))), n_iter)
