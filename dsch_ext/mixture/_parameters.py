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


def _array(value, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value, dtype=np.float64))
    return t.detach().to(device=device, dtype=dtype).clone()


def _check_shape(t: torch.Tensor, shape, name: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"The parameter '{name}' should have the shape of {tuple(shape)}, but got {tuple(t.shape)}")


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
    p = _array(value, dtype, device)
    name = f"{covariance_type} precision"
    _check_shape(p, PRECISION_SHAPES[covariance_type](k, d), name)
    if covariance_type in ("full", "tied"):
        mats = p.double().reshape(-1, d, d)
        symmetric = torch.isclose(mats, mats.transpose(1, 2), rtol=1e-5, atol=1e-8).all()
        if not (bool(symmetric) and bool(torch.isfinite(mats).all())
                and bool((torch.linalg.eigvalsh(mats) > 0).all())):
            raise ValueError(f"'{name}' should be symmetric, positive-definite")
    elif not bool((p > 0).all()) or not bool(torch.isfinite(p).all()):
        raise ValueError(f"'{name}' should be positive")
    return p


def _flip(m: torch.Tensor) -> torch.Tensor:
    return m.flip(-1).flip(-2)


def cholesky_from_precisions(precisions: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Upper triangular L with precision = L L^T (the Cholesky factor of the flipped matrix,
    flipped back), in float64 and returned in the precisions' dtype."""
    if covariance_type in ("full", "tied"):
        return _flip(torch.linalg.cholesky(_flip(precisions.double()))).to(precisions.dtype)
    return torch.sqrt(precisions)


def cholesky_from_covariances(covariances: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """scikit-learn's ``_compute_precision_cholesky``: L with precision = L L^T (upper),
    computed in float64 and returned in the covariances' dtype. An ill-defined covariance is
    a ValueError saying what to change."""
    dtype = covariances.dtype
    covariances = covariances.double()
    if covariance_type in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(covariances)
        if bool((info != 0).any()):
            raise ValueError(ILL_DEFINED)
        eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
        eye = eye.expand_as(covariances)
        return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2).contiguous().to(dtype)
    if bool((covariances <= 0).any()):
        raise ValueError(ILL_DEFINED)
    return (1.0 / torch.sqrt(covariances)).to(dtype)


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
