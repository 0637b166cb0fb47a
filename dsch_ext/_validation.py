"""Input conversion and checks shared by the estimators (KMeans, GaussianMixture) and the ops.

Estimators take numpy arrays, array-likes, scipy sparse matrices (densified) or torch tensors
on any device, run where the data lives, and raise ValueError naming the argument and its
shape for bad input. Random states in every form scikit-learn and torch users bring (int,
None, ``np.random.RandomState``, ``np.random.Generator``, ``torch.Generator``) become one
CPU ``torch.Generator``.
"""
import numbers
from typing import Optional, Union

import numpy as np
import torch

from ._sklearn import check_is_fitted as check_fitted  # noqa: F401  (NotFittedError before fit)

SeedLike = Union[None, int, np.integer, np.random.RandomState, np.random.Generator, torch.Generator]
ArrayLike = Union[torch.Tensor, np.ndarray]


def as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """A tensor as is, a numpy array without a copy when possible (a read-only array is
    wrapped without torch's warning: the ops never write their inputs); anything else is a
    TypeError naming the argument. (The ops' kernels check dtypes and shapes themselves.)"""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
        if not x.flags.writeable:
            return _read_only_tensor(x)
        return torch.from_numpy(x)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _read_only_tensor(x: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only array's memory, no copy. torch warns because a tensor is
    writable; the callers only read it."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x)


def as_float_tensor(X, name: str = "X", device: Optional[torch.device] = None,
                    accept_sparse: bool = True) -> torch.Tensor:
    """2-D float32/float64 tensor on its own (or the given) device; other dtypes become float64,
    like scikit-learn. Rejects NaN/Inf, empty and non-2-D input. A scipy sparse matrix is
    densified, or with ``accept_sparse=False`` refused (TypeError saying so)."""
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        if not accept_sparse and _is_sparse(X):
            raise TypeError(f"{name} is a sparse matrix ({type(X).__name__}, shape {X.shape}): sparse input is not "
                            "supported here; pass X.toarray()")
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


def _is_sparse(X) -> bool:
    return hasattr(X, "toarray") and hasattr(X, "nnz")


def _numeric_array(X, name: str) -> np.ndarray:
    """A numpy array of numbers from array-like input; object arrays of numbers become float64,
    scipy sparse matrices are densified (the estimators work on dense data), anything else
    (strings, dicts) is one error naming the argument."""
    if _is_sparse(X):
        X = X.toarray()
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
    gives the same result on every device. An int seeds it; a ``torch.Generator`` is used
    itself; a numpy ``RandomState`` / ``Generator`` gives it a seed drawn from its stream (so
    it advances, and the same state gives the same fit); None seeds it from the OS."""
    if isinstance(random_state, torch.Generator):
        return random_state
    g = torch.Generator()
    if random_state is None:
        g.seed()
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, (bool, np.bool_)):
        g.manual_seed(int(random_state) & 0xFFFF_FFFF_FFFF_FFFF)
    elif isinstance(random_state, np.random.RandomState):
        g.manual_seed(int(random_state.randint(np.iinfo(np.int32).max)))
    elif isinstance(random_state, np.random.Generator):
        g.manual_seed(int(random_state.integers(2**63 - 1)))
    else:
        raise ValueError("random_state must be None, an int, a numpy RandomState or Generator, or a torch.Generator, "
                         f"got {random_state!r}")
    return g


def numpy_random_state(generator: torch.Generator) -> np.random.RandomState:
    """A numpy RandomState seeded from ``generator`` (for user callables that take one, as
    scikit-learn's ``init`` callables do)."""
    return np.random.RandomState(int(torch.randint(2**31 - 1, (1,), generator=generator)))


def sample_weights(sample_weight, n: int, dtype: torch.dtype, device: torch.device) -> Optional[torch.Tensor]:
    """``sample_weight`` as a ``[n]`` tensor of ``dtype`` on ``device``: None stays None (every
    sample weighs 1), a number weighs every sample alike; an array must be 1-D of length n,
    finite and >= 0 (ValueError naming its shape otherwise). Never the caller's memory."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number):
        w = torch.full((n,), float(sample_weight), dtype=dtype, device=device)
    else:
        t = sample_weight.detach() if isinstance(sample_weight, torch.Tensor) else torch.as_tensor(
            _numeric_array(sample_weight, "sample_weight"))
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"sample_weight.shape == {tuple(t.shape)}, expected {(n,)}!")
        w = t.to(device=device, dtype=dtype).clone()
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"sample_weight must be finite and >= 0 (shape {tuple(w.shape)})")
    if n and not bool((w > 0).any()):
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return w


def check_features(estimator, X: torch.Tensor, name: str = "X"):
    if X.shape[1] != estimator.n_features_in_:
        raise ValueError(f"{name} has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
                         f"{estimator.n_features_in_} features as input ({name} shape {tuple(X.shape)})")
