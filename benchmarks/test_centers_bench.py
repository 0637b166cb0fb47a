"""Centre distances and k-means against torch / scikit-learn (workloads C1, C2 and KM of benchmarks/WORKLOADS.md).

C1: N = 65,536, K = 1000, D = 64, forward + backward: center_distances('sqeuclidean') vs
    torch.cdist(x, c) ** 2 with autograd.
C2: N = 1,000,000, K = 1000, D = 64: nearest_center vs torch.cdist(x, c).min(1) (which
    materialises N x K: 4 GB).
KM: KMeans fit, N = 100,000, D = 64, K = 1000, float32, same initial centres (random points),
    10 iterations, vs sklearn.cluster.KMeans(algorithm='lloyd'), on two data sets: 'uniform'
    (points uniform in [-1, 1]^64: no clusters, the worst case for distance bounds) and
    'clustered' (1000 Gaussian clusters, sigma 0.25 a coordinate, around centres uniform in
    [-1, 1]^64). Ours runs algorithm='auto' (the Yinyang bounds on the CPU).
Answers are compared before timing.
"""
import functools

import numpy as np
import pytest
import torch

import dsch_ext

SIZES = {
    # id: (full, quick)
    "C1": ((65_536, 1000, 64), (2_048, 100, 64)),
    "C2": ((1_000_000, 1000, 64), (20_000, 100, 64)),
    "KM": ((100_000, 1000, 64), (5_000, 50, 16)),
}
KM_ITERS = 10


def data(wid, quick, seed=0):
    n, k, d = SIZES[wid][1 if quick else 0]
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) * 2 - 1, torch.rand(k, d, generator=g) * 2 - 1


def c1_ours(x, c, g):
    x = x.detach().requires_grad_(True)
    c = c.detach().requires_grad_(True)
    d = dsch_ext.center_distances(x, c, "sqeuclidean")
    d.backward(g)
    return d.detach(), x.grad, c.grad


def c1_torch(x, c, g):
    x = x.detach().requires_grad_(True)
    c = c.detach().requires_grad_(True)
    d = torch.cdist(x, c) ** 2
    d.backward(g)
    return d.detach(), x.grad, c.grad


@functools.lru_cache(maxsize=1)
def c1_inputs(quick):
    x, c = data("C1", quick)
    g = torch.randn(x.shape[0], c.shape[0], generator=torch.Generator().manual_seed(1))
    ours, ref = c1_ours(x, c, g), c1_torch(x, c, g)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-2)
    return x, c, g


@pytest.mark.parametrize("impl", ["torch", "dsch_ext"])
def test_c1_center_distances_fwd_bwd(impl, quick, timed):
    x, c, g = c1_inputs(quick)
    group = f"C1 distances fwd+bwd N={x.shape[0]} K={c.shape[0]} D={x.shape[1]}"
    if impl == "torch":
        timed(group, "anchor", "torch.cdist**2 + autograd", c1_torch, x, c, g)
    else:
        timed(group, "ours", "dsch_ext.center_distances", c1_ours, x, c, g)


def c2_torch(x, c):
    return torch.cdist(x, c).min(1)


@functools.lru_cache(maxsize=1)
def c2_inputs(quick):
    x, c = data("C2", quick)
    index, dist = dsch_ext.nearest_center(x, c)
    ref = c2_torch(x, c)
    assert (index == ref.indices).float().mean() > 0.999  # float32 near-ties may differ
    torch.testing.assert_close(dist.sqrt(), ref.values, rtol=1e-3, atol=1e-3)
    return x, c


@pytest.mark.parametrize("impl", ["torch", "dsch_ext"])
def test_c2_nearest_center(impl, quick, timed):
    x, c = c2_inputs(quick)
    group = f"C2 nearest centre N={x.shape[0]} K={c.shape[0]} D={x.shape[1]}"
    if impl == "torch":
        timed(group, "anchor", "torch.cdist().min(1)", c2_torch, x, c, rounds=2)
    else:
        timed(group, "ours", "dsch_ext.nearest_center", dsch_ext.nearest_center, x, c)


def km_ours(x, init):
    return dsch_ext.KMeans(init.shape[0], init=init, max_iter=KM_ITERS, tol=0.0).fit(x)


def km_sklearn(x, init):
    from sklearn.cluster import KMeans

    return KMeans(init.shape[0], init=init, n_init=1, max_iter=KM_ITERS, tol=0.0, algorithm="lloyd").fit(x)


def km_data(kind, quick):
    if kind == "uniform":
        return data("KM", quick, seed=2)[0]
    n, k, d = SIZES["KM"][1 if quick else 0]
    g = torch.Generator().manual_seed(4)
    true_centers = torch.rand(k, d, generator=g) * 2 - 1
    return true_centers[torch.randint(k, (n,), generator=g)] + 0.25 * torch.randn(n, d, generator=g)


@functools.lru_cache(maxsize=2)
def km_inputs(kind, quick):
    pytest.importorskip("sklearn")
    x = km_data(kind, quick)
    k = SIZES["KM"][1 if quick else 0][1]
    init = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(3))[:k]]
    xn, initn = x.numpy(), init.numpy()
    ours, ref = km_ours(x, init), km_sklearn(xn, initn)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-3)
    return x, init, xn, initn


@pytest.mark.parametrize("kind", ["uniform", "clustered"])
@pytest.mark.parametrize("impl", ["sklearn", "dsch_ext"])
def test_kmeans_fit(impl, kind, quick, timed):
    x, init, xn, initn = km_inputs(kind, quick)
    group = f"KM KMeans fit {kind} N={x.shape[0]} K={init.shape[0]} D={x.shape[1]} {KM_ITERS} iters f32"
    if impl == "sklearn":
        timed(group, "anchor", "sklearn KMeans(lloyd)", km_sklearn, xn, initn, rounds=2)
    else:
        timed(group, "ours", "dsch_ext.KMeans", km_ours, x, init, rounds=2)
