"""The default process group: :func:`init` starts it (under torchrun, from its environment)
and :func:`shutdown` ends this rank's part cleanly."""
import datetime
import os
from typing import Optional

import torch

from . import comm as _comm
from .comm import Communicator, DistributedError


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
