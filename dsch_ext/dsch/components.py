"""DSCH's E-step: the semantic components of the current continuous codes (docs/method.md).

``fit_components(H, ...)`` takes the codes ``H = tanh(f(x))`` of all training items (computed in
eval mode, without augmentation) and returns:

- fine components: a Gaussian mixture (full covariance by default, k-means initialisation,
  scikit-learn's defaults ``max_iter=100``, ``reg_covar=1e-6``) fitted with
  :class:`dsch_ext.GaussianMixture`; ``P1 [N, m1]`` its responsibilities (rows optionally
  L2-normalised, as the reference code does on CIFAR-10), ``mu1 = sign(means)`` and
  ``pi1 = weights``;
- coarse components: :class:`dsch_ext.KMeans` with ``m2`` clusters on the continuous GMM means;
  ``P21 [m1, m2]`` the one-hot assignment of each fine component, ``mu2 = sign(centres)``,
  ``pi2 = 1 / m2``, and ``P2 = P1 @ P21``.

Small training sets: ``m1`` is capped at ``N // min_points_per_component`` (default 5 points
per fine component) and ``m2`` at ``m1 // 2``, so the mixture never has more components than
the data can support; the caps are reported in ``Components.m1`` / ``.m2``.
The co-occurrence ``S = P1 P1^T`` is never formed here: the M-step takes its batch rows
(``dsch_ext.dsch.losses.batch_cooccurrence``).

The codes stay fixed for a round, so the M-step looks the batch rows of P1 up in a
:class:`ResponsibilityTable` computed once per round (``Components.table``): P1's non-zero
entries as sparse rows. Evaluating a full-covariance mixture of 900 components for every batch
of 15 cost more than the network's own step at 64 bits (53 ms against 32 ms on one thread).
"""
import warnings
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from ..cluster import KMeans
from ..distributed.comm import get_communicator
from ..mixture import GaussianMixture


@dataclass
class ResponsibilityTable:
    """P1 of a fixed set of codes as sparse rows (CSR: ``crow [N + 1]``, ``col`` and ``val``
    ``[nnz]``), entries below ``threshold`` dropped. ``rows(idx)`` gives the dense ``(P1, P2)``
    rows of items ``idx`` (``P2 = P1 @ P21``), the same values ``Components.assign`` gives."""

    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    fine_to_coarse: torch.Tensor  # [m1, m2], the paper's P21

    def rows(self, idx: torch.Tensor):
        idx = torch.as_tensor(idx, dtype=torch.int64, device=self.crow.device)
        if idx.dim() != 1 or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.crow.numel() - 1)):
            raise ValueError(f"idx must be a 1-D tensor of row numbers in [0, {self.crow.numel() - 1}), got "
                             f"shape {tuple(idx.shape)}")
        starts = self.crow[idx]
        lengths = self.crow[idx + 1] - starts
        row_of = torch.repeat_interleave(torch.arange(idx.numel(), device=idx.device), lengths)
        first = torch.cumsum(lengths, 0) - lengths  # where each row's entries start in the output
        pos = starts[row_of] + torch.arange(row_of.numel(), device=idx.device) - first[row_of]
        p1 = torch.zeros((idx.numel(), self.fine_to_coarse.shape[0]), dtype=self.val.dtype, device=self.val.device)
        p1[row_of, self.col[pos]] = self.val[pos]
        return p1, p1 @ self.fine_to_coarse.to(p1.dtype)


@dataclass
class Components:
    gmm: GaussianMixture  # the fine mixture
    mu1: torch.Tensor  # [m1, nbits] sign of the GMM means
    log_pi1: torch.Tensor  # [m1]
    fine_to_coarse: torch.Tensor  # [m1, m2] one-hot: the coarse component of each fine one (the paper's P21)
    mu2: torch.Tensor  # [m2, nbits]
    log_pi2: torch.Tensor  # [m2]
    m1: int
    m2: int
    gmm_lower_bound: float
    gmm_iterations: int
    normalize_p1: bool
    codes: torch.Tensor  # the codes the components were fitted on (this rank's, when sharded)

    def assign(self, codes: torch.Tensor):
        """``(P1, P2)`` rows for ``codes`` ``[n, nbits]``: the fine responsibilities (rows
        L2-normalised if ``normalize_p1``) and ``P1 @ P21``. The trainer calls it through
        :meth:`table`, once a round, in chunks."""
        p1 = self.gmm.predict_proba(codes)
        if self.normalize_p1:
            p1 = torch.nn.functional.normalize(p1, dim=1)
        return p1, p1 @ self.fine_to_coarse

    def table(self, codes: torch.Tensor, threshold: float = 0.0, chunk: int = 4096) -> ResponsibilityTable:
        """P1 of ``codes`` ``[N, nbits]`` computed once (in chunks of ``chunk`` rows) and kept as
        sparse rows; entries below ``threshold`` are dropped (the trainer passes the mixture's
        ``resp_threshold``, below which its M-step already ignores a responsibility)."""
        crow, cols, vals = [torch.zeros(1, dtype=torch.int64, device=codes.device)], [], []
        for start in range(0, codes.shape[0], chunk):
            p1 = self.assign(codes[start : start + chunk])[0]
            keep = p1 > threshold
            r, c = keep.nonzero(as_tuple=True)
            cols.append(c)
            vals.append(p1[r, c])
            crow.append(keep.sum(1))
        crow = torch.cumsum(torch.cat(crow), 0)
        return ResponsibilityTable(crow, torch.cat(cols), torch.cat(vals), self.fine_to_coarse)

    @property
    def p1(self) -> torch.Tensor:
        """``[N, m1]`` P1 of the fitted codes."""
        return self.assign(self.codes)[0]

    @property
    def p2(self) -> torch.Tensor:
        """``[N, m2]`` P2 of the fitted codes."""
        return self.assign(self.codes)[1]


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)  # sign(0) = +1: centres stay binary


def fit_components(codes: torch.Tensor, m1: int = 1000, m2: int = 100, covariance_type: str = "full",
                   max_iter: int = 100, reg_covar: float = 1e-6, normalize_p1: bool = True, tol: float = 1e-3,
                   resp_threshold: float = 1e-8, min_points_per_component: int = 5, random_state: int = 0,
                   verbose: int = 0, distributed: bool = False, process_group=None) -> Components:
    """The E-step on codes ``[N, nbits]`` (see the module docstring). With ``distributed``
    every rank passes its shard of the codes; the mixture is fitted across ranks (see
    :class:`dsch_ext.GaussianMixture`) and every rank gets the same components."""
    if codes.dim() != 2 or codes.shape[0] < 1:
        raise ValueError(f"codes must be [N, nbits] with N >= 2, got shape {tuple(codes.shape)}")
    n = sum(get_communicator(distributed, process_group).sizes(codes.shape[0]))
    if n < 2:
        raise ValueError(f"codes must be [N, nbits] with N >= 2, got shape {tuple(codes.shape)}")
    m1 = max(1, min(m1, n // max(1, min_points_per_component)))
    m2 = max(1, min(m2, max(1, m1 // 2)))
    gmm = GaussianMixture(m1, covariance_type=covariance_type, max_iter=max_iter, reg_covar=reg_covar, tol=tol,
                          random_state=random_state, resp_threshold=resp_threshold, verbose=verbose,
                          distributed=distributed, process_group=process_group)
    with warnings.catch_warnings():
        # Not converging within max_iter is normal in an EM round; the bound is reported instead.
        warnings.simplefilter("ignore", category=UserWarning)
        gmm.fit(codes)
    # The means are the same on every rank: the coarse KMeans runs locally, identically.
    km = KMeans(m2, n_init=1, random_state=random_state).fit(gmm.means_)
    fine_to_coarse = torch.nn.functional.one_hot(km.labels_, m2).to(gmm.means_.dtype)
    return Components(
        gmm=gmm, mu1=_sign(gmm.means_), log_pi1=torch.log(gmm.weights_), fine_to_coarse=fine_to_coarse,
        mu2=_sign(km.cluster_centers_), log_pi2=torch.full((m2,), -float(torch.log(torch.tensor(float(m2)))),
                                                          dtype=fine_to_coarse.dtype, device=fine_to_coarse.device),
        m1=m1, m2=m2, gmm_lower_bound=float(gmm.lower_bound_), gmm_iterations=int(gmm.n_iter_),
        normalize_p1=normalize_p1, codes=codes,
    )


def component_statistics(components: Components, labels: Optional[torch.Tensor] = None,
                         batch_size: int = 15, threshold: float = 0.0) -> Dict[str, float]:
    """How much the fitted components can tell the M-step, from P1 of the codes they were
    fitted on: ``points_per_component`` (N / m1), ``median_component_size`` (points whose most
    likely component it is; empty ones counted), ``one_hot_rows`` (fraction of P1 rows whose
    largest entry is >= 0.99 of the row's norm), ``cooccurring_pairs_per_batch`` (the expected
    off-diagonal mass of ``S = P1 P1^T`` over the pairs of a random batch of ``batch_size``:
    with none, L_ic is plain NT-Xent) and, given single-class ``labels``, ``purity`` (share of
    points in their component's majority class) and ``same_class_share`` of that S mass."""
    table = components.table(components.codes, threshold=threshold)
    n, m1 = components.codes.shape[0], components.m1
    row = torch.repeat_interleave(torch.arange(n, device=table.crow.device), table.crow.diff())
    val = table.val.double()
    norms = torch.zeros(n, dtype=torch.float64, device=val.device).index_add_(0, row, val * val).sqrt()
    best = torch.full((n,), -1.0, dtype=torch.float64, device=val.device).scatter_reduce_(0, row, val, "amax")
    is_best = val == best[row]
    best_col = torch.full((n,), m1 - 1, dtype=torch.int64, device=val.device).scatter_reduce_(
        0, row[is_best], table.col[is_best], "amin")  # the most likely component; ties: the lower one
    sizes = torch.bincount(best_col, minlength=m1)

    def off_diagonal_mass(rows_mask):
        sums = torch.zeros(m1, dtype=torch.float64, device=val.device).index_add_(
            0, table.col[rows_mask[row]], val[rows_mask[row]])
        return float((sums * sums).sum() - (norms[rows_mask] ** 2).sum())

    pairs = n * (n - 1)
    total = off_diagonal_mass(torch.ones(n, dtype=torch.bool, device=val.device))
    stats = {"points": n, "m1": m1, "m2": components.m2, "points_per_component": n / m1,
             "median_component_size": float(sizes.double().median()),
             "one_hot_rows": float((best >= 0.99 * norms).double().mean()),
             "cooccurring_pairs_per_batch": batch_size * (batch_size - 1) / 2 * (total / pairs if pairs else 0.0)}
    if labels is not None and labels.dim() == 1:
        labels = labels.to(val.device)
        joint = torch.zeros((m1, int(labels.max()) + 1), dtype=torch.float64, device=val.device)
        joint.index_put_((best_col, labels), torch.ones(n, dtype=torch.float64, device=val.device), accumulate=True)
        stats["purity"] = float(joint.max(1).values.sum() / n)
        same = sum(off_diagonal_mass(labels == c) for c in torch.unique(labels).tolist())
        stats["same_class_share"] = same / total if total > 0 else float("nan")
    return stats
