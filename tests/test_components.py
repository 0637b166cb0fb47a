"""DSCH's E-step (fit_components) on small code sets."""
import pytest
import torch

from dsch_ext.dsch import components


def clustered_codes(n=600, nbits=16, groups=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.sign(torch.randn(groups, nbits, generator=g))
    labels = torch.randint(0, groups, (n,), generator=g)
    return torch.tanh(2 * centers[labels] + 0.5 * torch.randn(n, nbits, generator=g)), labels


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_components_shapes_and_invariants(cov):
    H, labels = clustered_codes()
    comp = components.fit_components(H, m1=24, m2=6, covariance_type=cov, max_iter=30)
    assert comp.m1 == 24 and comp.m2 == 6
    assert comp.p1.shape == (600, 24) and comp.p2.shape == (600, 6)
    torch.testing.assert_close(comp.p1.norm(dim=1), torch.ones(600, dtype=comp.p1.dtype))  # L2-normalised rows
    assert set(torch.unique(comp.mu1).tolist()) <= {-1.0, 1.0} and set(torch.unique(comp.mu2).tolist()) <= {-1.0, 1.0}
    assert torch.equal(comp.fine_to_coarse.sum(1), torch.ones(24, dtype=comp.fine_to_coarse.dtype))  # one coarse parent each
    torch.testing.assert_close(comp.p2, comp.p1 @ comp.fine_to_coarse)
    torch.testing.assert_close(comp.log_pi1.exp().sum(), torch.tensor(1.0, dtype=comp.log_pi1.dtype))
    torch.testing.assert_close(comp.log_pi2.exp().sum(), torch.tensor(1.0, dtype=comp.log_pi2.dtype))
    # Coarse components follow the data's groups: items of one group share a coarse component.
    coarse = comp.p2.argmax(1)
    purity = sum(torch.bincount(coarse[labels == g]).max().item() for g in range(6)) / 600
    assert purity > 0.9


def test_small_training_set_scales_components_down():
    H, _ = clustered_codes(n=40)
    comp = components.fit_components(H, m1=1000, m2=100, max_iter=5, covariance_type="diag")
    assert comp.m1 == 8 and comp.m2 == 4


def test_components_bad_input():
    with pytest.raises(ValueError, match=r"codes must be \[N, nbits\]"):
        components.fit_components(torch.zeros(5))


@pytest.mark.parametrize("normalize", [True, False])
def test_responsibility_table_rows_equal_assign(normalize):
    # Heavily overlapping groups so that rows hold several non-zero responsibilities.
    H, _ = clustered_codes(n=301, nbits=8, groups=3, seed=5)
    H = H * 0.3
    comp = components.fit_components(H, m1=20, m2=5, covariance_type="diag", max_iter=20, normalize_p1=normalize)
    table = comp.table(H, chunk=64)  # several chunks, the last one partial
    dense = comp.assign(H)[0]
    assert table.val.numel() == int((dense > 0).sum()) and int((dense > 0).sum(1).max()) > 1
    g = torch.Generator().manual_seed(0)
    for idx in (torch.randint(0, 301, (37,), generator=g), torch.tensor([300, 0, 0, 17]), torch.arange(301)):
        p1, p2 = table.rows(idx)
        ref1, ref2 = comp.assign(H[idx])
        torch.testing.assert_close(p1, ref1, rtol=1e-12, atol=0)
        torch.testing.assert_close(p2, ref2, rtol=1e-12, atol=0)
    p1, p2 = table.rows(torch.tensor([], dtype=torch.int64))
    assert p1.shape == (0, 20) and p2.shape == (0, 5)
    # A threshold drops the small entries and keeps the rest exactly.
    cut = float(dense[dense > 0].median())
    p1 = comp.table(H, threshold=cut).rows(torch.arange(301))[0]
    torch.testing.assert_close(p1, torch.where(dense > cut, dense, torch.zeros_like(dense)), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"idx must be a 1-D tensor of row numbers in \[0, 301\)"):
        table.rows(torch.tensor([301]))
    with pytest.raises(ValueError, match=r"idx must be a 1-D tensor"):
        table.rows(torch.zeros(2, 2, dtype=torch.int64))


@pytest.mark.parametrize("seed", [0, 1])
def test_component_statistics_match_dense_reference(seed):
    H, groups = clustered_codes(n=301, seed=seed)  # odd size
    labels = groups % 3  # several groups a class: impure components exist
    comp = components.fit_components(H, m1=20, m2=5, covariance_type="diag", max_iter=20, random_state=seed)
    stats = components.component_statistics(comp, labels, batch_size=15)
    p1 = comp.p1.double()
    s = p1 @ p1.T
    off = ~torch.eye(301, dtype=torch.bool)
    assert stats["cooccurring_pairs_per_batch"] == pytest.approx(105 * s[off].mean().item(), rel=1e-9)
    same = labels[:, None] == labels[None, :]
    assert stats["same_class_share"] == pytest.approx((s[off & same].sum() / s[off].sum()).item(), rel=1e-9)
    best = p1.argmax(1)
    sizes = torch.bincount(best, minlength=comp.m1)
    assert stats["median_component_size"] == sizes.double().median().item()
    majority = sum(torch.bincount(labels[best == k]).max().item() for k in best.unique().tolist())
    assert stats["purity"] == pytest.approx(majority / 301)
    top = p1.max(1).values
    assert stats["one_hot_rows"] == pytest.approx((top >= 0.99 * p1.norm(dim=1)).double().mean().item())
    assert stats["points_per_component"] == pytest.approx(301 / comp.m1)


def test_component_statistics_of_one_component_and_no_labels():
    H, _ = clustered_codes(n=40)
    comp = components.fit_components(H, m1=1, m2=1, max_iter=5)
    stats = components.component_statistics(comp, batch_size=4)
    # One component: every pair co-occurs fully (normalised rows), so a batch of 4 has 6 pairs.
    assert stats["cooccurring_pairs_per_batch"] == pytest.approx(6.0)
    assert stats["one_hot_rows"] == 1.0 and "purity" not in stats
