"""faiss's binary index files, both ways (``write_index_binary`` / ``read_index_binary`` and
faiss's in-memory ``serialize_index_binary`` / ``deserialize_index_binary``), for
``IndexBinaryFlat``, ``IndexBinaryIDMap`` and ``IndexBinaryIDMap2``. The layout, as faiss
writes it (little-endian)::

    fourcc          4 bytes: b"IBxF" flat, b"IBMp" ID map, b"IBM2" ID map 2
    d               int32 (bits)
    code_size       int32 (bytes per code, d / 8)
    ntotal          int64
    is_trained      uint8
    metric_type     int32 (faiss writes 1)
    IBxF:           the codes: count (uint64) = ntotal * code_size, then that many bytes
    IBMp / IBM2:    the wrapped flat index (an IBxF record, from its fourcc on), then the ids:
                    count (uint64) = ntotal, then that many int64

Reading checks every field against the others and against the bytes there are before it
allocates anything, so a truncated, corrupted or foreign file is a :class:`FaissFormatError`
saying what is wrong (never a crash or a huge allocation); the other faiss index types are
named and refused. Writing to a path is atomic (a temporary file renamed over the target).
"""
import os
import struct
from typing import BinaryIO, Union

import numpy as np
import torch

from .._atomic import atomic_write
from ..index import IndexFormatError
from ._indexes import METRIC_L2, IndexBinaryFlat, IndexBinaryIDMap, IndexBinaryIDMap2

_HEADER = struct.Struct("<iiqBi")  # d, code_size, ntotal, is_trained, metric_type
_COUNT = struct.Struct("<Q")
_FLAT, _IDMAP, _IDMAP2 = b"IBxF", b"IBMp", b"IBM2"
_OTHER_TYPES = {b"IBwF": "IndexBinaryIVF", b"IBHf": "IndexBinaryHNSW", b"IBHc": "IndexBinaryHNSWCagra",
                b"IBHh": "IndexBinaryHash", b"IBMh": "IndexBinaryMultiHash", b"IBFf": "IndexBinaryFromFloat"}


class FaissFormatError(IndexFormatError, RuntimeError):
    """Not a faiss binary index this module reads (the message says why): an
    :class:`~dsch_ext.index.IndexFormatError`, and a RuntimeError as faiss raises."""


class _Reader:
    def __init__(self, data, source: str):
        self.data, self.at, self.source = memoryview(data), 0, source

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.data) - self.at:
            raise FaissFormatError(f"{self.source}: truncated: {what} needs {n} bytes at offset {self.at}, the "
                                   f"file has {len(self.data) - self.at} left")
        part = self.data[self.at : self.at + n]
        self.at += n
        return part


def _read_flat(r: _Reader, fourcc: bytes, d_expected=None, n_expected=None) -> IndexBinaryFlat:
    if fourcc != _FLAT:
        kind = _OTHER_TYPES.get(fourcc)
        if kind is not None:
            raise FaissFormatError(f"{r.source}: a faiss {kind} ({fourcc.decode()}): only IndexBinaryFlat, "
                                   "IndexBinaryIDMap and IndexBinaryIDMap2 are read here")
        raise FaissFormatError(f"{r.source}: not a faiss binary flat index (type {bytes(fourcc)!r} at offset "
                               f"{r.at - 4}; a float index is read with faiss.read_index)")
    d, code_size, ntotal, _, _ = _HEADER.unpack(r.take(_HEADER.size, "the header"))
    if d < 0 or d % 8 or code_size != d // 8:
        raise FaissFormatError(f"{r.source}: d = {d} bits with code_size = {code_size} bytes (d must be a "
                               "non-negative multiple of 8 and code_size d / 8)")
    if ntotal < 0 or (n_expected is not None and ntotal != n_expected) or (d_expected is not None and d != d_expected):
        raise FaissFormatError(f"{r.source}: the flat index holds {ntotal} codes of {d} bits where its ID map "
                               f"says {n_expected} of {d_expected}")
    (count,) = _COUNT.unpack(r.take(_COUNT.size, "the codes' size"))
    if count != ntotal * code_size:
        raise FaissFormatError(f"{r.source}: {count} bytes of codes for {ntotal} codes of {code_size} bytes")
    codes = np.frombuffer(r.take(count, "the codes"), dtype=np.uint8).reshape(ntotal, code_size)
    index = IndexBinaryFlat(d)
    index._codes = torch.from_numpy(codes.copy())
    return index


def _read(data, source: str):
    r = _Reader(data, source)
    fourcc = bytes(r.take(4, "the index type"))
    if fourcc in (_IDMAP, _IDMAP2):
        d, _, ntotal, _, _ = _HEADER.unpack(r.take(_HEADER.size, "the header"))
        if ntotal < 0:
            raise FaissFormatError(f"{source}: ntotal = {ntotal}")
        inner = _read_flat(r, bytes(r.take(4, "the wrapped index's type")), d, ntotal)
        (count,) = _COUNT.unpack(r.take(_COUNT.size, "the ids' count"))
        if count != ntotal:
            raise FaissFormatError(f"{source}: {count} ids for {ntotal} codes")
        ids = np.frombuffer(r.take(8 * count, "the ids"), dtype="<i8").astype(np.int64)
        index = (IndexBinaryIDMap2 if fourcc == _IDMAP2 else IndexBinaryIDMap)(IndexBinaryFlat(d))
        index.index._codes, index._id_map = inner._codes, ids
    else:
        index = _read_flat(r, fourcc)
    if r.at != len(r.data):
        raise FaissFormatError(f"{source}: {len(r.data) - r.at} bytes after the index's end (offset {r.at})")
    return index


def _flat_record(d: int, codes: np.ndarray) -> bytes:
    return b"".join([_FLAT, _HEADER.pack(d, d // 8, codes.shape[0], 1, METRIC_L2), _COUNT.pack(codes.size),
                     np.ascontiguousarray(codes).tobytes()])


def _serialize(index) -> bytes:
    if isinstance(index, IndexBinaryIDMap):
        codes, ids = index._state()
        fourcc = _IDMAP2 if isinstance(index, IndexBinaryIDMap2) else _IDMAP
        return b"".join([fourcc, _HEADER.pack(index.d, index.code_size, ids.shape[0], 1, METRIC_L2),
                         _flat_record(index.d, codes.cpu().numpy()), _COUNT.pack(ids.shape[0]),
                         ids.astype("<i8").tobytes()])
    if isinstance(index, IndexBinaryFlat):
        return _flat_record(index.d, index._state()[0].cpu().numpy())
    raise TypeError(f"index must be an IndexBinaryFlat, IndexBinaryIDMap or IndexBinaryIDMap2 of "
                    f"dsch_ext.faiss_compat, got {type(index).__name__}")


def write_index_binary(index, f: Union[str, os.PathLike, BinaryIO]) -> None:
    """Write ``index`` in faiss's format to a path (atomically) or a binary file object;
    ``faiss.read_index_binary`` reads it."""
    data = _serialize(index)
    if hasattr(f, "write"):
        f.write(data)
    else:
        atomic_write(f, lambda out: out.write(data))


def read_index_binary(f: Union[str, os.PathLike, BinaryIO], io_flags: int = 0):
    """An index from a file ``faiss.write_index_binary`` (or :func:`write_index_binary`)
    wrote, given as a path or a binary file object; raises :class:`FaissFormatError`
    saying what is wrong."""
    if hasattr(f, "read"):
        return _read(f.read(), getattr(f, "name", "the file"))
    path = os.fspath(f)
    with open(path, "rb") as handle:
        return _read(handle.read(), path)


def serialize_index_binary(index) -> np.ndarray:
    """The index in faiss's format as a uint8 array (faiss's ``serialize_index_binary``)."""
    return np.frombuffer(_serialize(index), dtype=np.uint8).copy()


def deserialize_index_binary(data) -> Union[IndexBinaryFlat, IndexBinaryIDMap]:
    """The index of a uint8 array from :func:`serialize_index_binary` or faiss's."""
    a = np.asarray(data)
    if a.dtype != np.uint8 or a.ndim != 1:
        raise TypeError(f"data must be a 1-D uint8 array, got dtype {a.dtype} with shape {a.shape}")
    return _read(np.ascontiguousarray(a).tobytes(), "the serialized index")
