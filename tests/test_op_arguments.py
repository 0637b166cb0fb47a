"""What the ops do with arguments a new user gets wrong: floats where ints belong, inputs that
require grad, second derivatives, overflow, non-finite parameters."""
import numpy as np
import pytest
import torch

import dsch_ext


def test_integer_arguments_are_not_truncated():
    db = dsch_ext.pack_bits(torch.randn(20, 64))
    q = db[:3]
    with pytest.raises(ValueError, match=r"k must be an int in \[1, ndb\] = \[1, 20\], got 2.7"):
        dsch_ext.hamming_topk(q, db, 2.7)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, ndb\] = \[1, 20\], got 9223372036854775808"):
        dsch_ext.hamming_topk(q, db, 2**63)
    with pytest.raises(ValueError, match=r"nbits must be an int in \[57, 64\], got 63.7"):
        dsch_ext.unpack_bits(db, 63.7)
    assert dsch_ext.hamming_topk(q, db, np.int64(2))[0].shape == (3, 2)
    assert dsch_ext.unpack_bits(db, np.int32(64)).shape == (20, 64)


def test_ops_without_gradients_accept_inputs_that_require_grad():
    x = torch.randn(30, 5, requires_grad=True)
    c = torch.randn(4, 5, requires_grad=True)
    index, dist = dsch_ext.nearest_center(x, c)
    want = torch.cdist(x, c).min(1)
    assert torch.equal(index, want.indices) and not dist.requires_grad
    gm = dsch_ext.GaussianMixture(2, random_state=0).fit(x.detach())
    args = [t.clone().requires_grad_() for t in (x.detach(), gm.means_, gm.precisions_cholesky_, gm.weights_.log())]
    log_resp, _ = dsch_ext.gmm_log_resp(*args, "full")
    assert torch.allclose(log_resp.exp(), gm.predict_proba(x.detach()))


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine", "dot"])
def test_center_distances_second_derivatives(metric):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: dsch_ext.center_distances(a, b, metric), (x, c))
    if metric == "sqeuclidean":  # d^2/dx^2 of sum_jk |x_j - c_k|^2 is 2K per coordinate
        (grad,) = torch.autograd.grad(dsch_ext.center_distances(x, c).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad(grad.sum(), x)
        assert torch.allclose(second, torch.full_like(x, 2.0 * c.shape[0]))


def test_segment_gram_gradient():
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([0, 4, 4, 9])
    assert torch.autograd.gradcheck(lambda r: dsch_ext.segment_gram(r, offsets), (rows,))
    assert torch.autograd.gradgradcheck(lambda r: dsch_ext.segment_gram(r, offsets), (rows,))
    dsch_ext.segment_gram(rows, offsets).sum().backward()
    assert rows.grad is not None and torch.isfinite(rows.grad).all()


def test_overflowing_squared_norm_is_named():
    x = torch.full((3, 4), 1e20)
    with pytest.raises(RuntimeError, match="squared norm of a row of x overflows Float"):
        dsch_ext.center_distances(x, torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match="x contains NaN or Inf"):
        dsch_ext.center_distances(torch.full((3, 4), float("nan")), torch.zeros(2, 4))


@pytest.mark.parametrize("which", ["means", "precisions_chol", "log_weights"])
def test_gmm_log_resp_refuses_non_finite_parameters(which):
    x = torch.randn(10, 3, dtype=torch.float64)
    gm = dsch_ext.GaussianMixture(2, random_state=0).fit(x)
    args = {"means": gm.means_.clone(), "precisions_chol": gm.precisions_cholesky_.clone(),
            "log_weights": gm.weights_.log()}
    args[which].view(-1)[0] = float("nan")
    with pytest.raises(RuntimeError, match=f"{which} contains NaN"):
        dsch_ext.gmm_log_resp(x, args["means"], args["precisions_chol"], args["log_weights"], "full")
