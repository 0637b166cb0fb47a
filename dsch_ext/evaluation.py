"""Retrieval evaluation of binary codes: mAP@k, precision@k and precision-recall curves.

Ranking uses the ``hamming_topk`` kernel (ties to the lower database index, on every
backend), never a full ``argsort`` of the query x database matrix. Relevant means "shares a
label": labels are integer class ids ``[n]`` or multi-hot ``[n, C]`` (multi-label data).

mAP@k follows the definition used across the deep-hashing literature (and DSCH's evaluation):
for each query, AP@k = (1 / R_k) * sum_{i <= k} P@i * rel_i, where R_k is the number of
relevant items among the top k (AP is 0 when there are none); mAP@k is the mean over queries.
``k=None`` ranks the whole database (mAP@all).
"""
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ._packed import packed_codes
from ._validation import ArrayLike, as_tensor
from .ops import hamming_distance, hamming_topk


def _labels(labels: ArrayLike, n: int, name: str) -> torch.Tensor:
    t = labels if isinstance(labels, torch.Tensor) else as_tensor(np.asarray(labels), name)
    if t.shape[0] != n or t.dim() not in (1, 2):
        raise ValueError(f"{name} must be [{n}] class ids or [{n}, C] multi-hot, got shape {tuple(t.shape)}")
    return t


def _relevance(q_labels: torch.Tensor, db_labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rel[i, j] = query i shares a label with database item index[i, j]."""
    if q_labels.dim() == 1:
        return db_labels[index] == q_labels[:, None]
    return (db_labels[index].float() * q_labels[:, None, :].float()).sum(-1) > 0


def _relevant_totals(q_labels: torch.Tensor, db_labels: torch.Tensor) -> torch.Tensor:
    if q_labels.dim() == 1:
        counts = torch.bincount(db_labels.long(), minlength=int(max(db_labels.max(), q_labels.max())) + 1)
        return counts[q_labels.long()]
    return ((q_labels.float() @ db_labels.float().t()) > 0).sum(1)


def retrieval_metrics(query_codes: ArrayLike, db_codes: ArrayLike, query_labels: ArrayLike, db_labels: ArrayLike,
                      map_at: Sequence[Optional[int]] = (1000, 5000, None),
                      precision_at: Sequence[int] = (100, 1000), query_chunk: int = 256) -> Dict[str, float]:
    """mAP@k for every k in ``map_at`` (None = all) and precision@k for ``precision_at``.

    Codes are ±1 / real values ([n, nbits], > 0 is bit 1) or packed uint8. Returns a dict such
    as ``{"mAP@1000": ..., "mAP@all": ..., "P@100": ...}``; every k is clamped to the
    database size.
    """
    q = packed_codes(query_codes, "query_codes")
    db = packed_codes(db_codes, "db_codes").to(q.device)
    ql = _labels(query_labels, q.shape[0], "query_labels").to(q.device)
    dl = _labels(db_labels, db.shape[0], "db_labels").to(q.device)
    ndb = db.shape[0]
    ks = [ndb if k is None else min(int(k), ndb) for k in map_at]
    pks = [min(int(k), ndb) for k in precision_at]
    kmax = max(ks + pks)
    sums = {k: 0.0 for k in set(ks)}
    psums = {k: 0.0 for k in set(pks)}
    for start in range(0, q.shape[0], query_chunk):
        _, index = hamming_topk(q[start : start + query_chunk], db, kmax)
        rel = _relevance(ql[start : start + query_chunk], dl, index).double()
        hits = torch.cumsum(rel, 1)
        ranks = torch.arange(1, kmax + 1, device=rel.device, dtype=torch.float64)
        prec_at_i = hits / ranks
        for k in sums:
            retrieved = hits[:, k - 1]
            ap = (prec_at_i[:, :k] * rel[:, :k]).sum(1) / retrieved.clamp(min=1)
            sums[k] += float(ap.sum())
        for k in psums:
            psums[k] += float((hits[:, k - 1] / k).sum())
    nq = q.shape[0]
    out = {}
    for k_req, k in zip(map_at, ks):
        out[f"mAP@{'all' if k_req is None else k_req}"] = sums[k] / nq
    for k_req, k in zip(precision_at, pks):
        out[f"P@{k_req}"] = psums[k] / nq
    return out


def mean_average_precision(query_codes: ArrayLike, db_codes: ArrayLike, query_labels: ArrayLike,
                           db_labels: ArrayLike, k: Optional[int] = 1000) -> float:
    """mAP@k (``k=None``: over the whole ranking). See the module docstring."""
    key = f"mAP@{'all' if k is None else k}"
    return retrieval_metrics(query_codes, db_codes, query_labels, db_labels, map_at=(k,), precision_at=())[key]


def precision_recall_curve(query_codes: ArrayLike, db_codes: ArrayLike, query_labels: ArrayLike,
                           db_labels: ArrayLike, query_chunk: int = 64, db_chunk: int = 1 << 18):
    """Precision and recall of Hamming-ball retrieval at every radius 0..nbits, averaged over
    queries (the usual hashing PR curve). Returns ``(radius, precision, recall)`` numpy arrays;
    a radius that retrieves nothing for a query counts that query's precision as 0."""
    q = packed_codes(query_codes, "query_codes")
    db = packed_codes(db_codes, "db_codes").to(q.device)
    ql = _labels(query_labels, q.shape[0], "query_labels").to(q.device)
    dl = _labels(db_labels, db.shape[0], "db_labels").to(q.device)
    nbins = q.shape[1] * 8 + 1
    total_rel = _relevant_totals(ql, dl).double().cpu()
    prec_sum = np.zeros(nbins)
    rec_sum = np.zeros(nbins)
    for qs in range(0, q.shape[0], query_chunk):
        qc = q[qs : qs + query_chunk]
        nqc = qc.shape[0]
        hist_all = torch.zeros((nqc, nbins), dtype=torch.float64, device=q.device)
        hist_rel = torch.zeros_like(hist_all)
        for ds in range(0, db.shape[0], db_chunk):
            d = hamming_distance(qc, db[ds : ds + db_chunk]).long()
            idx = torch.arange(ds, ds + d.shape[1], device=q.device).expand(nqc, -1)
            rel = _relevance(ql[qs : qs + nqc], dl, idx).double()
            hist_all.scatter_add_(1, d, torch.ones_like(rel))
            hist_rel.scatter_add_(1, d, rel)
        cum_all = torch.cumsum(hist_all, 1).cpu().numpy()
        cum_rel = torch.cumsum(hist_rel, 1).cpu().numpy()
        tr = total_rel[qs : qs + nqc].numpy()[:, None]
        prec_sum += np.where(cum_all > 0, cum_rel / np.maximum(cum_all, 1), 0.0).sum(0)
        rec_sum += np.where(tr > 0, cum_rel / np.maximum(tr, 1), 0.0).sum(0)
    nq = q.shape[0]
    return np.arange(nbins), prec_sum / nq, rec_sum / nq


def evaluate_codes(query_codes: ArrayLike, db_codes: ArrayLike, query_labels: ArrayLike, db_labels: ArrayLike,
                   curve: bool = True) -> Dict:
    """A run record's evaluation: ``{"metrics": retrieval_metrics(...)}`` and, with ``curve``,
    ``"pr_curve": {"precision": [...], "recall": [...]}`` (plain lists, for JSON)."""
    out = {"metrics": retrieval_metrics(query_codes, db_codes, query_labels, db_labels)}
    if curve:
        _, precision, recall = precision_recall_curve(query_codes, db_codes, query_labels, db_labels)
        out["pr_curve"] = {"precision": precision.tolist(), "recall": recall.tolist()}
    return out
