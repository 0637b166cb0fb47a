"""Declarative parameter checks for the estimators, in scikit-learn's words.

An estimator lists each constructor parameter's valid values once (``PARAMETERS``):
:class:`Interval`, :class:`Options`, a type, ``None`` or one of the names ``"boolean"``,
``"verbose"``, ``"random_state"``, ``"array-like"``, ``"callable"``. :func:`validate` checks
them at ``fit``. Where scikit-learn is installed the list becomes the estimator's
``_parameter_constraints`` and scikit-learn's own validator runs, so a bad value gives exactly
its ``InvalidParameterError`` message; without it a small validator here gives the same
message, and an error of a class that is both a ``ValueError`` and a ``TypeError`` like
scikit-learn's.
"""
import math
import numbers
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from ._sklearn import HAVE_SKLEARN


@dataclass(frozen=True)
class Interval:
    """Numbers of ``kind`` (``numbers.Integral`` or ``numbers.Real``) in a range; ``None`` is
    unbounded, ``closed`` one of 'left', 'right', 'both', 'neither'."""

    kind: type
    low: Optional[float]
    high: Optional[float]
    closed: str = "left"

    def accepts(self, value) -> bool:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, self.kind):
            return False
        if self.kind is numbers.Real and math.isnan(value):
            return False
        low_ok = self.low is None or (value >= self.low if self.closed in ("left", "both") else value > self.low)
        high_ok = self.high is None or (value <= self.high if self.closed in ("right", "both") else value < self.high)
        return low_ok and high_ok

    def __str__(self):
        integral = self.kind is numbers.Integral
        show = (lambda v: v) if integral else float
        low = "-inf" if self.low is None else show(self.low)
        high = "inf" if self.high is None else show(self.high)
        left = "[" if self.closed in ("left", "both") else "("
        right = "]" if self.closed in ("right", "both") else ")"
        return f"{'an int' if integral else 'a float'} in the range {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Options:
    """One of a few strings."""

    values: Tuple[str, ...]

    def __init__(self, *values: str):
        object.__setattr__(self, "values", tuple(values))

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self):
        return "a str among {" + ", ".join(repr(v) for v in self.values) + "}"


def _type_name(t: type) -> str:
    module = t.__module__
    return t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"


def _named(name: str):
    """(accepts, description) of a named constraint."""
    if name == "boolean":
        return lambda v: isinstance(v, (bool, np.bool_)), "an instance of 'bool' or an instance of 'numpy.bool'"
    if name == "verbose":
        return (lambda v: isinstance(v, (bool, np.bool_)) or Interval(numbers.Integral, 0, None).accepts(v),
                "an int in the range [0, inf), an instance of 'bool' or an instance of 'numpy.bool'")
    if name == "random_state":
        return (lambda v: v is None or isinstance(v, np.random.RandomState)
                or Interval(numbers.Integral, 0, 2**32 - 1, "both").accepts(v),
                "an int in the range [0, 4294967295], an instance of 'numpy.random.mtrand.RandomState' or None")
    if name == "array-like":
        return lambda v: hasattr(v, "__len__") or hasattr(v, "shape") or hasattr(v, "__array__"), "an array-like"
    raise ValueError(f"unknown constraint {name!r}")


def _check(constraint):
    """(accepts, description) of any constraint."""
    if constraint is None:
        return (lambda v: v is None), "None"
    if constraint is callable:
        return callable, "a callable"
    if isinstance(constraint, str):
        return _named(constraint)
    if isinstance(constraint, type):
        return (lambda v: isinstance(v, constraint)), f"an instance of {_type_name(constraint)!r}"
    return constraint.accepts, str(constraint)


def _to_sklearn(constraint):
    from sklearn.utils._param_validation import Interval as SkInterval
    from sklearn.utils._param_validation import StrOptions

    if isinstance(constraint, Interval):
        return SkInterval(constraint.kind, constraint.low, constraint.high, closed=constraint.closed)
    if isinstance(constraint, Options):
        return StrOptions(set(constraint.values))
    return constraint


def sklearn_constraints(parameters: Dict[str, list]) -> Dict[str, list]:
    """``parameters`` in scikit-learn's constraint objects (``_parameter_constraints``), or
    ``{}`` without scikit-learn."""
    if not HAVE_SKLEARN:
        return {}
    return {name: [_to_sklearn(c) for c in constraints] for name, constraints in parameters.items()}


if HAVE_SKLEARN:  # pragma: no cover - which branch runs depends on the environment
    from sklearn.utils._param_validation import InvalidParameterError
else:  # pragma: no cover
    class InvalidParameterError(ValueError, TypeError):
        """A constructor parameter has a value outside its constraints."""


def validate(estimator, parameters: Dict[str, list]) -> None:
    """Raise :class:`InvalidParameterError` for the first parameter of ``estimator`` whose value
    satisfies none of its constraints."""
    params = estimator.get_params(deep=False)
    name = type(estimator).__name__
    if HAVE_SKLEARN:
        from sklearn.utils._param_validation import validate_parameter_constraints

        validate_parameter_constraints(sklearn_constraints(parameters), params, name)
        return
    for param, constraints in parameters.items():
        checks = [_check(c) for c in constraints]
        value = params[param]
        if not any(accepts(value) for accepts, _ in checks):
            texts = [text for _, text in checks]
            allowed = texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} or {texts[-1]}"
            raise InvalidParameterError(f"The {param!r} parameter of {name} must be {allowed}. Got {value!r} instead.")
