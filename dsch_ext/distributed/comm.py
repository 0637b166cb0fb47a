"""The collectives that the sharded algorithms use, behind one small interface.

``Communicator`` wraps a ``torch.distributed`` process group (gloo on CPU, NCCL on GPUs);
``LocalCommunicator`` is the one-process stand-in whose collectives do nothing, so KMeans,
GaussianMixture and the trainer run one code path whether or not they are sharded.

Every collective of a ``Communicator`` turns the backend's failure (a peer that died: the
connection closes; a peer that hangs: the process group's timeout passes) into a
:class:`DistributedError` that names the rank, the operation and the timeout, instead of the
backend's bare message or an endless wait.
"""
import datetime
from typing import List, Optional

import torch

_DEFAULT_TIMEOUT: Optional[datetime.timedelta] = None  # set by dsch_ext.distributed.init


class DistributedError(RuntimeError):
    """A collective failed: a peer process died, hung past the timeout, or disagreed."""


class LocalCommunicator:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1
    distributed = False

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def sizes(self, n: int) -> List[int]:
        return [int(n)]

    def all_gather(self, t: torch.Tensor) -> List[torch.Tensor]:
        return [t]

    def all_gather_rows(self, t: torch.Tensor) -> List[torch.Tensor]:
        return [t]

    def gather_rows_autograd(self, t: torch.Tensor) -> List[torch.Tensor]:
        return [t]

    def sum_autograd(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def barrier(self) -> None:
        pass


class Communicator(LocalCommunicator):
    """Collectives over ``group`` (``None``: the default group). Tensors travel on the
    backend's device (CUDA for NCCL, CPU otherwise) and come back on their own device."""

    distributed = True

    def __init__(self, group=None):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise DistributedError(
                "torch.distributed is not initialised: launch with torchrun and call "
                "dsch_ext.distributed.init() (or torch.distributed.init_process_group) first")
        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        if self.backend == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

    def __repr__(self):
        return f"Communicator(rank={self.rank}, world_size={self.world_size}, backend={self.backend})"

    def _fail(self, op: str, exc: Exception) -> DistributedError:
        timeout = f"{_DEFAULT_TIMEOUT.total_seconds():g} s" if _DEFAULT_TIMEOUT else "the process group's timeout"
        return DistributedError(
            f"rank {self.rank} of {self.world_size}: {op} failed; another rank died, hung longer than "
            f"{timeout}, or called a different collective. Backend said: {exc}")

    def _run(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, group=self.group, **kwargs)
        except DistributedError:
            raise
        except RuntimeError as exc:  # DistBackendError and gloo/NCCL errors are RuntimeErrors
            raise self._fail(what, exc) from exc

    def _reduce_(self, t: torch.Tensor, op, name: str) -> torch.Tensor:
        if t.device == self.device and t.is_contiguous():
            self._run(name, self._dist.all_reduce, t, op=op)
            return t
        buf = t.detach().to(self.device).contiguous()
        self._run(name, self._dist.all_reduce, buf, op=op)
        t.copy_(buf)
        return t

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (every rank gets the same bits)."""
        return self._reduce_(t, self._dist.ReduceOp.SUM, "all_reduce(sum)")

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce_(t, self._dist.ReduceOp.MAX, "all_reduce(max)")

    def sizes(self, n: int) -> List[int]:
        """Every rank's ``n``, in rank order."""
        t = torch.zeros(self.world_size, dtype=torch.int64, device=self.device)
        t[self.rank] = int(n)
        return [int(v) for v in self.sum_(t).tolist()]

    def all_gather(self, t: torch.Tensor) -> List[torch.Tensor]:
        """Every rank's tensor (same shape and dtype on all ranks), in rank order."""
        src = t.detach().to(self.device).contiguous()
        out = [torch.empty_like(src) for _ in range(self.world_size)]
        self._run("all_gather", self._dist.all_gather, out, src)
        return [o.to(t.device) for o in out]

    def all_gather_rows(self, t: torch.Tensor) -> List[torch.Tensor]:
        """Every rank's tensor where only dim 0 may differ between ranks (zero rows allowed)."""
        counts = self.sizes(t.shape[0])
        width = max(counts)
        padded = t.new_zeros((width,) + tuple(t.shape[1:]))
        padded[: t.shape[0]] = t.detach()
        return [g[:c] for g, c in zip(self.all_gather(padded), counts)]

    def gather_rows_autograd(self, t: torch.Tensor) -> List[torch.Tensor]:
        """``all_gather_rows`` that autograd can go through: the gradient of this rank's rows
        is the sum, over ranks, of the gradients that each rank's graph gives them."""
        return list(_GatherRows.apply(self, t))

    def sum_autograd(self, t: torch.Tensor) -> torch.Tensor:
        """Out-of-place sum over ranks that autograd can go through (its gradient is summed too)."""
        return _SumOverRanks.apply(self, t)

    def barrier(self) -> None:
        # An all_reduce rather than dist.barrier: it honours the timeout on every backend.
        self.sum_(torch.zeros(1, device=self.device))


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, comm, t):
        ctx.comm = comm
        ctx.counts = comm.sizes(t.shape[0])
        return tuple(comm.all_gather_rows(t))

    @staticmethod
    def backward(ctx, *grads):
        comm = ctx.comm
        full = torch.cat([g if g is not None else torch.zeros(0) for g in grads])
        comm.sum_(full)
        start = sum(ctx.counts[: comm.rank])
        return None, full[start : start + ctx.counts[comm.rank]]


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, comm, t):
        ctx.comm = comm
        return comm.sum_(t.detach().clone())

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.comm.sum_(grad.clone())


def get_communicator(distributed: bool = False, process_group=None) -> LocalCommunicator:
    """``Communicator(process_group)`` when ``distributed`` (torch.distributed must be
    initialised), else the one-process ``LocalCommunicator``."""
    if not distributed:
        return LocalCommunicator()
    return Communicator(process_group)
