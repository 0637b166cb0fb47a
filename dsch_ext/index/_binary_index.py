"""BinaryIndex: a Hamming index of binary codes that can be searched, edited, saved and reloaded.

Search runs the ``hamming_topk`` / ``hamming_range`` kernels on whatever device the index lives
on (``method="flat"``), or probes multi-index tables on the CPU (``method="mih"``, ``_mih.py``)
with the same answers. Queries are processed in chunks so memory stays bounded for any number
of queries.

Thread safety: any number of threads may search one index at once. ``add`` and
``remove_ids`` replace the index's tensors instead of editing them in place, under a lock,
so a search running at the same time sees the index either before or after the change, never
a mixture; searching while adding is therefore safe. A multi-index index builds its tables at the first
search after a change (once, whichever thread gets there first), for the snapshot it searches.

The file format and its checks: ``_file_format.py``.
"""
import os
import threading
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .._packed import packed_codes
from .._validation import ArrayLike, int_in_range, positive_int
from . import _file_format, _mih
from ._file_format import MAX_ID, IndexFormatError
from ._mih import SearchStats
from ._range import range_search_chunks

METHODS = ("flat", "mih")


def id_tensor(ids: ArrayLike, name: str = "ids") -> torch.Tensor:
    """int64 ``[n]`` ids in [0, 2^63 - 2] from a tensor, array or list of integers (an empty
    list is no ids); floats, bools, 2-D input and ids outside that range (uint64 ids past
    int64 included, never wrapped) are a ValueError naming the argument."""
    if isinstance(ids, torch.Tensor):
        t = ids.detach().cpu()
    else:
        a = np.asarray(ids if np.ndim(ids) else [ids])
        if a.size == 0 and a.dtype.kind == "f":  # [] is float64 to numpy; no ids is no ids
            a = a.astype(np.int64)
        if a.dtype.kind == "u" and a.size and int(a.max()) > MAX_ID:
            raise ValueError(f"{name} must be in [0, 2^63 - 2], got {int(a.max())} (dtype {a.dtype})")
        if a.dtype == object:
            raise ValueError(f"{name} must be integers in [0, 2^63 - 2] (got values beyond int64, shape {a.shape})")
        t = torch.from_numpy(np.ascontiguousarray(a.astype(np.int64) if a.dtype.kind == "u" else a))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be integers, got dtype {t.dtype} with shape {tuple(t.shape)}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    t = t.to(torch.int64)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > MAX_ID):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(f"{name} must be in [0, 2^63 - 2], got {bad}")
    return t


class BinaryIndex:
    """Exact Hamming search over ``nbits``-bit binary codes with user ids.

    Args:
        nbits: code length (>= 1).
        device: where the codes live and search runs (``'cpu'``, ``'cuda'``...).
        query_chunk: queries searched per kernel call (bounds memory).
        method: ``"flat"`` scans every code (any device); ``"mih"`` looks codes up in
            multi-index tables (CPU only; same answers, tie order included; falls back to the
            scan per query batch where probing would cost more; see docs/binary-index.md).
        substrings: ``method="mih"`` only: the number of substrings ``m`` each code is cut
            into, in [ceil(nbits / 24), min(nbits, 64)]; default (None): about
            ``nbits / log2(ntotal)``, chosen again whenever the tables are rebuilt.
    """

    def __init__(self, nbits: int, device: Union[str, torch.device] = "cpu", query_chunk: int = 4096,
                 method: str = "flat", substrings: Optional[int] = None):
        self.nbits = positive_int(nbits, "nbits")
        self.code_bytes = (self.nbits + 7) // 8
        self.query_chunk = positive_int(query_chunk, "query_chunk")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        if substrings is not None:
            if method != "mih":
                raise ValueError(f"substrings is for method='mih', got substrings={substrings!r} with method={method!r}")
            low = -(-self.nbits // _mih.MAX_SUBSTRING_BITS)
            high = min(self.nbits, _mih.MAX_SUBSTRINGS)
            substrings = int_in_range(substrings, "substrings", low, high,
                                      f"in [ceil(nbits / 32), min(nbits, 64)] = [{low}, {high}] for nbits={self.nbits}")
        self.substrings = substrings
        self._device = self._checked_device(device)
        self._codes = torch.empty((0, self.code_bytes), dtype=torch.uint8, device=self._device)
        self._ids = torch.empty((0,), dtype=torch.int64, device=self._device)
        self._next_id = 0
        self._ids_are_positions = True  # ids 0, 1, ... ntotal - 1: a search need not map them
        self._lock = threading.Lock()
        self._tables: Optional[_mih.Tables] = None  # of the codes tensor self._tables_of
        self._tables_of: Optional[torch.Tensor] = None
        self._tables_lock = threading.Lock()
        # Bits past nbits in the last byte must be 0, or they would count in distances.
        self._tail_mask = (1 << (self.nbits - 8 * (self.code_bytes - 1))) - 1

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self):
        method = "" if self.method == "flat" else f", method='mih', substrings={self.substrings or 'auto'}"
        return f"BinaryIndex(nbits={self.nbits}, ntotal={len(self)}, device={self._device}{method})"

    def _checked_device(self, device) -> torch.device:
        device = torch.device(device)
        if self.method == "mih" and device.type != "cpu":
            raise ValueError(f"method='mih' searches its tables on the CPU, got device {device}; use method='flat' "
                             "on a GPU (its scan is the faster route there)")
        return device

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def codes(self) -> torch.Tensor:
        """The packed codes, uint8 ``[ntotal, ceil(nbits / 8)]`` (read-only view of a snapshot)."""
        return self._codes

    @property
    def ids(self) -> torch.Tensor:
        return self._ids

    def pack(self, codes: ArrayLike, name: str = "codes") -> torch.Tensor:
        """``codes`` (values ``[n, nbits]`` or packed bytes) as this index stores them: packed
        ``uint8 [n, ceil(nbits / 8)]`` on its device, bits beyond ``nbits`` cleared; a wrong
        shape or type is a ValueError naming ``name``."""
        packed = packed_codes(codes, name, self.nbits)
        packed = packed.to(self._device).contiguous()
        if self._tail_mask != 0xFF:
            packed = packed.clone()
            packed[:, -1] &= self._tail_mask
        return packed

    def add(self, codes: ArrayLike, ids: Optional[ArrayLike] = None) -> torch.Tensor:
        """Add codes (``[n, nbits]`` values or ``uint8 [n, ceil(nbits/8)]`` packed). ``ids``:
        ``[n]`` integers in [0, 2^63 - 2], unique and not already present; default:
        consecutive from the largest id so far + 1. Returns the ids added."""
        packed = self.pack(codes, "codes")
        n = packed.shape[0]
        with self._lock:
            positions = self._ids_are_positions and ids is None and self._next_id == len(self)
            if ids is None:
                if self._next_id + n - 1 > MAX_ID:
                    raise ValueError(f"no room for {n} more default ids after {self._next_id - 1}: pass ids")
                new_ids = torch.arange(self._next_id, self._next_id + n, dtype=torch.int64)
            else:
                new_ids = id_tensor(ids, "ids")
                if new_ids.shape[0] != n:
                    raise ValueError(f"ids must be 1-D with {n} entries (one per code), got shape {tuple(new_ids.shape)}")
                if torch.unique(new_ids).shape[0] != n:
                    raise ValueError("ids contains duplicates")
                if len(self) and bool(torch.isin(new_ids, self._ids.cpu()).any()):
                    raise ValueError("some ids are already in the index")
            new_ids = new_ids.to(self._device)
            # New tensors, never in-place edits: concurrent searches keep their snapshot.
            self._codes = torch.cat([self._codes, packed])
            self._ids = torch.cat([self._ids, new_ids])
            if n:
                self._next_id = max(self._next_id, int(new_ids.max()) + 1)
                self._ids_are_positions = positions
        return new_ids

    def remove_ids(self, ids: ArrayLike) -> int:
        """Remove the codes with these ids (absent ids are ignored); returns how many were
        removed. The others keep their ids and their order."""
        remove = id_tensor(ids, "ids").to(self._device)
        with self._lock:
            keep = ~torch.isin(self._ids, remove)
            removed = int((~keep).sum())
            if removed:
                self._codes = self._codes[keep].contiguous()
                self._ids = self._ids[keep].contiguous()
                self._ids_are_positions = False
        return removed

    def to(self, device: Union[str, torch.device]) -> "BinaryIndex":
        """Move the index to ``device`` (in place); returns self."""
        device = self._checked_device(device)
        with self._lock:
            self._device = device
            self._codes = self._codes.to(self._device)
            self._ids = self._ids.to(self._device)
        return self

    # ------------------------------------------------------------------ search

    def _snapshot(self):
        with self._lock:
            return self._codes, self._ids

    def _ids_or_positions(self):
        """(codes, ids), ids None where they equal the positions."""
        with self._lock:
            return self._codes, (None if self._ids_are_positions else self._ids)

    def _tables_for(self, codes: torch.Tensor) -> Optional[_mih.Tables]:
        """The multi-index tables of this snapshot of the codes (built once per snapshot), or
        None where the flat scan serves (method "flat", fewer than ``_mih.MIN_CODES`` codes)."""
        if self.method != "mih" or not _mih.worth_tables(codes.shape[0]):
            return None
        with self._tables_lock:
            if self._tables_of is not codes:
                self._tables, self._tables_of = None, None  # free the old tables before building
                self._tables = _mih.Tables.build(codes, self.nbits, self.substrings)
                self._tables_of = codes
            return self._tables

    def tables_nbytes(self) -> int:
        """Bytes held by the multi-index tables now (0 before the first search, or for "flat")."""
        tables = self._tables
        return 0 if tables is None else tables.nbytes()

    def search(self, queries: ArrayLike, k: int, stats: bool = False):
        """Exact k nearest codes: ``(distances int32 [nq, k], ids int64 [nq, k])`` sorted by
        distance, ties by insertion order (lower position first), on the index's device.
        ``stats=True`` adds a third value, a :class:`SearchStats` (route, probes, candidates)."""
        codes, ids = self._ids_or_positions()
        q = self.pack(queries, "queries")
        if codes.shape[0] == 0:
            raise ValueError("the index is empty: add codes before searching it")
        k = int_in_range(k, "k", 1, codes.shape[0], f"in [1, ntotal] = [1, {codes.shape[0]}]")
        tables = self._tables_for(codes)
        out_d, out_i, total = [], [], SearchStats.flat(0)
        for start in range(0, max(q.shape[0], 1), self.query_chunk):
            chunk = q[start : start + self.query_chunk]
            if tables is None:
                dist, pos = torch.ops.dsch_ext.hamming_topk.default(chunk, codes, k)
                done = SearchStats.flat(chunk.shape[0])
            else:
                dist, pos, done = _mih.topk(chunk, codes, tables, k)
            out_d.append(dist)
            out_i.append(pos if ids is None else ids[pos])
            total = total.plus(done)
        result = (out_d[0], out_i[0]) if len(out_d) == 1 else (torch.cat(out_d), torch.cat(out_i))
        return (*result, total) if stats else result

    def range_search(self, queries: ArrayLike, radius: int, exclusive: bool = False, stats: bool = False):
        """Every code within Hamming distance ``<= radius`` of each query (``< radius`` with
        ``exclusive=True``, faiss's convention), faiss-style:
        ``(lims int64 [nq + 1], distances int32 [total], ids int64 [total])``; the results of
        query i are ``[lims[i], lims[i + 1])``, ordered by position in the index. A result
        that would not fit in memory is a MemoryError saying how large it would be, raised
        before the scan (from a sample of the codes). ``stats=True`` adds a :class:`SearchStats`."""
        codes, ids = self._ids_or_positions()
        q = self.pack(queries, "queries")
        radius = int_in_range(radius, "radius", 0)
        if not isinstance(exclusive, (bool, np.bool_)):
            raise ValueError(f"exclusive must be a bool, got {exclusive!r}")
        tables = self._tables_for(codes)
        done = [SearchStats.flat(0)]
        if tables is None:
            def search(chunk, codes, radius, exclusive):
                done[0] = done[0].plus(SearchStats.flat(chunk.shape[0]))
                return torch.ops.dsch_ext.hamming_range.default(chunk, codes, radius, exclusive)
        else:
            def search(chunk, codes, radius, exclusive):
                lims, dist, pos, chunk_stats = _mih.range_chunk(chunk, codes, tables, radius, exclusive)
                done[0] = done[0].plus(chunk_stats)
                return lims, dist, pos
        result = range_search_chunks(q, codes, ids, int(radius), bool(exclusive), self.query_chunk, search)
        return (*result, done[0]) if stats else result

    # ------------------------------------------------------------------ persistence

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the index to ``path`` atomically (format: ``_file_format.py``)."""
        codes, ids = self._snapshot()
        _file_format.write_index(path, self.nbits, codes.cpu().numpy(), ids.cpu().numpy(),
                                 _file_format.method_flags(self.method, self.substrings))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], mmap: bool = False, device: Union[str, torch.device] = "cpu",
             verify: bool = True, method: Optional[str] = None) -> "BinaryIndex":
        """Read an index written by :meth:`save`. ``mmap=True`` maps the file instead of reading
        it (CPU only): the codes and the ids are then copy-on-write views of the file, so the
        file is never changed and pages are read as searches touch them; writing into
        ``index.codes`` changes this index only. Truncating a mapped file while it is in use
        makes a later search fail with SIGBUS (as any memory map does): replace files with
        :meth:`save`, which writes a new file and renames it. ``verify`` checks the CRC-32 of
        codes and ids. Raises :class:`IndexFormatError` saying what is wrong: truncated,
        corrupted, another format version, content that no index holds (bits set past
        ``nbits``, duplicate ids, ids outside [0, 2^63 - 2]), or not an index file at all.
        ``method``: None keeps the saved one (a multi-index index rebuilds its tables from the
        checked codes at its first search); ``"flat"`` or ``"mih"`` overrides it."""
        nbits, codes, ids, increasing, flags = _file_format.read_index(path, mmap=mmap, verify=verify)
        saved_method, substrings = _file_format.method_of(flags)
        if method is not None and method != saved_method:
            substrings = None
        if method is None and saved_method == "mih" and torch.device(device).type != "cpu":
            raise ValueError(f"{os.fspath(path)!r} holds a method='mih' index, which searches on the CPU; pass "
                             f"method='flat' to load it onto {device}")
        if substrings is not None and not -(-nbits // _mih.MAX_SUBSTRING_BITS) <= substrings <= min(nbits, 64):
            raise IndexFormatError(f"{os.fspath(path)!r} has an inconsistent header ({substrings} substrings for "
                                   f"{nbits}-bit codes)")
        index = cls(nbits, device=device, method=method or saved_method, substrings=substrings)
        index._codes = torch.from_numpy(codes).to(index._device)
        index._ids = torch.from_numpy(ids).to(index._device)
        n = ids.shape[0]
        index._next_id = (int(ids[-1]) if increasing else int(index._ids.max())) + 1 if n else 0
        index._ids_are_positions = n == 0 or (increasing and int(ids[0]) == 0 and int(ids[-1]) == n - 1)
        return index


__all__ = ["BinaryIndex", "IndexFormatError", "SearchStats", "id_tensor"]
