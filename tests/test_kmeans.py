"""dsch_ext.KMeans against scikit-learn's KMeans."""
import numpy as np
import pytest
import torch

import dsch_ext

sklearn_cluster = pytest.importorskip("sklearn.cluster")
sklearn_datasets = pytest.importorskip("sklearn.datasets")


def blobs(n=3000, k=12, d=8, seed=0, dtype=np.float64):
    X, _ = sklearn_datasets.make_blobs(n_samples=n, centers=k, n_features=d, cluster_std=1.5, random_state=seed)
    return X.astype(dtype)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_inertia_close_to_sklearn_on_blobs(init, device):
    X = blobs()
    ours = dsch_ext.KMeans(12, init=init, n_init=5, random_state=0).fit(torch.from_numpy(X).to(device))
    ref = sklearn_cluster.KMeans(12, init=init, n_init=5, random_state=0).fit(X)
    assert ours.inertia_ <= ref.inertia_ * 1.01
    assert ours.cluster_centers_.shape == (12, 8) and ours.labels_.shape == (3000,)
    assert ours.cluster_centers_.device.type == device
    # inertia_ is the inertia of the returned labels and centres.
    c = ours.cluster_centers_.cpu().numpy()
    lab = ours.labels_.cpu().numpy()
    np.testing.assert_allclose(((X - c[lab]) ** 2).sum(), ours.inertia_, rtol=1e-9)


def test_inertia_close_to_sklearn_on_codes(device):
    # "Real codes": tanh of a random projection of the digits images, as a hashing network's output.
    digits = pytest.importorskip("sklearn.datasets").load_digits().data.astype(np.float32) / 16
    rng = np.random.default_rng(0)
    H = np.tanh(digits @ rng.standard_normal((64, 32)).astype(np.float32) * 0.5)
    ours = dsch_ext.KMeans(50, n_init=3, random_state=1).fit(torch.from_numpy(H).to(device))
    ref = sklearn_cluster.KMeans(50, n_init=3, random_state=1).fit(H)
    assert ours.inertia_ <= ref.inertia_ * 1.01


def test_same_iterations_same_answer_as_sklearn_from_same_init():
    X = blobs(n=2000, k=6, d=4, seed=3)
    init = X[:6].copy()
    ours = dsch_ext.KMeans(6, init=torch.from_numpy(init), max_iter=50).fit(X)
    ref = sklearn_cluster.KMeans(6, init=init, n_init=1, max_iter=50, algorithm="lloyd").fit(X)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.cluster_centers_.numpy(), ref.cluster_centers_, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(ours.labels_.numpy(), ref.labels_)
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-9)


def test_deterministic_per_seed_and_devices_agree(device):
    X = torch.from_numpy(blobs(n=1500, k=7, d=5, seed=4))
    a = dsch_ext.KMeans(7, n_init=2, random_state=42).fit(X.to(device))
    b = dsch_ext.KMeans(7, n_init=2, random_state=42).fit(X.to(device))
    assert torch.equal(a.cluster_centers_, b.cluster_centers_) and torch.equal(a.labels_, b.labels_)
    cpu = dsch_ext.KMeans(7, n_init=2, random_state=42).fit(X)
    assert torch.equal(a.labels_.cpu(), cpu.labels_)


def test_empty_clusters_are_reseeded():
    # Initial centres far from the data: most clusters start empty.
    X = blobs(n=500, k=5, d=3, seed=5)
    init = np.concatenate([X[:2], np.full((3, 3), 1e3)])
    km = dsch_ext.KMeans(5, init=init, max_iter=100).fit(X)
    centers = km.cluster_centers_.numpy()
    assert np.isfinite(centers).all()
    assert np.abs(centers).max() < 100  # every centre moved onto the data
    assert len(np.unique(km.labels_.numpy())) == 5


def test_k_equals_n_and_duplicate_points():
    X = np.repeat(np.arange(6, dtype=np.float64)[:, None], 2, axis=1)
    km = dsch_ext.KMeans(6, random_state=0).fit(X)
    assert km.inertia_ == pytest.approx(0.0, abs=1e-12)
    dup = np.concatenate([X, X, X])
    km = dsch_ext.KMeans(6, random_state=0, n_init=3).fit(dup)
    assert km.inertia_ == pytest.approx(0.0, abs=1e-12)


def test_predict_transform_score(device):
    X = torch.from_numpy(blobs(n=800, k=4, d=3, seed=6)).float().to(device)
    km = dsch_ext.KMeans(4, random_state=0).fit(X)
    assert torch.equal(km.predict(X), km.labels_)
    dist = km.transform(X)
    assert dist.shape == (800, 4)
    assert torch.equal(dist.argmin(1), km.labels_)
    assert km.score(X) == pytest.approx(-km.inertia_, rel=1e-5)
    assert torch.equal(dsch_ext.KMeans(4, random_state=0).fit_predict(X), km.labels_)


def test_kmeans_bad_input():
    X = blobs(n=50, k=2, d=3)
    with pytest.raises(ValueError, match=r"n_clusters=51 must be <= n_samples=50"):
        dsch_ext.KMeans(51).fit(X)
    with pytest.raises(ValueError, match="n_clusters must be a positive int"):
        dsch_ext.KMeans(0).fit(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(shape \(50, 3\)\)"):
        dsch_ext.KMeans(2).fit(bad)
    with pytest.raises(ValueError, match=r"X must be 2-D"):
        dsch_ext.KMeans(2).fit(X[:, 0])
    with pytest.raises(ValueError, match=r"init array must have shape \(2, 3\)"):
        dsch_ext.KMeans(2, init=X[:3]).fit(X)
    with pytest.raises(RuntimeError, match="not fitted"):
        dsch_ext.KMeans(2).predict(X)
    km = dsch_ext.KMeans(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"X has 2 features \(shape \(50, 2\)\) but KMeans was fitted with 3"):
        km.predict(X[:, :2])
