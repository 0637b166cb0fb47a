"""KMeans: scikit-learn's ``sklearn.cluster.KMeans`` (its parameters, attributes, warnings and
messages) on any torch device, with the assignment step in this project's kernels."""
import warnings
from numbers import Integral, Real
from typing import Union

import numpy as np
import torch

from .._array_api import as_compute, labels_output, namespace, to_output
from .._params import Interval, Options, sklearn_constraints, validate
from .._sklearn import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, ConvergenceWarning, TransformerMixin
from .._validation import (SeedLike, as_float_tensor, check_features, check_fitted, make_generator, numpy_random_state,
                           sample_weights)
from ..distributed.shard import Shard
from ..ops import center_distances, nearest_center
from ._bounded import bounded_group_size
from ._lloyd import lloyd
from ._plusplus import kmeans_plusplus

PARAMETERS = {
    "n_clusters": [Interval(Integral, 1, None)],
    "init": [Options("k-means++", "random"), callable, "array-like"],
    "n_init": [Options("auto"), Interval(Integral, 1, None)],
    "max_iter": [Interval(Integral, 1, None)],
    "tol": [Interval(Real, 0, None)],
    "verbose": ["verbose"],
    "random_state": ["random_state", np.random.Generator, torch.Generator],
    "copy_x": ["boolean"],
    "algorithm": [Options("lloyd", "elkan", "auto", "yinyang")],
    "distributed": ["boolean"],
}


def _same_clustering(a: torch.Tensor, b: torch.Tensor, k: int) -> bool:
    """Whether two labelings are the same partition up to a renumbering of the clusters."""
    mapping = torch.full((k,), -1, dtype=torch.int64, device=a.device)
    mapping[a] = b
    return bool(torch.equal(mapping[a], b)) and torch.unique(mapping[mapping >= 0]).numel() == int((mapping >= 0).sum())


def _sq_distances(X: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Squared distances ``[N, K]``: the GEMM of the expanded form, with the entries it cannot
    resolve (within its rounding bound of 0: a point on or next to a centre) recomputed as
    ``sum (x - c)^2``, so a point on a centre is at distance exactly 0."""
    sq = center_distances(X, centers, "sqeuclidean").clamp_(min=0)
    eps = torch.finfo(X.dtype).eps
    bound = 2 * (X.shape[1] + 2) * eps * ((X * X).sum(1)[:, None] + (centers * centers).sum(1)[None, :])
    rows, cols = torch.nonzero(sq <= bound, as_tuple=True)
    for start in range(0, rows.numel(), 1 << 16):
        r, c = rows[start : start + (1 << 16)], cols[start : start + (1 << 16)]
        sq[r, c] = ((X[r] - centers[c]) ** 2).sum(1)
    return sq


class KMeans(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """K-means clustering, scikit-learn's ``KMeans`` on CPU or CUDA.

    Parameters (as scikit-learn's unless noted):
        n_clusters: number of clusters K (1 <= K <= n_samples).
        init: ``'k-means++'`` (default, weighted by ``sample_weight``), ``'random'`` (K distinct
            samples drawn by weight), an array ``[K, D]`` of initial centres, or a callable
            ``init(X, n_clusters, random_state)`` returning one (X as given to ``fit``,
            ``random_state`` a numpy ``RandomState``).
        n_init: runs with different seeds, the lowest inertia wins; ``'auto'``: 1 for
            k-means++ and an array, 10 for 'random' and a callable.
        max_iter: Lloyd iterations per run.
        tol: convergence when the squared centre shift is <= tol * mean feature variance.
        verbose: 1 prints every iteration, in scikit-learn's words.
        random_state: int, None, ``np.random.RandomState``, ``np.random.Generator`` or
            ``torch.Generator``; draws are made on the CPU, so a seed gives the same result on
            every device.
        copy_x: True (default) centres a copy of X on its mean before the iterations, as
            scikit-learn does for accuracy; False leaves out that copy (X is never written).
        algorithm: ``'auto'`` (default), ``'lloyd'``, ``'elkan'`` or ``'yinyang'``. All run
            Lloyd's iterations and give the same labels, iterations and centres. 'elkan'
            (CPU) keeps a lower bound per point and centre (Elkan 2003; memory N x K) and
            'yinyang' (CPU) one per point and group of 16 centres (Ding et al. 2015; memory
            N x K/16); both compute only the distances their bounds do not rule out. 'auto'
            uses 'yinyang' on the CPU from K = 32 on while the bounds fit in 1 GB, 'lloyd'
            (one GEMM pass an iteration) otherwise.
        distributed: (dsch_ext) fit on data sharded across the ranks of ``process_group``
            (torch.distributed; default group when None): every rank calls ``fit`` with its own
            rows and the same parameters, and all get the model that one process would fit on
            the rows concatenated in rank order (same seed, same result up to the order of
            float sums). ``labels_`` are then this rank's labels; ``inertia_`` is the total.

    Attributes after ``fit``: ``cluster_centers_`` ``[K, D]``, ``labels_`` ``[N]``, ``inertia_``
    (float, weighted), ``n_iter_``, ``n_features_in_``. The input's library decides the type:
    numpy input (or lists, scipy sparse matrices: densified) gives numpy attributes and results
    (int32 labels, like scikit-learn's), a torch tensor gives tensors on its device (int64
    labels). Computation runs on the input's device.
    """

    _parameter_constraints = sklearn_constraints(PARAMETERS)

    def __init__(self, n_clusters: int = 8, *, init: Union[str, np.ndarray, torch.Tensor] = "k-means++",
                 n_init: Union[int, str] = "auto", max_iter: int = 300, tol: float = 1e-4, verbose: int = 0,
                 random_state: SeedLike = None, copy_x: bool = True, algorithm: str = "auto",
                 distributed: bool = False, process_group=None):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.distributed = distributed
        self.process_group = process_group

    def _resolve_n_init(self) -> int:
        explicit = not isinstance(self.init, str) and not callable(self.init)
        if self.n_init == "auto":
            return 1 if explicit or self.init == "k-means++" else 10
        if explicit and self.n_init != 1:
            warnings.warn(f"Explicit initial center position passed: performing only one init in {type(self).__name__} "
                          f"instead of n_init={self.n_init}.", RuntimeWarning, stacklevel=3)
            return 1
        return int(self.n_init)

    def _check_centers(self, centers, n_features: int, dtype, device) -> torch.Tensor:
        centers = as_float_tensor(centers, "init", device=device).to(dtype)
        if centers.shape[0] != self.n_clusters:
            raise ValueError(f"The shape of the initial centers {tuple(centers.shape)} does not match the number of "
                             f"clusters {self.n_clusters}.")
        if centers.shape[1] != n_features:
            raise ValueError(f"The shape of the initial centers {tuple(centers.shape)} does not match the number of "
                             f"features of the data {n_features}.")
        return centers.clone()

    def _initial_centers(self, X, X_given, init_array, mean, weight, generator, shard) -> torch.Tensor:
        """The run's starting centres, in the coordinates of X (centred on ``mean``)."""
        k = self.n_clusters
        if isinstance(self.init, str) and self.init == "k-means++":
            return kmeans_plusplus(X, k, generator, sample_weight=weight, shard=shard)[0]
        if isinstance(self.init, str):  # 'random': K distinct rows, drawn by weight (unweighted: weight 1)
            every = (torch.ones(shard.n_total, dtype=torch.float64) if weight is None
                     else torch.cat(shard.comm.all_gather_rows(weight)).double().cpu())
            if int((every > 0).sum()) < k:
                raise ValueError(f"init='random' needs n_clusters={k} samples of positive weight, "
                                 f"sample_weight has {int((every > 0).sum())}")
            return shard.rows(X, torch.multinomial(every, k, replacement=False, generator=generator))
        if callable(self.init):
            if shard.distributed:
                raise ValueError("a callable init would see one rank's rows: pass an array of initial centres")
            given = self.init(X_given, k, random_state=numpy_random_state(generator))
            return self._check_centers(given, X.shape[1], X.dtype, X.device) - mean
        return init_array - mean

    def fit(self, X, y=None, sample_weight=None):
        """Cluster X (``[N, D]``), each row weighted by ``sample_weight`` (``[N]``, default 1).
        ``sample_weight`` is used by k-means++ and 'random' initialisations, not by an array
        or a callable one. Returns self."""
        validate(self, PARAMETERS)
        ns, X_given = namespace(X), X
        X = as_float_tensor(X)
        shard = Shard.of(X, self.distributed, self.process_group)
        if shard.n_total < self.n_clusters:
            raise ValueError(f"n_samples={shard.n_total} should be >= n_clusters={self.n_clusters}.")
        self._n_init = self._resolve_n_init()
        algorithm = self.algorithm
        if algorithm == "elkan" and self.n_clusters == 1:
            warnings.warn("algorithm='elkan' doesn't make sense for a single cluster. Using 'lloyd' instead.",
                          RuntimeWarning, stacklevel=2)
            algorithm = "lloyd"
        init_array = None
        if not isinstance(self.init, str) and not callable(self.init):
            init_array = self._check_centers(self.init, X.shape[1], X.dtype, X.device)
        weight = sample_weights(sample_weight, X.shape[0], X.dtype, X.device)
        generator = make_generator(self.random_state)
        tol = shard.mean_variance(X) * self.tol if self.tol > 0 else 0.0
        # Centred coordinates: the expanded distances and the float32 sums lose less.
        mean = shard.sum(X.sum(0, dtype=torch.float64)) / shard.n_total if self.copy_x else X.new_zeros(X.shape[1])
        mean = mean.to(X.dtype)
        Xc = X - mean if self.copy_x else X
        group_size = bounded_group_size(X, self.n_clusters, algorithm)
        best = None
        for run in range(self._n_init):
            centers = self._initial_centers(Xc, X_given, init_array, mean, weight, generator, shard)
            if self.verbose and shard.comm.rank == 0:
                print("Initialization complete")
            result = lloyd(Xc, centers, self.max_iter, tol, weight, self.verbose, shard, group_size)
            if best is None or (result.inertia < best.inertia
                                and not _same_clustering(result.labels, best.labels, self.n_clusters)):
                best = result
        self._warn_fewer_clusters(best.labels, shard)
        self.cluster_centers_ = to_output(best.centers + mean, ns)
        self.labels_ = labels_output(best.labels, ns)
        self.inertia_, self.n_iter_ = best.inertia, best.n_iter
        self.n_features_in_ = X.shape[1]
        self._n_features_out = self.n_clusters
        return self

    def _warn_fewer_clusters(self, labels: torch.Tensor, shard: Shard) -> None:
        used = shard.sum(torch.bincount(labels, minlength=self.n_clusters))
        distinct = int((used > 0).sum())
        if distinct < self.n_clusters:
            warnings.warn(f"Number of distinct clusters ({distinct}) found smaller than n_clusters ({self.n_clusters}). "
                          "Possibly due to duplicate points in X.", ConvergenceWarning, stacklevel=3)

    def _test_data(self, X):
        """(the fitted centres, X as a tensor on their device and dtype, X's namespace)."""
        check_fitted(self, "cluster_centers_")
        centers = as_compute(self.cluster_centers_)
        ns = namespace(X)
        X = as_float_tensor(X, device=centers.device).to(centers.dtype)
        check_features(self, X)
        return centers, X, ns

    def predict(self, X):
        """Index of the nearest centre of every row of X (``[N]``; ties to the lower index)."""
        centers, X, ns = self._test_data(X)
        return labels_output(nearest_center(X, centers)[0], ns)

    def fit_predict(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X):
        """Euclidean distances to every centre (``[N, K]``), like scikit-learn's."""
        centers, X, ns = self._test_data(X)
        return to_output(_sq_distances(X, centers).sqrt_(), ns)

    def fit_transform(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None) -> float:
        """Opposite of the (weighted) inertia of X under the fitted centres."""
        centers, X, _ = self._test_data(X)
        dist = nearest_center(X, centers)[1].double()
        weight = sample_weights(sample_weight, X.shape[0], torch.float64, X.device)
        return -float(dist @ weight if weight is not None else dist.sum())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # densified
        return tags
