"""faiss's id selectors and search parameters for the binary flat indexes: which ids a search,
a range search or ``remove_ids`` considers. A selector answers for a whole array of ids at once
(:meth:`IDSelector.mask`); ``is_member`` answers for one, as in faiss. On an
``IndexBinaryFlat`` the ids are positions; on the ID maps they are the user's ids."""
from typing import Optional

import numpy as np


def _id_array(ids, name: str) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or not (a.dtype.kind in "iu" or a.size == 0):
        raise TypeError(f"{name} must be a 1-D array of integer ids, got dtype {a.dtype} with shape {a.shape}")
    return a.astype(np.int64, copy=False)


class IDSelector:
    """The base: a set of ids."""

    def mask(self, ids: np.ndarray) -> np.ndarray:
        """bool ``[n]``: which of ``ids`` (int64 ``[n]``) are selected."""
        raise NotImplementedError

    def is_member(self, i: int) -> bool:
        return bool(self.mask(np.array([i], dtype=np.int64))[0])


class IDSelectorAll(IDSelector):
    def mask(self, ids):
        return np.ones(ids.shape[0], dtype=bool)


class IDSelectorRange(IDSelector):
    """``imin <= id < imax``."""

    def __init__(self, imin: int, imax: int, assume_sorted: bool = False):
        self.imin, self.imax, self.assume_sorted = int(imin), int(imax), bool(assume_sorted)

    def mask(self, ids):
        return (ids >= self.imin) & (ids < self.imax)


class IDSelectorBatch(IDSelector):
    """The ids of an array: ``IDSelectorBatch(ids)`` or faiss's ``IDSelectorBatch(n, ids)``."""

    def __init__(self, n_or_ids, ids=None):
        chosen = _id_array(n_or_ids if ids is None else ids, "ids")
        if ids is not None:
            chosen = chosen[: int(n_or_ids)]
        self._ids = np.unique(chosen)

    def mask(self, ids):
        return np.isin(ids, self._ids)


class IDSelectorArray(IDSelectorBatch):
    """faiss's selector for a small array of ids: here the same as :class:`IDSelectorBatch`."""


class IDSelectorBitmap(IDSelector):
    """Id ``i`` is selected when bit ``i % 8`` of byte ``i // 8`` of the bitmap is set
    (``np.packbits(..., bitorder="little")``); ids past the bitmap are not.
    ``IDSelectorBitmap(bitmap)`` or faiss's ``IDSelectorBitmap(n, bitmap)``."""

    def __init__(self, n_or_bitmap, bitmap=None):
        bits = np.asarray(n_or_bitmap if bitmap is None else bitmap)
        if bits.dtype != np.uint8 or bits.ndim != 1:
            raise TypeError(f"bitmap must be a 1-D uint8 array, got dtype {bits.dtype} with shape {bits.shape}")
        self._bits = bits[: int(n_or_bitmap)] if bitmap is not None else bits

    def mask(self, ids):
        out = np.zeros(ids.shape[0], dtype=bool)
        inside = (ids >= 0) & (ids < 8 * self._bits.shape[0])
        where = ids[inside]
        out[inside] = ((self._bits[where >> 3] >> (where & 7)) & 1).astype(bool)
        return out


class IDSelectorNot(IDSelector):
    def __init__(self, sel: IDSelector):
        self.sel = _selector(sel, "sel")

    def mask(self, ids):
        return ~self.sel.mask(ids)


class _IDSelectorPair(IDSelector):
    def __init__(self, lhs: IDSelector, rhs: IDSelector):
        self.lhs, self.rhs = _selector(lhs, "lhs"), _selector(rhs, "rhs")


class IDSelectorAnd(_IDSelectorPair):
    def mask(self, ids):
        return self.lhs.mask(ids) & self.rhs.mask(ids)


class IDSelectorOr(_IDSelectorPair):
    def mask(self, ids):
        return self.lhs.mask(ids) | self.rhs.mask(ids)


class IDSelectorXOr(_IDSelectorPair):
    def mask(self, ids):
        return self.lhs.mask(ids) ^ self.rhs.mask(ids)


def _selector(sel, name: str) -> IDSelector:
    if not isinstance(sel, IDSelector):
        raise TypeError(f"{name} must be an IDSelector of dsch_ext.faiss_compat, got {type(sel).__name__}")
    return sel


class SearchParameters:
    """faiss's search parameters: ``sel``, an :class:`IDSelector` (None: every id)."""

    def __init__(self, sel: Optional[IDSelector] = None):
        self.sel = None if sel is None else _selector(sel, "sel")


def selector_of(params: Optional[SearchParameters]) -> Optional[IDSelector]:
    """The selector of ``params`` (None when it selects everything)."""
    if params is None:
        return None
    if not isinstance(params, SearchParameters):
        raise TypeError(f"params must be a SearchParameters of dsch_ext.faiss_compat, got {type(params).__name__}")
    return None if isinstance(params.sel, IDSelectorAll) else params.sel
