"""Codes given as values or as packed bytes, turned into packed codes: the one conversion that
BinaryIndex, the sharded index and the evaluation functions share."""
from typing import Optional

import numpy as np
import torch

from ._validation import ArrayLike, as_tensor
from .ops import pack_bits


def packed_codes(codes: ArrayLike, name: str, nbits: Optional[int] = None) -> torch.Tensor:
    """uint8 ``[n, ceil(nbits / 8)]`` packed codes from ``codes``: values ``[n, nbits]``
    (float / bool / int, > 0 is bit 1) are packed, uint8 packed codes pass as they are.
    Without ``nbits`` every uint8 matrix counts as packed; with it, a uint8 matrix is packed
    codes only when its width is the packed width and not ``nbits`` itself, and any other
    width is a ValueError naming ``name``, its shape and the two accepted shapes."""
    t = codes if isinstance(codes, torch.Tensor) else as_tensor(np.asarray(codes), name)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if nbits is None:
        return t if t.dtype == torch.uint8 else pack_bits(t)
    code_bytes = (nbits + 7) // 8
    if t.shape[0] == 0:
        return torch.empty((0, code_bytes), dtype=torch.uint8, device=t.device)
    if t.dtype == torch.uint8 and t.shape[1] == code_bytes and code_bytes != nbits:
        return t
    if t.shape[1] == nbits:
        return pack_bits(t)
    raise ValueError(f"{name} of shape {tuple(t.shape)} and dtype {t.dtype} does not fit a {nbits}-bit index: give "
                     f"[n, {nbits}] codes (float/bool/int, > 0 is bit 1) or uint8 [n, {code_bytes}] packed codes")
