"""Gaussian mixtures: :class:`GaussianMixture` (scikit-learn's API on any torch device).
``_gaussian_mixture`` is the estimator, ``_statistics`` the M-step's sufficient statistics,
``_parameters`` the checks and conversions of its parameters."""
from .._sklearn import ConvergenceWarning  # noqa: F401  (dsch_ext.mixture.ConvergenceWarning)
from ._gaussian_mixture import GaussianMixture
from ._statistics import COVARIANCE_TYPES, SparseResp

__all__ = ["COVARIANCE_TYPES", "GaussianMixture", "SparseResp"]
