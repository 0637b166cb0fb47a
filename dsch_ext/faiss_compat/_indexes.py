"""faiss's binary flat indexes on dsch_ext's Hamming kernels: ``IndexBinaryFlat`` (ids are
positions, renumbered after ``remove_ids``), ``IndexBinaryIDMap`` and ``IndexBinaryIDMap2``
(the user's int64 ids, duplicates and negative ids allowed as in faiss).

faiss's conventions throughout: uint8 numpy codes ``[n, d / 8]`` in; numpy out (distances
int32, ids int64, ``(lims uint64, D float32, I int64)`` for range searches); k past the
candidates pads with distance 2^31 - 1 and id -1; the range search's radius is exclusive
(distance < radius); ties go to the lower position. Arguments faiss rejects with an assertion
raise :class:`ArgumentError` (both a ValueError and an AssertionError) and wrong dtypes a
TypeError, each naming the argument and its shape; what faiss's C++ refuses is a RuntimeError.

Edits replace the index's arrays instead of changing them in place (under a lock), so
searches running at the same time see the index before or after an edit, never a mixture.
"""
import threading
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .._validation import as_tensor
from ..index._range import range_search_chunks
from ._selectors import IDSelector, IDSelectorBatch, IDSelectorRange, SearchParameters, selector_of

METRIC_L2 = 1  # what faiss's binary indexes report as their metric_type (the search is Hamming)
PAD_DISTANCE = 2**31 - 1
QUERY_CHUNK = 4096  # queries per kernel call (bounds the kernels' scratch)


class ArgumentError(ValueError, AssertionError):
    """A bad argument: a ValueError like every dsch_ext argument error, and an AssertionError
    like faiss's own checks of the same arguments."""


def _int_arg(value, name: str, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(f"{name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ArgumentError(f"{name} must be an int >= {low}, got {value}")
    return int(value)


def _codes_arg(x, code_size: int, name: str, device: torch.device) -> torch.Tensor:
    """uint8 ``[n, code_size]`` codes on ``device`` from a numpy array (or a tensor)."""
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
    if x.dtype not in (np.uint8, torch.uint8):
        raise TypeError(f"{name} must be packed codes, uint8 [n, {code_size}]; got dtype {x.dtype} with shape "
                        f"{tuple(x.shape)}")
    if x.ndim != 2 or x.shape[1] != code_size:
        raise ArgumentError(f"{name} must be uint8 [n, {code_size}] (d = {8 * code_size} bits), got shape "
                            f"{tuple(x.shape)}")
    t = x.detach() if isinstance(x, torch.Tensor) else as_tensor(x, name)
    return t.to(device).contiguous()


def _ids_arg(ids, n: int) -> np.ndarray:
    a = np.asarray(ids)
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
        raise TypeError(f"xids must be int64 ids, got dtype {a.dtype} with shape {a.shape}")
    if a.shape != (n,):
        raise ArgumentError(f"xids must be [{n}] (one id per code), got shape {a.shape}")
    return a.astype(np.int64)


class IndexBinaryFlat:
    """Exact Hamming search over ``d``-bit codes (``d`` a multiple of 8), faiss's
    ``IndexBinaryFlat``; ``device`` (an extension) is where the codes live and search runs."""

    def __init__(self, d: int = 0, device: Union[str, torch.device] = "cpu"):
        d = _int_arg(d, "d", 0)
        if d % 8:
            raise ArgumentError(f"d must be a multiple of 8 (bits of whole bytes), got {d}")
        self.d, self.code_size = d, d // 8
        self.is_trained, self.metric_type, self.verbose = True, METRIC_L2, False
        self.use_heap, self.query_batch_size = True, 32  # faiss's tuning knobs: accepted, no effect here
        self.thisown = True  # SWIG's ownership flag, which faiss code sometimes reads
        self._device = torch.device(device)
        self._codes = torch.empty((0, self.code_size), dtype=torch.uint8, device=self._device)
        self._lock = threading.Lock()

    def __repr__(self):
        return f"{type(self).__name__}(d={self.d}, ntotal={self.ntotal}, device={self._device})"

    @property
    def ntotal(self) -> int:
        return int(self._codes.shape[0])

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------------ contents

    def train(self, x) -> None:
        """Nothing to learn (faiss's flat index is always trained); x is checked."""
        _codes_arg(x, self.code_size, "x", self.device)

    def add(self, x) -> None:
        codes = _codes_arg(x, self.code_size, "x", self._device)
        with self._lock:
            self._codes = torch.cat([self._codes, codes])

    def add_with_ids(self, x, xids) -> None:
        raise RuntimeError("add_with_ids not implemented for IndexBinaryFlat (its ids are positions): wrap it in "
                           "an IndexBinaryIDMap")

    def reset(self) -> None:
        with self._lock:
            self._codes = self._codes[:0]

    def remove_ids(self, sel) -> int:
        """Remove the selected positions (an IDSelector or an array of ids); the codes after
        them move up, as in faiss. Returns how many were removed."""
        sel = sel if isinstance(sel, IDSelector) else IDSelectorBatch(sel)
        with self._lock:
            keep = ~sel.mask(np.arange(self.ntotal, dtype=np.int64))
            removed = int(keep.size - keep.sum())
            if removed:
                self._codes = self._codes[torch.from_numpy(keep).to(self._device)].contiguous()
        return removed

    def reconstruct(self, key: int) -> np.ndarray:
        """The stored code at position ``key``: uint8 ``[code_size]``."""
        codes = self._codes
        key = _int_arg(key, "key", 0)
        if key >= codes.shape[0]:
            raise RuntimeError(f"key {key} out of range: the index holds {codes.shape[0]} codes")
        return codes[key].cpu().numpy()

    def reconstruct_n(self, n0: int = 0, ni: int = -1) -> np.ndarray:
        """Codes ``n0 .. n0 + ni - 1`` (``ni = -1``: to the end): uint8 ``[ni, code_size]``."""
        codes = self._codes
        n0 = _int_arg(n0, "n0", 0)
        ni = codes.shape[0] - n0 if ni == -1 else _int_arg(ni, "ni", 0)
        if n0 + ni > codes.shape[0]:
            raise RuntimeError(f"codes {n0} .. {n0 + ni - 1} out of range: the index holds {codes.shape[0]} codes")
        return codes[n0 : n0 + ni].cpu().numpy()

    # ------------------------------------------------------------------ search

    def _state(self):
        """(codes, ids): ids None where they are the positions."""
        return self._codes, None

    def _candidates(self, codes: torch.Tensor, ids: Optional[np.ndarray], sel: Optional[IDSelector]):
        """(codes to scan, their ids): ids an int64 array, or an int offset when the ids are
        positions + offset (no selector, or a range selector over positions: a view)."""
        if sel is None:
            return codes, (0 if ids is None else ids)
        if ids is None and isinstance(sel, IDSelectorRange):
            lo, hi = max(0, min(sel.imin, codes.shape[0])), max(0, min(sel.imax, codes.shape[0]))
            return codes[lo : max(lo, hi)], lo
        all_ids = np.arange(codes.shape[0], dtype=np.int64) if ids is None else ids
        chosen = np.flatnonzero(sel.mask(all_ids))
        return codes[torch.from_numpy(chosen).to(codes.device)], all_ids[chosen]

    def search(self, x, k: int, *, params: Optional[SearchParameters] = None) -> Tuple[np.ndarray, np.ndarray]:
        """The k nearest codes of each query: ``(D int32 [nq, k], I int64 [nq, k])``, nearest
        first, ties to the lower position; past the candidates, D = 2^31 - 1 and I = -1."""
        q = _codes_arg(x, self.code_size, "x", self.device)
        k = _int_arg(k, "k", 1)
        codes, ids = self._state()
        codes, ids = self._candidates(codes, ids, selector_of(params))
        found = min(k, codes.shape[0])
        if found == k and isinstance(ids, int) and ids == 0:  # the common case: no padding, no mapping
            return _topk_numpy(q, codes, k)
        D = np.full((q.shape[0], k), PAD_DISTANCE, dtype=np.int32)
        I = np.full((q.shape[0], k), -1, dtype=np.int64)
        if found and q.shape[0]:
            D[:, :found], pos = _topk_numpy(q, codes, found)
            I[:, :found] = pos + ids if isinstance(ids, int) else ids[pos]
        return D, I

    def assign(self, x, k: int, labels=None) -> np.ndarray:
        """The ids of the k nearest codes (``search``'s I)."""
        return self.search(x, k)[1]

    def range_search(self, x, thresh: int, *, params: Optional[SearchParameters] = None):
        """Every code at distance < ``thresh`` of each query: ``(lims uint64 [nq + 1],
        D float32, I int64)``, query i's results at ``[lims[i], lims[i + 1])`` in position
        order."""
        q = _codes_arg(x, self.code_size, "x", self.device)
        if isinstance(thresh, (bool, np.bool_)) or not isinstance(thresh, (int, np.integer)):
            raise TypeError(f"thresh must be an int (a Hamming radius), got {thresh!r}")
        codes, ids = self._state()
        codes, ids = self._candidates(codes, ids, selector_of(params))
        if thresh <= 0 or codes.shape[0] == 0 or q.shape[0] == 0:
            return np.zeros(q.shape[0] + 1, dtype=np.uint64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        lims, dist, pos = range_search_chunks(q, codes, None, int(thresh), True, QUERY_CHUNK)
        pos = pos.cpu().numpy()
        found = pos + ids if isinstance(ids, int) else ids[pos]
        return lims.cpu().numpy().astype(np.uint64), dist.cpu().numpy().astype(np.float32), found


def _topk_numpy(q: torch.Tensor, codes: torch.Tensor, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """hamming_topk over query chunks, as numpy (views of the kernel's CPU output)."""
    parts = [torch.ops.dsch_ext.hamming_topk.default(q[s : s + QUERY_CHUNK], codes, k)
             for s in range(0, max(q.shape[0], 1), QUERY_CHUNK)]
    dist, pos = parts[0] if len(parts) == 1 else (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return dist.cpu().numpy(), pos.cpu().numpy()


class IndexBinaryIDMap:
    """faiss's ``IndexBinaryIDMap``: an empty :class:`IndexBinaryFlat` with an int64 id per
    code (``add_with_ids``); searches, selectors and ``remove_ids`` speak of those ids."""

    def __init__(self, index: Optional[IndexBinaryFlat] = None):
        index = IndexBinaryFlat() if index is None else index
        if not isinstance(index, IndexBinaryFlat) or isinstance(index, IndexBinaryIDMap):
            raise TypeError(f"index must be an IndexBinaryFlat of dsch_ext.faiss_compat, got {type(index).__name__}")
        if index.ntotal:
            raise RuntimeError(f"index must be empty on input (it holds {index.ntotal} codes)")
        self.index, self.own_fields, self.thisown = index, False, True
        self._id_map = np.zeros(0, dtype=np.int64)
        self._lock = threading.Lock()

    d = property(lambda self: self.index.d)
    code_size = property(lambda self: self.index.code_size)
    ntotal = property(lambda self: self.index.ntotal)
    is_trained = property(lambda self: True)
    metric_type = property(lambda self: METRIC_L2)
    device = property(lambda self: self.index.device)

    @property
    def id_map(self) -> np.ndarray:
        """The id of every code, in order (read-only)."""
        view = self._id_map.view()
        view.flags.writeable = False
        return view

    def __repr__(self):
        return f"{type(self).__name__}(d={self.d}, ntotal={self.ntotal}, device={self.device})"

    train = IndexBinaryFlat.train

    def add(self, x) -> None:
        raise RuntimeError(f"add does not make sense with {type(self).__name__}: use add_with_ids")

    def add_with_ids(self, x, xids) -> None:
        codes = _codes_arg(x, self.code_size, "x", self.device)
        ids = _ids_arg(xids, codes.shape[0])
        with self._lock:
            self.index._codes = torch.cat([self.index._codes, codes])
            self._id_map = np.concatenate([self._id_map, ids])
            self._changed()

    def reset(self) -> None:
        with self._lock:
            self.index.reset()
            self._id_map = self._id_map[:0]
            self._changed()

    def remove_ids(self, sel) -> int:
        """Remove the codes whose ids are selected (an IDSelector or an array of ids);
        returns how many were removed."""
        sel = sel if isinstance(sel, IDSelector) else IDSelectorBatch(sel)
        with self._lock:
            keep = ~sel.mask(self._id_map)
            removed = int(keep.size - keep.sum())
            if removed:
                self.index._codes = self.index._codes[torch.from_numpy(keep).to(self.device)].contiguous()
                self._id_map = self._id_map[keep]
                self._changed()
        return removed

    def _changed(self) -> None:
        pass

    def reconstruct(self, key: int) -> np.ndarray:
        raise RuntimeError(f"reconstruct not implemented for {type(self).__name__}: use IndexBinaryIDMap2")

    def reconstruct_n(self, n0: int = 0, ni: int = -1) -> np.ndarray:
        return self.reconstruct(n0)

    def _state(self):
        with self._lock:
            return self.index._codes, self._id_map

    _candidates = IndexBinaryFlat._candidates
    search = IndexBinaryFlat.search
    assign = IndexBinaryFlat.assign
    range_search = IndexBinaryFlat.range_search


class IndexBinaryIDMap2(IndexBinaryIDMap):
    """:class:`IndexBinaryIDMap` that can also ``reconstruct`` a code from its id (of a
    duplicated id, the last added)."""

    def __init__(self, index: Optional[IndexBinaryFlat] = None):
        super().__init__(index)
        self._order = None  # the id map's stable argsort, made on the first reconstruct

    def _changed(self) -> None:
        self._order = None

    def reconstruct(self, key: int) -> np.ndarray:
        with self._lock:
            codes, ids = self.index._codes, self._id_map
            if self._order is None:
                self._order = np.argsort(ids, kind="stable")
            order = self._order
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise ArgumentError(f"key must be an int id, got {key!r}")
        at = int(np.searchsorted(ids[order], key, side="right")) - 1
        if at < 0 or ids[order[at]] != key:
            raise RuntimeError(f"key {key} not found")
        return codes[int(order[at])].cpu().numpy()

    def reconstruct_n(self, n0: int = 0, ni: int = -1) -> np.ndarray:
        """The codes of ids ``n0 .. n0 + ni - 1`` (faiss's reconstruct of each key)."""
        ni = _int_arg(ni, "ni", 0)
        out = np.empty((ni, self.code_size), dtype=np.uint8)
        for i in range(ni):
            out[i] = self.reconstruct(n0 + i)
        return out


def knn_hamming(xq, xb, k: int, variant: str = "hc") -> Tuple[np.ndarray, np.ndarray]:
    """faiss's ``knn_hamming``: the k nearest of ``xb`` (uint8 ``[nb, W]``) for each of
    ``xq`` (uint8 ``[nq, W]``), without an index. ``variant`` is accepted and ignored (one
    exact kernel serves both of faiss's)."""
    xq_arr = np.asarray(xq) if not isinstance(xq, torch.Tensor) else xq
    if xq_arr.ndim != 2:
        raise ArgumentError(f"xq must be uint8 [nq, W], got shape {tuple(xq_arr.shape)}")
    width = int(xq_arr.shape[1])
    index = IndexBinaryFlat(8 * width)
    q = _codes_arg(xq, width, "xq", index.device)
    index._codes = _codes_arg(xb, width, "xb", index.device)
    return index.search(q, k)
