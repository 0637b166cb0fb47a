"""DSCH's M-step losses (docs/method.md, "The M-step losses"): instance correlation and component correlation.

Notation: a batch holds B images with two augmented views each; ``h`` stacks the 2B codes with
view one of image b at row b and view two at row b + B. ``tau`` is the temperature.

- ``instance_correlation_loss`` (L_ic): a co-occurrence weighted contrastive loss,
  ``-(1/2B) sum_i sum_{j != i} s~_ij log softmax_{k != i}(cos(h_i, h_k) / tau)_j``, where
  ``s~`` is the co-occurrence S restricted to the batch, with the two views of one image counted
  as ``s = 1``, and each row normalised to sum to one over ``j != i``. With ``S = I`` (``s=None``)
  this is NT-Xent, the contrastive baseline.
- ``component_correlation_loss`` (L_ccf with fine components, L_ccc with coarse ones):
  ``-(1/2B) sum_i sum_k p_ik log softmax_k(log pi_k + cos(h_i, mu_k) / tau)``, the cross-entropy
  between an image's responsibilities and the prior-weighted softmax over component centres.
  The cosines come from ``center_distances(h, mu, 'cosine')`` (kernel with its own backward).

Choices the paper leaves open, made here: self pairs are excluded from L_ic's softmax and
targets; S's rows are normalised after the two-view pairs are set to 1 (so an image whose
responsibilities are nearly disjoint from the rest of the batch still has its positive pair);
the co-occurrence of a batch is computed from its rows of P1 only (never an N x N matrix).
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..ops import center_distances


def batch_cooccurrence(p1: torch.Tensor) -> torch.Tensor:
    """S restricted to a batch: ``p1 @ p1.T`` for the batch's rows of P1 ([B, K] -> [B, B]).
    With L2-normalised rows this is the cosine of the responsibility vectors."""
    return p1 @ p1.t()


def _pair_targets(s: Optional[torch.Tensor], batch: int, device, dtype) -> torch.Tensor:
    """[2B, 2B] targets: S tiled over the two views, the two-view pairs set to 1, no self pairs,
    each row normalised over j != i."""
    n = 2 * batch
    if s is None:
        targets = torch.zeros((n, n), device=device, dtype=dtype)
    else:
        if s.shape != (batch, batch):
            raise ValueError(f"s must be [B, B] = [{batch}, {batch}] for {n} codes, got shape {tuple(s.shape)}")
        targets = s.to(dtype).repeat(2, 2).clamp(min=0)
    idx = torch.arange(batch, device=device)
    targets[idx, idx + batch] = 1
    targets[idx + batch, idx] = 1
    targets.fill_diagonal_(0)
    return targets / targets.sum(1, keepdim=True)


def instance_correlation_loss(h: torch.Tensor, s: Optional[torch.Tensor] = None, tau: float = 1.0) -> torch.Tensor:
    """L_ic for codes ``h`` [2B, nbits] and batch co-occurrence ``s`` [B, B] (None: S = I,
    i.e. NT-Xent)."""
    if h.dim() != 2 or h.shape[0] % 2 or h.shape[0] < 2:
        raise ValueError(f"h must be [2B, nbits] (two views per image), got shape {tuple(h.shape)}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    batch = h.shape[0] // 2
    z = F.normalize(h, dim=1, eps=1e-8)
    logits = (z @ z.t()) / tau
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=h.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = torch.log_softmax(logits, dim=1).masked_fill(self_mask, 0.0)
    targets = _pair_targets(s, batch, h.device, log_prob.dtype)
    return -(targets * log_prob).sum(1).mean()


def component_correlation_loss(h: torch.Tensor, p: torch.Tensor, centers: torch.Tensor, log_prior: torch.Tensor,
                               tau: float = 1.0) -> torch.Tensor:
    """L_ccf / L_ccc: ``h`` [M, nbits] codes, ``p`` [M, K] responsibilities of their images,
    ``centers`` [K, nbits] component centres (sign of the means), ``log_prior`` [K]."""
    if p.shape != (h.shape[0], centers.shape[0]):
        raise ValueError(f"p must be [M, K] = [{h.shape[0]}, {centers.shape[0]}], got shape {tuple(p.shape)}")
    if log_prior.shape != (centers.shape[0],):
        raise ValueError(f"log_prior must be [K] = [{centers.shape[0]}], got shape {tuple(log_prior.shape)}")
    cos = 1 - center_distances(h, centers.to(h.dtype), "cosine")
    log_prob = torch.log_softmax(log_prior.to(h.dtype) + cos / tau, dim=1)
    return -(p.to(h.dtype) * log_prob).sum(1).mean()


def dsch_loss(h: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, mu1: torch.Tensor, log_pi1: torch.Tensor,
              mu2: torch.Tensor, log_pi2: torch.Tensor, component_weight: float = 0.1, tau: float = 1.0,
              cooccurrence: bool = True, fine: bool = True, coarse: bool = True
              ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``L = L_ic + component_weight * (L_ccf + L_ccc)`` (the paper's lambda) for one batch.

    Args:
        h: [2B, nbits] codes (view one of image b at row b, view two at b + B).
        p1, p2: [B, m1] and [B, m2] responsibilities of the batch's images (P1, and P2 = P1 P21).
        mu1, log_pi1, mu2, log_pi2: fine / coarse centres and log priors.
        cooccurrence, fine, coarse: the ablations (S = I; no L_ccf; no L_ccc).
        ``component_weight=0`` with ``cooccurrence=False`` is the contrastive baseline.

    Returns (total, {"ic": ..., "ccf": ..., "ccc": ...}).
    """
    batch = h.shape[0] // 2
    if p1.shape[0] != batch or p2.shape[0] != batch:
        raise ValueError(f"p1 and p2 need one row per image ({batch}), got {tuple(p1.shape)} and {tuple(p2.shape)}")
    parts = {"ic": instance_correlation_loss(h, batch_cooccurrence(p1) if cooccurrence else None, tau)}
    zero = h.new_zeros(())
    weighted = component_weight != 0
    parts["ccf"] = component_correlation_loss(h, p1.repeat(2, 1), mu1, log_pi1, tau) if fine and weighted else zero
    parts["ccc"] = component_correlation_loss(h, p2.repeat(2, 1), mu2, log_pi2, tau) if coarse and weighted else zero
    return parts["ic"] + component_weight * (parts["ccf"] + parts["ccc"]), parts
