"""GMM E-step and fit against scikit-learn (workloads G1-G3, M2 and E1 of benchmarks/WORKLOADS.md).

G1: one E-step, N = 10,000 points in [-1, 1]^64, K = 1000, full covariance:
    scikit-learn's GaussianMixture.predict_proba (float64) vs dsch_ext.gmm_log_resp in
    float32 (checked within 1e-4 of sklearn) and float64 (checked to 1e-8; the expanded GEMM
    route, and the stable form alone with DSCH_EXT_GMM_ROUTE=stable, and with resp_floor=1e-14 as
    the fit's E-steps run it: two thirds of these points lie outside every component, which
    the pruning cannot use).
G2: GaussianMixture.fit, same data, same initial parameters, equal iterations (tol = 0):
    sklearn vs dsch_ext dense (float64, same lower bound to 1e-6) and dsch_ext with the
    sparse M-step (resp_threshold = 1e-8, which also prunes the E-steps).
G3: G1 with diagonal covariance.
G1/G2 on torch tensors: scikit-learn's own array-API path (``sklearn.set_config(
    array_api_dispatch=True)``, torch CPU tensors, init_params='random') as the second anchor: its
    E-step (predict_proba) and its fit at equal iterations from the same start, against
    dsch_ext on the same tensors.
M2: the sparse M-step's second moments: the segment_gram kernel vs the torch route (packed
    products + index_add_), same pairs, same answer.
E1: DSCH's E-step at equal EM iterations (dsch_ext.experiments.estep.estep_comparison's two sides): GMM with
    1000 full components (k-means init) + k-means(100) on its means, 5,000 codes of 64 bits.
    The codes here are synthetic (tanh of 50 Gaussian clusters); RESULTS.md has E1 on a
    trained network's codes.
"""
import functools
import os
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
    want_norm, want_resp = gm.score_samples(X), gm.predict_proba(X)
    args64 = [torch.from_numpy(np.asarray(a)) for a in (X, gm.means_, gm.precisions_cholesky_, np.log(gm.weights_))]
    args32 = [a.float() for a in args64]
    for args, tol in ((args64, 1e-8), (args32, 1e-4)):
        lr, lpn = dsch_ext.gmm_log_resp(*args, cov)
        np.testing.assert_allclose(lpn.double().numpy(), want_norm, rtol=tol, atol=tol)
        np.testing.assert_allclose(np.exp(lr.double().numpy()), want_resp, atol=tol)
    return X, gm, args64, args32


@pytest.mark.parametrize("impl", ["sklearn", "dsch_ext-f32", "dsch_ext-f64", "dsch_ext-f64-stable",
                                  "dsch_ext-f64-floor"])
@pytest.mark.parametrize("cov,wid", [("full", "G1"), ("diag", "G3")])
def test_gmm_estep(cov, wid, impl, quick, timed, monkeypatch):
    X, gm, args64, args32 = model(cov, quick)
    group = f"{wid} GMM E-step {cov} N={X.shape[0]} K={gm.n_components} D={X.shape[1]}"
    if impl == "sklearn":
        timed(group, "anchor", "sklearn (float64)", gm.predict_proba, X, rounds=2 if cov == "full" else 3)
    elif impl == "dsch_ext-f32":
        timed(group, "ours", "dsch_ext float32", dsch_ext.gmm_log_resp, *args32, cov)
    elif impl == "dsch_ext-f64":
        timed(group, "ours", "dsch_ext float64", dsch_ext.gmm_log_resp, *args64, cov)
    elif cov != "full":
        pytest.skip("the float64 routes differ for 'full' only")
    elif impl == "dsch_ext-f64-stable":
        monkeypatch.setenv("DSCH_EXT_GMM_ROUTE", "stable")
        timed(group, "ours", "dsch_ext float64 stable form", dsch_ext.gmm_log_resp, *args64, cov)
    else:
        want_norm = gm.score_samples(X)
        _, lpn = dsch_ext.gmm_log_resp(*args64, cov, 1e-14)
        np.testing.assert_allclose(lpn.numpy(), want_norm, rtol=1e-8, atol=1e-8)
        timed(group, "ours", "dsch_ext float64 floor 1e-14", dsch_ext.gmm_log_resp, *args64, cov, 1e-14)


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


def _array_api_sklearn():
    """scikit-learn's config context for its array API path, or a skip saying what is missing."""
    import sklearn

    pytest.importorskip("array_api_compat")
    if os.environ.get("SCIPY_ARRAY_API") != "1":
        pytest.skip("scikit-learn's array API path needs SCIPY_ARRAY_API=1")
    return sklearn.config_context(array_api_dispatch=True)


def _sklearn_on_tensors(X, gm, max_iter):
    """scikit-learn's GaussianMixture on torch tensors from gm's parameters: fit max_iter
    iterations (0: the start itself) under its array API dispatch."""
    init = {k: torch.from_numpy(np.asarray(v)) for k, v in
            dict(weights_init=gm.weights_, means_init=gm.means_, precisions_init=gm.precisions_).items()}
    with _array_api_sklearn(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sk_mixture.GaussianMixture(gm.n_components, covariance_type=gm.covariance_type, init_params="random",
                                          max_iter=max_iter, tol=0, **init).fit(torch.from_numpy(X))


@functools.lru_cache(maxsize=1)
def tensor_model(quick):
    """scikit-learn's mixture fitted one EM step on torch tensors (its array API path) from
    G1's parameters, and the op's arguments for the same parameters (float64, float32)."""
    X, gm, _, _ = model("full", quick)
    sk = _sklearn_on_tensors(X, gm, max_iter=1)
    args64 = [torch.from_numpy(X), sk.means_, sk.precisions_cholesky_, torch.log(sk.weights_)]
    with _array_api_sklearn():
        proba = sk.predict_proba(args64[0])
    np.testing.assert_allclose(proba.numpy(), np.exp(dsch_ext.gmm_log_resp(*args64, "full")[0].numpy()), atol=1e-8)
    return sk, args64, [a.float() for a in args64]


@pytest.mark.parametrize("impl", ["sklearn-array-api", "dsch_ext-f64", "dsch_ext-f32"])
def test_gmm_estep_on_tensors(impl, quick, timed):
    sk, args64, args32 = tensor_model(quick)
    X = args64[0]
    group = f"G1 on torch tensors: E-step full N={X.shape[0]} K={sk.n_components} D={X.shape[1]}"
    if impl == "sklearn-array-api":
        with _array_api_sklearn():
            timed(group, "anchor", "sklearn array API (float64)", sk.predict_proba, X, rounds=2)
    elif impl == "dsch_ext-f64":
        timed(group, "ours", "dsch_ext float64", dsch_ext.gmm_log_resp, *args64, "full")
    else:
        timed(group, "ours", "dsch_ext float32", dsch_ext.gmm_log_resp, *args32, "full")


@pytest.mark.parametrize("impl", ["sklearn-array-api", "dsch_ext", "dsch_ext-sparse"])
def test_gmm_fit_on_tensors(impl, quick, timed):
    X, gm = fit_checked(quick)
    Xt = torch.from_numpy(X)
    group = f"G2 on torch tensors: fit full N={X.shape[0]} K={gm.n_components} {FIT_ITERS} iters f64"
    if impl == "sklearn-array-api":
        ref = _sklearn_on_tensors(X, gm, FIT_ITERS)
        ours = _fit(dsch_ext.GaussianMixture, Xt, gm)
        assert ours.lower_bound_ == pytest.approx(float(ref.lower_bound_), rel=1e-6)
        timed(group, "anchor", "sklearn array API fit", _sklearn_on_tensors, X, gm, FIT_ITERS, rounds=1)
    elif impl == "dsch_ext":
        timed(group, "ours", "dsch_ext fit (dense)", _fit, dsch_ext.GaussianMixture, Xt, gm, rounds=2)
    else:
        timed(group, "ours", "dsch_ext fit (resp>=1e-8)", _fit, dsch_ext.GaussianMixture, Xt, gm, rounds=2,
              resp_threshold=1e-8)


@functools.lru_cache(maxsize=1)
def dsch_codes(quick):
    """E1's input: 5,000 codes of 64 bits shaped like a trained hash network's (tanh of
    clustered activations), or a small version in quick mode."""
    n, d, clusters = (600, 16, 10) if quick else (5000, 64, 50)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((clusters, d)) * 2
    return torch.from_numpy(np.tanh(centers[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, d))))


def _dsch_estep_ours(codes, m1, m2, iterations):
    from dsch_ext.dsch.components import fit_components

    comp = fit_components(codes, m1, m2, "full", iterations, min_points_per_component=1, random_state=0, tol=0.0)
    assert comp.gmm_iterations == iterations
    return comp


def _dsch_estep_sklearn(codes, m1, m2, iterations):
    sk_cluster = pytest.importorskip("sklearn.cluster")
    X = codes.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = sk_mixture.GaussianMixture(m1, covariance_type="full", max_iter=iterations, tol=0.0, random_state=0).fit(X)
        gm.predict_proba(X)
        sk_cluster.KMeans(m2, n_init=1, random_state=0).fit(gm.means_)
    assert gm.n_iter_ == iterations
    return gm


@pytest.mark.parametrize("impl", ["sklearn", "dsch_ext"])
def test_dsch_estep(impl, quick, timed):
    codes = dsch_codes(quick)
    m1, m2, iterations = (60, 6, 3) if quick else (1000, 100, 3)
    group = f"E1 DSCH E-step N={codes.shape[0]} bits={codes.shape[1]} m1={m1} m2={m2} {iterations} EM iters"
    if impl == "sklearn":
        timed(group, "anchor", "sklearn GMM + KMeans", _dsch_estep_sklearn, codes, m1, m2, iterations, rounds=1)
    else:
        comp = timed(group, "ours", "dsch_ext fit_components", _dsch_estep_ours, codes, m1, m2, iterations, rounds=2)
        assert np.isfinite(comp.gmm_lower_bound)


@functools.lru_cache(maxsize=1)
def moment_pairs(quick):
    """M2: the sparse M-step's second moments, as many kept (point, component) pairs as G2's
    second M-step keeps (about 4.4 per point at N = 10,000, K = 1000, D = 64)."""
    n, k, d, per = (500, 40, 16, 4) if quick else (10_000, 1000, 64, 4)
    g = torch.Generator().manual_seed(4)
    X = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
    point = torch.arange(n).repeat_interleave(per)
    comp = torch.randint(k, (n * per,), generator=g)
    weight = torch.rand(n * per, generator=g, dtype=torch.float64)
    return X, point, comp, weight, k


def _moments_torch(X, point, comp, weight, k):
    """The torch route: packed products of the weighted points, scattered with index_add_."""
    from dsch_ext.mixture._statistics import packed_products

    d = X.shape[1]
    rows, cols = torch.triu_indices(d, d)
    packed = X.new_zeros((k, rows.shape[0]))
    packed.index_add_(0, comp, packed_products(X[point] * weight.sqrt()[:, None]))
    out = X.new_empty((k, d, d))
    out[:, rows, cols] = packed
    out[:, cols, rows] = packed
    return out


def _moments_ours(X, point, comp, weight, k):
    from dsch_ext.mixture import SparseResp
    from dsch_ext.mixture._statistics import full_second_moments

    return full_second_moments(X, SparseResp(point, comp, weight, k))


@pytest.mark.parametrize("impl", ["torch", "dsch_ext"])
def test_sparse_second_moments(impl, quick, timed):
    args = moment_pairs(quick)
    if impl == "torch":
        torch.testing.assert_close(_moments_ours(*args), _moments_torch(*args), rtol=1e-12, atol=1e-12)
    group = f"M2 sparse second moments pairs={args[1].numel()} K={args[4]} D={args[0].shape[1]} f64"
    if impl == "torch":
        timed(group, "anchor", "torch packed products + index_add_", _moments_torch, *args)
    else:
        timed(group, "ours", "dsch_ext segment_gram", _moments_ours, *args)


def test_gpu_report_sets_g1_g2_against_sklearn_on_the_same_tensors():
    """The GPU report's scikit-learn array API rows, run here on CPU tensors at a small size:
    the same code the GPU run takes, with wall-clock timing, must agree with scikit-learn."""
    _array_api_sklearn()  # skips saying what is missing
    import gpu_report

    rows = gpu_report.sklearn_array_api_rows(gpu_report.Bench(torch.device("cpu"), smoke=True, check_cpu=False))
    assert [r[0] for r in rows] == ["gmm_log_resp full vs sklearn G1", "GaussianMixture.fit vs sklearn G2"]
    for row in rows:
        assert row[-1].startswith("True"), row
        assert row[2] > 0 and "x" in row[3], row
