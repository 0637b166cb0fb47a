"""The kernels as Python functions, plus their fake (meta) kernels.

Each function validates what only Python can (converting numpy input), calls
``torch.ops.dsch_ext.<op>.default`` and returns its result. The kernels check their inputs
themselves and raise ``RuntimeError`` naming the argument and its shape. The fake kernels
give ``torch.compile(fullgraph=True)`` output shapes and dtypes without running anything.
Nothing here holds algorithm logic.
"""
from typing import Tuple, Union

import numpy as np
import torch

from . import _library  # noqa: F401  (registers torch.ops.dsch_ext)

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def pack_bits(codes: ArrayLike) -> torch.Tensor:
    """Pack binary codes into bytes, faiss's layout.

    Args:
        codes: ``[N, B]`` float, integer or bool tensor; a value is the bit 1 when it is
            ``> 0`` (``True`` for bool), so ``sign`` codes and ``{0, 1}`` codes both work.
            NaN is an error.

    Returns:
        ``uint8 [N, ceil(B / 8)]``: bit ``i`` of byte ``j`` is dimension ``8 j + i``; the
        unused high bits of the last byte are 0. ``faiss.IndexBinaryFlat`` reads it as is.
    """
    return torch.ops.dsch_ext.pack_bits.default(_as_tensor(codes, "codes"))


def unpack_bits(packed: ArrayLike, nbits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``uint8 [N, ceil(nbits / 8)]`` -> ``float32 [N, nbits]``
    of ``+1`` / ``-1``."""
    return torch.ops.dsch_ext.unpack_bits.default(_as_tensor(packed, "packed"), int(nbits))


def hamming_distance(queries: ArrayLike, database: ArrayLike) -> torch.Tensor:
    """All Hamming distances between packed codes.

    Args:
        queries: ``uint8 [nq, W]`` packed codes.
        database: ``uint8 [ndb, W]`` packed codes, same ``W`` and device.

    Returns:
        ``int32 [nq, ndb]``. Memory grows as ``nq * ndb``: use :func:`hamming_topk` to rank.
    """
    return torch.ops.dsch_ext.hamming_distance.default(
        _as_tensor(queries, "queries"), _as_tensor(database, "database")
    )


def hamming_topk(queries: ArrayLike, database: ArrayLike, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact ``k`` nearest database codes of each query by Hamming distance.

    Args:
        queries: ``uint8 [nq, W]`` packed codes (any ``W``; 16-1024-bit codes have fast paths).
        database: ``uint8 [ndb, W]`` packed codes on the same device.
        k: ``1 <= k <= ndb``; large ``k`` (mAP@5000) costs about the same as small ``k``.

    Returns:
        ``(distances int32 [nq, k], indices int64 [nq, k])`` sorted by distance; equal
        distances are ordered by lower database index, identically on every backend.
    """
    return torch.ops.dsch_ext.hamming_topk.default(
        _as_tensor(queries, "queries"), _as_tensor(database, "database"), int(k)
    )


# Fake kernels: shapes and dtypes only, for torch.compile and meta tensors.


@torch.library.register_fake("dsch_ext::pack_bits")
def _pack_bits_fake(codes):
    torch._check(codes.dim() == 2, lambda: f"codes must be 2-D, got shape {tuple(codes.shape)}")
    return codes.new_empty((codes.shape[0], (codes.shape[1] + 7) // 8), dtype=torch.uint8)


@torch.library.register_fake("dsch_ext::unpack_bits")
def _unpack_bits_fake(packed, nbits):
    torch._check(packed.dim() == 2, lambda: f"packed must be 2-D, got shape {tuple(packed.shape)}")
    return packed.new_empty((packed.shape[0], nbits), dtype=torch.float32)


@torch.library.register_fake("dsch_ext::hamming_distance")
def _hamming_distance_fake(queries, database):
    torch._check(queries.shape[1] == database.shape[1], lambda: "code widths differ")
    return queries.new_empty((queries.shape[0], database.shape[0]), dtype=torch.int32)


@torch.library.register_fake("dsch_ext::hamming_topk")
def _hamming_topk_fake(queries, database, k):
    torch._check(queries.shape[1] == database.shape[1], lambda: "code widths differ")
    torch._check(1 <= k, lambda: f"k must be >= 1, got {k}")
    torch._check(k <= database.shape[0], lambda: f"k must be <= ndb, got {k}")
    return (
        queries.new_empty((queries.shape[0], k), dtype=torch.int32),
        queries.new_empty((queries.shape[0], k), dtype=torch.int64),
    )
