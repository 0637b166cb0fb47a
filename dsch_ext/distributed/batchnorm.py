"""Batch statistics across ranks: synchronised batch norm on any device and backend, and the
reassembly of a two-view batch split across ranks."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .comm import Communicator, LocalCommunicator


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
        if float(count.detach()) < 2:
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
                n = float(count.detach())
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
