"""The checked file format of :class:`~dsch_ext.index.BinaryIndex` (version 1, little-endian,
nothing in it is ever executed; no pickle)::

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
    56      4     flags (uint32): bit 0 = the ids increase strictly (writers before it wrote 0);
                  bit 1 = a multi-index (method="mih") index, bits 8-15 its substrings (0: the
                  default); the tables are rebuilt from the checked codes on load
    60      4     CRC-32 of bytes 0..59
    64            codes: count x code_bytes uint8 (faiss's packed layout), then zero padding
    ids_offset    ids: count x int64

The arrays are raw, so a file can be memory-mapped (``load(path, mmap=True)``: codes and ids
are then copy-on-write views of the file). Writing goes to a temporary file in the same
directory, flushed and fsynced, then renamed over the target: a crash, a full disk or a kill
leaves the previous file intact (a stray ``.<name>.tmp-*`` file may remain after a kill).

Reading checks everything a checksum cannot: the header against the file's size and padding,
bits set past ``nbits``, duplicate ids, the id 2^63 - 1 (no next id after it). Ids flagged as
increasing are checked in one pass over the (mapped) file; other ids are sorted (a copy).
"""
import os
import struct
import zlib
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .._atomic import atomic_write

MAGIC = b"DSCHBIX\x00"
FORMAT_VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIIIQQQIII")  # 60 bytes; the header CRC follows
assert _HEADER.size == 60
FLAG_IDS_INCREASING = 1
FLAG_MIH = 2
_SUBSTRINGS_SHIFT, _SUBSTRINGS_MASK = 8, 0xFF << 8
_KNOWN_FLAGS = FLAG_IDS_INCREASING | FLAG_MIH | _SUBSTRINGS_MASK
MAX_ID = 2**63 - 2  # 2^63 - 1 would leave no next id
_CHUNK = 1 << 22  # ids checked a chunk at a time, so a mapped file is never copied whole


class IndexFormatError(ValueError):
    """A file is not a valid dsch_ext binary index (the message says why)."""


def _crc(data) -> int:
    return zlib.crc32(memoryview(data)) & 0xFFFFFFFF


def ids_increase(ids: np.ndarray) -> bool:
    """Whether ``ids`` increase strictly, in one chunked pass (no copy of the whole array)."""
    for start in range(0, max(ids.shape[0] - 1, 0), _CHUNK):
        chunk = ids[start : start + _CHUNK + 1]
        if not bool(np.all(chunk[1:] > chunk[:-1])):
            return False
    return True


def method_flags(method: str, substrings: Optional[int]) -> int:
    """The header's flag bits for an index's search method."""
    if method != "mih":
        return 0
    return FLAG_MIH | ((substrings or 0) << _SUBSTRINGS_SHIFT)


def method_of(flags: int) -> Tuple[str, Optional[int]]:
    """(method, substrings) from the header's flags (substrings None: the default)."""
    if not flags & FLAG_MIH:
        return "flat", None
    substrings = (flags & _SUBSTRINGS_MASK) >> _SUBSTRINGS_SHIFT
    return "mih", (substrings or None)


def write_index(path, nbits: int, codes: np.ndarray, ids: np.ndarray, flags: int = 0) -> None:
    """Write codes ``uint8 [count, ceil(nbits / 8)]`` and ids ``int64 [count]`` to ``path``
    atomically; ``flags``: :func:`method_flags`."""
    code_bytes = (nbits + 7) // 8
    count = codes.shape[0]
    codes_bytes = np.ascontiguousarray(codes).tobytes()
    ids_bytes = np.ascontiguousarray(ids, dtype="<i8").tobytes()
    pad = (-(HEADER_SIZE + len(codes_bytes))) % 8
    ids_offset = HEADER_SIZE + len(codes_bytes) + pad
    flags = (flags & ~FLAG_IDS_INCREASING) | (FLAG_IDS_INCREASING if ids_increase(ids) else 0)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, nbits, code_bytes, count, HEADER_SIZE, ids_offset,
                        _crc(codes_bytes), _crc(ids_bytes), flags)
    header = head + struct.pack("<I", _crc(head))

    def write(f):
        f.write(header)
        f.write(codes_bytes)
        f.write(b"\x00" * pad)
        f.write(ids_bytes)

    atomic_write(path, write)


class Header(NamedTuple):
    nbits: int
    code_bytes: int
    count: int
    codes_offset: int
    ids_offset: int
    codes_crc: int
    ids_crc: int
    flags: int


def _read_header(path: str) -> Header:
    """The header of an index file, checked against itself and the file's size and padding."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        raise IndexFormatError(f"{path!r} is not a dsch_ext binary index (wrong magic bytes)")
    if len(raw) < HEADER_SIZE:
        raise IndexFormatError(f"{path!r} is truncated: {size} bytes, the header alone needs {HEADER_SIZE}")
    (_magic, version, header_size, nbits, code_bytes, count, codes_offset, ids_offset, codes_crc, ids_crc,
     flags) = _HEADER.unpack(raw[:60])
    (header_crc,) = struct.unpack("<I", raw[60:64])
    if _crc(raw[:60]) != header_crc:
        raise IndexFormatError(f"{path!r} has a corrupted header (checksum mismatch)")
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"{path!r} is format version {version}; this dsch_ext reads version {FORMAT_VERSION}")
    if (header_size != HEADER_SIZE or nbits < 1 or code_bytes != (nbits + 7) // 8 or codes_offset != HEADER_SIZE
            or ids_offset != HEADER_SIZE + count * code_bytes + (-(HEADER_SIZE + count * code_bytes)) % 8
            or flags & ~_KNOWN_FLAGS or (flags & _SUBSTRINGS_MASK and not flags & FLAG_MIH)):
        raise IndexFormatError(f"{path!r} has an inconsistent header (nbits={nbits}, code bytes={code_bytes}, "
                               f"count={count}, flags={flags})")
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
    return Header(nbits, code_bytes, count, codes_offset, ids_offset, codes_crc, ids_crc, flags)


def _read_arrays(path: str, header: Header, mmap: bool) -> Tuple[np.ndarray, np.ndarray]:
    """The codes ``[count, code_bytes]`` and ids ``[count]``: read, or mapped copy-on-write."""
    count, code_bytes = header.count, header.code_bytes
    if not count:
        return np.empty((0, code_bytes), np.uint8), np.empty((0,), np.int64)
    if mmap:
        codes = np.memmap(path, dtype=np.uint8, mode="c", offset=header.codes_offset, shape=(count, code_bytes))
        return codes, np.memmap(path, dtype="<i8", mode="c", offset=header.ids_offset, shape=(count,))
    codes, ids = np.empty((count, code_bytes), np.uint8), np.empty((count,), "<i8")
    with open(path, "rb") as f:  # straight into the arrays: no intermediate bytes
        f.seek(header.codes_offset)
        f.readinto(memoryview(codes).cast("B"))
        f.seek(header.ids_offset)
        f.readinto(memoryview(ids).cast("B"))
    return codes, ids


def _check_content(path: str, header: Header, codes: np.ndarray, ids: np.ndarray) -> None:
    """What checksums cannot catch: content no index of this nbits can hold."""
    if header.count == 0:
        return
    tail_mask = (1 << (header.nbits - 8 * (header.code_bytes - 1))) - 1
    if tail_mask != 0xFF and bool((codes[:, -1] & np.uint8(~tail_mask & 0xFF)).any()):
        raise IndexFormatError(f"{path!r} has bits set past nbits={header.nbits} in the last code byte (every "
                               "distance would count them)")
    if header.flags & FLAG_IDS_INCREASING:
        if not ids_increase(ids):
            raise IndexFormatError(f"{path!r} says its ids increase, and they do not")
        largest, smallest = int(ids[-1]), int(ids[0])
    else:
        ordered = np.sort(ids)  # older files: one sorted copy
        if bool((ordered[1:] == ordered[:-1]).any()):
            raise IndexFormatError(f"{path!r} holds duplicate ids")
        largest, smallest = int(ordered[-1]), int(ordered[0])
    if largest > MAX_ID or smallest < 0:
        raise IndexFormatError(f"{path!r} holds the id {largest if largest > MAX_ID else smallest}: ids are in "
                               f"[0, 2^63 - 2]")


class IndexFile(NamedTuple):
    nbits: int
    codes: np.ndarray  # uint8 [count, code_bytes]
    ids: np.ndarray  # int64 [count]
    increasing: bool  # the ids increase strictly
    flags: int


def read_index(path, mmap: bool = False, verify: bool = True) -> IndexFile:
    """The file at ``path``, checked (see the module docstring; ``verify`` adds the CRC-32 of
    codes and ids). Raises :class:`IndexFormatError` saying what is wrong, FileNotFoundError
    for no file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no index file at {path!r}")
    header = _read_header(path)
    codes, ids = _read_arrays(path, header, mmap)
    if verify:
        if _crc(np.ascontiguousarray(codes)) != header.codes_crc:
            raise IndexFormatError(f"{path!r} has corrupted codes (checksum mismatch)")
        if _crc(np.ascontiguousarray(ids)) != header.ids_crc:
            raise IndexFormatError(f"{path!r} has corrupted ids (checksum mismatch)")
    _check_content(path, header, codes, ids)
    return IndexFile(header.nbits, codes, np.asarray(ids, dtype=np.int64), bool(header.flags & FLAG_IDS_INCREASING),
                     header.flags)
