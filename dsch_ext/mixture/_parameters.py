"""A Gaussian mixture's parameters: the user's initial ones checked as scikit-learn checks them
(same messages), and the conversions between covariances, precisions and their Cholesky
factors (``precisions_cholesky_``: upper triangular L with precision = L L^T, scikit-learn's
convention; the E-step kernel takes any such L)."""
import numpy as np
import torch

ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)


def _array(value, dtype: torch.dtype, device: torch.device, copy: bool = True) -> torch.Tensor:
    """The user's array as a tensor on (device, dtype): a copy unless copy=False (the caller
    only reads it)."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value, dtype=np.float64))
    t = t.detach().to(device=device, dtype=dtype)
    return t.clone() if copy else t


def _check_shape(t: torch.Tensor, shape, name: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"The parameter '{name}' should have the shape of {tuple(shape)}, but got {tuple(t.shape)}")


def _chunks(k: int, d: int):
    """Slices of the K components, about 2^21 entries of D x D matrices each (16 MB of
    float64; one matrix from D = 1448): the batched checks and factorisations work a chunk at
    a time, so their temporaries stay near that size at large D, while at D = 64 a chunk is
    512 components (one LAPACK call each, not K)."""
    step = max(1, (1 << 21) // (d * d))
    return [slice(start, start + step) for start in range(0, k, step)]


def check_weights(value, k: int, dtype, device) -> torch.Tensor:
    w = _array(value, dtype, device)
    _check_shape(w, (k,), "weights")
    lo, hi = float(w.min()), float(w.max())
    if lo < 0 or hi > 1:
        # scikit-learn's message, its order of the two values included.
        raise ValueError(f"The parameter 'weights' should be in the range [0, 1], but got max value {lo:.5f}, "
                         f"min value {hi:.5f}")
    atol = 1e-6 if dtype == torch.float32 else 1e-8
    total = float(w.double().sum())
    if abs(1.0 - total) > atol:
        raise ValueError(f"The parameter 'weights' should be normalized, but got sum(weights) = {total:.5f}")
    return w


def check_means(value, k: int, d: int, dtype, device) -> torch.Tensor:
    m = _array(value, dtype, device)
    _check_shape(m, (k, d), "means")
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"The parameter 'means' contains NaN or Inf (shape {tuple(m.shape)})")
    return m


PRECISION_SHAPES = {"full": lambda k, d: (k, d, d), "tied": lambda k, d: (d, d), "diag": lambda k, d: (k, d),
                    "spherical": lambda k, d: (k,)}


def check_precisions(value, covariance_type: str, k: int, d: int, dtype, device) -> torch.Tensor:
    """The precisions checked; not a copy where the input already is (device, dtype): only
    their Cholesky factors are kept."""
    p = _array(value, dtype, device, copy=False)
    name = f"{covariance_type} precision"
    _check_shape(p, PRECISION_SHAPES[covariance_type](k, d), name)
    if covariance_type in ("full", "tied"):
        # scikit-learn's tests (allclose to the transpose, eigenvalues > 0), a chunk of
        # components at a time (no [K, D, D] temporaries) and with a Cholesky factorisation: a
        # symmetric matrix is positive-definite exactly when that succeeds, at a quarter of
        # eigvalsh's cost.
        mats = p.reshape(-1, d, d)
        for part in _chunks(mats.shape[0], d):
            m = mats[part].double()
            mt = m.transpose(1, 2)
            bound = mt.abs().mul_(1e-5).add_(1e-8)  # in place: two temporaries, not five
            symmetric = bool(((m - mt).abs_() <= bound).all())
            if not (symmetric and bool(torch.isfinite(m).all()) and not bool(torch.linalg.cholesky_ex(m).info.any())):
                raise ValueError(f"'{name}' should be symmetric, positive-definite")
    elif not bool((p > 0).all()) or not bool(torch.isfinite(p).all()):
        raise ValueError(f"'{name}' should be positive")
    return p


def cholesky_from_precisions(precisions: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Upper triangular L with precision = L L^T (the Cholesky factor of the flipped matrix,
    flipped back), in float64 and returned in the precisions' dtype."""
    if covariance_type not in ("full", "tied"):
        return torch.sqrt(precisions)
    mats = precisions.reshape(-1, *precisions.shape[-2:])
    out = torch.empty_like(mats)
    for part in _chunks(*mats.shape[:2]):
        flipped = mats[part].double().flip((-2, -1))
        out[part] = torch.linalg.cholesky(flipped).flip((-2, -1))
    return out.reshape(precisions.shape)


def cholesky_from_covariances(covariances: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """scikit-learn's ``_compute_precision_cholesky``: L with precision = L L^T (upper),
    computed in float64 and returned in the covariances' dtype. An ill-defined covariance is
    a ValueError saying what to change."""
    if covariance_type not in ("full", "tied"):
        if bool((covariances <= 0).any()):
            raise ValueError(ILL_DEFINED)
        return (1.0 / torch.sqrt(covariances.double())).to(covariances.dtype)
    mats = covariances.reshape(-1, *covariances.shape[-2:])
    out = torch.empty_like(mats)
    eye = torch.eye(mats.shape[-1], dtype=torch.float64, device=mats.device)
    for part in _chunks(*mats.shape[:2]):
        chol, info = torch.linalg.cholesky_ex(mats[part].double())
        if bool((info != 0).any()):
            raise ValueError(ILL_DEFINED)
        out[part] = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False).transpose(-1, -2)
    return out.reshape(covariances.shape)


def precisions_from_cholesky(prec_chol: torch.Tensor, covariance_type: str) -> torch.Tensor:
    if covariance_type in ("full", "tied"):
        return prec_chol @ prec_chol.transpose(-1, -2)
    return prec_chol**2


def covariances_from_precisions(precisions: torch.Tensor, covariance_type: str) -> torch.Tensor:
    if covariance_type in ("full", "tied"):
        return torch.linalg.inv(precisions.double()).to(precisions.dtype)
    return 1.0 / precisions


def n_parameters(k: int, d: int, covariance_type: str) -> int:
    """Free parameters of the mixture (for BIC / AIC)."""
    cov = {"full": k * d * (d + 1) / 2, "diag": k * d, "tied": d * (d + 1) / 2, "spherical": k}
    return int(cov[covariance_type] + k * d + k - 1)
