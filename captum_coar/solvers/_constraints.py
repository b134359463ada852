"""Declared parameter constraints of the solvers, checked the way scikit-learn checks them.

Contract
--------
A solver class declares ``_parameter_constraints``: for every constructor argument, the list
of constraints of which the value must satisfy at least one (``None`` in the list allows
None), as scikit-learn's ``_parameter_constraints`` do. :func:`validate_parameters` checks the
stored arguments against them and raises with the message format of
:mod:`captum_coar._checks`: ``"`Owner name` must be <every allowed form>; got <value>"`` --
``TypeError`` when no allowed form has the value's type, ``ValueError`` otherwise. It only
reads the arguments: no statistics, no fit. Rules that tie two arguments together (alpha or
alphas) or an argument to the data (a prior's shape, a minimum number of masks) are the
solver's own ``check`` (:mod:`captum_coar.solvers.base`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .._checks import fail, fail_type

__all__ = ["Constraint", "Interval", "Choice", "Boolean", "RealSequence", "TensorValue",
           "FloatDtype", "RealPair", "validate_parameters"]


class Constraint:
    """One allowed form of a value: :meth:`of_type` (the value has a type this form takes) and
    :meth:`accepts` (the value is allowed); :attr:`allowed` says it in words."""

    allowed = "a value"

    def of_type(self, value: Any) -> bool:
        return True

    def accepts(self, value: Any) -> bool:
        return self.of_type(value)


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class Interval(Constraint):
    """A finite number (an integer when ``integer``) between ``low`` and ``high`` (None: no
    bound), each end closed or open."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    @property
    def allowed(self) -> str:  # type: ignore[override]
        text = "an integer" if self.integer else "a finite number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return text + (" " + " and ".join(bounds) if bounds else "")

    def of_type(self, value: Any) -> bool:
        return _integer(value) if self.integer else _real(value)

    def accepts(self, value: Any) -> bool:
        if not self.of_type(value) or not math.isfinite(float(value)):
            return False
        x = float(value)
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        return not (self.high is not None and (x > self.high or (self.high_open
                                                                  and x == self.high)))


@dataclass(frozen=True)
class Choice(Constraint):
    """One of the given strings."""

    options: Tuple[str, ...]

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return f"one of {sorted(self.options)}"

    def of_type(self, value: Any) -> bool:
        return isinstance(value, str)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.options


class Boolean(Constraint):
    """True or False."""

    allowed = "True or False"

    def of_type(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class RealSequence(Constraint):
    """A non-empty sequence (list, tuple, array, tensor) of finite numbers ``>= low``."""

    low: float = 0.0

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return f"a non-empty sequence of finite numbers >= {self.low:g}"

    def of_type(self, value: Any) -> bool:
        return isinstance(value, (list, tuple, np.ndarray, torch.Tensor))

    def accepts(self, value: Any) -> bool:
        if not self.of_type(value):
            return False
        try:
            flat = torch.as_tensor(value, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            return False
        return flat.numel() > 0 and bool(torch.isfinite(flat).all()) and \
            bool((flat >= self.low).all())


@dataclass(frozen=True)
class RealPair(Constraint):
    """Two numbers, each in ``[low, high)``."""

    low: float = 0.0
    high: float = 1.0

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return f"a pair of numbers in [{self.low:g}, {self.high:g})"

    def of_type(self, value: Any) -> bool:
        return isinstance(value, (tuple, list))

    def accepts(self, value: Any) -> bool:
        return self.of_type(value) and len(value) == 2 and all(
            _real(v) and self.low <= float(v) < self.high for v in value)


class TensorValue(Constraint):
    """A tensor with finite values (its shape is checked against the data by the solver)."""

    allowed = "a tensor of finite values"

    def of_type(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and bool(torch.isfinite(value).all())


class FloatDtype(Constraint):
    """A floating-point ``torch.dtype``."""

    allowed = "a floating torch.dtype"

    def of_type(self, value: Any) -> bool:
        return isinstance(value, torch.dtype)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, torch.dtype) and value.is_floating_point


def validate_parameters(owner: str, params: Dict[str, Any],
                        constraints: Mapping[str, Sequence[Optional[Constraint]]]) -> None:
    """Check every declared parameter of ``params`` (see the module docstring)."""
    for name, allowed in constraints.items():
        value = params.get(name)
        if value is None and None in allowed:
            continue
        forms = [c for c in allowed if c is not None]
        if any(c.accepts(value) for c in forms):
            continue
        words = " or ".join([c.allowed for c in forms] + (["None"] if None in allowed else []))
        if value is None or not any(c.of_type(value) for c in forms):
            raise fail_type(f"{owner} {name}", words, value)
        raise fail(f"{owner} {name}", words, value)
