"""Input conversion and checks shared by the estimators (KMeans, GaussianMixture).

Estimators take numpy arrays or torch tensors on any device, run where the data lives, and
raise ValueError naming the argument and its shape for bad input.
"""
import numbers
from typing import Optional, Union

import numpy as np
import torch

from ._sklearn import check_is_fitted as check_fitted  # noqa: F401  (NotFittedError before fit)

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
        t = torch.as_tensor(_numeric_array(X, name))
    if t.is_complex():
        raise ValueError(f"{name} is complex (dtype {t.dtype}, shape {tuple(t.shape)}): Complex data not supported")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [n_samples, n_features], got shape {tuple(t.shape)}; Reshape your "
                         "data with X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one sample")
    if t.shape[0] == 0 or t.shape[1] == 0:
        what = "sample" if t.shape[0] == 0 else "feature"
        raise ValueError(f"{name} is empty: 0 {what}(s) (shape={tuple(t.shape)}) while a minimum of 1 is required.")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float64)
    if device is not None:
        t = t.to(device)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf (shape {tuple(t.shape)})")
    return t.contiguous()


def positive_int(value, name: str) -> int:
    """An int >= 1 (numpy integers included); bools, floats and the rest are a ValueError naming
    the argument, never silently truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def int_in_range(value, name: str, low: int, high: Optional[int] = None, valid: Optional[str] = None) -> int:
    """An int in ``[low, high]`` (no upper bound when ``high`` is None; numpy integers
    included); anything else is a ValueError naming the argument and ``valid`` (default: the
    interval), never silently truncated."""
    valid = valid or (f"in [{low}, {high}]" if high is not None else f">= {low}")
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low
            or (high is not None and value > high)):
        raise ValueError(f"{name} must be an int {valid}, got {value!r}")
    return int(value)


def _numeric_array(X, name: str) -> np.ndarray:
    """A numpy array of numbers from array-like input; object arrays of numbers become float64,
    anything else (strings, dicts, sparse matrices) is one error naming the argument."""
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise TypeError(f"{name} is a sparse matrix ({type(X).__name__}): dense input required")
    a = np.asarray(X)
    if a.dtype == object or a.dtype.kind in "USV":
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name} must hold numbers, got dtype {a.dtype} with shape {a.shape}: {exc}") from exc
    elif a.dtype.kind not in "biufc":
        raise ValueError(f"{name} must hold numbers, got dtype {a.dtype} with shape {a.shape}")
    return a if a.flags.writeable else a.copy()  # torch cannot wrap a read-only array


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




def check_features(estimator, X: torch.Tensor, name: str = "X"):
    if X.shape[1] != estimator.n_features_in_:
        raise ValueError(f"{name} has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
                         f"{estimator.n_features_in_} features as input ({name} shape {tuple(X.shape)})")
