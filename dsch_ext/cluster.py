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

from ._validation import SeedLike, as_float_tensor, check_features, check_fitted, make_generator
from .ops import center_distances, nearest_center


def kmeans_plusplus(X: torch.Tensor, n_clusters: int, generator: torch.Generator,
                    n_local_trials: Optional[int] = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; scikit-learn's variant): each new
    centre is the best of ``n_local_trials`` candidates drawn proportionally to the squared
    distance to the nearest chosen centre. Returns ``[n_clusters, D]`` centres."""
    n = X.shape[0]
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    centers = X.new_empty((n_clusters, X.shape[1]))
    # Squared distances in float64 from the expansion |x|^2 + |c|^2 - 2 x.c, with the point
    # norms computed once: K seeding steps over N points would otherwise recompute them
    # (and re-check the input) K times.
    X64 = X.double()
    x_sq = (X64 * X64).sum(1)

    def sq_dist_to(ids):
        c = X64[ids]
        return torch.addmm(x_sq[:, None] + x_sq[ids][None, :], X64, c.t(), alpha=-2).clamp_(min=0)

    first = int(torch.randint(n, (1,), generator=generator))
    centers[0] = X[first]
    closest = sq_dist_to(torch.tensor([first], device=X.device))[:, 0].contiguous()
    potential = closest.sum()
    for c in range(1, n_clusters):
        draws = torch.rand(n_local_trials, generator=generator, dtype=torch.float64).to(X.device)
        cumulative = torch.cumsum(closest, 0)
        candidates = torch.searchsorted(cumulative, draws * potential).clamp_(max=n - 1)
        dist = sq_dist_to(candidates)  # [N, trials]
        torch.minimum(dist, closest[:, None], out=dist)
        potentials = dist.sum(0)
        best = int(torch.argmin(potentials))
        closest, potential = dist[:, best].contiguous(), potentials[best]
        centers[c] = X[candidates[best]]
    return centers


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


def lloyd(X: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float, verbose: int = 0):
    """Lloyd iterations from ``centers``. Returns (centers, labels, inertia, n_iter)."""
    k = centers.shape[0]
    labels_old = None
    strict = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        labels, dist = nearest_center(X, centers)
        counts = torch.bincount(labels, minlength=k)
        sums = _cluster_sums(X, labels, k)
        empty = counts == 0
        if bool(empty.any()):
            # Re-seed empty clusters with the points farthest from their centres.
            n_empty = int(empty.sum())
            far = torch.topk(dist, n_empty, largest=True, sorted=True).indices
            empty_ids = torch.nonzero(empty).flatten()
            old = labels[far]
            for src, dst, point in zip(old.tolist(), empty_ids.tolist(), far.tolist()):
                sums[src] -= X[point]
                counts[src] -= 1
                sums[dst] = X[point]
                counts[dst] = 1
                labels[point] = dst
        new_centers = sums / counts.clamp(min=1)[:, None].to(X.dtype)
        shift = float(((new_centers - centers) ** 2).sum())
        if verbose:
            print(f"  KMeans iteration {n_iter}: inertia {float(dist.sum()):.6g}, centre shift {shift:.3g}")
        centers = new_centers
        if labels_old is not None and torch.equal(labels, labels_old):
            strict = True
            break
        labels_old = labels
        if shift <= tol:
            break
    if not strict:
        labels, dist = nearest_center(X, centers)
    else:
        dist = nearest_center(X, centers)[1]
    return centers, labels, float(dist.double().sum()), n_iter


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

    Attributes after ``fit``: ``cluster_centers_`` ``[K, D]`` (on the data's device),
    ``labels_`` ``[N]``, ``inertia_`` (float), ``n_iter_``, ``n_features_in_``.
    Inputs are numpy arrays or tensors; results are tensors on the input's device.
    """

    def __init__(self, n_clusters: int = 8, *, init: Union[str, np.ndarray, torch.Tensor] = "k-means++",
                 n_init: Union[int, str] = "auto", max_iter: int = 300, tol: float = 1e-4,
                 random_state: SeedLike = None, verbose: int = 0):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self, X: torch.Tensor):
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive int, got {self.n_clusters!r}")
        if self.n_clusters > X.shape[0]:
            raise ValueError(f"n_clusters={self.n_clusters} must be <= n_samples={X.shape[0]} (X shape {tuple(X.shape)})")
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

    def _initial_centers(self, X: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = self.n_clusters
        if isinstance(self.init, str):
            if self.init == "k-means++":
                return kmeans_plusplus(X, k, generator)
            ids = torch.randperm(X.shape[0], generator=generator)[:k].to(X.device)
            return X[ids].clone()
        centers = as_float_tensor(self.init, "init", device=X.device).to(X.dtype)
        if centers.shape != (k, X.shape[1]):
            raise ValueError(f"init array must have shape {(k, X.shape[1])}, got {tuple(centers.shape)}")
        return centers.clone()

    def fit(self, X, y=None):
        """Cluster X (``[N, D]``). Returns self."""
        X = as_float_tensor(X)
        n_init = self._check_params(X)
        generator = make_generator(self.random_state)
        tol = float(X.var(dim=0, unbiased=False).mean()) * self.tol
        best = None
        for run in range(n_init):
            centers = self._initial_centers(X, generator)
            if self.verbose:
                print(f"KMeans run {run + 1}/{n_init}: {X.shape[0]} points, K={self.n_clusters}, device {X.device}")
            result = lloyd(X, centers, self.max_iter, tol, self.verbose)
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
