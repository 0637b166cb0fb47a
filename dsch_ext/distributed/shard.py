"""Data split across the ranks of a process group: which rows a rank holds, rows by global
number, and agreement on errors before a collective goes on."""
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
        self.n_total = sum(counts)
        self.offset = sum(counts[: comm.rank])

    @classmethod
    def of(cls, X: torch.Tensor, distributed: bool = False, process_group=None) -> "Shard":
        return cls(get_communicator(distributed, process_group), X.shape[0])

    def rows(self, X: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Global rows ``ids`` of the sharded X, on every rank."""
        return gather_rows_by_id(self.comm, X, ids, self.offset)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.comm.sum_(t)

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
