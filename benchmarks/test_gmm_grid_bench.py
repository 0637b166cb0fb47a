"""GaussianMixture(covariance_type='full').fit against scikit-learn over a grid of shapes
(workload G4 of benchmarks/WORKLOADS.md): K in 1, 4, 16, 64, 1000 by D in 2, 16, 64, 256, 1024,
2048, float64, the same initial parameters, equal iterations (tol = 0), the same lower bound.

The routes inside the fit (the E-step's stable or expanded form, the M-step's Gram matrices or
packed products) are chosen from (N, K, D); this grid is what keeps that choice honest: timed,
each cell fails when dsch_ext is slower than scikit-learn. N shrinks as K D^2 grows (about
8.6e9 multiply-adds an E-step), at least max(2K, D) (a full covariance from fewer points than
dimensions is all regularisation) and at most 20,000. Skipped: cells whose precision matrices
alone pass 600 MB (K = 64 at D = 2048, K = 1000 from D = 1024), and, unless
DSCH_EXT_BENCH_FULL_GRID=1, cells whose smallest E-step passes 2^36 multiply-adds (K = 16 at
D = 2048, K = 1000 at D = 256: about a minute a fit). Each side runs its rounds in one block,
after half a second's pause and a warm-up fit: the other library's idle BLAS threads spin on
for a while after its last call, and on two cores they halve the speed of a fit of a few
milliseconds that starts among them. Quick mode (--benchmark-disable) checks the answers on the cells
with K D^2 <= 2^21, on 64 to 1,000 points.
"""
import os
import time
import warnings

import numpy as np
import pytest

import dsch_ext

sk_mixture = pytest.importorskip("sklearn.mixture")

GRID_K = (1, 4, 16, 64, 1000)
GRID_D = (2, 16, 64, 256, 1024, 2048)
FIT_ITERS = 2
MAX_PRECISION_BYTES = 600e6
QUICK_MAX_KD2 = 2**21
MAX_TIMED_WORK = 2**36  # K D^2 N of one E-step
IDLE_THREADS_SLEEP_S = 0.5  # long enough for the other library's BLAS threads to stop spinning


def cell_points(k, d, quick):
    if quick:
        return int(min(1000, max(2 * k, 64, 2**22 // (k * d * d))))
    return int(min(20_000, max(2 * k, d, 2**33 // (k * d * d))))


def cell_data(n, k, d):
    """n points around k centres (unit spread, centres 4 apart on average) and a start every
    fit shares: k data points as means, the data's variance as isotropic precisions."""
    rng = np.random.default_rng(k * 10_000 + d)
    centres = rng.uniform(-2, 2, (k, d))
    X = centres[rng.integers(0, k, n)] + rng.standard_normal((n, d))
    means = X[rng.choice(n, k, replace=False)]
    precisions = np.broadcast_to(np.eye(d) / X.var(), (k, d, d)).copy()
    return X, dict(weights_init=np.full(k, 1 / k), means_init=means, precisions_init=precisions)


def fit(cls, X, k, init):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two iterations do not converge, by design
        return cls(k, covariance_type="full", max_iter=FIT_ITERS, tol=0, **init).fit(X)


@pytest.mark.parametrize("d", GRID_D)
@pytest.mark.parametrize("k", GRID_K)
def test_gmm_fit_grid(k, d, quick, record_times):
    if k * d * d * 8 > MAX_PRECISION_BYTES:
        pytest.skip(f"K={k}, D={d}: {k * d * d * 8 / 1e9:.1f} GB of precision matrices")
    if quick and k * d * d > QUICK_MAX_KD2:
        pytest.skip("quick mode: K D^2 above 2^21")
    n = cell_points(k, d, quick)
    if not quick and k * d * d * n > MAX_TIMED_WORK and os.environ.get("DSCH_EXT_BENCH_FULL_GRID") != "1":
        pytest.skip(f"K={k}, D={d}, N={n}: an E-step above 2^36 multiply-adds (DSCH_EXT_BENCH_FULL_GRID=1 times it)")
    X, init = cell_data(n, k, d)
    rounds = 1 if quick or n * k * d * d > 2**33 else 3
    best, fitted = {}, {}
    for name, cls in (("sklearn", sk_mixture.GaussianMixture), ("dsch_ext", dsch_ext.GaussianMixture)):
        if not quick:
            time.sleep(IDLE_THREADS_SLEEP_S)
        fitted[name] = fit(cls, X, k, init)  # the warm-up, and the answer checked below
        best[name] = np.inf
        for _ in range(0 if quick else rounds):
            start = time.perf_counter()
            fit(cls, X, k, init)
            best[name] = min(best[name], time.perf_counter() - start)
    ours, ref = fitted["dsch_ext"], fitted["sklearn"]
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=1e-6, atol=1e-9)
    if quick:
        return
    group = f"G4 GMM fit full N={n} K={k} D={d} {FIT_ITERS} iters f64"
    record_times(group, "sklearn fit", best["sklearn"], "dsch_ext fit", best["dsch_ext"])
    ratio = best["sklearn"] / best["dsch_ext"]
    assert ratio >= 1.0, f"N={n} K={k} D={d}: dsch_ext {best['dsch_ext']:.3f} s, sklearn {best['sklearn']:.3f} s"
