"""Input conversion and checks shared by the estimators (KMeans, GaussianMixture).

Estimators take numpy arrays or torch tensors on any device, run where the data lives, and
raise ValueError naming the argument and its shape for bad input.
"""
import numbers
from typing import Optional, Union

import numpy as np
import torch

SeedLike = Union[None, int, np.integer, torch.Generator]
ArrayLike = Union[torch.Tensor, np.ndarray]


def as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """A tensor as is, a numpy array without a copy when possible; anything else is a TypeError
    naming the argument. (The ops' kernels check dtypes and shapes themselves.)"""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def as_float_tensor(X, name: str = "X", device: Optional[torch.device] = None) -> torch.Tensor:
    """2-D float32/float64 tensor on its own (or the given) device; other dtypes become float64,
    like scikit-learn. Rejects NaN/Inf, empty and non-2-D input."""
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        t = torch.as_tensor(np.asarray(X))
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [n_samples, n_features], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float64)
    if device is not None:
        t = t.to(device)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf (shape {tuple(t.shape)})")
    return t.contiguous()


def make_generator(random_state: SeedLike) -> torch.Generator:
    """A CPU generator: random draws happen on the CPU and move to the data's device, so a seed
    gives the same result on every device."""
    if isinstance(random_state, torch.Generator):
        return random_state
    g = torch.Generator()
    if random_state is None:
        g.seed()
    elif isinstance(random_state, numbers.Integral):
        g.manual_seed(int(random_state))
    else:
        raise ValueError(f"random_state must be None, an int or a torch.Generator, got {random_state!r}")
    return g


def check_fitted(estimator, attribute: str):
    if not hasattr(estimator, attribute):
        raise RuntimeError(f"this {type(estimator).__name__} is not fitted yet: call fit first")


def check_features(estimator, X: torch.Tensor, name: str = "X"):
    if X.shape[1] != estimator.n_features_in_:
        raise ValueError(
            f"{name} has {X.shape[1]} features (shape {tuple(X.shape)}) but "
            f"{type(estimator).__name__} was fitted with {estimator.n_features_in_}"
        )
