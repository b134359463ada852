"""Regression solvers for COAR: one linear model with intercept per example, all at once.

Contract
--------
Masks ``X`` (m, N) (True = component kept) and outputs ``Y`` (m, n) are summarised by
:class:`SufficientStatistics` (X'X, X'Y, sums; memory independent of m, mergeable across
chunks and machines). A :class:`Solver` turns statistics (and optional validation
statistics) into a :class:`FitResult` with ``coef`` (n, N) and ``intercept`` (n,) in
float64 on the statistics' device. A :class:`StreamingSolver` fits from repeated passes
over ``(X, Y)`` chunks when an N x N matrix does not fit.

Implementations
---------------
- :class:`LeastSquares` -- ordinary least squares, one Cholesky factorisation.
- :class:`Ridge` -- L2 penalty (sklearn ``Ridge`` scaling), alpha path via one eigh.
- :class:`Lasso` -- L1 penalty (sklearn ``Lasso`` objective), batched FISTA on the Gram
  matrix, warm-started path.
- :class:`MinibatchRidge` -- streaming Adam on standardised masks, memory ``O(N n)``.

:func:`resolve_solver` maps a name or an instance to a solver.
"""

from __future__ import annotations

from typing import Dict, Type, Union

from .base import ChunkSource, FitResult, Solver, StreamingSolver
from .lasso import ConvergenceWarning, Lasso
from .least_squares import LeastSquares, Ridge, SingularMatrixWarning
from .statistics import SufficientStatistics
from .streaming import MinibatchRidge

__all__ = [
    "SufficientStatistics",
    "FitResult",
    "Solver",
    "StreamingSolver",
    "ChunkSource",
    "LeastSquares",
    "Ridge",
    "Lasso",
    "MinibatchRidge",
    "SingularMatrixWarning",
    "ConvergenceWarning",
    "resolve_solver",
]

_NAMES: Dict[str, Type[Union[Solver, StreamingSolver]]] = {
    "lstsq": LeastSquares,
    "least_squares": LeastSquares,
    "ols": LeastSquares,
    "ridge": Ridge,
    "lasso": Lasso,
    "streaming": MinibatchRidge,
    "minibatch_ridge": MinibatchRidge,
}


def resolve_solver(
    name_or_solver: Union[str, Solver, StreamingSolver] = "least_squares",
) -> Union[Solver, StreamingSolver]:
    """A solver from a name (``"lstsq"``/``"least_squares"``, ``"ridge"``, ``"lasso"``,
    ``"streaming"``) with default parameters, or an instance returned as is.

    Callers check ``isinstance(solver, StreamingSolver)`` to know whether to pass chunks
    instead of :class:`SufficientStatistics`.
    """
    if isinstance(name_or_solver, (Solver, StreamingSolver)):
        return name_or_solver
    if isinstance(name_or_solver, str):
        cls = _NAMES.get(name_or_solver.lower())
        if cls is None:
            raise ValueError(
                f"Unknown solver {name_or_solver!r}; allowed: {sorted(_NAMES)} or a Solver / "
                "StreamingSolver instance."
            )
        return cls()
    raise TypeError(
        "solver must be a name or a Solver / StreamingSolver instance, got "
        f"{name_or_solver!r} ({type(name_or_solver).__name__})."
    )
