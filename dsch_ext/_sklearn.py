"""scikit-learn's estimator protocol without scikit-learn as a dependency.

Where scikit-learn is installed, dsch_ext's estimators derive from its real base classes (so
``clone``, pipelines, grid search, tags, ``check_is_fitted`` and its warning classes work as
for any scikit-learn estimator). Where it is not, the same protocol comes from small stand-ins:
``get_params`` / ``set_params`` read the constructor's signature, ``repr`` shows the parameters
that differ from their defaults, and :class:`NotFittedError` / :class:`ConvergenceWarning`
subclass the built-in classes scikit-learn's do.
"""
import inspect
import warnings

try:  # pragma: no cover - which branch runs depends on the environment
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, DensityMixin, TransformerMixin
    from sklearn.exceptions import ConvergenceWarning, NotFittedError

    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover
    HAVE_SKLEARN = False
    import numpy as np

    class NotFittedError(ValueError, AttributeError):
        """Raised when an estimator is used before ``fit``."""

    class ConvergenceWarning(UserWarning):
        """An iterative fit stopped before it converged."""

    class BaseEstimator:
        """get_params / set_params / repr from the constructor's keyword parameters."""

        @classmethod
        def _get_param_names(cls):
            signature = inspect.signature(cls.__init__)
            return sorted(p.name for p in signature.parameters.values()
                          if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

        def get_params(self, deep=True):
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            valid = self._get_param_names()
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(f"invalid parameter {name!r} for estimator {type(self).__name__}; "
                                     f"valid parameters are {valid}")
                setattr(self, name, value)
            return self

        def __repr__(self):
            defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
            changed = []
            for name, value in self.get_params().items():
                default = defaults.get(name, inspect.Parameter.empty)
                try:
                    same = value is default or bool(value == default)
                except Exception:  # noqa: BLE001 - arrays and tensors compare element-wise
                    same = False
                if not same:
                    changed.append(f"{name}={value!r}")
            return f"{type(self).__name__}({', '.join(changed)})"

    class ClusterMixin:
        _estimator_type = "clusterer"

    class DensityMixin:
        _estimator_type = "DensityEstimator"

    class TransformerMixin:
        pass

    class ClassNamePrefixFeaturesOutMixin:
        """``get_feature_names_out``: the lowercased class name and the output column number."""

        def get_feature_names_out(self, input_features=None):
            check_is_fitted(self, "_n_features_out")
            prefix = type(self).__name__.lower()
            return np.asarray([f"{prefix}{i}" for i in range(self._n_features_out)], dtype=object)


def check_is_fitted(estimator, attribute: str) -> None:
    """Raise :class:`NotFittedError` naming the estimator when ``attribute`` is not set yet."""
    if not hasattr(estimator, attribute):
        raise NotFittedError(f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
                             "appropriate arguments before using this estimator.")


def warn_not_converged(message: str) -> None:
    warnings.warn(message, ConvergenceWarning, stacklevel=3)


__all__ = ["BaseEstimator", "ClassNamePrefixFeaturesOutMixin", "ClusterMixin", "ConvergenceWarning", "DensityMixin",
           "HAVE_SKLEARN", "NotFittedError", "TransformerMixin", "check_is_fitted", "warn_not_converged"]
