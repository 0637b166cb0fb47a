"""Scale-out on torch.distributed: sharded GMM/KMeans fits, a sharded binary index, and the
pieces that make multi-process DSCH training equal to one process.

Launch one process per CPU socket or GPU with ``torchrun --nproc-per-node N script.py`` and
call :func:`init` first; gloo is used on CPUs and NCCL on GPUs. Then:

- ``dsch_ext.GaussianMixture(..., distributed=True)`` and ``dsch_ext.KMeans(..., distributed=True)``
  fit on each rank's rows; only sufficient statistics cross the network (``all_reduce``), and
  every rank ends with the model one process fits on the rows concatenated in rank order.
- :class:`ShardedBinaryIndex` holds a slice of the database per rank; a search is a collective
  that returns exactly the single-process answer (ties: lower global position, i.e. rank order
  then insertion order) to whichever ranks asked.
- ``dsch_ext.trainer.DSCHTrainer(..., distributed=True)`` trains with DistributedDataParallel,
  the E-step sharded as above, and batch statistics shared across ranks
  (:func:`convert_sync_batchnorm`), so the same configuration trains the same model as one
  process up to floating-point summation order.

Failures: every collective goes through a communicator that turns a dead peer (the connection
closes) or a hung peer (``timeout`` passes) into :class:`DistributedError` naming the rank and
the operation. Operations that validate input agree on the outcome first, so bad input on one
rank raises on every rank instead of leaving the others waiting.
"""
import datetime
import os
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import _comm
from ._comm import Communicator, DistributedError, LocalCommunicator, get_communicator
from ._validation import ArrayLike
from .index import BinaryIndex
from .ops import hamming_topk

__all__ = [
    "Communicator", "DistributedError", "ShardedBinaryIndex", "SyncBatchNorm", "convert_sync_batchnorm",
    "get_communicator", "init", "revert_sync_batchnorm", "shard_range", "shutdown",
]


def init(backend: str = "auto", timeout: float = 300.0, init_method: Optional[str] = None,
         rank: Optional[int] = None, world_size: Optional[int] = None) -> Communicator:
    """Initialise the default process group (if not done yet) and return its communicator.

    Under ``torchrun`` nothing needs to be passed: rank, world size and rendezvous come from its
    environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``).
    ``backend='auto'`` picks NCCL when CUDA is available (and binds this process to GPU
    ``LOCAL_RANK``), gloo otherwise. ``timeout`` (seconds) bounds every collective and the
    rendezvous: a rank that dies or hangs makes the others raise :class:`DistributedError`
    within it instead of waiting forever.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    if dist.is_initialized():
        return Communicator()
    if init_method is None and "MASTER_ADDR" not in os.environ:
        raise DistributedError("no rendezvous: launch with `torchrun --nproc-per-node N ...` or pass init_method, "
                               "rank and world_size")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"backend 'nccl' needs one GPU per local rank: LOCAL_RANK={local_rank} but "
                f"{torch.cuda.device_count()} GPU(s) are visible; use backend 'gloo' (CPU tensors) "
                "or fewer processes per node")
        torch.cuda.set_device(local_rank)
    delta = datetime.timedelta(seconds=float(timeout))
    _comm._DEFAULT_TIMEOUT = delta
    kwargs = {"init_method": init_method, "timeout": delta}
    if rank is not None:
        kwargs.update(rank=rank, world_size=world_size)
    try:
        dist.init_process_group(backend, **kwargs)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"process group initialisation failed ({backend}, timeout {timeout:g} s): {exc}") from exc
    return Communicator()


def shutdown(wait: bool = True) -> None:
    """End this rank's part: wait for every rank (a barrier), then destroy the default process
    group, if any. Call it at the end of a distributed script. Without it a rank can abort at
    exit ("terminate called without an active exception"): gloo's worker thread releases the
    tensors of the last collective after the caller has returned, and if the interpreter is
    already finalising, taking the GIL for that kills the thread mid-destructor. The barrier
    lets those releases happen while Python is alive. (``dsch train --distributed`` also ends
    its processes with ``os._exit`` after this, which closes that window entirely.)
    ``wait=False`` skips the barrier: for error paths, where a peer may be gone."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()  # modules (DDP, SyncBatchNorm) that still hold the group


def shard_range(n: int, comm: LocalCommunicator) -> Tuple[int, int]:
    """This rank's contiguous slice ``[start, stop)`` of ``n`` items split as evenly as possible
    (the first ``n % world_size`` ranks get one more), the split ``torch.tensor_split`` makes."""
    base, extra = divmod(n, comm.world_size)
    start = comm.rank * base + min(comm.rank, extra)
    return start, start + base + (1 if comm.rank < extra else 0)


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
    """

    def __init__(self, nbits: int, device: Union[str, torch.device] = "cpu", process_group=None,
                 query_chunk: int = 4096):
        self.comm = Communicator(process_group)
        self.local = BinaryIndex(nbits, device, query_chunk)
        self._next_id = 0

    @property
    def nbits(self) -> int:
        return self.local.nbits

    def __repr__(self):
        return (f"ShardedBinaryIndex(nbits={self.nbits}, local={len(self.local)}, rank={self.comm.rank}, "
                f"world_size={self.comm.world_size})")

    def _packed(self, codes: ArrayLike, name: str) -> torch.Tensor:
        if isinstance(codes, torch.Tensor) and codes.dim() == 2 and codes.shape[0] == 0:
            return torch.empty((0, self.local.code_bytes), dtype=torch.uint8, device=self.local.device)
        return self.local._packed(codes, name)

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
            packed = self._packed(codes, "codes")
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
        """Remove these ids wherever they are (collective); returns how many were removed in all."""
        removed = self.local.remove_ids(ids)
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
            q = self._packed(queries, "queries")
        except (TypeError, ValueError) as exc:
            error, q = exc, None
        _agree(self.comm, error, "ShardedBinaryIndex.search (queries)")
        codes, ids = self.local._snapshot()
        ntotal = sum(self.comm.sizes(codes.shape[0]))
        if not isinstance(k, int) or not 1 <= k <= ntotal:
            raise ValueError(f"k must be in [1, ntotal] = [1, {ntotal}] (over all ranks), got {k!r}")
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
        if kk:
            for s in range(0, Q.shape[0], self.local.query_chunk):
                d, pos = hamming_topk(Q[s : s + self.local.query_chunk], codes, kk)
                dist[s : s + d.shape[0], :kk] = d
                found[s : s + d.shape[0], :kk] = ids[pos]
        mine = slice(sum(nq[: self.comm.rank]), sum(nq[: self.comm.rank + 1]))
        # Rank-ordered candidates of this rank's queries: [nq, world_size * k].
        cand_d = torch.cat([g[mine] for g in self.comm.all_gather(dist)], dim=1)
        cand_i = torch.cat([g[mine] for g in self.comm.all_gather(found)], dim=1)
        order = torch.sort(cand_d, dim=1, stable=True).indices[:, :k]
        return cand_d.gather(1, order), cand_i.gather(1, order)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation whose training statistics are those of the batch across all ranks,
    on any device and backend (torch's ``nn.SyncBatchNorm`` is GPU-only). Two all-reduces per
    call (sum and count, then the centred sum of squares), both differentiable. In eval mode it
    is plain batch norm. State dict keys are BatchNorm's, so checkpoints move between the two."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, comm: Optional[LocalCommunicator] = None,
                 original: type = nn.BatchNorm2d):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.comm = comm if comm is not None else Communicator()
        self.original = original

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input [B, C, ...], got shape {tuple(input.shape)}")

    def forward(self, x):
        self._check_input_dim(x)
        if not (self.training or not self.track_running_stats):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = torch.tensor([x.numel() // max(1, x.shape[1])], dtype=x.dtype, device=x.device)
        stats = self.comm.sum_autograd(torch.cat([x.sum(dims), local_count]))
        count = stats[-1]
        if float(count) < 2:
            raise ValueError(f"expected more than 1 value per channel over all ranks when training, got input "
                             f"of shape {tuple(x.shape)} on this rank")
        mean = stats[:-1] / count
        centred = x - mean.view(shape)
        var = self.comm.sum_autograd((centred * centred).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = float(count)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * n / (n - 1), alpha=factor)
        return y


def _swap_batchnorm(module: nn.Module, make) -> nn.Module:
    new = make(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        module.add_module(name, _swap_batchnorm(child, make))
    return module


def convert_sync_batchnorm(module: nn.Module, comm: Optional[LocalCommunicator] = None) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` in ``module`` by a :class:`SyncBatchNorm` over the
    ranks of ``comm``, keeping parameters and running statistics. Returns the module (changed
    in place; :func:`revert_sync_batchnorm` undoes it)."""
    comm = comm if comm is not None else Communicator()

    def make(m):
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or isinstance(m, SyncBatchNorm):
            return None
        new = SyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, comm, type(m))
        new.load_state_dict(m.state_dict())
        new.train(m.training)
        return new.to(m.running_mean.device if m.running_mean is not None else m.weight.device)

    return _swap_batchnorm(module, make)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_sync_batchnorm`: the original batch norm classes, same state."""
    def make(m):
        if not isinstance(m, SyncBatchNorm):
            return None
        new = m.original(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
        new.load_state_dict(m.state_dict())
        new.train(m.training)
        return new.to(m.running_mean.device if m.running_mean is not None else m.weight.device)

    return _swap_batchnorm(module, make)


def gather_batch(comm: LocalCommunicator, h: torch.Tensor, local_items: int) -> torch.Tensor:
    """Codes of a two-view batch split across ranks, reassembled as one process computes them:
    rank r passes ``h_r = [view1 of its items; view2 of its items]`` (``2 * local_items`` rows)
    and every rank gets ``[view1 of all items in rank order; view2 of all items]``. The
    gradient flows back to each rank's rows (summed over the ranks' identical losses; DDP's
    gradient averaging then gives the one-process gradient exactly)."""
    if not comm.distributed:
        return h
    parts: List[torch.Tensor] = comm.gather_rows_autograd(h)
    halves = [p.shape[0] // 2 for p in parts]
    return torch.cat([p[:n] for p, n in zip(parts, halves)] + [p[n:] for p, n in zip(parts, halves)])
