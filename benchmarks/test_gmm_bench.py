"""GMM E-step and fit against scikit-learn (PERF.md G1-G3).

G1: one E-step, N = 10,000 points in [-1, 1]^64, K = 1000, full covariance:
    sklearn GaussianMixture._estimate_log_prob_resp (float64) vs dsch_ext.gmm_log_resp in
    float32 (checked within 1e-4 of sklearn) and float64 (checked to 1e-8).
G2: GaussianMixture.fit, same data, same initial parameters, equal iterations (tol = 0):
    sklearn vs dsch_ext dense (float64, same lower bound to 1e-6) and dsch_ext with the
    sparse M-step (resp_threshold = 1e-8).
G3: G1 with diagonal covariance.
"""
import functools
import warnings

import numpy as np
import pytest
import torch

import dsch_ext

sk_mixture = pytest.importorskip("sklearn.mixture")

SIZES = {"full": ((10_000, 1000, 64), (600, 40, 16)), "diag": ((10_000, 1000, 64), (600, 40, 16))}
FIT_ITERS = 2


@functools.lru_cache(maxsize=2)
def model(cov, quick):
    n, k, d = SIZES[cov][1 if quick else 0]
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (n, d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Parameters from one EM step on a subset: realistic, cheap to make.
        gm = sk_mixture.GaussianMixture(k, covariance_type=cov, max_iter=1, init_params="random_from_data",
                                        random_state=0).fit(X[: max(3 * k, n // 3)])
    want_norm, want_resp = gm._estimate_log_prob_resp(X)
    args64 = [torch.from_numpy(np.asarray(a)) for a in (X, gm.means_, gm.precisions_cholesky_, np.log(gm.weights_))]
    args32 = [a.float() for a in args64]
    for args, tol in ((args64, 1e-8), (args32, 1e-4)):
        lr, lpn = dsch_ext.gmm_log_resp(*args, cov)
        np.testing.assert_allclose(lpn.double().numpy(), want_norm, rtol=tol, atol=tol)
        np.testing.assert_allclose(np.exp(lr.double().numpy()), np.exp(want_resp), atol=tol)
    return X, gm, args64, args32


@pytest.mark.parametrize("impl", ["sklearn", "dsch_ext-f32", "dsch_ext-f64"])
@pytest.mark.parametrize("cov,wid", [("full", "G1"), ("diag", "G3")])
def test_gmm_estep(cov, wid, impl, quick, timed):
    X, gm, args64, args32 = model(cov, quick)
    group = f"{wid} GMM E-step {cov} N={X.shape[0]} K={gm.n_components} D={X.shape[1]}"
    if impl == "sklearn":
        timed(group, "anchor", "sklearn (float64)", gm._estimate_log_prob_resp, X, rounds=2 if cov == "full" else 3)
    elif impl == "dsch_ext-f32":
        timed(group, "ours", "dsch_ext float32", dsch_ext.gmm_log_resp, *args32, cov)
    else:
        timed(group, "ours", "dsch_ext float64", dsch_ext.gmm_log_resp, *args64, cov)


def _fit(cls, X, gm, **extra):
    init = dict(weights_init=gm.weights_, means_init=gm.means_, precisions_init=gm.precisions_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(gm.n_components, covariance_type="full", max_iter=FIT_ITERS, tol=0, **init, **extra).fit(X)


@functools.lru_cache(maxsize=1)
def fit_checked(quick):
    X, gm, _, _ = model("full", quick)
    ref = _fit(sk_mixture.GaussianMixture, X, gm)
    dense = _fit(dsch_ext.GaussianMixture, X, gm)
    sparse = _fit(dsch_ext.GaussianMixture, X, gm, resp_threshold=1e-8)
    assert dense.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-6)
    assert sparse.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-6)
    return X, gm


@pytest.mark.parametrize("impl", ["sklearn", "dsch_ext", "dsch_ext-sparse"])
def test_gmm_fit(impl, quick, timed):
    X, gm = fit_checked(quick)
    group = f"G2 GMM fit full N={X.shape[0]} K={gm.n_components} {FIT_ITERS} iters f64"
    if impl == "sklearn":
        timed(group, "anchor", "sklearn fit", _fit, sk_mixture.GaussianMixture, X, gm, rounds=1)
    elif impl == "dsch_ext":
        timed(group, "ours", "dsch_ext fit (dense)", _fit, dsch_ext.GaussianMixture, X, gm, rounds=2)
    else:
        timed(group, "ours", "dsch_ext fit (resp>=1e-8)", _fit, dsch_ext.GaussianMixture, X, gm,
              rounds=2, resp_threshold=1e-8)
