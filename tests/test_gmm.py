"""gmm_log_resp and GaussianMixture against float64 references and scikit-learn."""
import importlib
import math
import platform
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch

import dsch_ext

sk_mixture = pytest.importorskip("sklearn.mixture")
sk_datasets = pytest.importorskip("sklearn.datasets")

COV_TYPES = ["full", "tied", "diag", "spherical"]


def fitted_sklearn(X, k, cov, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sk_mixture.GaussianMixture(k, covariance_type=cov, max_iter=3, random_state=seed).fit(X)


LOG_2PI = float("1.8378770664093454835606594728112")  # gmm_math.h's kLog2Pi, the same double


def op_args(gm, X, dtype, device):
    arrays = (X, gm.means_, gm.precisions_cholesky_, np.log(gm.weights_))
    return [torch.from_numpy(np.asarray(a)).to(dtype).to(device) for a in arrays]


@pytest.mark.parametrize("cov", COV_TYPES)
# D = 100: on CUDA the float32 'full' E-step's tensor-core kernel at 128 coordinates (64 < D <= 128).
@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (57, 3, 5), (600, 40, 16), (300, 100, 7), (600, 3, 100)])
def test_log_resp_matches_sklearn(cov, n, k, d, device):
    rng = np.random.default_rng(n * 100 + k)
    X = rng.uniform(-1, 1, (max(n, k, 2), d))
    gm = fitted_sklearn(X, k, cov)
    log_prob_norm, resp = gm.score_samples(X[:n]), gm.predict_proba(X[:n])
    # float64: 1e-8
    lr, lpn = dsch_ext.gmm_log_resp(*op_args(gm, X[:n], torch.float64, device), cov)
    np.testing.assert_allclose(lpn.cpu().numpy(), log_prob_norm, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(np.exp(lr.cpu().numpy()), resp, rtol=1e-8, atol=1e-8)
    # float32: 1e-4 relative on log-likelihoods, 1e-4 on responsibilities
    lr32, lpn32 = dsch_ext.gmm_log_resp(*op_args(gm, X[:n], torch.float32, device), cov)
    assert lr32.dtype == torch.float32
    np.testing.assert_allclose(lpn32.cpu().numpy(), log_prob_norm, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.exp(lr32.double().cpu().numpy()), resp, atol=1e-4)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_float32_on_tight_clusters(cov, device):
    # Large precisions (std 1e-3) far from the origin: where x L - mu L cancels.
    rng = np.random.default_rng(7)
    centers = rng.uniform(-1, 1, (6, 8))
    X = np.concatenate([c + 1e-3 * rng.standard_normal((100, 8)) for c in centers])
    gm = fitted_sklearn(X, 6, cov, seed=1)
    log_prob_norm, resp = gm.score_samples(X), gm.predict_proba(X)
    lr32, lpn32 = dsch_ext.gmm_log_resp(*op_args(gm, X, torch.float32, device), cov)
    np.testing.assert_allclose(lpn32.double().cpu().numpy(), log_prob_norm, rtol=1e-4)
    np.testing.assert_allclose(np.exp(lr32.double().cpu().numpy()), resp, atol=1e-4)


def test_far_points_give_finite_responsibilities(device):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((200, 4))
    gm = fitted_sklearn(X, 5, "full")
    far = np.full((3, 4), 1e4)
    lr, lpn = dsch_ext.gmm_log_resp(*op_args(gm, far, torch.float64, device), "full")
    assert torch.isfinite(lr).all() and torch.isfinite(lpn).all()
    torch.testing.assert_close(torch.exp(lr).sum(1), torch.ones(3, dtype=torch.float64, device=device))


def test_log_resp_bad_input(device):
    x = torch.randn(10, 3, device=device, dtype=torch.float64)
    means = torch.randn(4, 3, device=device, dtype=torch.float64)
    chol = torch.eye(3, device=device, dtype=torch.float64).expand(4, 3, 3).contiguous()
    logw = torch.full((4,), -np.log(4), device=device, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"precisions_chol for 'full' must be \[K, D, D\] = \[4, 3, 3\], got shape \[4, 3\]"):
        dsch_ext.gmm_log_resp(x, means, chol[:, 0], logw, "full")
    with pytest.raises(RuntimeError, match=r"means must be \[K, D\] = \[K, 3\]"):
        dsch_ext.gmm_log_resp(x, means[:, :2], chol, logw, "full")
    with pytest.raises(RuntimeError, match=r"log_weights must be \[K\] = \[4\], got shape \[3\]"):
        dsch_ext.gmm_log_resp(x, means, chol, logw[:3], "full")
    with pytest.raises(RuntimeError, match=r"must have x's dtype Double, got Float"):
        dsch_ext.gmm_log_resp(x, means.float(), chol, logw, "full")
    bad = x.clone()
    bad[3, 2] = float("inf")
    if device == "cuda":  # no host sync on CUDA: the point's row is NaN instead of an error
        assert torch.isnan(dsch_ext.gmm_log_resp(bad, means, chol, logw, "full")[1][3])
    else:
        with pytest.raises(RuntimeError, match=r"x contains NaN or Inf \(shape \[10, 3\]\)"):
            dsch_ext.gmm_log_resp(bad, means, chol, logw, "full")
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        dsch_ext.gmm_log_resp(x, means, chol, logw, "banded")


def test_gmm_log_resp_opcheck(device):
    x = torch.randn(10, 3, device=device)
    means = torch.randn(4, 3, device=device)
    logw = torch.full((4,), -float(np.log(4)), device=device)
    torch.library.opcheck(torch.ops.dsch_ext.gmm_log_resp.default, (x, means, torch.ones(4, device=device), logw, "spherical"))
    torch.library.opcheck(torch.ops.dsch_ext.gmm_log_resp.default, (x, means, torch.ones(4, 3, device=device), logw, "diag"))


def tight_mixture(d, k, n_per, seed, spread=1e-3):
    """Points around k centres (std `spread`) and a sklearn fit with reg_covar 1e-9:
    precisions up to ~1e6-1e9, where the expanded quadratic form cancels. Also returns
    points no component explains (uniform), which the pruned route hands to the GEMM."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-1, 1, (k, d))
    X = np.concatenate([c + spread * rng.standard_normal((n_per, d)) for c in centers])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = sk_mixture.GaussianMixture(k, covariance_type="full", reg_covar=1e-9, max_iter=5,
                                        means_init=centers, random_state=0).fit(X)
    outside = rng.uniform(-1, 1, (37, d))
    return np.concatenate([X, outside]), gm


# The row normalisation's clone symbols, and an instruction only its vectorised exp uses.
LOG_SUM_EXP_CLONES = {"float32": ("normalize_rows_float", r"cvttps2dq"),
                      "float64": ("normalize_rows_double", r"\b(v?mulpd|vfn?madd\w*pd)\b")}


@pytest.mark.parametrize("dtype", sorted(LOG_SUM_EXP_CLONES))
def test_log_sum_exp_is_vectorised_in_every_cpu_clone(dtype):
    """The E-step's log-sum-exp (fast_expf / fast_exp over a row) must compile to SIMD code
    in each of the library's CPU clones: a scalar loop, or a libm exp, expf or fmaf a term,
    made it a large share of an E-step with small D. Read from the loaded library's machine
    code."""
    if platform.machine() != "x86_64" or shutil.which("nm") is None or shutil.which("objdump") is None:
        pytest.skip("needs x86-64 and binutils (nm, objdump)")
    library = dsch_ext.build_info["source"]
    if library == "dsch_ext._C":
        library = importlib.import_module("dsch_ext._C").__file__
    name, vector_step = LOG_SUM_EXP_CLONES[dtype]
    symbols = subprocess.run(["nm", library], capture_output=True, text=True, check=True).stdout.split()
    clones = [s for s in symbols if name in s and s.rsplit(".", 1)[-1] in
              ("arch_x86_64_v4", "arch_x86_64_v3", "default")]
    if len(clones) != 3:
        pytest.skip(f"no CPU clones of the row normalisation in {library} (stripped, or not built by GCC)")
    for clone in clones:
        code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={clone}", library],
                              capture_output=True, text=True, check=True).stdout
        assert re.search(vector_step, code), f"{clone}: the exp's arithmetic is scalar, the loop is not vectorised"
        assert not re.search(r"call.*<(exp|expf|fma|fmaf)(@|>)", code), f"{clone} calls libm's exp or fma a term"


@pytest.mark.parametrize("floor", [0.0, 1e-300, 1e-14])
def test_float64_log_sum_exp_matches_libm_to_rounding(floor):
    # The float64 row normalisation's own exp against numpy's, on log probabilities from 0
    # to -4000 below each row's best (most underflow). With unit precisions the kernel's
    # log probabilities are numpy's bit for bit, so what is left is the exp and the sum's
    # order: a few ulps of the normaliser, where an exp off by 1e-12 would show.
    rng = np.random.default_rng(0)
    k = 257
    means = np.linspace(-40.0, 40.0, k)[:, None]
    x = np.concatenate([rng.uniform(-45, 45, (300, 1)), means[::16] + 1e-3])
    log_w = np.log(np.full(k, 1.0 / k))
    lp = (log_w - 0.5 * LOG_2PI) - 0.5 * (x - means.T) ** 2
    mx = lp.max(1, keepdims=True)
    kept = lp >= mx + math.log(floor) if floor > 0 else np.ones_like(lp, dtype=bool)
    want_norm = mx[:, 0] + np.log(np.where(kept, np.exp(lp - mx), 0.0).sum(1))
    log_resp, norm = dsch_ext.gmm_log_resp(torch.from_numpy(x), torch.from_numpy(means),
                                           torch.ones(k, dtype=torch.float64), torch.from_numpy(log_w),
                                           "spherical", floor)
    assert np.abs(norm.numpy() - want_norm).max() <= 1e-13
    assert np.array_equal(np.isfinite(log_resp.numpy()), kept)
    want = lp - want_norm[:, None]
    assert (np.abs(log_resp.numpy() - want)[kept] <= 1e-13 + 4e-16 * np.abs(want[kept])).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
@pytest.mark.parametrize("d,k", [(8, 5), (16, 40), (64, 30)])
def test_full_routes_match_sklearn(d, k, dtype, tol, monkeypatch):
    # 'full' with D >= 8 can run the expanded GEMM on the CPU (and in float64 the pruned route
    # with a floor); every route must give the stable form's answer: 1e-8 in float64, 1e-4
    # (relative) in float32, on tight clusters where the expanded form cancels.
    X, gm = tight_mixture(d, k, 9, seed=d + k)
    want_norm, want_resp = gm.score_samples(X), gm.predict_proba(X)
    args = op_args(gm, X, dtype, "cpu")
    results = {}
    for route in ("expanded", "stable", "auto"):
        monkeypatch.setenv("DSCH_EXT_GMM_ROUTE", route)
        results[route] = dsch_ext.gmm_log_resp(*args, "full")
        lr, lpn = results[route]
        np.testing.assert_allclose(lpn.double().numpy(), want_norm, rtol=tol, atol=tol)
        np.testing.assert_allclose(np.exp(lr.double().numpy()), want_resp, rtol=tol, atol=tol)
    np.testing.assert_allclose(results["expanded"][0].double().exp().numpy(),
                               results["stable"][0].double().exp().numpy(), rtol=tol * 1e-2, atol=tol * 1e-6)


@pytest.mark.parametrize("d,k,n", [(1024, 3, 700), (600, 2, 5)])
def test_wide_stable_route_matches_sklearn(d, k, n):
    # D >= 512: the stable route's GEMMs take 512 points and one component at a time (and
    # fewer points per task when N is small); n = 700 leaves a partial block.
    rng = np.random.default_rng(d)
    X = rng.standard_normal((n, d))
    centres = rng.standard_normal((k, d))
    prec_chol = np.triu(rng.uniform(0.1, 1, (k, d, d))) * (np.eye(d) + 0.01)
    gm = sk_mixture.GaussianMixture(k, covariance_type="full")
    gm.weights_, gm.means_, gm.precisions_cholesky_ = np.full(k, 1 / k), centres, prec_chol
    lr, lpn = dsch_ext.gmm_log_resp(*op_args(gm, X, torch.float64, "cpu"), "full")
    np.testing.assert_allclose(lpn.numpy(), gm.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(lr.exp().numpy(), gm.predict_proba(X), atol=1e-10)


def test_bad_route_setting(monkeypatch):
    monkeypatch.setenv("DSCH_EXT_GMM_ROUTE", "fastest")
    x = torch.randn(10, 8, dtype=torch.float64)
    gm = fitted_sklearn(x.numpy(), 2, "full", seed=0)
    with pytest.raises(RuntimeError, match="DSCH_EXT_GMM_ROUTE must be stable, expanded or auto, got 'fastest'"):
        dsch_ext.gmm_log_resp(*op_args(gm, x.numpy(), torch.float64, "cpu"), "full")


def floored_reference(log_resp, log_prob_norm, floor):
    """What resp_floor must give, from the dense answer: entries more than -log(floor) below
    the row's best are -inf, the rest renormalised; also the entries too close to the cut
    for the mask to be compared (rounding decides them)."""
    logp = log_resp + log_prob_norm[:, None]
    cut = logp.max(1).values[:, None] + np.log(floor)
    keep = logp >= cut
    near = (logp - cut).abs() < 1e-6
    kept = torch.where(keep, logp, torch.full_like(logp, -float("inf")))
    norm = torch.logsumexp(kept, 1)
    return kept - norm[:, None], norm, keep, near


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("floor", [1e-3, 1e-14])
@pytest.mark.parametrize("route", ["auto", "expanded"])
def test_resp_floor_cuts_exactly_the_far_components(cov, dtype, floor, route, device, monkeypatch):
    if route != "auto" and (cov != "full" or device != "cpu"):
        pytest.skip("the CPU's 'full' E-step alone has routes")
    monkeypatch.setenv("DSCH_EXT_GMM_ROUTE", route)
    X, gm = tight_mixture(16, 12, 20, seed=3, spread=0.05)
    if cov != "full":
        gm = fitted_sklearn(X, 12, cov, seed=1)
    args = op_args(gm, X, dtype, device)
    lr, lpn = dsch_ext.gmm_log_resp(*args, cov)
    want_lr, want_norm, keep, near = floored_reference(lr.double().cpu(), lpn.double().cpu(), floor)
    got_lr, got_norm = dsch_ext.gmm_log_resp(*args, cov, floor)
    got_keep = torch.isfinite(got_lr).cpu()
    assert torch.equal(got_keep[~near], keep[~near])
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(got_norm.double().cpu().numpy(), want_norm.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(got_lr.double().exp().cpu().numpy(), want_lr.exp().numpy(), atol=tol)
    torch.testing.assert_close(got_lr.double().exp().sum(1).cpu(), torch.ones(X.shape[0], dtype=torch.float64),
                               rtol=0, atol=tol)


@pytest.mark.parametrize("case", ["tight", "duplicates", "identical-components", "one-point"])
def test_pruned_route_edge_cases(case, monkeypatch):
    # The pruned float64 route (CPU, full, D >= 8, resp_floor > 0) against the dense answer:
    # rows it settles itself, rows it hands to the expanded GEMM (points no component
    # explains), and blocks where the bound rules nothing out (identical components).
    monkeypatch.setenv("DSCH_EXT_GMM_ROUTE", "expanded")  # 50 components: not the route's own choice
    rng = np.random.default_rng(5)
    X, gm = tight_mixture(24, 50, 6, seed=11)
    args = op_args(gm, X, torch.float64, "cpu")
    if case == "duplicates":
        args[0] = args[0][rng.integers(0, X.shape[0], 300)]
    elif case == "identical-components":
        args[1] = args[1][:1].expand(50, -1).contiguous()
        args[2] = args[2][:1].expand(50, -1, -1).contiguous()
    elif case == "one-point":
        args[0] = args[0][:1]
    floor = 1e-14
    lr, lpn = dsch_ext.gmm_log_resp(*args, "full")
    want_lr, want_norm, keep, near = floored_reference(lr, lpn, floor)
    got_lr, got_norm = dsch_ext.gmm_log_resp(*args, "full", floor)
    assert torch.equal(torch.isfinite(got_lr)[~near], keep[~near])
    np.testing.assert_allclose(got_norm.numpy(), want_norm.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_lr.exp().numpy(), want_lr.exp().numpy(), atol=1e-10)


def test_resp_floor_bad_input(device):
    x = torch.randn(10, 3, device=device, dtype=torch.float64)
    means = torch.randn(4, 3, device=device, dtype=torch.float64)
    logw = torch.full((4,), -np.log(4), device=device, dtype=torch.float64)
    for bad in (1.0, -0.5):
        with pytest.raises(RuntimeError, match=r"resp_floor must be in \[0, 1\), got"):
            dsch_ext.gmm_log_resp(x, means, torch.ones(4, device=device, dtype=torch.float64), logw, "spherical", bad)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_sparse_statistics_equal_dense(cov):
    # The sparse M-step (SparseResp) computes the same statistics as the dense one on the
    # same (thresholded) responsibilities.
    from dsch_ext.mixture import SparseResp
    from dsch_ext.mixture._statistics import local_statistics

    X, gm = tight_mixture(8, 10, 30, seed=2, spread=0.2)
    Xt = torch.from_numpy(X)
    lr, _ = dsch_ext.gmm_log_resp(*op_args(gm, X, torch.float64, "cpu"), "full")
    sparse = SparseResp.from_log_resp(lr, 1e-8)
    dense = torch.where(lr.exp() >= 1e-8, lr.exp(), torch.zeros((), dtype=torch.float64))
    assert sparse.point.numel() == int((dense > 0).sum())
    assert torch.equal(sparse.to_dense(X.shape[0]), dense)  # what the GPU path sums with GEMMs
    for a, b in zip(local_statistics(Xt, sparse, cov), local_statistics(Xt, dense, cov)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k,d", [(1, 1), (4, 33), (130, 9), (70, 16), (3, 600)])
def test_dense_second_moments_both_routes(k, d):
    # One Gram matrix per component (few components) or one GEMM against the packed products
    # (many): sum_i r_ik x_i x_i^T either way, to rounding, exactly symmetric, with empty and
    # one-point components.
    from dsch_ext.mixture._statistics import full_second_moments, packed_products_pay

    rng = np.random.default_rng(k * 1000 + d)
    X = rng.standard_normal((max(2 * k, 57), d))
    resp = rng.dirichlet(np.ones(k), X.shape[0])
    if k > 2:
        resp[:, 0] = 0
        resp[:, 1] = 0
        resp[5, 1] = 1
    want = np.einsum("nk,ni,nj->kij", resp, X, X)
    got = full_second_moments(torch.from_numpy(X), torch.from_numpy(resp))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert torch.equal(got, got.transpose(1, 2))
    assert packed_products_pay(k, d) == (k >= 70)


# ---------------------------------------------------------------- segment_gram


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sizes", [[3, 0, 5, 1], [1], [0, 0, 7], [40, 2, 0, 13, 9]])
@pytest.mark.parametrize("d", [1, 5, 64])
def test_segment_gram_matches_reference(sizes, d, dtype, device, generator):
    rows = torch.randn(sum(sizes), d, generator=generator, dtype=torch.float64)
    offsets = torch.tensor([0] + np.cumsum(sizes).tolist(), dtype=torch.int64)
    got = dsch_ext.segment_gram(rows.to(dtype).to(device), offsets.to(device))
    assert got.shape == (len(sizes), d, d) and got.dtype == dtype and got.device.type == device
    want = torch.stack([rows[a:b].t() @ rows[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())])
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol)
    assert torch.equal(got, got.transpose(1, 2))  # mirrored, exactly symmetric


def test_segment_gram_bad_input(device):
    rows = torch.randn(6, 3, device=device, dtype=torch.float64)
    ok = torch.tensor([0, 2, 6], device=device)
    if device == "cpu":  # CUDA clamps offsets on the device instead of checking them (no host sync)
        with pytest.raises(RuntimeError, match=r"offsets must start at 0 and end at M = 6 \(rows shape \[6, 3\]\), got 0 and 5"):
            dsch_ext.segment_gram(rows, torch.tensor([0, 2, 5], device=device))
        with pytest.raises(RuntimeError, match=r"offsets must be nondecreasing"):
            dsch_ext.segment_gram(rows, torch.tensor([0, 4, 2, 6], device=device))
    with pytest.raises(RuntimeError, match=r"offsets must be int64 \[K \+ 1\] with K >= 1"):
        dsch_ext.segment_gram(rows, ok.int())
    with pytest.raises(RuntimeError, match=r"rows must be float32 or float64, got Long"):
        dsch_ext.segment_gram(rows.long(), ok)
    with pytest.raises(RuntimeError, match=r"rows must be 2-D \[M, D\]"):
        dsch_ext.segment_gram(rows[:, 0], ok)


def test_segment_gram_opcheck(device):
    rows = torch.randn(9, 4, device=device)
    torch.library.opcheck(torch.ops.dsch_ext.segment_gram.default, (rows, torch.tensor([0, 3, 3, 9], device=device)))


# ---------------------------------------------------------------- GaussianMixture


@pytest.mark.parametrize("cov", COV_TYPES)
def test_lower_bound_matches_sklearn_every_iteration(cov):
    X, _ = sk_datasets.make_blobs(1500, centers=6, n_features=4, random_state=3)
    start = fitted_sklearn(X, 6, cov, seed=2)
    init = dict(weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_)
    ours = dsch_ext.GaussianMixture(6, covariance_type=cov, max_iter=8, tol=0, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(X)
        for it in range(1, 9):
            ref = sk_mixture.GaussianMixture(6, covariance_type=cov, max_iter=it, tol=0, **init).fit(X)
            assert ours.lower_bounds_[it - 1] == pytest.approx(ref.lower_bound_, rel=1e-6)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=1e-6)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(ours.precisions_cholesky_, ref.precisions_cholesky_, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_fit_every_init_converges_near_sklearn(init_params, device):
    # Well separated blobs and several initialisations: both should find the global optimum
    # (different random draws may otherwise stop in different local optima).
    X, _ = sk_datasets.make_blobs(1200, centers=5, n_features=3, cluster_std=0.5, random_state=4)
    ours = dsch_ext.GaussianMixture(5, init_params=init_params, n_init=6, random_state=0, max_iter=200)
    ours.fit(torch.from_numpy(X).to(device))
    ref = sk_mixture.GaussianMixture(5, init_params=init_params, n_init=6, random_state=0, max_iter=200).fit(X)
    assert ours.converged_
    assert ours.lower_bound_ >= ref.lower_bound_ - 1e-3 * abs(ref.lower_bound_)
    assert ours.means_.device.type == device
    proba = ours.predict_proba(torch.from_numpy(X).to(device))
    torch.testing.assert_close(proba.sum(1), torch.ones(1200, dtype=proba.dtype, device=device))
    assert torch.equal(ours.predict(torch.from_numpy(X).to(device)), proba.argmax(1))


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("resp_threshold", [0.0, 1e-8])
def test_deterministic_per_seed(cov, resp_threshold, device):
    # The same bits every run, dense and sparse M-step (on a GPU the sparse one must avoid
    # atomic index_add_).
    X = torch.from_numpy(sk_datasets.make_blobs(800, centers=4, n_features=9, random_state=5)[0]).to(device)
    kw = dict(covariance_type=cov, random_state=11, resp_threshold=resp_threshold, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = dsch_ext.GaussianMixture(4, **kw).fit(X)
        b = dsch_ext.GaussianMixture(4, **kw).fit(X)
    assert torch.equal(a.means_, b.means_) and torch.equal(a.covariances_, b.covariances_)
    assert a.lower_bound_ == b.lower_bound_


def test_score_bic_aic_sample_match_sklearn():
    X, _ = sk_datasets.make_blobs(700, centers=3, n_features=2, random_state=6)
    for cov in COV_TYPES:
        start = fitted_sklearn(X, 3, cov)
        kw = dict(weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_, max_iter=20)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = dsch_ext.GaussianMixture(3, covariance_type=cov, **kw).fit(X)
            ref = sk_mixture.GaussianMixture(3, covariance_type=cov, **kw).fit(X)
        assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-8)
        assert ours.bic(X) == pytest.approx(ref.bic(X), rel=1e-8)
        assert ours.aic(X) == pytest.approx(ref.aic(X), rel=1e-8)
        np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-8)
        samples, labels = ours.sample(500, generator=torch.Generator().manual_seed(0))
        assert samples.shape == (500, 2) and labels.shape == (500,)


def test_warm_start_continues():
    X, _ = sk_datasets.make_blobs(600, centers=3, n_features=2, random_state=7)
    gm = dsch_ext.GaussianMixture(3, warm_start=True, max_iter=2, random_state=0, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X)
        first = gm.lower_bound_
        gm.fit(X)
    assert gm.lower_bound_ >= first - 1e-12


def test_degenerate_data():
    rng = np.random.default_rng(9)
    # Duplicate points, K close to N, and a component that loses all its points.
    X = np.repeat(rng.standard_normal((20, 3)), 3, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = dsch_ext.GaussianMixture(18, random_state=0, max_iter=20).fit(X)
    assert np.isfinite(gm.means_).all() and np.isfinite(gm.covariances_).all()
    assert np.isfinite(gm.predict_proba(X)).all()
    init_means = np.concatenate([X[:2], np.full((1, 3), 1e3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = dsch_ext.GaussianMixture(3, means_init=init_means, max_iter=5, tol=0).fit(X)
    assert np.isfinite(gm.weights_).all() and np.isfinite(gm.precisions_cholesky_).all()
    assert np.isfinite(gm.predict_proba(X)).all()


def test_sparse_m_step_stays_close_to_dense():
    rng = np.random.default_rng(10)
    X = np.tanh(rng.standard_normal((3000, 8)) @ rng.standard_normal((8, 8)))
    kw = dict(n_components=60, random_state=0, max_iter=15, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense = dsch_ext.GaussianMixture(**kw).fit(X)
        sparse = dsch_ext.GaussianMixture(resp_threshold=1e-8, **kw).fit(X)
    assert sparse.lower_bound_ == pytest.approx(dense.lower_bound_, rel=1e-6)


def test_gaussian_mixture_bad_input():
    X = np.random.default_rng(11).standard_normal((30, 2))
    with pytest.raises(ValueError, match=r"Expected n_samples >= n_components but got n_components = 31, n_samples = 30"):
        dsch_ext.GaussianMixture(31).fit(X)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(shape \(30, 2\)\)"):
        dsch_ext.GaussianMixture(2).fit(bad)
    with pytest.raises(ValueError, match="The 'covariance_type' parameter of GaussianMixture must be a str among"):
        dsch_ext.GaussianMixture(2, covariance_type="banded").fit(X)
    with pytest.raises(ValueError, match=r"The parameter 'means' should have the shape of \(2, 2\), but got \(3, 2\)"):
        dsch_ext.GaussianMixture(2, means_init=X[:3]).fit(X)
    with pytest.raises(ValueError, match="not fitted"):  # NotFittedError
        dsch_ext.GaussianMixture(2).predict(X)
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        dsch_ext.GaussianMixture(2, reg_covar=0.0, init_params="random_from_data", random_state=0).fit(
            np.zeros((30, 2)))


@pytest.mark.parametrize("resp_threshold", [0.0, 1e-8])
def test_float32_fit_on_tight_clusters_keeps_reg_covar(resp_threshold):
    """Codes near +-1 with a spread of 1e-3 (DSCH's case): float32 second moments must not
    cancel below reg_covar, and the float32 fit must end where the float64 fit does."""
    rng = np.random.default_rng(0)
    d = 8
    X = np.concatenate([0.99 + 1e-3 * rng.standard_normal((100, d)), -0.99 + 1e-3 * rng.standard_normal((100, d))])
    params = dict(covariance_type="full", max_iter=3, tol=0.0, reg_covar=1e-6, resp_threshold=resp_threshold,
                  weights_init=np.array([0.5, 0.5]), means_init=np.array([[0.99] * d, [-0.99] * d]),
                  precisions_init=np.stack([1e6 * np.eye(d)] * 2))
    fits = {}
    for dtype in (torch.float64, torch.float32):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[dtype] = dsch_ext.GaussianMixture(2, **params).fit(torch.as_tensor(X, dtype=dtype))
    f32, f64 = fits[torch.float32], fits[torch.float64]
    assert f32.means_.dtype == torch.float32
    smallest = torch.linalg.eigvalsh(f32.covariances_.double()).min()
    assert smallest >= 1e-6 * (1 - 1e-3), float(smallest)
    assert abs(f32.lower_bound_ - f64.lower_bound_) <= 1e-4 * abs(f64.lower_bound_), (f32.lower_bound_, f64.lower_bound_)


def test_warm_start_with_other_features_or_dtype_is_a_value_error():
    X = np.random.default_rng(3).normal(size=(60, 3))
    gm = dsch_ext.GaussianMixture(2, warm_start=True, max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X)
    with pytest.raises(ValueError, match="X has 4 features, but GaussianMixture is expecting 3"):
        gm.fit(np.zeros((60, 4)))
    with pytest.raises(ValueError, match="warm_start continues a fit in torch.float64 on cpu, got X in torch.float32"):
        gm.fit(torch.as_tensor(X, dtype=torch.float32))


_PEAK_SCRIPT = """
import sys, warnings
import numpy as np
if sys.argv[1] == "dsch_ext":
    from dsch_ext import GaussianMixture
else:
    from sklearn.mixture import GaussianMixture

def status(field):  # kB; VmHWM is this process's own peak (ru_maxrss counts the forking parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

rng = np.random.default_rng(0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    GaussianMixture(2, max_iter=2).fit(rng.standard_normal((64, 600)))  # libraries loaded, BLAS buffers made
n, k, d = 1500, 4, 1024
X = rng.standard_normal((n, d)) + rng.integers(0, 3, (n, 1))
precisions = np.broadcast_to(np.eye(d), (k, d, d)).copy()
means = X[:k].copy()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak starts again from here
base = status("VmRSS")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    GaussianMixture(k, max_iter=2, tol=0, means_init=means, precisions_init=precisions).fit(X)
print((status("VmHWM") - base) * 1024)
"""


@pytest.mark.slow
def test_fit_memory_at_large_dimension_near_sklearn(tmp_path):
    # K = 4, D = 1024: the [K, D, D] matrices are 34 MB each. The fit's peak of live memory
    # stays within 1.5x of scikit-learn's (1.07x here): no [rows, D^2/2] products on either
    # step's routes, the checks and factorisations a chunk of components at a time, the old
    # parameters freed before the M-step. (Packed products in both steps made it 10x.)
    # glibc's sliding mmap threshold lets freed blocks of a few MB stay in the heap, and how
    # many do varies from run to run (1.0x-2.0x of the same fit's peak); a fixed threshold
    # returns every block of 1 MB or more on free, so both processes' peaks count live memory.
    import os
    import platform
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure a process's peak memory")
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("needs glibc's MALLOC_MMAP_THRESHOLD_ to measure live memory")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    peaks = {}
    for cls in ("sklearn", "dsch_ext"):
        run = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, cls], capture_output=True, text=True, check=True,
                             cwd=tmp_path, env=env)  # cwd: not the source tree's dsch_ext
        peaks[cls] = int(run.stdout.split()[-1])
    assert peaks["dsch_ext"] <= 1.5 * peaks["sklearn"], peaks
