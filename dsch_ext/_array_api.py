"""The input's array library decides the output's (scikit-learn's array API rule).

The estimators compute in torch on the data's device. What they return and the fitted
attributes they set follow the input of ``fit`` (or of the method called): numpy arrays
(and lists, scipy sparse matrices and other array-likes) give numpy arrays; torch tensors give
torch tensors on the input's device. :func:`namespace` records which; :func:`to_output`
converts a result.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True)
class Namespace:
    """Where results go: ``"numpy"``, or ``"torch"`` on ``device``."""

    kind: str
    device: Optional[torch.device] = None

    @property
    def is_torch(self) -> bool:
        return self.kind == "torch"


NUMPY = Namespace("numpy")


def namespace(x) -> Namespace:
    """The namespace of an input: torch for tensors, numpy for everything else."""
    if isinstance(x, torch.Tensor):
        return Namespace("torch", x.device)
    return NUMPY


def to_output(value, ns: Namespace):
    """A tensor (or a tuple of them) as ``ns`` returns it: on the input's device for torch, a
    numpy array (a copy of device data, a view of CPU data) for numpy. Other values pass as
    they are."""
    if isinstance(value, tuple):
        return tuple(to_output(v, ns) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    if ns.is_torch:
        return value.to(ns.device)
    return value.detach().cpu().numpy()


def as_compute(value) -> torch.Tensor:
    """A fitted attribute (a numpy array or a tensor) as the tensor the estimator computes
    with: numpy on the CPU (no copy, unless read-only: torch cannot wrap that), a tensor as
    it is."""
    if isinstance(value, np.ndarray):
        if not value.flags.writeable:
            value = value.copy()
        return torch.from_numpy(np.ascontiguousarray(value))
    return torch.as_tensor(value)


def labels_output(labels: torch.Tensor, ns: Namespace):
    """Component or cluster labels: int32 numpy arrays (scikit-learn's dtype), int64 tensors
    (torch's index dtype) for torch input."""
    return to_output(labels if ns.is_torch else labels.to(torch.int32), ns)
