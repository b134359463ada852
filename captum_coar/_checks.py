"""Argument checks shared across the package.

Contract
--------
Each check returns the value in its plain Python type, or raises ``ValueError`` with a
message that names the argument, says what is allowed and shows what was given. Booleans are
not integers here. Used by the collection settings, the solvers and the baselines; checks
that belong to one concept (sampler seeds, ablation fractions, solver alphas) stay with it.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

__all__ = ["check_positive_int", "check_optional_positive_int"]


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (Python or NumPy integer); ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_optional_positive_int(name: str, value: Any) -> Optional[int]:
    """``value`` as an int >= 1, or None; ``ValueError`` naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)
