"""Range search over an index's codes, in query chunks, in bounded memory: the result is built
once (positions turned into ids in place, chunks copied into the final arrays one at a time),
and a result that cannot fit is refused before the scan, with its estimated size."""
import os
from typing import Callable, Optional, Tuple

import torch

_SAMPLE_QUERIES = 64
_SAMPLE_CODES = 1 << 14  # at most a million sampled hits (20 MB)
_BYTES_PER_HIT = 20  # the kernel's hit lists (8 B) and its output (4 B distance + 8 B index)


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory free for a result on ``device`` (None where unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimated_hits(q: torch.Tensor, codes: torch.Tensor, radius: int, exclusive: bool) -> int:
    """The number of hits of ``q`` against ``codes``, extrapolated from up to 64 queries
    against up to 16,384 codes spread evenly over each."""
    nq, ndb = q.shape[0], codes.shape[0]
    q_step, c_step = max(1, nq // _SAMPLE_QUERIES), max(1, ndb // _SAMPLE_CODES)
    lims, _, _ = torch.ops.dsch_ext.hamming_range.default(q[::q_step].contiguous(), codes[::c_step].contiguous(),
                                                          radius, exclusive)
    sampled = lims.shape[0] - 1
    return int(int(lims[-1]) * (nq / max(sampled, 1)) * (ndb / max(-(-ndb // c_step), 1)))


def _check_fits(q, codes, radius, exclusive) -> None:
    if q.shape[0] * codes.shape[0] < (1 << 26):  # small searches: nothing to estimate
        return
    free = available_bytes(codes.device)
    if free is None:
        return
    hits = estimated_hits(q, codes, radius, exclusive)
    if hits * _BYTES_PER_HIT > free:
        raise MemoryError(f"range search of {q.shape[0]:,} queries at radius {radius} would return about {hits:,} "
                          f"results ({hits * 12 / 2**30:.1f} GB, {hits * _BYTES_PER_HIT / 2**30:.1f} GB while it "
                          f"runs), more than the {free / 2**30:.1f} GB free: search fewer queries at a time or use a "
                          "smaller radius")


def _flat_chunk(q, codes, radius, exclusive):
    return torch.ops.dsch_ext.hamming_range.default(q, codes, radius, exclusive)


def _search_chunk(search, q, codes, radius, exclusive):
    try:
        return search(q, codes, radius, exclusive)
    except RuntimeError as exc:
        if "bad_alloc" in str(exc) or "out of memory" in str(exc).lower():
            raise MemoryError(f"range search of {q.shape[0]:,} queries at radius {radius} against {codes.shape[0]:,} "
                              "codes ran out of memory: search fewer queries at a time or use a smaller radius") from exc
        raise


def _ids_in_place(pos: torch.Tensor, ids: Optional[torch.Tensor]) -> torch.Tensor:
    """Positions -> ids, a chunk at a time into ``pos`` itself (None: the ids are the positions)."""
    if ids is not None:
        for start in range(0, pos.shape[0], 1 << 20):
            part = pos[start : start + (1 << 20)]
            part.copy_(ids[part])
    return pos


def range_search_chunks(q: torch.Tensor, codes: torch.Tensor, ids: Optional[torch.Tensor], radius: int,
                        exclusive: bool, query_chunk: int,
                        search: Callable = _flat_chunk) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lims, distances, ids) of every code within ``radius`` of each query (``hamming_range``'s
    CSR form), ``query_chunk`` queries per call of ``search(q, codes, radius, exclusive)``
    (the flat scan by default). ``ids`` None: ids are positions."""
    _check_fits(q, codes, radius, exclusive)
    parts = []
    for start in range(0, q.shape[0], query_chunk):
        lims, dist, pos = _search_chunk(search, q[start : start + query_chunk], codes, radius, exclusive)
        parts.append((lims, dist, _ids_in_place(pos, ids)))
    if len(parts) == 1:
        return parts[0]
    long = dict(dtype=torch.int64, device=codes.device)
    if not parts:
        return torch.zeros(1, **long), torch.empty(0, dtype=torch.int32, device=codes.device), torch.empty(0, **long)
    total = sum(int(p[0][-1]) for p in parts)
    lims = torch.zeros(q.shape[0] + 1, **long)
    dist = torch.empty(total, dtype=torch.int32, device=codes.device)
    found = torch.empty(total, **long)
    row, at = 0, 0
    while parts:  # into the final arrays one chunk at a time, each freed once copied
        chunk_lims, chunk_dist, chunk_ids = parts.pop(0)
        n = chunk_dist.shape[0]
        lims[row + 1 : row + chunk_lims.shape[0]] = chunk_lims[1:] + at
        dist[at : at + n] = chunk_dist
        found[at : at + n] = chunk_ids
        row, at = row + chunk_lims.shape[0] - 1, at + n
    return lims, dist, found
