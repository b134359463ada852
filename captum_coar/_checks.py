"""Argument checks: one message format and one exception type per kind of mistake.

Contract
--------
Every check returns the value in its plain Python type or raises with the message
``"`name` must be <what is allowed>; got <what was given>"``, optionally followed by what to
do. A value of the wrong *type* raises ``TypeError``; a value of the right type outside what is
allowed raises ``ValueError``. Booleans are not integers here, and integers are accepted where
a float is asked for. Integer-valued tensors and arrays (targets, rows) are checked by
:func:`check_integer_values`, which refuses fractional values instead of truncating them.

Checks that belong to one concept (sampler seeds, solver penalties) call these helpers from
their own module, so every message reads the same.
"""

from __future__ import annotations

import numbers
from typing import Any, Collection, Literal, Optional, Tuple, Type, Union, overload

import numpy as np
import torch

__all__ = ["fail", "fail_type", "check_int", "check_positive_int", "check_optional_positive_int",
           "check_float", "check_fraction", "check_choice", "check_instance", "check_callable",
           "check_integer_values"]


def _shown(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail(name: str, allowed: str, value: Any, hint: str = "") -> ValueError:
    """The ``ValueError`` for ``name`` outside ``allowed`` (returned, for ``raise fail(...)``)."""
    return ValueError(f"`{name}` must be {allowed}; got {_shown(value)}" + (f". {hint}" if hint else ""))


def fail_type(name: str, allowed: str, value: Any, hint: str = "") -> TypeError:
    """The ``TypeError`` for ``name`` of a type other than ``allowed``."""
    return TypeError(f"`{name}` must be {allowed}; got {type(value).__name__} {_shown(value)}"
                     + (f". {hint}" if hint else ""))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@overload
def check_int(name: str, value: Any, minimum: Optional[int] = ..., maximum: Optional[int] = ...,
              optional: Literal[False] = ...) -> int: ...


@overload
def check_int(name: str, value: Any, minimum: Optional[int] = ..., maximum: Optional[int] = ...,
              optional: bool = ...) -> Optional[int]: ...


def check_int(name: str, value: Any, minimum: Optional[int] = None,
              maximum: Optional[int] = None, optional: bool = False) -> Optional[int]:
    """``value`` as an int in ``[minimum, maximum]`` (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    bounds = ("an integer" + (f" >= {minimum}" if minimum is not None else "")
              + (f" and <= {maximum}" if maximum is not None else "")
              + (" or None" if optional else ""))
    if not _is_int(value):
        raise fail_type(name, bounds, value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise fail(name, bounds, value)
    return int(value)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1."""
    return check_int(name, value, minimum=1)


def check_optional_positive_int(name: str, value: Any) -> Optional[int]:
    """``value`` as an int >= 1, or None."""
    return check_int(name, value, minimum=1, optional=True)


@overload
def check_float(name: str, value: Any, low: Optional[float] = ..., high: Optional[float] = ...,
                low_open: bool = ..., high_open: bool = ..., optional: Literal[False] = ...
                ) -> float: ...


@overload
def check_float(name: str, value: Any, low: Optional[float] = ..., high: Optional[float] = ...,
                low_open: bool = ..., high_open: bool = ..., optional: bool = ...
                ) -> Optional[float]: ...


def check_float(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                low_open: bool = False, high_open: bool = False, optional: bool = False
                ) -> Optional[float]:
    """``value`` as a finite float in the interval given by ``low``/``high`` (open or closed)."""
    if value is None and optional:
        return None
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    allowed = "a finite number"
    if low is not None or high is not None:
        allowed += (f" in {left}{'-inf' if low is None else format(low, 'g')},"
                    f" {'inf' if high is None else format(high, 'g')}{right}")
    if optional:
        allowed += " or None"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise fail_type(name, allowed, value)
    x = float(value)
    if (not np.isfinite(x) or (low is not None and (x < low or (low_open and x == low)))
            or (high is not None and (x > high or (high_open and x == high)))):
        raise fail(name, allowed, value)
    return x


def check_fraction(name: str, value: Any) -> float:
    """A fraction strictly between 0 and 1 (an ablation fraction, a validation share...)."""
    return check_float(name, value, 0.0, 1.0, low_open=True, high_open=True)


def check_choice(name: str, value: Any, choices: Collection[str]) -> str:
    """One of ``choices`` (strings, compared exactly)."""
    if not isinstance(value, str):
        raise fail_type(name, f"one of {sorted(choices)}", value)
    if value not in choices:
        raise fail(name, f"one of {sorted(choices)}", value)
    return value


def check_instance(name: str, value: Any, types: Union[Type[Any], Tuple[Type[Any], ...]],
                   allowed: str, hint: str = "") -> Any:
    """``value`` itself when it is an instance of ``types``; ``TypeError`` naming ``allowed``."""
    if not isinstance(value, types):
        raise fail_type(name, allowed, value, hint)
    return value


def check_callable(name: str, value: Any) -> Any:
    """``value`` itself when it is callable; ``TypeError`` naming ``name`` else."""
    if not callable(value):
        raise fail_type(name, "callable (a model or a function)", value)
    return value


def check_integer_values(name: str, value: Any) -> torch.Tensor:
    """``value`` (int, sequence, array or tensor) as an int64 tensor, refusing fractions.

    Floating values are accepted only when every one is a whole number (``3.0``), so ``1.7``
    never silently becomes ``1``.
    """
    if isinstance(value, bool):
        raise fail_type(name, "integers", value)
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise fail_type(name, "integers (an int, a sequence, an array or a tensor)", value) from error
    if tensor.dtype == torch.bool:
        raise fail_type(name, "integers, not booleans", value)
    if tensor.is_floating_point() or tensor.is_complex():
        if tensor.is_complex() or not bool(torch.isfinite(tensor).all()) \
                or not bool((tensor == tensor.round()).all()):
            raise fail(name, "whole numbers", value, "fractional values are never truncated")
    return tensor.to(torch.long)
