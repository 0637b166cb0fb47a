"""Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's variant), weighted,
on one process or on data sharded across ranks (through :class:`~dsch_ext.distributed.shard.Shard`)."""
import math
from typing import Optional, Tuple

import torch

from ..distributed.shard import Shard


def kmeans_plusplus(X: torch.Tensor, n_clusters: int, generator: torch.Generator,
                    n_local_trials: Optional[int] = None, sample_weight: Optional[torch.Tensor] = None,
                    shard: Optional[Shard] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n_clusters`` seeds from the rows of X: the first drawn by weight, each next one the best
    of ``n_local_trials`` (default ``2 + log K``) candidates drawn proportionally to weight times
    the squared distance to the nearest seed so far (a row of weight 0 is never drawn). Sharded
    (``shard``): every rank passes its rows and the same generator state and gets the same
    seeds. Returns (seeds ``[n_clusters, D]``, their global row numbers int64 ``[n_clusters]``)."""
    shard = shard or Shard.local(X.shape[0])
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    # Squared distances in float64 from the expansion |x|^2 + |c|^2 - 2 x.c, with the point
    # norms computed once: K seeding steps over N points would otherwise recompute them.
    X64 = X.double()
    x_sq = (X64 * X64).sum(1)
    # Unweighted is weight 1 (the same draws and sums, so the same seeds).
    weight = torch.ones_like(x_sq) if sample_weight is None else sample_weight.double()

    def sq_dist_to(ids):
        """[len(ids), N_local]: centres by rows (c X^T runs twice as fast as X c^T here)."""
        c = shard.rows(X64, ids)
        return torch.addmm((c * c).sum(1)[:, None] + x_sq[None, :], c, X64.t(), alpha=-2).clamp_(min=0)

    def mass(dist):  # [trials, N_local] -> the weighted sum per trial, over all ranks
        return shard.sum(dist @ weight)

    ids = torch.empty(n_clusters, dtype=torch.int64)
    total = shard.sum(weight.sum().reshape(1))
    draw = torch.rand(1, generator=generator, dtype=torch.float64).to(X.device) * total
    ids[0] = int(shard.sample(torch.cumsum(weight, 0), draw)[0])
    closest = sq_dist_to(ids[:1])[0]
    potential = mass(closest[None, :])[0]
    for c in range(1, n_clusters):
        draws = torch.rand(n_local_trials, generator=generator, dtype=torch.float64).to(X.device) * potential
        candidates = shard.sample(torch.cumsum(closest * weight, 0), draws)
        dist = sq_dist_to(candidates)  # [trials, N_local]
        torch.minimum(dist, closest[None, :], out=dist)
        potentials = mass(dist)
        best = int(torch.argmin(potentials))
        closest, potential = dist[best], potentials[best]
        ids[c] = candidates[best]
    return shard.rows(X, ids), ids
