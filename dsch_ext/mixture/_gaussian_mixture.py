"""GaussianMixture: scikit-learn's ``sklearn.mixture.GaussianMixture`` (parameters, attributes,
messages, the lower bound at every iteration in float64) on any torch device, with the E-step
in the ``gmm_log_resp`` kernel and the M-step as a few large GEMMs."""
import math
import time
from numbers import Integral, Real
from typing import NamedTuple, Optional

import numpy as np
import torch

from .._array_api import as_compute, namespace, to_output
from .._params import Interval, Options, sklearn_constraints, validate
from .._progress import progress_bar
from .._sklearn import BaseEstimator, DensityMixin, warn_not_converged
from .._validation import SeedLike, as_float_tensor, check_features, check_fitted, make_generator
from ..cluster import KMeans, kmeans_plusplus
from ..distributed.shard import Shard
from . import _parameters as P
from ._statistics import COVARIANCE_TYPES, SparseResp, Statistics, local_statistics, parameters

PARAMETERS = {
    "n_components": [Interval(Integral, 1, None)],
    "covariance_type": [Options(*COVARIANCE_TYPES)],
    "tol": [Interval(Real, 0.0, None)],
    "reg_covar": [Interval(Real, 0.0, None)],
    "max_iter": [Interval(Integral, 0, None)],
    "n_init": [Interval(Integral, 1, None)],
    "init_params": [Options("kmeans", "k-means++", "random", "random_from_data")],
    "weights_init": ["array-like", None],
    "means_init": ["array-like", None],
    "precisions_init": ["array-like", None],
    "random_state": ["random_state", np.random.Generator, torch.Generator],
    "warm_start": ["boolean"],
    "verbose": ["verbose"],
    "verbose_interval": [Interval(Integral, 1, None)],
    "resp_threshold": [Interval(Real, 0.0, 1.0, closed="left")],
    "distributed": ["boolean"],
}

# With resp_threshold > 0 the fit's E-steps drop (return -inf for) the responsibilities below
# resp_threshold * _FLOOR_FACTOR (the M-step ignores them anyway), which lets the kernel skip
# most of its work; the lower bound then misses at most K * that mass per point (1e-11 at
# K = 1000 and resp_threshold = 1e-8): far inside the 1e-6 the fits are tested to.
_FLOOR_FACTOR = 1e-6
_NOT_CONVERGED = ("Best performing initialization did not converge. Try different init parameters, or increase "
                  "max_iter, tol, or check for degenerate data.")


class Mixture(NamedTuple):
    """The parameters one EM run carries: tensors on the data's device, in its dtype."""

    weights: torch.Tensor
    means: torch.Tensor
    covariances: Optional[torch.Tensor]  # None from precisions_init until an M-step (an inverse saved)
    precisions_cholesky: torch.Tensor


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM (``sklearn.mixture.GaussianMixture``'s API) on CPU or CUDA.

    Parameters (as scikit-learn's unless noted):
        n_components: K.
        covariance_type: ``'full'`` (default), ``'tied'``, ``'diag'`` or ``'spherical'``.
        tol: convergence threshold on the change of the lower bound (mean log-likelihood).
        reg_covar: added to the covariance diagonals.
        max_iter: EM iterations per initialisation (0: the initial parameters).
        n_init: initialisations; the best lower bound wins.
        init_params: ``'kmeans'`` (dsch_ext.KMeans), ``'k-means++'``, ``'random'`` or
            ``'random_from_data'``.
        weights_init, means_init, precisions_init: starting parameters, checked as
            scikit-learn checks them (weights in [0, 1] summing to 1, precisions symmetric
            positive-definite or positive).
        random_state: int, None, ``np.random.RandomState``, ``np.random.Generator`` or
            ``torch.Generator``; draws are made on the CPU, so a seed gives the same fit on
            every device.
        warm_start: continue from the previous fit (n_init is then 1).
        verbose, verbose_interval: scikit-learn's progress lines (on a terminal, verbose=1
            shows a progress bar instead of the per-iteration lines).
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
            sufficient statistics (O(K D^2) numbers per iteration) are summed with
            ``all_reduce``. All ranks get the model one process would fit on the rows
            concatenated in rank order, to the order of float sums. ``fit_predict`` returns
            this rank's labels.

    Inputs are numpy arrays, array-likes or tensors (float32 stays float32, other dtypes become
    float64). The input's library decides the output's: numpy input gives numpy fitted
    attributes and results, a tensor gives tensors on its device. Fitted attributes:
    ``weights_``, ``means_``, ``covariances_``, ``precisions_``, ``precisions_cholesky_``,
    ``converged_``, ``n_iter_``, ``lower_bound_``, ``lower_bounds_``, ``n_features_in_``.
    """

    _parameter_constraints = sklearn_constraints(PARAMETERS)

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

    # ------------------------------------------------------------------ starting parameters

    def _given(self, X):
        """The user's initial weights, means and precisions, checked (None where not given)."""
        k, d = self.n_components, X.shape[1]
        args = (X.dtype, X.device)
        return (None if self.weights_init is None else P.check_weights(self.weights_init, k, *args),
                None if self.means_init is None else P.check_means(self.means_init, k, d, *args),
                None if self.precisions_init is None else P.check_precisions(
                    self.precisions_init, self.covariance_type, k, d, *args))

    def _initial_resp(self, X, generator, shard):
        """The initial responsibilities: a :class:`SparseResp` (one-hot) except for 'random'."""
        n, k = X.shape[0], self.n_components
        if self.init_params == "kmeans":
            labels = KMeans(k, n_init=1, random_state=generator, distributed=self.distributed,
                            process_group=self.process_group).fit(X).labels_
            return SparseResp.one_hot(torch.arange(n, device=X.device), labels, k, X.dtype)
        if self.init_params == "random":
            # The rows of one [N_total, K] draw that this rank holds; every rank draws the
            # whole stream (in blocks) so the generator ends in the same state everywhere.
            block = max(1, (1 << 22) // k)
            parts = []
            for start in range(0, shard.n_total, block):
                draw = torch.rand((min(block, shard.n_total - start), k), generator=generator, dtype=torch.float64)
                lo, hi = max(start, shard.offset), min(start + draw.shape[0], shard.offset + n)
                if lo < hi:
                    parts.append(draw[lo - start : hi - start])
            resp = torch.cat(parts).to(X.device, X.dtype) if parts else X.new_zeros((0, k))
            return resp / resp.sum(1, keepdim=True)
        if self.init_params == "k-means++":
            ids = kmeans_plusplus(X, k, generator, shard=shard)[1]
        else:
            ids = torch.randperm(shard.n_total, generator=generator)[:k]
        ids = ids.to(X.device) - shard.offset
        mine = (ids >= 0) & (ids < n)
        return SparseResp.one_hot(ids[mine], torch.arange(k, device=X.device)[mine], k, X.dtype)

    def _initialize(self, X, given, generator, shard, shift) -> Mixture:
        weights, means, precisions = given
        if weights is None or means is None or precisions is None:
            nk, est_means, est_cov = self._estimate(X, self._initial_resp(X, generator, shard), shard, shift)
            weights = weights if weights is not None else nk / shard.n_total
            means = means if means is not None else est_means
        if precisions is None:
            return Mixture(weights, means, est_cov, P.cholesky_from_covariances(est_cov, self.covariance_type))
        return Mixture(weights, means, None, P.cholesky_from_precisions(precisions, self.covariance_type))

    # ------------------------------------------------------------------ EM

    def _estimate(self, X, resp, shard, shift):
        """(masses, means, covariances) from responsibilities, summed over every rank's data.
        The sums run in float64 on data centred on the global mean ``shift`` (float32 second
        moments cancel on tight clusters: DSCH's codes sit near +-1, and a variance of 1e-6
        under a second moment of 1 comes out negative); results are in X's dtype."""
        if isinstance(resp, SparseResp):
            resp = resp._replace(weight=resp.weight.double())
        else:
            resp = resp.double()
        stats = local_statistics(X.double() - shift, resp, self.covariance_type)
        stats = Statistics(*(shard.sum(t) for t in stats))  # the one step that needs every rank's rows
        out = parameters(stats, shift, self.reg_covar, self.covariance_type)
        return tuple(t.to(X.dtype) for t in out)

    def _e_step(self, X, mixture: Mixture, resp_floor: float = 0.0):
        """(log responsibilities [N, K], per-point log-likelihood [N]): the E-step kernel."""
        return torch.ops.dsch_ext.gmm_log_resp.default(X, mixture.means, mixture.precisions_cholesky,
                                                       torch.log(mixture.weights), self.covariance_type, resp_floor)

    def _m_step(self, X, log_resp, shard, shift) -> Mixture:
        resp = SparseResp.from_log_resp(log_resp, self.resp_threshold) if self.resp_threshold > 0 else log_resp.exp()
        nk, means, covariances = self._estimate(X, resp, shard, shift)
        return Mixture(nk / nk.sum(), means, covariances, P.cholesky_from_covariances(covariances, self.covariance_type))

    def fit(self, X, y=None):
        """Estimate the parameters with EM. Returns self."""
        self._fit(X)
        return self

    def fit_predict(self, X, y=None):
        """Fit, then the most likely component of every point (``[N]``), from a final E-step
        with the fitted parameters (as scikit-learn does)."""
        X, ns, mixture = self._fit(X)
        return to_output(self._e_step(X, mixture)[0].argmax(1), ns)

    def _fit(self, X):
        """EM over ``n_init`` initialisations; keeps the best parameters. Returns (X as a
        tensor, its namespace, the fitted mixture)."""
        validate(self, PARAMETERS)
        ns = namespace(X)
        X = as_float_tensor(X, accept_sparse=False)
        shard = Shard.of(X, self.distributed, self.process_group)
        n, k = shard.n_total, self.n_components
        if n < 2:
            raise ValueError(f"Found array with {n} sample(s) (shape={tuple(X.shape)}) while a minimum of 2 is "
                             "required by GaussianMixture.")
        if n < k:
            raise ValueError(f"Expected n_samples >= n_components but got n_components = {k}, n_samples = {n}")
        given = self._given(X)
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        mixture = None if do_init else self._warm_start_mixture(X)
        n_init = self.n_init if do_init else 1
        generator = make_generator(self.random_state)
        shift = shard.sum(X.double().sum(0)) / n
        max_lower_bound, best = -math.inf, None
        for init in range(n_init):
            self._say(f"Initialization {init}", shard)
            if do_init:
                mixture = self._initialize(X, given, generator, shard, shift)
            if self.max_iter == 0:
                best = (mixture, 0, [], False)
                continue
            mixture, lower_bound, bounds, converged = self._run(X, mixture, shard, shift,
                                                                -math.inf if do_init else self.lower_bound_, init, n_init)
            if lower_bound > max_lower_bound or max_lower_bound == -math.inf:
                max_lower_bound, best = lower_bound, (mixture, len(bounds), bounds, converged)
        mixture, self.n_iter_, self.lower_bounds_, self.converged_ = best
        if not self.converged_ and self.max_iter > 0:
            warn_not_converged(_NOT_CONVERGED)
        self._set_fitted(mixture, ns)
        self.lower_bound_ = max_lower_bound
        self.n_features_in_ = X.shape[1]
        return X, ns, mixture

    def _run(self, X, mixture, shard, shift, lower_bound, init, n_init):
        """One EM run: (mixture, final lower bound, the lower bound of every iteration, converged)."""
        bounds, converged = [], False
        bar = self._progress(init, n_init) if shard.comm.rank == 0 else None
        started = last = time.perf_counter()
        for n_iter in range(1, self.max_iter + 1):
            previous = lower_bound
            log_resp, log_prob_norm = self._e_step(X, mixture, self.resp_threshold * _FLOOR_FACTOR)
            mixture = None  # the M-step does not need it: at K = 4, D = 2048 that frees 268 MB for it
            mixture = self._m_step(X, log_resp, shard, shift)
            lower_bound = float(shard.sum(log_prob_norm.double().sum().reshape(1))) / shard.n_total
            bounds.append(lower_bound)
            change = lower_bound - previous
            if bar is not None:
                bar.update(1)
                bar.set_postfix(lower_bound=f"{lower_bound:.6g}", change=f"{change:.3g}")
            elif n_iter % self.verbose_interval == 0 and self.verbose:
                now = time.perf_counter()
                self._say(f"  Iteration {n_iter}" if self.verbose == 1 else
                          f"  Iteration {n_iter}\t time lapse {now - last:.5f}s\t ll change {change:.5f}", shard)
                last = now
            if abs(change) < self.tol:
                converged = True
                break
        if bar is not None:
            bar.close()
        outcome = "converged" if converged else "did not converge"
        self._say(f"Initialization {outcome}." if self.verbose == 1 else
                  f"Initialization {outcome}. time lapse {time.perf_counter() - started:.5f}s\t lower bound "
                  f"{lower_bound:.5f}.", shard)
        return mixture, lower_bound, bounds, converged

    def _say(self, line: str, shard: Shard) -> None:
        if self.verbose and shard.comm.rank == 0:
            print(line, flush=True)

    def _progress(self, init, n_init):
        if self.verbose != 1:
            return None
        return progress_bar(self.max_iter, f"GMM init {init + 1}/{n_init} (K={self.n_components}, "
                            f"{self.covariance_type})")

    def _set_fitted(self, mixture: Mixture, ns) -> None:
        precisions = P.precisions_from_cholesky(mixture.precisions_cholesky, self.covariance_type)
        if mixture.covariances is None:  # max_iter=0 from precisions_init
            mixture = mixture._replace(covariances=P.covariances_from_precisions(precisions, self.covariance_type))
        self.weights_, self.means_, self.covariances_, self.precisions_cholesky_ = (
            to_output(t, ns) for t in mixture)
        self.precisions_ = to_output(precisions, ns)

    def _fitted(self) -> Mixture:
        check_fitted(self, "means_")
        return Mixture(*(as_compute(v) for v in (self.weights_, self.means_, self.covariances_,
                                                 self.precisions_cholesky_)))

    def _warm_start_mixture(self, X) -> Mixture:
        """A warm start continues the previous fit: same features, dtype and device."""
        mixture = self._fitted()
        check_features(self, X)
        if X.dtype != mixture.means.dtype or X.device != mixture.means.device:
            raise ValueError(f"warm_start continues a fit in {mixture.means.dtype} on {mixture.means.device}, got X in "
                             f"{X.dtype} on {X.device} (shape {tuple(X.shape)}): convert X or set warm_start=False")
        return mixture

    # ------------------------------------------------------------------ inference

    def _log_resp_of(self, X):
        """(log responsibilities, log-likelihoods, X's namespace) of new data."""
        mixture = self._fitted()
        ns = namespace(X)
        X = as_float_tensor(X, device=mixture.means.device, accept_sparse=False).to(mixture.means.dtype)
        check_features(self, X)
        return (*self._e_step(X, mixture), ns)

    def predict(self, X):
        log_resp, _, ns = self._log_resp_of(X)
        return to_output(log_resp.argmax(1), ns)

    def predict_proba(self, X):
        log_resp, _, ns = self._log_resp_of(X)
        return to_output(torch.exp(log_resp), ns)

    def score_samples(self, X):
        """Log-likelihood of every point under the model (``[N]``)."""
        _, log_prob, ns = self._log_resp_of(X)
        return to_output(log_prob, ns)

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of X: the mean of :meth:`score_samples`, in X's dtype (as
        scikit-learn averages)."""
        _, log_prob, ns = self._log_resp_of(X)
        return float(to_output(log_prob, ns).mean())

    def _n_parameters(self) -> int:
        k, d = self._fitted().means.shape
        return P.n_parameters(k, d, self.covariance_type)

    def bic(self, X) -> float:
        """Bayesian information criterion of X (lower is better)."""
        log_prob = self._log_resp_of(X)[1].double()
        return -2 * float(log_prob.sum()) + self._n_parameters() * math.log(log_prob.shape[0])

    def aic(self, X) -> float:
        """Akaike information criterion of X (lower is better)."""
        return -2 * float(self._log_resp_of(X)[1].double().sum()) + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1, generator: Optional[torch.Generator] = None):
        """Draw ``n_samples`` points: (X ``[n, D]``, component labels ``[n]``), in the fitted
        attributes' library (numpy or torch); ``generator`` (dsch_ext) instead of
        ``random_state``."""
        mixture = self._fitted()
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples} . The sampling requires at least one "
                             "sample.")
        g = generator if generator is not None else make_generator(self.random_state)
        weights, means, covariances = mixture.weights, mixture.means, mixture.covariances
        d = means.shape[1]
        labels = torch.multinomial(weights.double().cpu(), int(n_samples), replacement=True, generator=g)
        z = torch.randn((int(n_samples), d), generator=g, dtype=torch.float64).to(means.device, means.dtype)
        labels = labels.to(means.device)
        if self.covariance_type == "full":
            x = (torch.linalg.cholesky(covariances)[labels] @ z[:, :, None]).squeeze(-1)
        elif self.covariance_type == "tied":
            x = z @ torch.linalg.cholesky(covariances).t()
        elif self.covariance_type == "diag":
            x = z * covariances[labels].sqrt()
        else:
            x = z * covariances[labels].sqrt()[:, None]
        ns = namespace(self.means_)
        return to_output(x + means[labels], ns), to_output(labels, ns)
