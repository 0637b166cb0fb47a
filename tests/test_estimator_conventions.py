"""The conventions scikit-learn users bring, on KMeans and GaussianMixture: the input's library
decides the output's, every random-state form, sample weights, the initial parameters checked
as scikit-learn checks them, and scikit-learn's warnings."""
import warnings

import numpy as np
import pytest
import torch

import dsch_ext
from dsch_ext._sklearn import ConvergenceWarning


def blobs(n=300, d=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 6
    return centers[np.arange(n) % k] + rng.normal(size=(n, d))


def fitted(estimator, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X)


# ------------------------------------------------------------ the input's library decides

def test_numpy_in_numpy_out():
    X = blobs()
    km = fitted(dsch_ext.KMeans(3, random_state=0), X)
    assert isinstance(km.cluster_centers_, np.ndarray) and km.cluster_centers_.dtype == np.float64
    assert isinstance(km.labels_, np.ndarray) and km.labels_.dtype == np.int32  # scikit-learn's dtype
    for out in (km.predict(X), km.fit_predict(X)):
        assert isinstance(out, np.ndarray) and out.dtype == np.int32
    assert isinstance(km.transform(X), np.ndarray) and isinstance(km.score(X), float)
    gm = fitted(dsch_ext.GaussianMixture(3, random_state=0), X.astype(np.float32))
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert isinstance(getattr(gm, name), np.ndarray) and getattr(gm, name).dtype == np.float32, name
    assert gm.predict(X).dtype == np.int64 and isinstance(gm.predict_proba(X), np.ndarray)
    assert isinstance(gm.score_samples(X), np.ndarray) and isinstance(gm.score(X), float)
    samples, labels = gm.sample(5)
    assert isinstance(samples, np.ndarray) and isinstance(labels, np.ndarray)
    assert isinstance(gm.fit_predict(X.astype(np.float32)), np.ndarray)


def test_lists_are_numpy_and_tensors_stay_tensors(device):
    X = blobs()
    km = fitted(dsch_ext.KMeans(3, random_state=0), X.tolist())
    assert isinstance(km.labels_, np.ndarray)
    t = torch.from_numpy(X).to(device)
    km = fitted(dsch_ext.KMeans(3, random_state=0), t)
    assert isinstance(km.cluster_centers_, torch.Tensor) and km.cluster_centers_.device.type == device
    assert km.labels_.dtype == torch.int64 and km.predict(t).device.type == device
    assert isinstance(km.predict(X), np.ndarray)  # a numpy query of a torch-fitted model: numpy out
    gm = fitted(dsch_ext.GaussianMixture(3, random_state=0), t)
    assert isinstance(gm.means_, torch.Tensor) and gm.means_.device.type == device
    assert isinstance(gm.score_samples(t), torch.Tensor) and isinstance(gm.score_samples(X), np.ndarray)


def test_read_only_and_scipy_sparse_input():
    X = blobs()
    X.setflags(write=False)
    km = fitted(dsch_ext.KMeans(3, random_state=0), X)
    km.cluster_centers_.setflags(write=False)  # a read-only (memory-mapped) model predicts too
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    sparse = pytest.importorskip("scipy.sparse")
    np.testing.assert_array_equal(fitted(dsch_ext.KMeans(3, random_state=0), sparse.csr_matrix(X)).labels_, km.labels_)
    with pytest.raises(TypeError, match="sparse input is not supported"):
        dsch_ext.GaussianMixture(3).fit(sparse.csr_matrix(X))


# ------------------------------------------------------------ random states

@pytest.mark.parametrize("make_state", [
    lambda: 7, lambda: np.random.RandomState(7), lambda: np.random.default_rng(7),
    lambda: torch.Generator().manual_seed(7)], ids=["int", "RandomState", "Generator", "torch.Generator"])
@pytest.mark.parametrize("estimator", ["KMeans", "GaussianMixture"])
def test_every_random_state_form_is_reproducible(make_state, estimator):
    X = blobs(seed=1)
    make = (lambda s: dsch_ext.KMeans(3, init="random", n_init=3, random_state=s)) if estimator == "KMeans" else (
        lambda s: dsch_ext.GaussianMixture(3, init_params="random_from_data", random_state=s, max_iter=5))
    a, b = fitted(make(make_state()), X), fitted(make(make_state()), X)
    key = "cluster_centers_" if estimator == "KMeans" else "means_"
    np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    fitted(make(None), X)  # None: a fresh seed, still a fit


def test_a_shared_random_state_advances_and_replays():
    X = blobs(seed=2)
    rs = np.random.RandomState(0)

    def make(state):
        return dsch_ext.GaussianMixture(3, init_params="random", max_iter=1, random_state=state)

    first = fitted(make(rs), X).means_
    second = fitted(make(rs), X).means_
    assert not np.array_equal(first, second)  # the shared state advanced
    np.testing.assert_array_equal(fitted(make(np.random.RandomState(0)), X).means_, first)


def test_bad_random_state_is_sklearns_error():
    with pytest.raises(ValueError, match="The 'random_state' parameter of KMeans must be"):
        dsch_ext.KMeans(2, random_state="seed").fit(blobs())


# ------------------------------------------------------------ KMeans: weights, inits, warnings

def test_integer_weights_equal_repeated_rows():
    X = blobs(n=120, seed=3)
    w = np.random.default_rng(3).integers(1, 5, size=120)
    init = X[:3]
    weighted = dsch_ext.KMeans(3, init=init, n_init=1).fit(X, sample_weight=w)
    repeated = dsch_ext.KMeans(3, init=init, n_init=1).fit(np.repeat(X, w, axis=0))
    np.testing.assert_array_equal(np.repeat(weighted.labels_, w), repeated.labels_)
    np.testing.assert_allclose(weighted.cluster_centers_, repeated.cluster_centers_, rtol=1e-12)
    np.testing.assert_allclose(weighted.inertia_, repeated.inertia_, rtol=1e-12)
    assert weighted.score(X, sample_weight=w) == pytest.approx(repeated.score(np.repeat(X, w, axis=0)), rel=1e-12)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_weighted_seeding_never_picks_a_zero_weight_row(init):
    X = blobs(n=200, d=4, k=5, seed=4)
    w = np.random.default_rng(4).uniform(size=200)
    w[::2] = 0
    for seed in range(5):
        km = dsch_ext.KMeans(10, init=init, n_init=1, max_iter=1, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            km.fit(X, sample_weight=w)
    # The seeds themselves: k-means++ over rows whose odd rows alone carry weight.
    from dsch_ext.cluster import kmeans_plusplus

    _, ids = kmeans_plusplus(torch.from_numpy(X), 10, torch.Generator().manual_seed(0),
                             sample_weight=torch.from_numpy(w))
    assert (ids % 2 == 1).all(), ids
    unweighted = kmeans_plusplus(torch.from_numpy(X), 10, torch.Generator().manual_seed(0))[1]
    weighted = kmeans_plusplus(torch.from_numpy(X), 10, torch.Generator().manual_seed(0),
                               sample_weight=torch.ones(200, dtype=torch.float64))[1]
    assert torch.equal(unweighted, weighted)  # no weights is weight 1


def test_sample_weight_errors():
    X = blobs(n=30)
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(29,\), expected \(30,\)"):
        dsch_ext.KMeans(2).fit(X, sample_weight=np.ones(29))
    with pytest.raises(ValueError, match="at least one non-zero"):
        dsch_ext.KMeans(2).fit(X, sample_weight=np.zeros(30))
    with pytest.raises(ValueError, match="finite and >= 0"):
        dsch_ext.KMeans(2).fit(X, sample_weight=-np.ones(30))


def test_callable_init_elkan_and_feature_names():
    X = blobs(seed=5)
    seen = {}

    def init(data, k, random_state):
        seen["state"] = random_state
        return data[:k]

    km = dsch_ext.KMeans(3, init=init, algorithm="elkan").fit(X)
    assert isinstance(seen["state"], np.random.RandomState) and km._n_init == 10
    lloyd = dsch_ext.KMeans(3, init=X[:3], algorithm="lloyd").fit(X)
    elkan = dsch_ext.KMeans(3, init=X[:3], algorithm="elkan").fit(X)
    np.testing.assert_array_equal(elkan.labels_, lloyd.labels_)
    assert elkan.n_iter_ == lloyd.n_iter_
    np.testing.assert_array_equal(km.get_feature_names_out(), ["kmeans0", "kmeans1", "kmeans2"])


def test_kmeans_warnings():
    X = np.asarray([[0, 0], [0, 1], [1, 0], [1, 0]], dtype=float)
    with pytest.warns(ConvergenceWarning, match=r"Number of distinct clusters \(3\) found smaller than n_clusters \(4\)"):
        dsch_ext.KMeans(4, random_state=0).fit(X)
    with pytest.warns(RuntimeWarning, match="Explicit initial center position passed: performing only one init"):
        dsch_ext.KMeans(2, init=X[:2], n_init=5).fit(X)
    with pytest.warns(RuntimeWarning, match="algorithm='elkan' doesn't make sense for a single cluster"):
        dsch_ext.KMeans(1, algorithm="elkan").fit(X)


def test_copy_x_false_leaves_x_as_it_was():
    X = blobs(seed=6)
    before = X.copy()
    a = dsch_ext.KMeans(3, random_state=0, copy_x=False).fit(X)
    b = dsch_ext.KMeans(3, random_state=0).fit(X)
    np.testing.assert_array_equal(X, before)
    np.testing.assert_array_equal(a.labels_, b.labels_)


# ------------------------------------------------------------ GaussianMixture: initial parameters

def _gm(**kw):
    return dsch_ext.GaussianMixture(2, max_iter=0, **kw)


@pytest.mark.parametrize("weights, message", [
    ([1.5, 0.7], r"should be in the range \[0, 1\]"),
    ([1.5, -0.5], r"should be in the range \[0, 1\]"),
    ([0.3, 0.3], r"should be normalized, but got sum\(weights\) = 0.60000"),
    ([[0.5], [0.5]], r"The parameter 'weights' should have the shape of \(2,\), but got \(2, 1\)"),
])
def test_initial_weights_are_checked(weights, message):
    with pytest.raises(ValueError, match=message):
        _gm(weights_init=weights).fit(blobs(k=2))


@pytest.mark.parametrize("covariance_type, precisions, message", [
    ("full", [-np.eye(3), np.eye(3)], "'full precision' should be symmetric, positive-definite"),
    ("full", [[[1, 0.5, 0], [0, 1, 0], [0, 0, 1]], np.eye(3)], "'full precision' should be symmetric"),
    ("tied", -np.eye(3), "'tied precision' should be symmetric, positive-definite"),
    ("diag", [[1, -1, 1], [1, 1, 1]], "'diag precision' should be positive"),
    ("spherical", [1, 0], "'spherical precision' should be positive"),
    ("diag", np.ones((3, 3)), r"The parameter 'diag precision' should have the shape of \(2, 3\)"),
])
def test_initial_precisions_are_checked(covariance_type, precisions, message):
    with pytest.raises(ValueError, match=message):
        _gm(covariance_type=covariance_type, precisions_init=precisions).fit(blobs(k=2))


def test_a_fully_given_start_is_used_as_given(monkeypatch):
    X = blobs(k=2, seed=7)
    means = np.array([[0.0, 1, 2], [3, 4, 5]])
    precisions = np.stack([np.diag([1.0, 2, 3]), np.diag([4.0, 5, 6])])
    monkeypatch.setattr(dsch_ext.GaussianMixture, "_initial_resp",
                        lambda *a: pytest.fail("a fully given start was estimated"))
    gm = _gm(weights_init=[0.25, 0.75], means_init=means, precisions_init=precisions).fit(X)
    np.testing.assert_array_equal(gm.weights_, [0.25, 0.75])
    np.testing.assert_array_equal(gm.means_, means)
    L = gm.precisions_cholesky_
    np.testing.assert_allclose(L @ np.swapaxes(L, 1, 2), precisions, rtol=1e-12)
    assert np.allclose(np.tril(L, -1), 0)  # upper triangular, scikit-learn's convention
    np.testing.assert_allclose(gm.covariances_, np.linalg.inv(precisions), rtol=1e-12)
    assert gm.n_iter_ == 0 and gm.lower_bounds_ == []


def test_verbose_prints_sklearns_lines(capsys):
    fitted(dsch_ext.GaussianMixture(2, verbose=2, verbose_interval=1, max_iter=3, random_state=0), blobs(k=2))
    out = capsys.readouterr().out
    assert "Initialization 0" in out and "  Iteration 1\t time lapse" in out and "lower bound" in out
