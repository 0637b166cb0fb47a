"""KMeans with scikit-learn's API on any torch device.

The assignment step is the ``nearest_center`` kernel (O(N + K) memory) or, on the CPU from
K = 32 on, the ``_kmeans_bounded_assign`` kernel (Yinyang k-means: per-point distance bounds skip
the centres that cannot be nearer, N x K/16 values of memory); everything else is a handful of
torch ops. Same algorithm as scikit-learn's Lloyd KMeans: greedy k-means++
initialisation (2 + log K local trials), tolerance relative to the mean feature variance,
strict convergence when labels stop changing, empty clusters re-seeded with the points
farthest from their centres. Random draws use a CPU generator, so a seed gives the same
result on every device.
"""
import math
from typing import Optional, Union

import numpy as np
import torch

from .distributed.comm import LocalCommunicator
from .distributed.shard import Shard
from ._sklearn import BaseEstimator, ClusterMixin, TransformerMixin
from ._validation import SeedLike, as_float_tensor, check_features, check_fitted, make_generator
from .ops import center_distances, nearest_center


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
    """Per-cluster sums of the points, the same bits every run: ``index_add_`` on the CPU
    (sequential there), ``_segment_sums`` on other devices (where it uses atomics)."""
    if X.device.type == "cpu":
        return X.new_zeros((k, X.shape[1])).index_add_(0, labels, X)
    return _segment_sums(X, labels, k)


def _segment_sums(X: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster sums from the points sorted by label (stable) and summed segment by segment:
    ``torch.segment_reduce`` adds each output element sequentially (no atomics). O(N D) work and
    no N x K matrix."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=k)
    return torch.segment_reduce(X[order], "sum", lengths=counts, axis=0, unsafe=True, initial=0)


def _farthest_points(dist: torch.Tensor, count: int, shard: Shard) -> torch.Tensor:
    """Global row numbers of the ``count`` points farthest from their centres (ties: lower row)."""
    m = min(count, dist.shape[0])
    local = torch.topk(dist, m, largest=True, sorted=True)
    values = torch.cat(shard.comm.all_gather_rows(local.values))
    rows = torch.cat(shard.comm.all_gather_rows(local.indices + shard.offset))
    by_row = torch.argsort(rows)
    order = by_row[torch.sort(values[by_row], descending=True, stable=True).indices]
    return rows[order[:count]]


def _sq_distances_to(X: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Squared distance of every point to its own centre, in row chunks (no N x D temporary)."""
    out = X.new_empty(X.shape[0])
    for start in range(0, X.shape[0], 65536):
        rows = slice(start, start + 65536)
        out[rows] = ((X[rows] - centers[labels[rows]]) ** 2).sum(1)
    return out


def _round_up(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 values in ``dtype``, rounded up (never below the float64 value)."""
    cast = values.to(dtype)
    return torch.where(cast.double() < values, torch.nextafter(cast, cast.new_tensor(math.inf)), cast)


def _principal_direction(rows: torch.Tensor, steps: int = 20) -> torch.Tensor:
    """Approximate top right singular vector of ``rows`` by power iteration on the Gram matrix
    (deterministic start: the row of largest norm); for splitting, not for accuracy."""
    gram = rows.t() @ rows
    v = rows[int(torch.argmax((rows * rows).sum(1)))]
    for _ in range(steps):
        v = gram @ v
        v = v / v.norm().clamp(min=1e-300)
    return v


class BoundedAssignment:
    """k-means assignment passes that skip the centres their bounds rule out (Yinyang k-means,
    Ding et al., ICML 2015): the ``_kmeans_bounded_assign`` kernel plus its state across Lloyd
    iterations. The centres are split once into groups of ``group_size`` neighbours (recursive
    halving of the initial centres); each point keeps an upper bound on the distance to its centre and a lower bound
    per group. After the first pass, which computes every distance, a pass computes only the
    distances to groups that could hold a nearer centre. Same labels as the plain pass
    (distances rounded the same way, ties to the lower index). CPU; memory N x K / group_size values."""

    EXACT_ABOVE = 0.7  # share of the distances above which the next pass is the exact one

    def __init__(self, X: torch.Tensor, centers: torch.Tensor, group_size: int = 16):
        k = centers.shape[0]
        self.X = X.contiguous()
        self.x_sqnorm = (self.X * self.X).sum(1)
        group = self._group_centers(centers, group_size)
        n_groups = int(group.max()) + 1
        self.order = torch.argsort(group, stable=True)
        self.rank = torch.empty_like(self.order)
        self.rank[self.order] = torch.arange(k)
        counts = torch.bincount(group, minlength=n_groups)
        self.group_offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        self.group_of_sorted = group[self.order]
        self.total_drift = torch.zeros(n_groups, dtype=torch.float64)
        n = X.shape[0]
        self.labels = torch.zeros(n, dtype=torch.int64)
        self.upper = X.new_empty(n)
        self.lower = X.new_empty((n, n_groups))
        self.centers = centers
        self.computed = 0
        self._pass(centers.new_zeros(k), exact=True)

    @staticmethod
    def _group_centers(centers: torch.Tensor, size: int) -> torch.Tensor:
        """Group of every centre: recursive halving along the principal direction into groups
        of ``size`` centres (the last may be smaller), so the kernel's register tiles are full."""
        k = centers.shape[0]
        group = torch.empty(k, dtype=torch.int64)
        points = centers.double()
        stack = [torch.arange(k)]
        next_group = 0
        while stack:
            ids = stack.pop()
            if ids.numel() <= size:
                group[ids] = next_group
                next_group += 1
                continue
            part = points[ids] - points[ids].mean(0)
            direction = _principal_direction(part)
            by_projection = ids[torch.argsort(part @ direction, stable=True)]
            left = (ids.numel() + size - 1) // size // 2 * size
            stack += [by_projection[left:], by_projection[:left]]
        return group

    def _pass(self, drift_sorted: torch.Tensor, exact: bool) -> None:
        dtype = self.X.dtype
        computed = torch.ops.dsch_ext._kmeans_bounded_assign.default(
            self.X, self.x_sqnorm, self.centers[self.order].contiguous(), self.order, self.group_offsets,
            drift_sorted, _round_up(self.total_drift, dtype), self.labels, self.upper, self.lower, exact)
        self.computed += int(computed)
        self.last_work = 0.0 if exact else int(computed) / (self.X.shape[0] * self.centers.shape[0])

    def labels_original(self) -> torch.Tensor:
        """Each point's centre (original centre index)."""
        return self.order[self.labels]

    def move(self, new_centers: torch.Tensor) -> None:
        """The centres moved to ``new_centers``: update the bounds and run the next pass."""
        drift = (new_centers.double() - self.centers.double()).norm(dim=1)[self.order]
        group_max = torch.zeros_like(self.total_drift).scatter_reduce_(
            0, self.group_of_sorted, drift, reduce="amax", include_self=True)
        self.total_drift += group_max
        self.centers = new_centers
        # A bounded pass that computes most distances costs more than the exact pass (one
        # GEMM), which also makes every bound tight again: after one, take the exact pass.
        exact = self.last_work > self.EXACT_ABOVE
        self._pass(_round_up(drift, new_centers.dtype), exact=exact)

    def reassign(self, rows: torch.Tensor, centers: torch.Tensor) -> None:
        """Points ``rows`` were moved to centres ``centers`` (original indices) by hand: their
        bounds are reset, so the next pass computes all their distances."""
        self.labels[rows] = self.rank[centers]
        self.upper[rows] = math.inf
        self.lower[rows] = -math.inf


def use_bounded_assignment(X: torch.Tensor, n_clusters: int, algorithm: str) -> bool:
    """Whether ``algorithm`` (KMeans' parameter) runs the bounded passes on this data."""
    if algorithm == "lloyd":
        return False
    cpu = X.device.type == "cpu"
    if algorithm == "yinyang":
        if not cpu:
            raise ValueError(f"algorithm='yinyang' runs on the CPU only; X is on {X.device} (use 'auto' or 'lloyd')")
        return True
    # auto: bounds pay off from tens of centres on; their memory is N x K/16 values.
    return cpu and n_clusters >= 32 and X.shape[0] * (n_clusters // 16) <= (1 << 28)


def lloyd(X: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float, verbose: int = 0,
          shard: Optional[Shard] = None, bounded: bool = False):
    """Lloyd iterations from ``centers``. Returns (centers, labels, inertia, n_iter). With
    ``shard`` X is this rank's rows: the counts, sums, inertia and convergence tests are summed
    over ranks, so every rank follows the one-process iteration on the whole data. ``bounded``:
    assignment passes by :class:`BoundedAssignment` (same labels, fewer distances)."""
    shard = shard or Shard(LocalCommunicator(), X.shape[0])
    k = centers.shape[0]
    state = None

    def assign(centers):
        """(labels, squared distances or None when the bounded passes do not have them)."""
        nonlocal state
        if not bounded:
            return nearest_center(X, centers)
        if state is None:
            state = BoundedAssignment(X, centers)
        else:
            state.move(centers)
        return state.labels_original(), None

    labels_old = None
    strict = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        labels, dist = assign(centers)
        counts = shard.sum(torch.bincount(labels, minlength=k))
        sums = shard.sum(_cluster_sums(X, labels, k))
        empty = counts == 0
        if bool(empty.any()):
            # Re-seed empty clusters with the points farthest from their centres.
            if dist is None:
                dist = _sq_distances_to(X, centers, labels)
            far = _farthest_points(dist, int(empty.sum()), shard)
            far_rows = shard.rows(X, far)
            old = shard.rows(labels[:, None], far)[:, 0]
            empty_ids = torch.nonzero(empty).flatten()
            moved_rows, moved_to = [], []
            for i, (src, dst, point) in enumerate(zip(old.tolist(), empty_ids.tolist(), far.tolist())):
                sums[src] -= far_rows[i]
                counts[src] -= 1
                sums[dst] = far_rows[i]
                counts[dst] = 1
                if shard.offset <= point < shard.offset + X.shape[0]:
                    labels[point - shard.offset] = dst
                    moved_rows.append(point - shard.offset)
                    moved_to.append(dst)
            if state is not None and moved_rows:
                state.reassign(torch.tensor(moved_rows), torch.tensor(moved_to))
        new_centers = sums / counts.clamp(min=1)[:, None].to(X.dtype)
        shift = float(((new_centers - centers) ** 2).sum())
        if verbose:
            if dist is None:
                dist = _sq_distances_to(X, centers, labels)
            inertia = float(shard.sum(dist.double().sum().reshape(1)))
            if shard.comm.rank == 0:
                work = f", distances computed {state.computed / (X.shape[0] * k * n_iter):.0%}" if state else ""
                print(f"  KMeans iteration {n_iter}: inertia {inertia:.6g}, centre shift {shift:.3g}{work}")
        centers = new_centers
        if labels_old is not None:
            changed = shard.sum(torch.tensor([0 if torch.equal(labels, labels_old) else 1]))
            if int(changed) == 0:
                strict = True
                break
        labels_old = labels
        if shift <= tol:
            break
    if strict:
        dist = None  # labels did not change: only their distances to the moved centres
    else:
        labels, dist = assign(centers)
    if dist is None:
        dist = _sq_distances_to(X, centers, labels)
    return centers, labels, float(shard.sum(dist.double().sum().reshape(1))), n_iter


class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):
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
        algorithm: ``'auto'`` (default), ``'lloyd'`` or ``'yinyang'``. All run Lloyd's
            iterations and give the same labels; 'yinyang' (CPU) keeps per-point distance
            bounds (memory N x K/16) and computes only the distances to centres they do not rule
            out (Ding et al., 2015): on clustered data most of them. 'auto' uses it on the CPU
            from K = 32 on while the bounds fit in 1 GB, 'lloyd' (one GEMM pass an iteration)
            otherwise.
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
                 random_state: SeedLike = None, algorithm: str = "auto", verbose: int = 0,
                 distributed: bool = False, process_group=None):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.algorithm = algorithm
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
        if self.algorithm not in ("auto", "lloyd", "yinyang"):
            raise ValueError(f"algorithm must be 'auto', 'lloyd' or 'yinyang', got {self.algorithm!r}")
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
        tol = shard.mean_variance(X) * self.tol if self.tol > 0 else 0.0
        best = None
        for run in range(n_init):
            centers = self._initial_centers(X, generator, shard)
            if self.verbose and shard.comm.rank == 0:
                print(f"KMeans run {run + 1}/{n_init}: {shard.n_total} points on {shard.comm.world_size} rank(s), "
                      f"K={self.n_clusters}, device {X.device}")
            result = lloyd(X, centers, self.max_iter, tol, self.verbose, shard,
                           bounded=use_bounded_assignment(X, self.n_clusters, self.algorithm))
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
