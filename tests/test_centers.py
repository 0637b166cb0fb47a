"""center_distances (forward and gradients) and nearest_center against explicit formulas."""
import pytest
import torch
import torch.nn.functional as F

import dsch_ext

METRICS = ["sqeuclidean", "cosine", "dot"]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def reference(x, c, metric):
    x, c = x.double(), c.double()
    if metric == "sqeuclidean":
        return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    if metric == "cosine":
        return 1 - F.cosine_similarity(x[:, None, :], c[None, :, :], dim=-1, eps=1e-8)
    return -(x @ c.t())


def inputs(n, k, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype).to(device)
    c = torch.randn(k, d, generator=g, dtype=torch.float64).to(dtype).to(device)
    return x, c


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# On CUDA, float32 D <= 128 runs the split-at-use tensor-core kernel (D = 100: its 16 x 32 warps),
# D = 130 the chunked one.
@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (7, 3, 5), (129, 37, 64), (300, 1000, 17), (66, 67, 100), (20, 67, 130)])
def test_center_distances_forward(metric, dtype, n, k, d, device):
    x, c = inputs(n, k, d, dtype, device)
    out = dsch_ext.center_distances(x, c, metric)
    assert out.shape == (n, k) and out.dtype == dtype and out.device.type == device
    torch.testing.assert_close(out.double().cpu(), reference(x, c, metric).cpu(), **TOL[dtype])


@pytest.mark.parametrize("metric", METRICS)
def test_center_distances_gradcheck(metric, device):
    x, c = inputs(11, 6, 5, torch.float64, device, seed=1)
    x.requires_grad_(True)
    c.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: dsch_ext.center_distances(a, b, metric), (x, c))
    assert torch.autograd.gradcheck(lambda a: dsch_ext.center_distances(a, c.detach(), metric), (x,))


@pytest.mark.parametrize("metric", METRICS)
# On CUDA, float32 D <= 128 takes one tensor-core pass over the gradient a side for each 64
# coordinates (D = 100: two), D = 130 the GEMM route.
@pytest.mark.parametrize("d", [32, 100, 130])
def test_center_distances_gradients_match_autograd_reference(metric, d, device):
    x, c = inputs(200, 50, d, torch.float32, device, seed=2)
    g = torch.randn(200, 50, device=device)
    xa, ca = x.clone().requires_grad_(True), c.clone().requires_grad_(True)
    (dsch_ext.center_distances(xa, ca, metric) * g).sum().backward()
    xr, cr = x.double().requires_grad_(True), c.double().requires_grad_(True)
    (reference(xr, cr, metric) * g.double()).sum().backward()
    torch.testing.assert_close(xa.grad.double(), xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ca.grad.double(), cr.grad, rtol=1e-4, atol=1e-4)


def test_center_distances_duplicate_and_zero_points(device):
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], device=device)
    c = torch.tensor([[1.0, 2.0], [0.0, 0.0]], device=device)
    sq = dsch_ext.center_distances(x, c, "sqeuclidean")
    assert sq[0, 0] == 0 and sq[1, 0] == 0 and (sq >= 0).all()
    cos = dsch_ext.center_distances(x, c, "cosine")  # zero vectors: cos = 0, distance 1
    assert torch.isfinite(cos).all() and cos[2, 0] == 1 and cos[0, 1] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k,d", [(1, 1, 3), (1000, 1, 8), (513, 1000, 64), (4097, 17, 3)])
def test_nearest_center_matches_argmin(dtype, n, k, d, device):
    x, c = inputs(n, k, d, dtype, device, seed=3)
    index, dist = dsch_ext.nearest_center(x, c)
    ref = reference(x.cpu(), c.cpu(), "sqeuclidean")
    assert index.dtype == torch.int64 and dist.dtype == dtype
    assert index.device == x.device and dist.device == x.device
    # Chosen centres are at the minimum distance (float32 may pick a near-tie).
    chosen = ref.gather(1, index.cpu()[:, None]).squeeze(1)
    torch.testing.assert_close(chosen, ref.min(1).values, **TOL[dtype])
    torch.testing.assert_close(dist.double().cpu(), chosen, **TOL[dtype])
    if dtype == torch.float64:
        assert torch.equal(index.cpu(), ref.argmin(1))


def test_nearest_center_ties_go_to_lower_index(device):
    g = torch.Generator().manual_seed(4)
    base = torch.randn(5, 4, generator=g, dtype=torch.float64)
    centers = torch.cat([base, base, base[:2]]).to(device)  # every centre appears 2-3 times
    x = torch.cat([base, base + 1e-3 * torch.randn(5, 4, generator=g, dtype=torch.float64)]).to(device)
    index, dist = dsch_ext.nearest_center(x, centers)
    assert index.cpu().tolist() == [0, 1, 2, 3, 4] * 2
    assert (dist[:5] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k,d", [(40, 6), (37, 5), (500, 64)])
def test_nearest_center_duplicate_centres_tie_exactly(device, dtype, k, d):
    # Equal centres at different GEMM columns can round differently: the lower index must
    # still win every tie (regression: float64 gave ~5% of rows to the higher duplicate).
    g = torch.Generator().manual_seed(k + d)
    base = torch.rand(k, d, generator=g, dtype=torch.float64)
    centers = torch.cat([base, base]).to(dtype).to(device)
    x = torch.rand(3000, d, generator=g, dtype=torch.float64).to(dtype).to(device)
    index, dist = dsch_ext.nearest_center(x, centers)
    assert (index < k).all()
    ref = torch.cdist(x.double(), base.to(device)).argmin(1)
    ref_d = ((x.double() - base.to(device)[ref]) ** 2).sum(1)
    torch.testing.assert_close(dist.double(), ref_d, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=1e-5)


def test_nearest_center_many_points_bounded_memory():
    # More rows than one block of the kernel: the blocked path must stitch correctly.
    x, c = inputs(70_000, 300, 16, torch.float32, "cpu", seed=5)
    index, dist = dsch_ext.nearest_center(x, c)
    ref_index = torch.cdist(x.double(), c.double()).argmin(1)
    assert (index == ref_index).float().mean() > 0.9999


@pytest.mark.parametrize("op", ["distances", "nearest"])
def test_center_bad_input(op, device):
    call = (lambda a, b: dsch_ext.center_distances(a, b, "sqeuclidean")) if op == "distances" else dsch_ext.nearest_center
    x, c = inputs(4, 3, 5, torch.float32, device)
    with pytest.raises(RuntimeError, match=r"different dimensions: x shape \[4, 5\] vs centers shape \[3, 4\]"):
        call(x, c[:, :4])
    with pytest.raises(RuntimeError, match=r"centers is empty \(shape \[0, 5\]\)"):
        call(x, c[:0])
    with pytest.raises(RuntimeError, match=r"x must be 2-D"):
        call(x[0], c)
    with pytest.raises(RuntimeError, match=r"centers must have x's dtype Float, got Double"):
        call(x, c.double())
    with pytest.raises(RuntimeError, match=r"x must be float32 or float64, got Int"):
        call(x.int(), c.int())
    bad = x.clone()
    bad[2, 1] = float("nan")
    if device == "cuda":  # the CUDA ops never stop the stream to raise: the row's results are NaN
        out = call(bad, c)
        assert torch.isnan(out[2] if op == "distances" else out[1][2]).all()
        return
    with pytest.raises(RuntimeError, match=r"x contains NaN or Inf \(shape \[4, 5\]\)"):
        call(bad, c)
    bad[2, 1] = float("inf")
    with pytest.raises(RuntimeError, match=r"NaN or Inf"):
        call(x, torch.cat([c, bad[2:3]]))


def test_center_distances_bad_metric():
    x, c = inputs(4, 3, 5, torch.float32, "cpu")
    with pytest.raises(ValueError, match="metric must be one of"):
        dsch_ext.center_distances(x, c, "manhattan")
    with pytest.raises(RuntimeError, match="metric must be one of 'sqeuclidean', 'cosine', 'dot', got 'l1'"):
        torch.ops.dsch_ext.center_distances(x, c, "l1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_center_mixed_devices():
    x, c = inputs(4, 3, 5, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="same device"):
        dsch_ext.center_distances(x.cuda(), c, "dot")
    with pytest.raises(RuntimeError, match="same device"):
        dsch_ext.nearest_center(x, c.cuda())


def test_center_ops_opcheck(device):
    x, c = inputs(9, 4, 6, torch.float32, device)
    for metric in METRICS:
        torch.library.opcheck(torch.ops.dsch_ext.center_distances.default, (x, c, metric))
        xg, cg = x.clone().requires_grad_(True), c.clone().requires_grad_(True)
        torch.library.opcheck(torch.ops.dsch_ext.center_distances.default, (xg, cg, metric))
    torch.library.opcheck(torch.ops.dsch_ext.nearest_center.default, (x, c))


def test_center_distances_compile_with_grad(device):
    def loss_fn(h, mu):
        sim = 1 - dsch_ext.center_distances(h, mu, "cosine")
        return -torch.log_softmax(sim / 0.5, dim=1)[:, 0].mean()

    x, c = inputs(16, 5, 8, torch.float32, device, seed=6)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    la, lb = compiled(xa, c), loss_fn(xb, c)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(xa.grad, xb.grad)
