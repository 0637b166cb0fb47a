"""BinaryIndex: a Hamming index of binary codes that can be searched, edited, saved and reloaded.

Search runs the ``hamming_topk`` kernel on whatever device the index lives on. Queries are
processed in chunks so memory stays bounded for any number of queries.

Thread safety: any number of threads may search one index at once. ``add`` and
``remove_ids`` replace the index's tensors instead of editing them in place, under a lock,
so a search running at the same time sees the index either before or after the change, never
a mixture; searching while adding is therefore safe.

File format (version 1, little-endian, nothing in it is ever executed; no pickle)::

    offset  size  field
    0       8     magic b"DSCHBIX\\0"
    8       4     format version (uint32) = 1
    12      4     header size (uint32) = 64
    16      4     nbits (uint32)
    20      4     code bytes per code (uint32) = ceil(nbits / 8)
    24      8     count (uint64)
    32      8     codes offset (uint64) = 64
    40      8     ids offset (uint64) = 64 + count * code_bytes rounded up to 8
    48      4     CRC-32 of the codes
    52      4     CRC-32 of the ids
    56      4     reserved (0)
    60      4     CRC-32 of bytes 0..59
    64            codes: count x code_bytes uint8 (faiss's packed layout), then zero padding
    ids_offset    ids: count x int64

The arrays are raw, so a file can be memory-mapped (``load(path, mmap=True)``). Saving
writes a temporary file in the same directory, flushes and fsyncs it, then renames it over
the target: a crash, a full disk or a kill during ``save`` leaves the previous file intact
(a stray ``.<name>.tmp-*`` file may remain after a kill).
"""
import os
import struct
import threading
import zlib
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from ._atomic import atomic_write
from ._packed import packed_codes
from ._validation import ArrayLike, int_in_range, positive_int
from .ops import hamming_range, hamming_topk

MAGIC = b"DSCHBIX\x00"
FORMAT_VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIIIQQQIII")  # 60 bytes; the header CRC follows
assert _HEADER.size == 60

def _id_tensor(ids: ArrayLike, name: str) -> torch.Tensor:
    """int64 ``[n]`` ids from a tensor, array or list of integers; anything else (floats, bools,
    2-D) is a ValueError naming the argument."""
    t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(np.asarray(ids if np.ndim(ids) else [ids]))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be integers, got dtype {t.dtype} with shape {tuple(t.shape)}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(torch.int64)


class IndexFormatError(ValueError):
    """A file is not a valid dsch_ext binary index (the message says why)."""


def _crc(data) -> int:
    return zlib.crc32(memoryview(data)) & 0xFFFFFFFF


class BinaryIndex:
    """Exact Hamming search over ``nbits``-bit binary codes with user ids.

    Args:
        nbits: code length (>= 1).
        device: where the codes live and search runs (``'cpu'``, ``'cuda'``...).
        query_chunk: queries searched per kernel call (bounds memory).
    """

    def __init__(self, nbits: int, device: Union[str, torch.device] = "cpu", query_chunk: int = 4096):
        self.nbits = positive_int(nbits, "nbits")
        self.code_bytes = (self.nbits + 7) // 8
        self.query_chunk = positive_int(query_chunk, "query_chunk")
        self._device = torch.device(device)
        self._codes = torch.empty((0, self.code_bytes), dtype=torch.uint8, device=self._device)
        self._ids = torch.empty((0,), dtype=torch.int64, device=self._device)
        self._next_id = 0
        self._lock = threading.Lock()
        # Bits past nbits in the last byte must be 0, or they would count in distances.
        self._tail_mask = (1 << (self.nbits - 8 * (self.code_bytes - 1))) - 1

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self):
        return f"BinaryIndex(nbits={self.nbits}, ntotal={len(self)}, device={self._device})"

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
        int64 ``[n]`` (unique, not already present); default: consecutive from the largest
        id so far + 1. Returns the ids added."""
        packed = self.pack(codes, "codes")
        n = packed.shape[0]
        with self._lock:
            if ids is None:
                new_ids = torch.arange(self._next_id, self._next_id + n, dtype=torch.int64)
            else:
                new_ids = _id_tensor(ids, "ids").cpu()
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
        return new_ids

    def remove_ids(self, ids: ArrayLike) -> int:
        """Remove the codes with these ids; returns how many were removed."""
        remove = _id_tensor(ids, "ids").to(self._device)
        with self._lock:
            keep = ~torch.isin(self._ids, remove)
            removed = int((~keep).sum())
            if removed:
                self._codes = self._codes[keep].contiguous()
                self._ids = self._ids[keep].contiguous()
        return removed

    def to(self, device: Union[str, torch.device]) -> "BinaryIndex":
        """Move the index to ``device`` (in place); returns self."""
        with self._lock:
            self._device = torch.device(device)
            self._codes = self._codes.to(self._device)
            self._ids = self._ids.to(self._device)
        return self

    # ------------------------------------------------------------------ search

    def _snapshot(self):
        with self._lock:
            return self._codes, self._ids

    def search(self, queries: ArrayLike, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exact k nearest codes: ``(distances int32 [nq, k], ids int64 [nq, k])`` sorted by
        distance, ties by insertion order (lower position first), on the index's device."""
        codes, ids = self._snapshot()
        q = self.pack(queries, "queries")
        k = int_in_range(k, "k", 1, codes.shape[0], f"in [1, ntotal] = [1, {codes.shape[0]}]")
        out_d, out_i = [], []
        for start in range(0, max(q.shape[0], 1), self.query_chunk):
            chunk = q[start : start + self.query_chunk]
            dist, pos = hamming_topk(chunk, codes, int(k))
            out_d.append(dist)
            out_i.append(ids[pos])
        return torch.cat(out_d), torch.cat(out_i)

    def range_search(self, queries: ArrayLike, radius: int, exclusive: bool = False):
        """Every code within Hamming distance ``<= radius`` of each query (``< radius`` with
        ``exclusive=True``, faiss's convention), faiss-style:
        ``(lims int64 [nq + 1], distances int32 [total], ids int64 [total])``; the results of
        query i are ``[lims[i], lims[i + 1])``, ordered by position in the index. One
        :func:`~dsch_ext.hamming_range` call per chunk of ``query_chunk`` queries."""
        codes, ids = self._snapshot()
        q = self.pack(queries, "queries")
        radius = int_in_range(radius, "radius", 0)
        lims, dists, found = [torch.zeros(1, dtype=torch.int64, device=codes.device)], [], []
        for start in range(0, q.shape[0], self.query_chunk):
            chunk_lims, dist, pos = hamming_range(q[start : start + self.query_chunk], codes, int(radius), exclusive)
            lims.append(chunk_lims[1:] + lims[-1][-1])
            dists.append(dist)
            found.append(ids[pos])
        if not dists:
            return lims[0], codes.new_empty((0,), dtype=torch.int32), ids.new_empty((0,))
        return torch.cat(lims), torch.cat(dists), torch.cat(found)

    # ------------------------------------------------------------------ persistence

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the index to ``path`` atomically (see the module docstring for the format)."""
        codes, ids = self._snapshot()
        codes_np = codes.cpu().numpy()
        ids_np = ids.cpu().numpy().astype("<i8", copy=False)
        count = codes_np.shape[0]
        codes_bytes = codes_np.tobytes()
        pad = (-(HEADER_SIZE + len(codes_bytes))) % 8
        ids_offset = HEADER_SIZE + len(codes_bytes) + pad
        ids_bytes = ids_np.tobytes()
        head = _HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, self.nbits, self.code_bytes, count, HEADER_SIZE,
                            ids_offset, _crc(codes_bytes), _crc(ids_bytes), 0)
        header = head + struct.pack("<I", _crc(head))

        def write(f):
            f.write(header)
            f.write(codes_bytes)
            f.write(b"\x00" * pad)
            f.write(ids_bytes)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], mmap: bool = False, device: Union[str, torch.device] = "cpu",
             verify: bool = True) -> "BinaryIndex":
        """Read an index written by :meth:`save`. ``mmap=True`` maps the file instead of reading
        it (CPU only): the codes and ids are then copy-on-write views of the file, so the file is
        never changed and pages are read as searches touch them; writing into ``index.codes``
        changes this index only. Truncating a mapped file while it is in use makes a later
        search fail with SIGBUS (as any memory map does): replace files with :meth:`save`,
        which writes a new file and renames it. ``verify`` checks the CRC-32 of codes and ids.
        Raises :class:`IndexFormatError` saying what is wrong: truncated, corrupted, another
        format version, content that no index holds (bits set past ``nbits``, duplicate ids,
        id 2^63 - 1), or not an index file at all."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no index file at {path!r}")
        header = _read_header(path)
        codes_np, ids_np = _read_arrays(path, header, mmap)
        if verify:
            if _crc(np.ascontiguousarray(codes_np)) != header.codes_crc:
                raise IndexFormatError(f"{path!r} has corrupted codes (checksum mismatch)")
            if _crc(np.ascontiguousarray(ids_np)) != header.ids_crc:
                raise IndexFormatError(f"{path!r} has corrupted ids (checksum mismatch)")
        index = cls(header.nbits, device=device)
        codes_t = torch.from_numpy(codes_np if mmap else codes_np.copy())
        ids_t = torch.from_numpy(np.asarray(ids_np).astype(np.int64))
        _check_content(path, index, codes_t, ids_t)
        index._codes = codes_t.to(index._device)
        index._ids = ids_t.to(index._device)
        index._next_id = int(ids_t.max()) + 1 if header.count else 0
        return index


class _Header(NamedTuple):
    nbits: int
    code_bytes: int
    count: int
    codes_offset: int
    ids_offset: int
    codes_crc: int
    ids_crc: int


def _read_header(path: str) -> _Header:
    """The header of an index file, checked against itself and the file's size and padding."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        raise IndexFormatError(f"{path!r} is not a dsch_ext binary index (wrong magic bytes)")
    if len(raw) < HEADER_SIZE:
        raise IndexFormatError(f"{path!r} is truncated: {size} bytes, the header alone needs {HEADER_SIZE}")
    (_magic, version, header_size, nbits, code_bytes, count, codes_offset, ids_offset, codes_crc, ids_crc,
     _reserved) = _HEADER.unpack(raw[:60])
    (header_crc,) = struct.unpack("<I", raw[60:64])
    if _crc(raw[:60]) != header_crc:
        raise IndexFormatError(f"{path!r} has a corrupted header (checksum mismatch)")
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"{path!r} is format version {version}; this dsch_ext reads version {FORMAT_VERSION}")
    if (header_size != HEADER_SIZE or nbits < 1 or code_bytes != (nbits + 7) // 8 or codes_offset != HEADER_SIZE
            or ids_offset != HEADER_SIZE + count * code_bytes + (-(HEADER_SIZE + count * code_bytes)) % 8):
        raise IndexFormatError(f"{path!r} has an inconsistent header (nbits={nbits}, code bytes={code_bytes}, "
                               f"count={count})")
    expected = ids_offset + 8 * count
    if size != expected:
        kind = "truncated" if size < expected else "longer than its header says"
        raise IndexFormatError(f"{path!r} is {kind}: {size} bytes, expected {expected} for {count} codes")
    pad = ids_offset - codes_offset - count * code_bytes
    if pad:
        with open(path, "rb") as f:
            f.seek(codes_offset + count * code_bytes)
            if f.read(pad) != b"\x00" * pad:
                raise IndexFormatError(f"{path!r} is corrupted (non-zero padding before the ids)")
    return _Header(nbits, code_bytes, count, codes_offset, ids_offset, codes_crc, ids_crc)


def _read_arrays(path: str, header: _Header, mmap: bool):
    """The codes ``[count, code_bytes]`` and ids ``[count]`` as numpy arrays: read, or mapped."""
    count, code_bytes = header.count, header.code_bytes
    if mmap:
        if not count:
            return np.empty((0, code_bytes), np.uint8), np.empty((0,), "<i8")
        codes = np.memmap(path, dtype=np.uint8, mode="c", offset=header.codes_offset, shape=(count, code_bytes))
        return codes, np.memmap(path, dtype="<i8", mode="c", offset=header.ids_offset, shape=(count,))
    with open(path, "rb") as f:
        f.seek(header.codes_offset)
        codes = np.frombuffer(f.read(count * code_bytes), dtype=np.uint8).reshape(count, code_bytes)
        f.seek(header.ids_offset)
        return codes, np.frombuffer(f.read(8 * count), dtype="<i8")


def _check_content(path: str, index: "BinaryIndex", codes: torch.Tensor, ids: torch.Tensor) -> None:
    """What checksums cannot catch: content no index of this nbits can hold."""
    if codes.shape[0] == 0:
        return
    if index._tail_mask != 0xFF and bool((codes[:, -1] & ~index._tail_mask & 0xFF).any()):
        raise IndexFormatError(f"{path!r} has bits set past nbits={index.nbits} in the last code byte (every "
                               "distance would count them)")
    if torch.unique(ids).shape[0] != ids.shape[0]:
        raise IndexFormatError(f"{path!r} holds duplicate ids")
    if int(ids.max()) == torch.iinfo(torch.int64).max:
        raise IndexFormatError(f"{path!r} holds the id 2^63 - 1, which leaves no next id")
