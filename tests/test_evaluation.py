"""Retrieval metrics against a brute-force numpy reference (same tie-break), and the
shallow baselines."""
import numpy as np
import pytest
import torch

import hamming_reference as ref
from dsch_ext import baselines, evaluation


def reference_map(q, db, ql, dl, k):
    """Brute force: rank by (distance, index), AP@k with the retrieved-relevant denominator."""
    dist = ref.hamming_distance(q, db)
    aps, precs = [], []
    for i in range(q.shape[0]):
        order = np.lexsort((np.arange(db.shape[0]), dist[i]))[:k]
        if ql.ndim == 1:
            rel = (dl[order] == ql[i]).astype(float)
        else:
            rel = ((dl[order] & ql[i]).sum(1) > 0).astype(float)
        hits = np.cumsum(rel)
        aps.append((hits / np.arange(1, k + 1) * rel).sum() / max(hits[-1], 1))
        precs.append(hits[-1] / k)
    return float(np.mean(aps)), float(np.mean(precs))


@pytest.mark.parametrize("k", [1, 7, 100, None])
def test_map_matches_brute_force_single_label(k, device):
    rng = np.random.default_rng(0)
    db = ref.random_codes(rng, 600, 2, alphabet=50)  # many ties
    q = ref.random_codes(rng, 31, 2)
    dl = rng.integers(0, 5, 600)
    ql = rng.integers(0, 5, 31)
    kk = 600 if k is None else k
    got = evaluation.retrieval_metrics(torch.from_numpy(q).to(device), torch.from_numpy(db).to(device), ql, dl,
                                       map_at=(k,), precision_at=(kk,))
    want_map, want_p = reference_map(q, db, ql, dl, kk)
    assert got[f"mAP@{'all' if k is None else k}"] == pytest.approx(want_map, abs=1e-12)
    assert got[f"P@{kk}"] == pytest.approx(want_p, abs=1e-12)


def test_map_multi_label_and_float_codes():
    rng = np.random.default_rng(1)
    dbf = rng.standard_normal((400, 24))
    qf = rng.standard_normal((20, 24))
    dl = rng.random((400, 6)) < 0.3
    ql = rng.random((20, 6)) < 0.3
    got = evaluation.mean_average_precision(qf, dbf, ql, dl, k=50)
    want, _ = reference_map(ref.pack_bits(qf), ref.pack_bits(dbf), ql, dl, 50)
    assert got == pytest.approx(want, abs=1e-12)


def test_precision_recall_curve():
    rng = np.random.default_rng(2)
    db = ref.random_codes(rng, 300, 1)
    q = ref.random_codes(rng, 9, 1)
    dl = rng.integers(0, 3, 300)
    ql = rng.integers(0, 3, 9)
    radius, precision, recall = evaluation.precision_recall_curve(q, db, ql, dl, db_chunk=77)
    dist = ref.hamming_distance(q, db)
    for r in (0, 3, 8):
        p, rc = [], []
        for i in range(9):
            sel = dist[i] <= r
            rel = dl == ql[i]
            p.append((sel & rel).sum() / sel.sum() if sel.sum() else 0.0)
            rc.append((sel & rel).sum() / rel.sum())
        assert precision[r] == pytest.approx(np.mean(p)) and recall[r] == pytest.approx(np.mean(rc))
    assert recall[-1] == pytest.approx(1.0)


def test_metric_bad_input():
    q = np.zeros((3, 8))
    with pytest.raises(ValueError, match=r"query_labels must be \[3\] class ids"):
        evaluation.mean_average_precision(q, q, np.zeros(4), np.zeros(3))


@pytest.mark.parametrize("method", [baselines.LSH, baselines.PCAH, baselines.ITQ])
def test_baselines_encode_and_rank_structure(method, device):
    # Well-separated classes in few dimensions: every baseline should retrieve its own class.
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((6, 12)) * 8
    labels = rng.integers(0, 6, 600)
    X = torch.from_numpy(centers[labels] + rng.standard_normal((600, 12))).to(device)
    model = method(16 if method is baselines.LSH else 8, random_state=0).fit(X)
    codes = model.encode(X)
    assert codes.shape == (600, model.nbits) and set(torch.unique(codes).tolist()) <= {-1.0, 1.0}
    assert torch.equal(model.encode(X), codes)  # deterministic
    score = evaluation.mean_average_precision(codes[:50], codes[50:], labels[:50], labels[50:], k=50)
    assert score > 0.8


def test_itq_rotation_is_orthogonal_and_reduces_quantisation_error():
    rng = np.random.default_rng(4)
    X = torch.from_numpy(rng.standard_normal((2000, 20)) @ rng.standard_normal((20, 20)))
    itq = baselines.ITQ(8, random_state=0).fit(X)
    R = itq.rotation_
    torch.testing.assert_close(R.t() @ R, torch.eye(8, dtype=R.dtype), atol=1e-8, rtol=0)
    pcah = baselines.PCAH(8).fit(X)
    V = (X - itq.mean_) @ pcah.projection_

    def quantisation_error(rot):
        P = V @ rot
        return float(((torch.sign(P) - P) ** 2).sum())

    assert quantisation_error(R) < quantisation_error(torch.eye(8, dtype=R.dtype))


def test_baselines_bad_input():
    with pytest.raises(ValueError, match="nbits=40 exceeds the number of features 30"):
        baselines.PCAH(40).fit(np.zeros((10, 30)) + np.arange(30))
    with pytest.raises(ValueError, match="not fitted"):  # NotFittedError
        baselines.ITQ(8).encode(np.zeros((2, 8)))
