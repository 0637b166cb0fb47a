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
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-9)


def test_deterministic_per_seed_and_devices_agree(device):
    X = torch.from_numpy(blobs(n=1500, k=7, d=5, seed=4))
    a = dsch_ext.KMeans(7, n_init=2, random_state=42).fit(X.to(device))
    b = dsch_ext.KMeans(7, n_init=2, random_state=42).fit(X.to(device))
    assert torch.equal(a.cluster_centers_, b.cluster_centers_) and torch.equal(a.labels_, b.labels_)
    cpu = dsch_ext.KMeans(7, n_init=2, random_state=42).fit(X)
    assert torch.equal(a.labels_.cpu(), cpu.labels_)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_sums_equal_index_add(dtype, device):
    # The GPU's per-cluster sums (sorted segments, no atomics): the same values as the CPU's
    # sequential index_add_, empty clusters included (labels 3 and 55-59 never occur).
    from dsch_ext.cluster._lloyd import cluster_sums

    g = torch.Generator().manual_seed(0)
    X = torch.randn(1000, 7, generator=g, dtype=dtype)
    labels = torch.randint(0, 55, (1000,), generator=g)
    labels[labels == 3] = 4
    want = torch.zeros(60, 7, dtype=dtype).index_add_(0, labels, X)
    got = cluster_sums(X.to(device), labels.to(device), 60).cpu()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    assert torch.equal(got[3], torch.zeros(7, dtype=dtype)) and torch.equal(got[55:], torch.zeros(5, 7, dtype=dtype))
    if device != "cpu":  # the same bits every run
        assert torch.equal(got, cluster_sums(X.to(device), labels.to(device), 60).cpu())


def test_empty_clusters_are_reseeded():
    # Initial centres far from the data: most clusters start empty.
    X = blobs(n=500, k=5, d=3, seed=5)
    init = np.concatenate([X[:2], np.full((3, 3), 1e3)])
    km = dsch_ext.KMeans(5, init=init, max_iter=100).fit(X)
    centers = km.cluster_centers_
    assert np.isfinite(centers).all()
    assert np.abs(centers).max() < 100  # every centre moved onto the data
    assert len(np.unique(km.labels_)) == 5


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
    with pytest.raises(ValueError, match=r"n_samples=50 should be >= n_clusters=51"):
        dsch_ext.KMeans(51).fit(X)
    with pytest.raises(ValueError, match=r"The 'n_clusters' parameter of KMeans must be an int in the range \[1, inf\)"):
        dsch_ext.KMeans(0).fit(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(shape \(50, 3\)\)"):
        dsch_ext.KMeans(2).fit(bad)
    with pytest.raises(ValueError, match=r"X must be 2-D"):
        dsch_ext.KMeans(2).fit(X[:, 0])
    with pytest.raises(ValueError, match=r"The shape of the initial centers \(3, 3\) does not match the number of "
                                         "clusters 2"):
        dsch_ext.KMeans(2, init=X[:3]).fit(X)
    with pytest.raises(ValueError, match="not fitted"):  # NotFittedError
        dsch_ext.KMeans(2).predict(X)
    km = dsch_ext.KMeans(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"X has 2 features, but KMeans is expecting 3 features as input \(X shape \(50, 2\)\)"):
        km.predict(X[:, :2])


# --- The bounded (Yinyang) assignment passes -------------------------------------------------

def _brute_force(X, centers):
    """float64 squared distances [N, K]."""
    return ((X.double()[:, None, :] - centers.double()[None, :, :]) ** 2).sum(-1)


def _check_bounds(state, X, centers):
    """Every bound the state holds is a true bound (float64), and each label is the nearest
    centre wherever the nearest is clear of the second by more than rounding."""
    from dsch_ext.cluster._bounded import _round_up

    d = _brute_force(X, centers).sqrt()  # [N, K], original centre order
    labels = state.labels_original()
    own = d.gather(1, labels[:, None])[:, 0]
    assert (state.upper.double() >= own - 1e-12).all(), "an upper bound is below the true distance"
    total = _round_up(state.total_drift, X.dtype).double()
    group = state.group_of_sorted[state.rank]  # group of each original centre
    others = d.clone()
    others.scatter_(1, labels[:, None], float("inf"))
    n_groups = state.lower.shape[1]
    group_min = torch.full((X.shape[0], n_groups), float("inf"), dtype=torch.float64)
    group_min.scatter_reduce_(1, group[None, :].expand(X.shape[0], -1), others, reduce="amin")
    effective = state.lower.double() - total[None, :]
    assert (effective <= group_min + 1e-12).all(), "a group's lower bound is above a true distance"
    best2 = torch.topk(d, 2, dim=1, largest=False).values
    clear = (best2[:, 1] - best2[:, 0]) > 1e-5 * best2[:, 1]
    assert torch.equal(labels[clear], d.argmin(1)[clear])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k,d,group_size", [(1000, 70, 13, 16), (777, 37, 5, 8), (300, 33, 64, 32)])
def test_bounded_assignment_labels_and_bounds_stay_exact(dtype, n, k, d, group_size):
    from dsch_ext.cluster._bounded import BoundedAssignment

    g = torch.Generator().manual_seed(n + k)
    X = (torch.rand(n, d, generator=g) * 2 - 1).to(dtype)
    centers = X[torch.randperm(n, generator=g)[:k]].clone()
    state = BoundedAssignment(X, centers, group_size=group_size)
    _check_bounds(state, X, centers)
    computed = []
    for step in range(8):
        # Centres move by shrinking amounts, some not at all: the bounds must follow.
        step_size = 0.2 / (step + 1) / d**0.5
        moved = centers + step_size * torch.randn(k, d, generator=g).to(dtype)
        centers = torch.where(torch.rand(k, 1, generator=g) < 0.2, centers, moved)
        before = state.computed
        state.move(centers)
        computed.append(state.computed - before)
        _check_bounds(state, X, centers)
    assert min(computed) < n * k  # some pass skipped distances


def test_bounded_assignment_ties_go_to_the_lower_index():
    from dsch_ext.cluster._bounded import BoundedAssignment

    g = torch.Generator().manual_seed(5)
    base = torch.rand(40, 6, generator=g, dtype=torch.float64)
    # Every centre twice (indices i and i + 40), in different halves of the data's layout.
    centers = torch.cat([base, base])
    X = torch.cat([base, torch.rand(200, 6, generator=g, dtype=torch.float64)])
    state = BoundedAssignment(X, centers, group_size=8)
    assert (state.labels_original() < 40).all()
    for step in range(4):
        centers = centers + 0.01 * torch.cat([torch.ones(40, 6), torch.ones(40, 6)]).double()
        state.move(centers)
        assert (state.labels_original() < 40).all()
    assert torch.equal(state.labels_original(), _brute_force(X, centers).argmin(1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_yinyang_and_lloyd_fit_the_same_model(dtype):
    X = blobs(n=6000, k=60, d=16, seed=7, dtype=dtype)
    init = X[np.random.default_rng(0).choice(6000, 60, replace=False)]
    lloyd = dsch_ext.KMeans(60, init=init, max_iter=30, algorithm="lloyd").fit(X)
    yinyang = dsch_ext.KMeans(60, init=init, max_iter=30, algorithm="yinyang").fit(X)
    assert yinyang.n_iter_ == lloyd.n_iter_
    assert (yinyang.labels_ == lloyd.labels_).mean() > 0.999
    np.testing.assert_allclose(yinyang.inertia_, lloyd.inertia_, rtol=1e-5)
    auto = dsch_ext.KMeans(60, init=init, max_iter=30).fit(X)  # 'auto' picks the bounds here
    np.testing.assert_array_equal(auto.labels_, yinyang.labels_)


def test_yinyang_reseeds_empty_clusters():
    X = blobs(n=2000, k=40, d=6, seed=8)
    init = np.concatenate([X[:30], np.full((10, 6), 1e3)])
    lloyd = dsch_ext.KMeans(40, init=init, max_iter=50, algorithm="lloyd").fit(X)
    yinyang = dsch_ext.KMeans(40, init=init, max_iter=50, algorithm="yinyang").fit(X)
    assert np.abs(yinyang.cluster_centers_).max() < 100
    assert len(np.unique(yinyang.labels_)) == 40
    np.testing.assert_allclose(yinyang.inertia_, lloyd.inertia_, rtol=1e-6)
    np.testing.assert_array_equal(yinyang.labels_, lloyd.labels_)


def test_algorithm_argument_is_checked(device):
    X = torch.from_numpy(blobs(n=100, k=3, d=2)).to(device)
    with pytest.raises(ValueError, match="The 'algorithm' parameter of KMeans must be a str among"):
        dsch_ext.KMeans(3, algorithm="hamerly").fit(X)
    for bounded in ("yinyang", "elkan"):
        if device == "cuda":
            with pytest.raises(ValueError, match="runs on the CPU only"):
                dsch_ext.KMeans(3, algorithm=bounded).fit(X)
        else:
            assert dsch_ext.KMeans(3, algorithm=bounded, random_state=0).fit(X).inertia_ > 0


def test_bounded_assign_op_rejects_bad_state():
    X = torch.rand(10, 3)
    c = X[:4].clone()
    order = torch.arange(4)
    offsets = torch.tensor([0, 2, 4])
    labels, upper, lower = torch.zeros(10, dtype=torch.long), torch.zeros(10), torch.zeros(10, 2)
    op = torch.ops.dsch_ext._kmeans_bounded_assign
    xsq = (X * X).sum(1)
    with pytest.raises(RuntimeError, match=r"lower must be Float \[N, T\] = \[10, 2\]"):
        op(X, xsq, c, order, offsets, torch.zeros(4), torch.zeros(2), labels, upper, torch.zeros(10, 3), True)
    with pytest.raises(RuntimeError, match="group_offsets must run from 0 to K = 4"):
        op(X, xsq, c, order, torch.tensor([0, 2, 3]), torch.zeros(4), torch.zeros(2), labels, upper, lower, True)
    with pytest.raises(RuntimeError, match="order must increase within each group"):
        op(X, xsq, c, torch.tensor([1, 0, 2, 3]), offsets, torch.zeros(4), torch.zeros(2), labels, upper, lower, True)
    labels[3] = 7
    with pytest.raises(RuntimeError, match=r"labels\[3\] = 7 is not a centre row"):
        op(X, xsq, c, order, offsets, torch.zeros(4), torch.zeros(2), labels, upper, lower, False)
    with pytest.raises(RuntimeError, match="x contains NaN or Inf"):
        op(X, xsq * float("nan"), c, order, offsets, torch.zeros(4), torch.zeros(2), labels, upper, lower, True)
