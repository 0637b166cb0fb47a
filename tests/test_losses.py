"""DSCH losses against explicit per-element references."""
import math

import pytest
import torch

from dsch_ext.dsch import losses


def nt_xent_reference(h, tau):
    """SimCLR's NT-Xent written out: positives are the other view of the same image."""
    n = h.shape[0]
    b = n // 2
    z = torch.nn.functional.normalize(h, dim=1)
    total = 0.0
    for i in range(n):
        pos = i + b if i < b else i - b
        num = math.exp(float(z[i] @ z[pos]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n) if k != i)
        total += -math.log(num / den)
    return total / n


def weighted_reference(h, s, tau):
    n = h.shape[0]
    b = n // 2
    z = torch.nn.functional.normalize(h, dim=1)
    total = 0.0
    for i in range(n):
        weights = []
        for j in range(n):
            if j == i:
                weights.append(0.0)
            elif j % b == i % b:
                weights.append(1.0)
            else:
                weights.append(max(float(s[i % b, j % b]), 0.0))
        wsum = sum(weights)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n) if k != i)
        for j in range(n):
            if weights[j]:
                total += -(weights[j] / wsum) * math.log(math.exp(float(z[i] @ z[j]) / tau) / den)
    return total / n


def test_identity_cooccurrence_is_nt_xent():
    g = torch.Generator().manual_seed(0)
    h = torch.tanh(torch.randn(10, 16, generator=g, dtype=torch.float64))
    for tau in (0.2, 1.0):
        got = losses.instance_correlation_loss(h, None, tau)
        assert float(got) == pytest.approx(nt_xent_reference(h, tau), rel=1e-10)


def test_cooccurrence_weighted_loss_matches_reference():
    g = torch.Generator().manual_seed(1)
    h = torch.tanh(torch.randn(12, 8, generator=g, dtype=torch.float64))
    p1 = torch.softmax(torch.randn(6, 5, generator=g, dtype=torch.float64) * 3, dim=1)
    p1 = torch.nn.functional.normalize(p1, dim=1)  # the CIFAR-10 option: L2-normalised rows
    s = losses.batch_cooccurrence(p1)
    got = losses.instance_correlation_loss(h, s, 0.5)
    assert float(got) == pytest.approx(weighted_reference(h, s, 0.5), rel=1e-10)


def test_component_correlation_matches_reference():
    g = torch.Generator().manual_seed(2)
    h = torch.tanh(torch.randn(6, 8, generator=g, dtype=torch.float64))
    mu = torch.sign(torch.randn(4, 8, generator=g, dtype=torch.float64))
    pi = torch.softmax(torch.randn(4, generator=g, dtype=torch.float64), 0)
    p = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), 1)
    got = losses.component_correlation_loss(h, p, mu, pi.log(), tau=0.7)
    z = torch.nn.functional.normalize(h, dim=1)
    c = torch.nn.functional.normalize(mu, dim=1)
    want = 0.0
    for i in range(6):
        scores = [math.log(pi[k]) + float(z[i] @ c[k]) / 0.7 for k in range(4)]
        lse = math.log(sum(math.exp(x) for x in scores))
        want += -sum(float(p[i, k]) * (scores[k] - lse) for k in range(4))
    assert float(got) == pytest.approx(want / 6, rel=1e-10)


def test_dsch_loss_parts_ablations_and_gradients():
    g = torch.Generator().manual_seed(3)
    h = torch.tanh(torch.randn(8, 16, generator=g)).requires_grad_(True)
    p1 = torch.softmax(torch.randn(4, 10, generator=g), 1)
    p21 = torch.nn.functional.one_hot(torch.randint(0, 3, (10,), generator=g), 3).float()
    p2 = p1 @ p21
    mu1, mu2 = torch.sign(torch.randn(10, 16, generator=g)), torch.sign(torch.randn(3, 16, generator=g))
    log_pi1, log_pi2 = torch.full((10,), -math.log(10)), torch.full((3,), -math.log(3))
    total, parts = losses.dsch_loss(h, p1, p2, mu1, log_pi1, mu2, log_pi2, component_weight=0.1, tau=0.5)
    torch.testing.assert_close(total, parts["ic"] + 0.1 * (parts["ccf"] + parts["ccc"]))
    total.backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    baseline, bparts = losses.dsch_loss(h, p1, p2, mu1, log_pi1, mu2, log_pi2, component_weight=0.0, cooccurrence=False, tau=0.5)
    torch.testing.assert_close(baseline, losses.instance_correlation_loss(h, None, 0.5))
    no_fine, nf = losses.dsch_loss(h, p1, p2, mu1, log_pi1, mu2, log_pi2, component_weight=0.1, tau=0.5, fine=False)
    assert float(nf["ccf"].detach()) == 0
    assert float(nf["ccc"].detach()) == pytest.approx(float(parts["ccc"].detach()))


def test_loss_compiles_fullgraph():
    g = torch.Generator().manual_seed(4)
    h = torch.tanh(torch.randn(8, 16, generator=g))
    p = torch.softmax(torch.randn(8, 5, generator=g), 1)
    mu = torch.sign(torch.randn(5, 16, generator=g))
    lp = torch.full((5,), -math.log(5))
    fn = torch.compile(losses.component_correlation_loss, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(h, p, mu, lp, 0.5), losses.component_correlation_loss(h, p, mu, lp, 0.5))


def test_loss_bad_input():
    with pytest.raises(ValueError, match=r"two views per image"):
        losses.instance_correlation_loss(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"s must be \[B, B\] = \[3, 3\]"):
        losses.instance_correlation_loss(torch.randn(6, 4), torch.eye(2))
    with pytest.raises(ValueError, match=r"p must be \[M, K\] = \[6, 3\]"):
        losses.component_correlation_loss(torch.randn(6, 4), torch.rand(6, 2), torch.randn(3, 4), torch.zeros(3))
