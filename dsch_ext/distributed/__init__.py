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
- ``dsch_ext.dsch.DSCHTrainer(..., distributed=True)`` trains with DistributedDataParallel,
  the E-step sharded as above, and batch statistics shared across ranks
  (:func:`convert_sync_batchnorm`), so the same configuration trains the same model as one
  process up to floating-point summation order.

Failures: every collective goes through a communicator that turns a dead peer (the connection
closes) or a hung peer (``timeout`` passes) into :class:`DistributedError` naming the rank and
the operation. Operations that validate input agree on the outcome first, so bad input on one
rank raises on every rank instead of leaving the others waiting.
"""
from .batchnorm import SyncBatchNorm, convert_sync_batchnorm, gather_batch, revert_sync_batchnorm
from .comm import Communicator, DistributedError, LocalCommunicator, get_communicator
from .group import init, shutdown
from .index import ShardedBinaryIndex
from .shard import Shard, shard_range

__all__ = [
    "Communicator", "DistributedError", "LocalCommunicator", "Shard", "ShardedBinaryIndex", "SyncBatchNorm",
    "convert_sync_batchnorm", "gather_batch", "get_communicator", "init", "revert_sync_batchnorm", "shard_range",
    "shutdown",
]
