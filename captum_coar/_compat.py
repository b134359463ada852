"""The one place that imports Captum's private functions.

Contract
--------
Everything else in :mod:`captum_coar` imports Captum's *public* names only (``captum.attr``,
``captum.metrics``, ``captum.log``). The few private functions we reuse, so that our results
match Captum's to the last bit, are imported here and re-exported under stable names; when a
Captum release moves them, this module is the only one to fix. Where one is simple, a
local fallback is used if the import fails.

Re-exported:

- :func:`approximation_parameters` ``(method) -> (step_sizes(n), alphas(n))``, Captum's
  integration rules (``riemann_left/right/middle/trapezoid``, ``gausslegendre``);
- :data:`SUPPORTED_METHODS`, the names it accepts.
"""

from __future__ import annotations

from typing import Callable, List, Tuple

from ._checks import check_int, fail

__all__ = ["approximation_parameters", "SUPPORTED_METHODS", "integration_points"]

try:  # captum 0.7 - 0.9
    from captum.attr._utils.approximation_methods import (
        SUPPORTED_METHODS as _SUPPORTED,
    )
    from captum.attr._utils.approximation_methods import (
        approximation_parameters as _approximation_parameters,
    )
except ImportError:  # pragma: no cover - only when Captum moves the module
    _SUPPORTED = None
    _approximation_parameters = None


def _fallback_parameters(method: str) -> Tuple[Callable[[int], List[float]],
                                                Callable[[int], List[float]]]:
    import numpy as np

    if method == "gausslegendre":
        return (lambda n: (0.5 * np.polynomial.legendre.leggauss(n)[1]).tolist(),
                lambda n: (0.5 * (1 + np.polynomial.legendre.leggauss(n)[0])).tolist())
    rule = method.split("_")[-1]

    def steps(n: int) -> List[float]:
        deltas = [1 / n] * n
        if rule == "trapezoid":
            deltas[0] /= 2
            deltas[-1] /= 2
        return deltas

    def alphas(n: int) -> List[float]:
        lo, hi = {"trapezoid": (0.0, 1.0), "left": (0.0, 1 - 1 / n),
                  "middle": (1 / (2 * n), 1 - 1 / (2 * n)), "right": (1 / n, 1.0)}[rule]
        return np.linspace(lo, hi, n).tolist()

    return steps, alphas


SUPPORTED_METHODS: Tuple[str, ...] = tuple(_SUPPORTED) if _SUPPORTED is not None else (
    "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def approximation_parameters(method: str) -> Tuple[Callable[[int], List[float]],
                                                   Callable[[int], List[float]]]:
    """Captum's ``(step_sizes, alphas)`` builders for an integration ``method``."""
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"method={method!r} is not allowed; use one of {list(SUPPORTED_METHODS)}")
    if _approximation_parameters is not None:
        return _approximation_parameters(method)
    return _fallback_parameters(method)  # pragma: no cover


def integration_points(method: str, n_points: int) -> Tuple[List[float], List[float]]:
    """``(step_sizes, alphas)`` for ``n_points`` points of ``method``, validated."""
    check_int("n_points", n_points, minimum=1)
    if method.startswith("riemann") and n_points < 2:
        raise fail("n_steps", f"at least 2 for method={method!r}", n_points)
    step_sizes, alphas = approximation_parameters(method)
    return list(step_sizes(n_points)), list(alphas(n_points))
