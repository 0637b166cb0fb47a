"""A Hamming index whose codes are spread over the ranks of a process group."""
from typing import Optional, Tuple, Union

import torch

from .._validation import ArrayLike, int_in_range
from ..index import BinaryIndex, id_tensor
from .comm import Communicator, DistributedError
from .shard import _agree


class ShardedBinaryIndex:
    """A Hamming index whose codes are spread over the ranks of a process group.

    Every method except the ``local`` accessors is a collective: all ranks call it, in the
    same order. Positions are global: rank 0's codes first, then rank 1's, each in insertion
    order; this is the order one :class:`~dsch_ext.BinaryIndex` would hold after adding every
    rank's codes in rank order, and the order ties are broken in.

    Args:
        nbits: code length.
        device: where this rank's codes live and its search runs.
        process_group: the torch.distributed group (default group when None).
        query_chunk: queries per kernel call.
        method, substrings: how each rank searches its shard (:class:`~dsch_ext.BinaryIndex`'s:
            ``"mih"`` builds multi-index tables of the shard; the merge is the same).
    """

    def __init__(self, nbits: int, device: Union[str, torch.device] = "cpu", process_group=None,
                 query_chunk: int = 4096, method: str = "flat", substrings: Optional[int] = None):
        self.comm = Communicator(process_group)
        self.local = BinaryIndex(nbits, device, query_chunk, method=method, substrings=substrings)
        self._next_id = 0

    @property
    def nbits(self) -> int:
        return self.local.nbits

    def __repr__(self):
        return (f"ShardedBinaryIndex(nbits={self.nbits}, local={len(self.local)}, rank={self.comm.rank}, "
                f"world_size={self.comm.world_size})")

    def ntotal(self) -> int:
        """Codes on all ranks (collective)."""
        return sum(self.comm.sizes(len(self.local)))

    def add(self, codes: ArrayLike, ids: Optional[ArrayLike] = None) -> torch.Tensor:
        """Add this rank's codes (collective; a rank may add none: ``[0, nbits]``). Default
        ids continue one global count in rank order, as one process adding the ranks' codes
        in turn would number them; given ids must be unique across all ranks (checked on
        each rank only). Returns this rank's new ids."""
        error, new_ids = None, None
        try:
            packed = self.local.pack(codes, "codes")
        except (TypeError, ValueError) as exc:
            error, packed = exc, None
        _agree(self.comm, error, "ShardedBinaryIndex.add (codes)")
        counts = self.comm.sizes(packed.shape[0])
        if ids is None:
            start = self._next_id + sum(counts[: self.comm.rank])
            ids = torch.arange(start, start + packed.shape[0], dtype=torch.int64)
        try:
            new_ids = self.local.add(packed, ids)
        except (TypeError, ValueError) as exc:
            error = exc
        try:
            _agree(self.comm, error, "ShardedBinaryIndex.add")
        except DistributedError:
            self.local.remove_ids(new_ids)  # another rank failed: undo this rank's part
            raise
        top = torch.tensor([max(self.local._next_id, self._next_id + sum(counts))], dtype=torch.int64)
        self._next_id = int(self.comm.max_(top))
        self.local._next_id = self._next_id
        return new_ids

    def remove_ids(self, ids: ArrayLike) -> int:
        """Remove these ids wherever they are (collective); returns how many were removed in all.
        The ranks agree on the ids first: bad ids on one rank raise on every rank, and nothing
        is removed anywhere."""
        error, checked = None, None
        try:
            checked = id_tensor(ids, "ids")
        except (TypeError, ValueError) as exc:
            error = exc
        _agree(self.comm, error, "ShardedBinaryIndex.remove_ids (ids)")
        removed = self.local.remove_ids(checked)
        return int(self.comm.sum_(torch.tensor([removed], dtype=torch.int64)))

    def search(self, queries: ArrayLike, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exact k nearest codes over all ranks for this rank's ``queries`` (collective; a
        rank may pass ``[0, nbits]`` queries). Every rank searches its shard with everyone's
        queries, the candidates (distance, position, id) are exchanged with ``all_gather``,
        and each rank merges its queries' lists with a stable sort on distance: ties go to the
        lower global position, exactly as one :class:`~dsch_ext.BinaryIndex` orders them.
        Returns ``(distances int32 [nq, k], ids int64 [nq, k])`` on this rank's device.
        Traffic per search: ``world_size x all queries x k x 12`` bytes per rank."""
        error = None
        try:
            q = self.local.pack(queries, "queries")
        except (TypeError, ValueError) as exc:
            error, q = exc, None
        _agree(self.comm, error, "ShardedBinaryIndex.search (queries)")
        codes = self.local.codes
        ntotal = sum(self.comm.sizes(codes.shape[0]))
        if ntotal == 0:
            raise ValueError("the index is empty on every rank: add codes before searching it")
        k = int_in_range(k, "k", 1, ntotal, f"in [1, ntotal] = [1, {ntotal}] (over all ranks)")
        all_queries = self.comm.all_gather_rows(q)
        nq = [t.shape[0] for t in all_queries]
        device = codes.device
        if sum(nq) == 0:
            return (torch.empty((0, k), dtype=torch.int32, device=device),
                    torch.empty((0, k), dtype=torch.int64, device=device))
        Q = torch.cat(all_queries).to(device)
        # This shard's candidates for every query, padded to k with a distance past any code's.
        dist = torch.full((Q.shape[0], k), self.nbits + 1, dtype=torch.int32, device=device)
        found = torch.full((Q.shape[0], k), -1, dtype=torch.int64, device=device)
        kk = min(k, codes.shape[0])
        if kk:  # the local index's own route (flat scan or multi-index), in query chunks
            dist[:, :kk], found[:, :kk] = self.local.search(Q, kk)
        mine = slice(sum(nq[: self.comm.rank]), sum(nq[: self.comm.rank + 1]))
        # Rank-ordered candidates of this rank's queries: [nq, world_size * k].
        cand_d = torch.cat([g[mine] for g in self.comm.all_gather(dist)], dim=1)
        cand_i = torch.cat([g[mine] for g in self.comm.all_gather(found)], dim=1)
        order = torch.sort(cand_d, dim=1, stable=True).indices[:, :k]
        return cand_d.gather(1, order), cand_i.gather(1, order)

    def range_search(self, queries: ArrayLike, radius: int, exclusive: bool = False):
        """Every code within Hamming distance ``<= radius`` (``< radius`` with ``exclusive``)
        over all ranks, for this rank's ``queries`` (collective). Every rank range-searches its
        shard with everyone's queries and the hits are exchanged with ``all_gather``; each
        query's hits come in global position order (rank 0's first), exactly as one
        :class:`~dsch_ext.BinaryIndex` returns them. Returns ``(lims int64 [nq + 1],
        distances int32 [total], ids int64 [total])`` on this rank's device. Traffic: every
        rank receives all ranks' hits (16 bytes each) for all queries."""
        error = None
        try:
            q = self.local.pack(queries, "queries")
            radius = int_in_range(radius, "radius", 0)
        except (TypeError, ValueError) as exc:
            error, q = exc, None
        _agree(self.comm, error, "ShardedBinaryIndex.range_search (queries, radius)")
        all_queries = self.comm.all_gather_rows(q)
        nq = [t.shape[0] for t in all_queries]
        device = self.local._snapshot()[0].device
        lims, dist, found = self.local.range_search(torch.cat(all_queries).to(device), radius, exclusive)
        first, last = sum(nq[: self.comm.rank]), sum(nq[: self.comm.rank + 1])
        # Each rank's hits of this rank's queries: a contiguous run of its (query-ordered) lists.
        all_lims = self.comm.all_gather(lims)
        hits = self.comm.all_gather_rows(torch.stack([dist.long(), found], 1))
        counts, runs = [], []
        for rank_lims, rank_hits in zip(all_lims, hits):
            counts.append(rank_lims[first + 1 : last + 1] - rank_lims[first:last])
            runs.append(rank_hits[rank_lims[first] : rank_lims[last]])
        # Stable sort on the query: per query, rank 0's hits, then rank 1's, each in position order.
        query = torch.cat([torch.repeat_interleave(torch.arange(last - first, device=device), c) for c in counts])
        order = torch.sort(query, stable=True).indices
        mine = torch.cat(runs)[order]
        out_lims = torch.zeros(last - first + 1, dtype=torch.int64, device=device)
        out_lims[1:] = torch.cumsum(sum(counts), 0)
        return out_lims, mine[:, 0].to(torch.int32), mine[:, 1]
