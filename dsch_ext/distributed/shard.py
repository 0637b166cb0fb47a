"""The seam through which the estimators scale out: data split across the ranks of a process
group, and the few operations an algorithm needs on the whole of it.

KMeans and GaussianMixture are written for one process; every step that needs the whole data
set goes through a :class:`Shard`: sums of statistics (:meth:`Shard.sum`), rows by global
number (:meth:`Shard.rows`), a draw weighted over all rows (:meth:`Shard.sample`), the rows
farthest from their centres (:meth:`Shard.farthest`). ``Shard.local(n)`` is the one-process
shard, whose operations are the plain tensor ops; under torch.distributed each is a collective.
"""
from typing import Optional, Tuple

import torch

from .comm import DistributedError, LocalCommunicator, get_communicator


def shard_range(n: int, comm: LocalCommunicator) -> Tuple[int, int]:
    """This rank's contiguous slice ``[start, stop)`` of ``n`` items split as evenly as possible
    (the first ``n % world_size`` ranks get one more), the split ``torch.tensor_split`` makes."""
    base, extra = divmod(n, comm.world_size)
    start = comm.rank * base + min(comm.rank, extra)
    return start, start + base + (1 if comm.rank < extra else 0)


class Shard:
    """Where this process's rows sit in data sharded across ranks: rows
    ``[offset, offset + n_local)`` of ``n_total``. One process: offset 0, everything local."""

    def __init__(self, comm: LocalCommunicator, n_local: int):
        counts = comm.sizes(n_local)
        self.comm = comm
        self.counts = counts
        self.n_local = int(n_local)
        self.n_total = sum(counts)
        self.offset = sum(counts[: comm.rank])

    @classmethod
    def local(cls, n: int) -> "Shard":
        return cls(LocalCommunicator(), n)

    @classmethod
    def of(cls, X: torch.Tensor, distributed: bool = False, process_group=None) -> "Shard":
        return cls(get_communicator(distributed, process_group), X.shape[0])

    @property
    def distributed(self) -> bool:
        return self.comm.world_size > 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over ranks, in place (every rank gets the same bits)."""
        return self.comm.sum_(t)

    def rows(self, X: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Global rows ``ids`` of the sharded X, on every rank."""
        if not self.distributed:
            return X[ids.to(X.device)]
        return gather_rows_by_id(self.comm, X, ids, self.offset)

    def sample(self, cumulative: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Global row numbers drawn by weight: row i holds the draws in ``[W_i-1, W_i)`` of the
        running total W of all ranks' weights, this rank's part given as its running total
        ``cumulative`` ``[n_local]``; ``draws`` in ``[0, W_total)`` are the same on every
        rank. A row of weight 0 is never drawn (draws past the total, by rounding, take the
        last row with weight)."""
        if not self.distributed:
            return torch.searchsorted(cumulative, draws, right=True).clamp_(max=self.n_local - 1)
        totals = torch.zeros(self.comm.world_size, dtype=cumulative.dtype, device=cumulative.device)
        totals[self.comm.rank] = cumulative[-1] if self.n_local else 0.0
        inclusive = torch.cumsum(self.sum(totals), 0)
        last_with_weight = int(torch.nonzero(torch.diff(inclusive, prepend=inclusive.new_zeros(1)) > 0).max())
        owner = torch.searchsorted(inclusive, draws, right=True).clamp_(max=last_with_weight)
        ids = torch.zeros(draws.shape[0], dtype=torch.int64, device=cumulative.device)
        mine = owner == self.comm.rank
        if bool(mine.any()):
            before = inclusive[self.comm.rank] - totals[self.comm.rank]
            local = torch.searchsorted(cumulative, draws[mine] - before, right=True).clamp_(max=self.n_local - 1)
            ids[mine] = local + self.offset
        return self.sum(ids)

    def farthest(self, distances: torch.Tensor, count: int) -> torch.Tensor:
        """Global row numbers of the ``count`` rows of largest ``distances`` over all ranks,
        largest first, ties to the lower row."""
        m = min(count, distances.shape[0])
        local = torch.topk(distances, m, largest=True, sorted=True)
        values = torch.cat(self.comm.all_gather_rows(local.values))
        rows = torch.cat(self.comm.all_gather_rows(local.indices + self.offset))
        by_row = torch.argsort(rows)
        order = by_row[torch.sort(values[by_row], descending=True, stable=True).indices]
        return rows[order[:count]]

    def mean_variance(self, X: torch.Tensor) -> float:
        """Mean over features of the (biased) variance of the whole data set, in two passes."""
        X64 = X.double()
        mean = self.sum(X64.sum(0)) / self.n_total
        return float(self.sum(((X64 - mean) ** 2).sum(0)).sum()) / (self.n_total * X.shape[1])


def gather_rows_by_id(comm: LocalCommunicator, X: torch.Tensor, ids: torch.Tensor, offset: int) -> torch.Tensor:
    """Rows ``ids`` (global row numbers) of the data sharded across ranks, on every rank: each
    rank fills the rows it holds (its rows are ``[offset, offset + len(X))``) and a sum over
    ranks assembles them. Exact: every row is one rank's value plus zeros."""
    ids = ids.to(X.device)
    out = X.new_zeros((ids.shape[0],) + tuple(X.shape[1:]))
    local = (ids >= offset) & (ids < offset + X.shape[0])
    out[local] = X[ids[local] - offset]
    return comm.sum_(out)


def _agree(comm: LocalCommunicator, error: Optional[BaseException], what: str) -> None:
    """Raise on every rank if any rank failed ``what``: this rank's own error, or a
    DistributedError naming the ranks that failed."""
    failed = torch.zeros(comm.world_size, dtype=torch.int64)
    failed[comm.rank] = 1 if error is not None else 0
    failed = comm.sum_(failed)
    if error is not None:
        raise error
    if bool(failed.any()):
        ranks = [r for r, f in enumerate(failed.tolist()) if f]
        raise DistributedError(f"{what} failed on rank(s) {ranks} (see their error); nothing was changed here")
