"""KMeans with scikit-learn's API on any torch device.

The assignment step is the ``nearest_center`` kernel (O(N + K) memory); everything else is a
handful of torch ops. Same algorithm as scikit-learn's Lloyd KMeans: greedy k-means++
initialisation (2 + log K local trials), tolerance relative to the mean feature variance,
strict convergence when labels stop changing, empty clusters re-seeded with the points
farthest from their centres. Random draws use a CPU generator, so a seed gives the same
result on every device.
"""
import math
from typing import Optional, Union

import numpy as np
import torch

from ._comm import LocalCommunicator, gather_rows_by_id, get_communicator
from ._validation import SeedLike, as_float_tensor, check_features, check_fitted, make_generator
from .ops import center_distances, nearest_center


class Shard:
    """Where this process's rows sit in data sharded across ranks: rows
    ``[offset, offset + n_local)`` of ``n_total``. One process: offset 0, everything local."""

    def __init__(self, comm: LocalCommunicator, n_local: int):
        counts = comm.sizes(n_local)
        self.comm = comm
        self.counts = counts
        self.n_total = sum(counts)
        self.offset = sum(counts[: comm.rank])

    @classmethod
    def of(cls, X: torch.Tensor, distributed: bool = False, process_group=None) -> "Shard":
        return cls(get_communicator(distributed, process_group), X.shape[0])

    def rows(self, X: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Global rows ``ids`` of the sharded X, on every rank."""
        return gather_rows_by_id(self.comm, X, ids, self.offset)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.comm.sum_(t)

    def mean_variance(self, X: torch.Tensor) -> float:
        """Mean over features of the (biased) variance of the whole data set, in two passes."""
        mean = self.sum(X.double().sum(0)) / self.n_total
        return float(self.sum(((X.double() - mean) ** 2).sum(0)).sum()) / (self.n_total * X.shape[1])


def kmeans_plusplus(X: torch.Tensor, n_clusters: int, generator: torch.Generator,
                    n_local_trials: Optional[int] = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; scikit-learn's variant): each new
    centre is the best of ``n_local_trials`` candidates drawn proportionally to the squared
    distance to the nearest chosen centre. Returns ``[n_clusters, D]`` centres."""
    return kmeans_plusplus_ids(X, n_clusters, generator, n_local_trials)[0]


def kmeans_plusplus_ids(X: torch.Tensor, n_clusters: int, generator: torch.Generator,
                        n_local_trials: Optional[int] = None, shard: Optional[Shard] = None):
    """k-means++ over X, or over data sharded across ranks (``shard``; every rank passes its
    rows and the same generator state and gets the same answer). Returns (centres
    ``[n_clusters, D]``, their global row numbers int64 ``[n_clusters]``)."""
    shard = shard or Shard(LocalCommunicator(), X.shape[0])
    n, n_local = shard.n_total, X.shape[0]
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    # Squared distances in float64 from the expansion |x|^2 + |c|^2 - 2 x.c, with the point
    # norms computed once: K seeding steps over N points would otherwise recompute them
    # (and re-check the input) K times.
    X64 = X.double()
    x_sq = (X64 * X64).sum(1)

    def sq_dist_from(c):
        """[len(c), N_local]: centres by rows (c X^T runs twice as fast as X c^T here)."""
        return torch.addmm((c * c).sum(1)[:, None] + x_sq[None, :], c, X64.t(), alpha=-2).clamp_(min=0)

    def sq_dist_to(ids):
        return sq_dist_from(shard.rows(X64, ids))

    # The rank that holds a draw: the first with rows whose running total reaches it.
    nonempty = [r for r, c in enumerate(shard.counts) if c > 0]
    owner_of = [next(q for q in nonempty if q >= r) if r <= nonempty[-1] else nonempty[-1]
                for r in range(len(shard.counts) + 1)]

    ids = torch.empty(n_clusters, dtype=torch.int64)
    ids[0] = int(torch.randint(n, (1,), generator=generator))
    closest = sq_dist_to(ids[:1])[0]
    potential = shard.sum(closest.sum().reshape(1))[0]
    if shard.comm.world_size == 1:
        # One process: the loop below without its cross-rank bookkeeping (the same draws and
        # arithmetic, so the same centres); a thousand steps make its overhead count.
        for c in range(1, n_clusters):
            draws = torch.rand(n_local_trials, generator=generator, dtype=torch.float64).to(X.device) * potential
            candidates = torch.searchsorted(torch.cumsum(closest, 0), draws).clamp_(max=n_local - 1)
            dist = sq_dist_from(X64[candidates])  # [trials, N]
            torch.minimum(dist, closest[None, :], out=dist)
            potentials = dist.sum(1)
            best = int(torch.argmin(potentials))
            closest, potential = dist[best], potentials[best]
            ids[c] = candidates[best]
        return X[ids.to(X.device)], ids
    for c in range(1, n_clusters):
        draws = torch.rand(n_local_trials, generator=generator, dtype=torch.float64).to(X.device) * potential
        cumulative = torch.cumsum(closest, 0)
        totals = torch.zeros(len(shard.counts), dtype=torch.float64, device=X.device)
        totals[shard.comm.rank] = cumulative[-1] if n_local else 0.0
        inclusive = torch.cumsum(shard.sum(totals), 0)
        owner = torch.tensor(owner_of, device=X.device)[torch.searchsorted(inclusive, draws)]
        candidates = torch.zeros(n_local_trials, dtype=torch.int64, device=X.device)
        mine = owner == shard.comm.rank
        if bool(mine.any()):
            before = inclusive[shard.comm.rank] - totals[shard.comm.rank]
            local = torch.searchsorted(cumulative, draws[mine] - before).clamp_(max=n_local - 1)
            candidates[mine] = local + shard.offset
        candidates = shard.sum(candidates)
        dist = sq_dist_to(candidates)  # [trials, N_local]
        torch.minimum(dist, closest[None, :], out=dist)
        potentials = shard.sum(dist.sum(1))
        best = int(torch.argmin(potentials))
        closest, potential = dist[best], potentials[best]
        ids[c] = candidates[best]
    return shard.rows(X, ids), ids


def _cluster_sums(X: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster sums of the points. CPU: index_add_ (deterministic). CUDA: one-hot GEMMs in
    row chunks, which, unlike atomic index_add_, give the same bits every run."""
    if X.device.type == "cpu":
        return X.new_zeros((k, X.shape[1])).index_add_(0, labels, X)
    sums = X.new_zeros((k, X.shape[1]))
    chunk = max(1, (1 << 26) // k)
    for start in range(0, X.shape[0], chunk):
        lab = labels[start : start + chunk]
        onehot = torch.zeros((lab.shape[0], k), dtype=X.dtype, device=X.device)
        onehot.scatter_(1, lab[:, None], 1)
        sums.addmm_(onehot.t(), X[start : start + chunk])
    return sums


def _farthest_points(dist: torch.Tensor, count: int, shard: Shard) -> torch.Tensor:
    """Global row numbers of the ``count`` points farthest from their centres (ties: lower row)."""
    m = min(count, dist.shape[0])
    local = torch.topk(dist, m, largest=True, sorted=True)
    values = torch.cat(shard.comm.all_gather_rows(local.values))
    rows = torch.cat(shard.comm.all_gather_rows(local.indices + shard.offset))
    by_row = torch.argsort(rows)
    order = by_row[torch.sort(values[by_row], descending=True, stable=True).indices]
    return rows[order[:count]]


def lloyd(X: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float, verbose: int = 0,
          shard: Optional[Shard] = None):
    """Lloyd iterations from ``centers``. Returns (centers, labels, inertia, n_iter). With
    ``shard`` X is this rank's rows: the counts, sums, inertia and convergence tests are summed
    over ranks, so every rank follows the one-process iteration on the whole data."""
    shard = shard or Shard(LocalCommunicator(), X.shape[0])
    k = centers.shape[0]
    labels_old = None
    strict = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        labels, dist = nearest_center(X, centers)
        counts = shard.sum(torch.bincount(labels, minlength=k))
        sums = shard.sum(_cluster_sums(X, labels, k))
        empty = counts == 0
        if bool(empty.any()):
            # Re-seed empty clusters with the points farthest from their centres.
            far = _farthest_points(dist, int(empty.sum()), shard)
            far_rows = shard.rows(X, far)
            old = shard.rows(labels[:, None], far)[:, 0]
            empty_ids = torch.nonzero(empty).flatten()
            for i, (src, dst, point) in enumerate(zip(old.tolist(), empty_ids.tolist(), far.tolist())):
                sums[src] -= far_rows[i]
                counts[src] -= 1
                sums[dst] = far_rows[i]
                counts[dst] = 1
                if shard.offset <= point < shard.offset + X.shape[0]:
                    labels[point - shard.offset] = dst
        new_centers = sums / counts.clamp(min=1)[:, None].to(X.dtype)
        shift = float(((new_centers - centers) ** 2).sum())
        if verbose:
            inertia = float(shard.sum(dist.double().sum().reshape(1)))
            if shard.comm.rank == 0:
                print(f"  KMeans iteration {n_iter}: inertia {inertia:.6g}, centre shift {shift:.3g}")
        centers = new_centers
        if labels_old is not None:
            changed = shard.sum(torch.tensor([0 if torch.equal(labels, labels_old) else 1]))
            if int(changed) == 0:
                strict = True
                break
        labels_old = labels
        if shift <= tol:
            break
    if not strict:
        labels, dist = nearest_center(X, centers)
    else:
        dist = nearest_center(X, centers)[1]
    return centers, labels, float(shard.sum(dist.double().sum().reshape(1))), n_iter


class KMeans:
    """K-means clustering (scikit-learn's ``sklearn.cluster.KMeans`` API) on CPU or CUDA.

    Parameters:
        n_clusters: number of clusters K (1 <= K <= n_samples).
        init: ``'k-means++'`` (default), ``'random'`` (K distinct samples) or an array
            ``[K, D]`` of initial centres.
        n_init: runs with different seeds, the lowest inertia wins; ``'auto'`` is 1 for
            k-means++ and an array, 10 for random (scikit-learn's rule).
        max_iter: Lloyd iterations per run.
        tol: convergence when the squared centre shift is <= tol * mean feature variance.
        random_state: int, None or a ``torch.Generator``.
        verbose: 1 prints every iteration.
        distributed: fit on data sharded across the ranks of ``process_group`` (torch.distributed;
            default group when None): every rank calls ``fit`` with its own rows and the same
            parameters, and all get the model that one process would fit on the rows
            concatenated in rank order (same seed, same result up to the order of float
            sums). ``labels_`` are then this rank's labels; ``inertia_`` is the total.

    Attributes after ``fit``: ``cluster_centers_`` ``[K, D]`` (on the data's device),
    ``labels_`` ``[N]``, ``inertia_`` (float), ``n_iter_``, ``n_features_in_``.
    Inputs are numpy arrays or tensors; results are tensors on the input's device.
    """

    def __init__(self, n_clusters: int = 8, *, init: Union[str, np.ndarray, torch.Tensor] = "k-means++",
                 n_init: Union[int, str] = "auto", max_iter: int = 300, tol: float = 1e-4,
                 random_state: SeedLike = None, verbose: int = 0, distributed: bool = False,
                 process_group=None):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.distributed = distributed
        self.process_group = process_group

    def _check_params(self, X: torch.Tensor, n_total: int):
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive int, got {self.n_clusters!r}")
        if self.n_clusters > n_total:
            raise ValueError(f"n_clusters={self.n_clusters} must be <= n_samples={n_total} (X shape {tuple(X.shape)})")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.tol < 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")
        if isinstance(self.init, str):
            if self.init not in ("k-means++", "random"):
                raise ValueError(f"init must be 'k-means++', 'random' or an array, got {self.init!r}")
            n_init = (1 if self.init == "k-means++" else 10) if self.n_init == "auto" else self.n_init
        else:
            n_init = 1
        if not isinstance(n_init, (int, np.integer)) or n_init < 1:
            raise ValueError(f"n_init must be 'auto' or a positive int, got {self.n_init!r}")
        return int(n_init)

    def _initial_centers(self, X: torch.Tensor, generator: torch.Generator, shard: Shard) -> torch.Tensor:
        k = self.n_clusters
        if isinstance(self.init, str):
            if self.init == "k-means++":
                return kmeans_plusplus_ids(X, k, generator, shard=shard)[0]
            ids = torch.randperm(shard.n_total, generator=generator)[:k]
            return shard.rows(X, ids)
        centers = as_float_tensor(self.init, "init", device=X.device).to(X.dtype)
        if centers.shape != (k, X.shape[1]):
            raise ValueError(f"init array must have shape {(k, X.shape[1])}, got {tuple(centers.shape)}")
        return centers.clone()

    def fit(self, X, y=None):
        """Cluster X (``[N, D]``). Returns self."""
        X = as_float_tensor(X)
        shard = Shard.of(X, self.distributed, self.process_group)
        n_init = self._check_params(X, shard.n_total)
        generator = make_generator(self.random_state)
        tol = shard.mean_variance(X) * self.tol
        best = None
        for run in range(n_init):
            centers = self._initial_centers(X, generator, shard)
            if self.verbose and shard.comm.rank == 0:
                print(f"KMeans run {run + 1}/{n_init}: {shard.n_total} points on {shard.comm.world_size} rank(s), "
                      f"K={self.n_clusters}, device {X.device}")
            result = lloyd(X, centers, self.max_iter, tol, self.verbose, shard)
            if best is None or result[2] < best[2]:
                best = result
        self.cluster_centers_, self.labels_, self.inertia_, self.n_iter_ = best
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X) -> torch.Tensor:
        """Index of the nearest centre of every row of X (int64 ``[N]``)."""
        check_fitted(self, "cluster_centers_")
        X = as_float_tensor(X, device=self.cluster_centers_.device).to(self.cluster_centers_.dtype)
        check_features(self, X)
        return nearest_center(X, self.cluster_centers_)[0]

    def fit_predict(self, X, y=None) -> torch.Tensor:
        return self.fit(X).labels_

    def transform(self, X) -> torch.Tensor:
        """Euclidean distances to every centre (``[N, K]``), like scikit-learn's."""
        check_fitted(self, "cluster_centers_")
        X = as_float_tensor(X, device=self.cluster_centers_.device).to(self.cluster_centers_.dtype)
        check_features(self, X)
        return center_distances(X, self.cluster_centers_, "sqeuclidean").sqrt_()

    def fit_transform(self, X, y=None) -> torch.Tensor:
        return self.fit(X).transform(X)

    def score(self, X, y=None) -> float:
        """Opposite of the inertia of X under the fitted centres."""
        check_fitted(self, "cluster_centers_")
        X = as_float_tensor(X, device=self.cluster_centers_.device).to(self.cluster_centers_.dtype)
        check_features(self, X)
        return -float(nearest_center(X, self.cluster_centers_)[1].double().sum())
