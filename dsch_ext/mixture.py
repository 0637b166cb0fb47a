"""GaussianMixture with scikit-learn's API and semantics, on any torch device.

The E-step is the ``gmm_log_resp`` kernel (all covariance types, float32/float64); the M-step
is a few large GEMMs. The algorithm follows ``sklearn.mixture.GaussianMixture`` step for step
(same initialisations, the ``10 * eps`` added to each component's mass, ``reg_covar`` on the
covariance diagonals, the lower bound as the mean log-likelihood, convergence when it changes
by less than ``tol``), so in float64 and from the same starting point the lower bound matches
scikit-learn's at every iteration.

Two additions: ``resp_threshold`` lets the M-step skip responsibilities below a threshold
(with 1000 components almost all are ~0; the statistics are then computed from the kept
entries only: see the class docstring), and ``lower_bounds_`` keeps the lower bound of every
iteration of the best run.
"""
import math
import time
from typing import NamedTuple, Optional

import numpy as np
import torch

from .distributed.comm import LocalCommunicator
from ._validation import SeedLike, as_float_tensor, check_features, check_fitted, make_generator, positive_int
from ._progress import progress_bar
from ._sklearn import ConvergenceWarning  # noqa: F401  (dsch_ext.mixture.ConvergenceWarning)
from ._sklearn import BaseEstimator, DensityMixin, warn_not_converged
from .cluster import KMeans, kmeans_plusplus_ids
from .distributed.shard import Shard

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")

_ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)


# With resp_threshold > 0 the fit's E-steps drop (return -inf for) the responsibilities below
# resp_threshold * _FLOOR_FACTOR (the M-step ignores them anyway), which lets the kernel skip
# most of its work; the lower bound then misses at most K * that mass per point (1e-11 at
# K = 1000 and resp_threshold = 1e-8): far inside the 1e-6 the fits are tested to.
_FLOOR_FACTOR = 1e-6


class SparseResp(NamedTuple):
    """Responsibilities as their nonzero entries: ``weight[i]`` of point ``point[i]`` for
    component ``comp[i]`` (the M-step's input when most of the [N, K] matrix is ~0)."""

    point: torch.Tensor  # int64 [nnz]
    comp: torch.Tensor  # int64 [nnz]
    weight: torch.Tensor  # [nnz], X's dtype
    n_components: int

    @classmethod
    def from_log_resp(cls, log_resp: torch.Tensor, threshold: float) -> "SparseResp":
        """The entries of ``exp(log_resp)`` that are ``>= threshold``."""
        point, comp = torch.nonzero(log_resp >= math.log(threshold), as_tuple=True)
        return cls(point, comp, torch.exp(log_resp[point, comp]), log_resp.shape[1])

    @classmethod
    def one_hot(cls, point: torch.Tensor, comp: torch.Tensor, k: int, dtype: torch.dtype) -> "SparseResp":
        return cls(point, comp, torch.ones(point.shape[0], dtype=dtype, device=point.device), k)

    def to_dense(self, n: int) -> torch.Tensor:
        """The ``[n, K]`` matrix of the kept entries (zeros elsewhere)."""
        out = torch.zeros((n, self.n_components), dtype=self.weight.dtype, device=self.weight.device)
        return out.index_put_((self.point, self.comp), self.weight)  # (point, comp) pairs are unique

    def sum_rows_into(self, values: torch.Tensor) -> torch.Tensor:
        """``[K, ...]``: sum over points of weight * values[point] per component."""
        w = self.weight.reshape((-1,) + (1,) * (values.dim() - 1))
        out = values.new_zeros((self.n_components,) + tuple(values.shape[1:]))
        return out.index_add_(0, self.comp, values[self.point] * w)


def _estimate_parameters(X, resp, reg_covar, covariance_type, shard=None):
    """Weights (unnormalised masses), means and covariances from responsibilities (a dense
    ``[N, K]`` tensor or a :class:`SparseResp`), like scikit-learn's
    ``_estimate_gaussian_parameters``. Full covariances come from one GEMM against the packed
    products of the (globally centred) points instead of K passes (sparse: the kept pairs'
    per-component Gram matrices, ``segment_gram``). With ``shard`` (data sharded across ranks) every sufficient
    statistic is summed over ranks before it is used, so all ranks get the parameters of the
    whole data set."""
    if X.dtype != torch.float64:
        # float32 second moments cancel on tight clusters (DSCH's codes sit near +-1: a variance
        # of 1e-6 under a second moment of 1 comes out negative), so the sums run in float64
        # and only the results are rounded to X's dtype.
        resp64 = resp._replace(weight=resp.weight.double()) if isinstance(resp, SparseResp) else resp.double()
        nk, means, covariances = _estimate_parameters(X.double(), resp64, reg_covar, covariance_type, shard)
        return nk.to(X.dtype), means.to(X.dtype), covariances.to(X.dtype)
    shard = shard or Shard(LocalCommunicator(), X.shape[0])
    eps = torch.finfo(X.dtype).eps
    sparse_second = resp  # what the full second moments take (segment_gram is deterministic everywhere)
    if isinstance(resp, SparseResp) and X.device.type != "cpu":
        # On a GPU index_add_ adds with atomics (the bits vary run to run): the masses, means and
        # diagonal moments come from the dense matrix of the kept entries and GEMMs instead.
        resp = resp.to_dense(X.shape[0])
    sparse = isinstance(resp, SparseResp)
    if sparse:
        nk = shard.sum(X.new_zeros(resp.n_components).index_add_(0, resp.comp, resp.weight)) + 10 * eps
    else:
        nk = shard.sum(resp.sum(0)) + 10 * eps
    # Centre once: the second moments of centred data cancel far less in float32.
    shift = shard.sum(X.sum(0)) / shard.n_total
    Xc = X - shift
    means_c = shard.sum(resp.sum_rows_into(Xc) if sparse else resp.t() @ Xc) / nk[:, None]
    means = means_c + shift
    if covariance_type == "full":
        second = _full_second_moments(Xc, sparse_second, nk, shard)
        covariances = second - means_c[:, :, None] * means_c[:, None, :]
        covariances.diagonal(dim1=1, dim2=2).add_(reg_covar)
    elif covariance_type == "tied":
        avg_x2 = shard.sum(Xc.t() @ Xc)
        avg_means2 = (nk[:, None] * means_c).t() @ means_c
        covariances = (avg_x2 - avg_means2) / nk.sum()
        covariances.diagonal().add_(reg_covar)
    else:
        x2 = Xc * Xc
        avg_x2 = shard.sum(resp.sum_rows_into(x2) if sparse else resp.t() @ x2) / nk[:, None]
        covariances = avg_x2 - means_c**2 + reg_covar
        if covariance_type == "spherical":
            covariances = covariances.mean(1)
    return nk, means, covariances


def _packed_products(xs):
    """``[n, D(D+1)/2]``: x_i x_j for i <= j, row by row (the upper triangle of x x^T, packed
    row-major like ``torch.triu_indices``); D slice products, far faster than a gather."""
    n, d = xs.shape
    out = xs.new_empty((n, d * (d + 1) // 2))
    offset = 0
    for i in range(d):
        torch.mul(xs[:, i : i + 1], xs[:, i:], out=out[:, offset : offset + d - i])
        offset += d - i
    return out


def _full_second_moments(Xc, resp, nk, shard):
    """sum_i r_ik x_i x_i^T / nk for every k (summed over ranks): [K, D, D]. Dense: one GEMM
    of the responsibilities against the points' packed products (the upper triangles).
    Sparse (:class:`SparseResp`): only the kept (point, component) pairs, sorted by
    component, through the ``segment_gram`` kernel."""
    if isinstance(resp, SparseResp):
        order = torch.argsort(resp.comp, stable=True)
        weighted = Xc[resp.point[order]] * resp.weight[order].sqrt()[:, None]
        offsets = torch.zeros(resp.n_components + 1, dtype=torch.int64, device=Xc.device)
        torch.cumsum(torch.bincount(resp.comp, minlength=resp.n_components), 0, out=offsets[1:])
        return shard.sum(torch.ops.dsch_ext.segment_gram.default(weighted, offsets)) / nk[:, None, None]
    n, d = Xc.shape
    k = resp.shape[1]
    rows, cols = torch.triu_indices(d, d, device=Xc.device)
    packed = Xc.new_zeros((k, rows.shape[0]))
    chunk = max(1, (1 << 24) // rows.shape[0])
    for start in range(0, n, chunk):
        packed.addmm_(resp[start : start + chunk].t(), _packed_products(Xc[start : start + chunk]))
    shard.sum(packed)
    out = Xc.new_empty((k, d, d))
    out[:, rows, cols] = packed
    out[:, cols, rows] = packed
    return out / nk[:, None, None]


def _precision_cholesky(covariances, covariance_type):
    """scikit-learn's ``_compute_precision_cholesky``: L with precision = L L^T (upper),
    computed in float64 and returned in the covariances' dtype."""
    dtype = covariances.dtype
    covariances = covariances.double()
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(covariances)
        if bool((info != 0).any()):
            raise ValueError(_ILL_DEFINED)
        eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
        eye = eye.expand_as(covariances)
        return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2).contiguous().to(dtype)
    if bool((covariances <= 0).any()):
        raise ValueError(_ILL_DEFINED)
    return (1.0 / torch.sqrt(covariances)).to(dtype)


def _precisions_from_cholesky(prec_chol, covariance_type):
    if covariance_type in ("full", "tied"):
        return prec_chol @ prec_chol.transpose(-1, -2)
    return prec_chol**2


def _covariance_from_precision(precisions, precisions_chol, covariance_type):
    if covariance_type in ("full", "tied"):
        return torch.cholesky_inverse(precisions_chol)  # precisions_chol: lower, from torch.linalg.cholesky
    return 1.0 / precisions


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM (``sklearn.mixture.GaussianMixture``'s API) on CPU or CUDA.

    Parameters (as scikit-learn's unless noted):
        n_components: K.
        covariance_type: ``'full'`` (default), ``'tied'``, ``'diag'`` or ``'spherical'``.
        tol: convergence threshold on the change of the lower bound (mean log-likelihood).
        reg_covar: added to the covariance diagonals.
        max_iter: EM iterations per initialisation.
        n_init: initialisations; the best lower bound wins.
        init_params: ``'kmeans'`` (dsch_ext.KMeans), ``'k-means++'``, ``'random'`` or
            ``'random_from_data'``.
        weights_init, means_init, precisions_init: user-provided starting parameters.
        random_state: int, None or a ``torch.Generator``; draws are made on the CPU, so a seed
            gives the same fit on every device.
        warm_start: continue from the previous fit (n_init is then 1).
        verbose: 0 silent, 1 a progress bar per initialisation, 2 also one line per
            ``verbose_interval`` iterations.
        resp_threshold: (dsch_ext) the M-step ignores responsibilities below this value
            (0, the default, is the exact dense M-step). With K = 1000 almost every
            responsibility is ~0 and a threshold such as 1e-8 makes the full-covariance M-step
            far cheaper (it works on the kept entries only); the dropped mass per point is
            below K * resp_threshold. The fit's E-steps then also skip the components that
            cannot reach resp_threshold * 1e-6 (``gmm_log_resp``'s ``resp_floor``; on the CPU
            in float64 'full' that prunes most of the work). 1e-8 kept the lower bound
            within 1e-6 (relative) of the dense fit in the tests and benchmarks.
        distributed: (dsch_ext) fit on data sharded across the ranks of ``process_group``
            (torch.distributed; the default group when None). Every rank calls ``fit`` with its
            own rows and the same parameters; responsibilities stay on their rank and only the
            sufficient statistics (Nk, weighted sums, second moments: O(K D^2) numbers per
            iteration) are summed with ``all_reduce``. All ranks get the model one process
            would fit on the rows concatenated in rank order, to the order of float sums.
            ``fit_predict`` returns this rank's labels; inference methods work on the rows
            they are given. ``init_params='random'`` draws the whole [N, K] matrix on every
            rank (in blocks, to keep the same random stream): prefer the other inits at scale.

    Inputs are numpy arrays or tensors (float32 stays float32, other dtypes become float64);
    the model lives on the input's device. Fitted attributes: ``weights_``, ``means_``,
    ``covariances_``, ``precisions_``, ``precisions_cholesky_``, ``converged_``, ``n_iter_``,
    ``lower_bound_``, ``lower_bounds_``, ``n_features_in_``.
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1, init_params: str = "kmeans",
                 weights_init=None, means_init=None, precisions_init=None, random_state: SeedLike = None,
                 warm_start: bool = False, verbose: int = 0, verbose_interval: int = 10,
                 resp_threshold: float = 0.0, distributed: bool = False, process_group=None):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.resp_threshold = resp_threshold
        self.distributed = distributed
        self.process_group = process_group

    # ------------------------------------------------------------------ checks

    def _check_parameters(self, X, n):
        d = X.shape[1]
        k = self.n_components
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"n_components must be a positive int, got {k!r}")
        if k > n:
            raise ValueError(f"n_components={k} must be <= n_samples={n} (X shape {tuple(X.shape)})")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        if self.init_params not in INIT_PARAMS:
            raise ValueError(f"init_params must be one of {INIT_PARAMS}, got {self.init_params!r}")
        if self.tol < 0 or self.reg_covar < 0:
            raise ValueError(f"tol and reg_covar must be >= 0, got tol={self.tol}, reg_covar={self.reg_covar}")
        if self.max_iter < 0 or self.n_init < 1:
            raise ValueError(f"max_iter must be >= 0 and n_init >= 1, got {self.max_iter} and {self.n_init}")
        if not 0 <= self.resp_threshold < 1:
            raise ValueError(f"resp_threshold must be in [0, 1), got {self.resp_threshold}")
        shapes = {
            "full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,),
        }
        for name, value, shape in (
            ("weights_init", self.weights_init, (k,)),
            ("means_init", self.means_init, (k, d)),
            ("precisions_init", self.precisions_init, shapes[self.covariance_type]),
        ):
            if value is not None and tuple(torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(np.shape(value))}")

    def _as_param(self, value, X):
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        return t.to(device=X.device, dtype=X.dtype).clone()

    # ------------------------------------------------------------------ EM

    def _initial_resp(self, X, generator, shard):
        """The initial responsibilities: a :class:`SparseResp` (one-hot) except for 'random'."""
        n, k = X.shape[0], self.n_components
        if self.init_params == "kmeans":
            labels = KMeans(k, n_init=1, random_state=generator, distributed=self.distributed,
                            process_group=self.process_group).fit(X).labels_
            resp = SparseResp.one_hot(torch.arange(n, device=X.device), labels, k, X.dtype)
        elif self.init_params == "random":
            # The rows of one [N_total, K] draw that this rank holds; every rank draws the
            # whole stream (in blocks) so the generator ends in the same state everywhere.
            block = max(1, (1 << 22) // k)
            parts = []
            for start in range(0, shard.n_total, block):
                draw = torch.rand((min(block, shard.n_total - start), k), generator=generator, dtype=torch.float64)
                lo, hi = max(start, shard.offset), min(start + draw.shape[0], shard.offset + n)
                if lo < hi:
                    parts.append(draw[lo - start : hi - start])
            resp = torch.cat(parts).to(X.device, X.dtype)
            resp /= resp.sum(1, keepdim=True)
        else:
            if self.init_params == "k-means++":
                ids = kmeans_plusplus_ids(X, k, generator, shard=shard)[1]
            else:
                ids = torch.randperm(shard.n_total, generator=generator)[:k]
            ids = ids.to(X.device) - shard.offset
            mine = (ids >= 0) & (ids < n)
            resp = SparseResp.one_hot(ids[mine], torch.arange(k, device=X.device)[mine], k, X.dtype)
        return resp

    def _initialize(self, X, generator, shard):
        given = (self.weights_init, self.means_init, self.precisions_init)
        if all(v is not None for v in given):
            # Nothing to estimate (scikit-learn skips its initialisation here too).
            nk = means = covariances = None
        else:
            resp = self._initial_resp(X, generator, shard)
            nk, means, covariances = _estimate_parameters(X, resp, self.reg_covar, self.covariance_type, shard=shard)
        self.weights_ = self._as_param(self.weights_init, X) if self.weights_init is not None else nk / shard.n_total
        self.means_ = self._as_param(self.means_init, X) if self.means_init is not None else means
        if self.precisions_init is None:
            self.covariances_ = covariances
            self.precisions_cholesky_ = _precision_cholesky(covariances, self.covariance_type)
        else:
            precisions = self._as_param(self.precisions_init, X)
            if self.covariance_type in ("full", "tied"):
                self.precisions_cholesky_ = torch.linalg.cholesky(precisions)
            else:
                self.precisions_cholesky_ = torch.sqrt(precisions)
            self.covariances_ = _covariance_from_precision(precisions, self.precisions_cholesky_, self.covariance_type)
        self.precisions_ = _precisions_from_cholesky(self.precisions_cholesky_, self.covariance_type)

    def _log_resp(self, X, resp_floor=0.0):
        """(log responsibilities [N, K], per-point log-likelihood [N]): the E-step kernel."""
        return torch.ops.dsch_ext.gmm_log_resp.default(
            X, self.means_, self.precisions_cholesky_, torch.log(self.weights_), self.covariance_type, resp_floor
        )

    def _m_step(self, X, log_resp, shard):
        if self.resp_threshold > 0:
            resp = SparseResp.from_log_resp(log_resp, self.resp_threshold)
        else:
            resp = torch.exp(log_resp)
        nk, self.means_, self.covariances_ = _estimate_parameters(X, resp, self.reg_covar, self.covariance_type, shard)
        self.weights_ = nk / nk.sum()
        self.precisions_cholesky_ = _precision_cholesky(self.covariances_, self.covariance_type)

    def _get_parameters(self):
        return (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)

    def _set_parameters(self, params):
        self.weights_, self.means_, self.covariances_, self.precisions_cholesky_ = params
        self.precisions_ = _precisions_from_cholesky(self.precisions_cholesky_, self.covariance_type)

    def fit(self, X, y=None):
        """Estimate the parameters with EM. Returns self."""
        self._fit(as_float_tensor(X))
        return self

    def fit_predict(self, X, y=None) -> torch.Tensor:
        """Fit, then return the most likely component of every point (int64 ``[N]``), from a
        final E-step with the fitted parameters (as scikit-learn does)."""
        X = as_float_tensor(X)
        self._fit(X)
        return self._log_resp(X)[0].argmax(1)

    def _fit(self, X):
        """EM over ``n_init`` initialisations; keeps the best parameters."""
        shard = Shard.of(X, self.distributed, self.process_group)
        self._check_parameters(X, shard.n_total)
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        if not do_init:
            self._check_warm_start(X)
        n_init = self.n_init if do_init else 1
        generator = make_generator(self.random_state)
        max_lower_bound = -math.inf
        best = None
        self.converged_ = False
        for init in range(n_init):
            if do_init:
                self._initialize(X, generator, shard)
            lower_bound = -math.inf if do_init else self.lower_bound_
            bounds = []
            converged = False
            n_iter = 0
            progress = self._progress(init, n_init) if shard.comm.rank == 0 else None
            start = time.perf_counter()
            for n_iter in range(1, self.max_iter + 1):
                previous = lower_bound
                log_resp, log_prob_norm = self._log_resp(X, self.resp_threshold * _FLOOR_FACTOR)
                self._m_step(X, log_resp, shard)
                lower_bound = float(shard.sum(log_prob_norm.double().sum().reshape(1))) / shard.n_total
                bounds.append(lower_bound)
                change = lower_bound - previous
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(lower_bound=f"{lower_bound:.6g}", change=f"{change:.3g}")
                if self.verbose >= 2 and n_iter % self.verbose_interval == 0 and shard.comm.rank == 0:
                    print(f"  iteration {n_iter}: lower bound {lower_bound:.8g}, change {change:.3g}, "
                          f"{time.perf_counter() - start:.2f} s")
                if abs(change) < self.tol:
                    converged = True
                    break
            if progress is not None:
                progress.close()
            if lower_bound > max_lower_bound or max_lower_bound == -math.inf:
                max_lower_bound = lower_bound
                best = (self._get_parameters(), n_iter, bounds, converged)
                self.converged_ = converged
        params, self.n_iter_, self.lower_bounds_, _ = best
        if not self.converged_ and self.max_iter > 0:
            warn_not_converged(f"Best initialisation did not converge in {self.max_iter} iterations "
                               f"(tol={self.tol}); increase max_iter or tol.")
        self._set_parameters(params)
        self.lower_bound_ = max_lower_bound
        self.n_features_in_ = X.shape[1]

    def _check_warm_start(self, X):
        """A warm start continues the previous fit: same features, dtype and device."""
        check_features(self, X)
        if X.dtype != self.means_.dtype or X.device != self.means_.device:
            raise ValueError(f"warm_start continues a fit in {self.means_.dtype} on {self.means_.device}, got X in "
                             f"{X.dtype} on {X.device} (shape {tuple(X.shape)}): convert X or set warm_start=False")

    def _progress(self, init, n_init):
        if self.verbose < 1:
            return None
        return progress_bar(self.max_iter, f"GMM init {init + 1}/{n_init} (K={self.n_components}, "
                            f"{self.covariance_type})")

    # ------------------------------------------------------------------ inference

    def _validated(self, X):
        check_fitted(self, "means_")
        X = as_float_tensor(X, device=self.means_.device).to(self.means_.dtype)
        check_features(self, X)
        return X

    def predict(self, X) -> torch.Tensor:
        return self._log_resp(self._validated(X))[0].argmax(1)

    def predict_proba(self, X) -> torch.Tensor:
        return torch.exp(self._log_resp(self._validated(X))[0])

    def score_samples(self, X) -> torch.Tensor:
        """Log-likelihood of every point under the model (``[N]``)."""
        return self._log_resp(self._validated(X))[1]

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of X."""
        return float(self.score_samples(X).double().mean())

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        cov = {"full": k * d * (d + 1) / 2, "diag": k * d, "tied": d * (d + 1) / 2, "spherical": k}
        return int(cov[self.covariance_type] + k * d + k - 1)

    def bic(self, X) -> float:
        X = self._validated(X)
        return -2 * self.score(X) * X.shape[0] + self._n_parameters() * math.log(X.shape[0])

    def aic(self, X) -> float:
        X = self._validated(X)
        return -2 * self.score(X) * X.shape[0] + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1, generator: Optional[torch.Generator] = None):
        """Draw ``n_samples`` points: (X ``[n, D]``, component labels ``[n]``)."""
        check_fitted(self, "means_")
        n_samples = positive_int(n_samples, "n_samples")
        g = generator if generator is not None else make_generator(self.random_state)
        k, d = self.means_.shape
        labels = torch.multinomial(self.weights_.double().cpu(), n_samples, replacement=True, generator=g)
        z = torch.randn((n_samples, d), generator=g, dtype=torch.float64).to(self.means_.device, self.means_.dtype)
        labels = labels.to(self.means_.device)
        if self.covariance_type == "full":
            chol = torch.linalg.cholesky(self.covariances_)[labels]
            x = (chol @ z[:, :, None]).squeeze(-1)
        elif self.covariance_type == "tied":
            x = z @ torch.linalg.cholesky(self.covariances_).t()
        elif self.covariance_type == "diag":
            x = z * self.covariances_[labels].sqrt()
        else:
            x = z * self.covariances_[labels].sqrt()[:, None]
        return x + self.means_[labels], labels
