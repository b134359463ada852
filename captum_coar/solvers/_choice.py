"""Which solver: the names, the ONE default rule, and the checked resolution.

Contract
--------
:data:`SOLVERS` maps names to solver classes; :func:`resolve_solver` turns a name (default
parameters) or an instance (returned as is) into a solver.

:func:`default_solver` ``(n_train, n_components)`` is what ``solver=None`` means everywhere
COAR fits: ``ComponentAblationRegression.attribute`` (``n_train`` = its training masks, after
the held-out share), ``fit`` on a store or on collected statistics (the training rows it
fits), and adaptive collection (the first round's training masks, the fewest any round fits).
It is least squares above :data:`LEAST_SQUARES_ABOVE` ``* N`` training masks and
``"ridge_auto"`` (ridge, penalty by generalised cross-validation) at or below: least squares is
undefined at ``m <= N`` and, as measured in ``benchmarks/README.md`` ("Fewer masks"), noisier
than the chosen ridge up to about ``2 N``.

:func:`checked_solver` is the one path from a ``solver`` argument to a solver ready to fit:
the rule for None, :func:`resolve_solver`, then the solver's own ``check`` (declared
constraints, no fit, no data), its refusal re-raised as ``ValueError`` naming the solver and,
via ``context``, the call.
"""

from __future__ import annotations

from typing import Optional, Union

from .._registry import Registry
from .base import Solver, StreamingSolver
from .difference_of_means import DifferenceOfMeans
from .lasso import Lasso
from .least_squares import LeastSquares, Ridge
from .selection import AutoLasso, AutoRidge
from .streaming import MinibatchRidge

__all__ = ["SOLVERS", "resolve_solver", "default_solver", "checked_solver",
           "LEAST_SQUARES_ABOVE"]

SolverLike = Union[str, Solver, StreamingSolver]

SOLVERS: Registry[Union[Solver, StreamingSolver]] = Registry(
    "solver", (Solver, StreamingSolver), "Ridge(alpha=1.0), Lasso(alphas=...)")
SOLVERS.register("least_squares", LeastSquares, "lstsq", "ols")
SOLVERS.register("ridge", Ridge)
SOLVERS.register("lasso", Lasso)
SOLVERS.register("streaming", MinibatchRidge, "minibatch_ridge")
SOLVERS.register("ridge_auto", AutoRidge, "auto")
SOLVERS.register("lasso_auto", AutoLasso)
SOLVERS.register("difference_of_means", DifferenceOfMeans, "msr")

#: Least squares is the default above this many training masks per component.
LEAST_SQUARES_ABOVE = 2


def resolve_solver(name_or_solver: SolverLike = "least_squares") -> Union[Solver, StreamingSolver]:
    """A solver from a name (``"least_squares"``/``"lstsq"``/``"ols"``, ``"ridge"``,
    ``"lasso"``, ``"streaming"``, ``"ridge_auto"``/``"auto"``, ``"lasso_auto"``,
    ``"difference_of_means"``) with default parameters, or an instance returned as is.

    Callers check ``isinstance(solver, StreamingSolver)`` to know whether to pass chunks
    instead of :class:`~captum_coar.solvers.statistics.SufficientStatistics`.
    """
    return SOLVERS.resolve(name_or_solver)


def default_solver(n_train: int, n_components: int) -> str:
    """``"least_squares"`` above ``2 N`` training masks, ``"ridge_auto"`` at or below."""
    return "least_squares" if n_train > LEAST_SQUARES_ABOVE * n_components else "ridge_auto"


def checked_solver(solver: Optional[SolverLike], n_train: int, n_examples: Optional[int],
                   with_validation: bool, n_components: int,
                   context: str = "") -> Union[Solver, StreamingSolver]:
    """The solver for ``solver`` (None: :func:`default_solver`), checked by its own ``check``
    for ``n_train`` training masks, ``n_examples`` examples (None: not known yet) and
    ``n_components`` components, with or without held-out statistics.

    Raises ``ValueError`` ``"<context>solver <class> ('<name>') refuses its arguments:
    <why>"``; an unknown name or a non-solver raises as :func:`resolve_solver` does.
    """
    resolved = resolve_solver(default_solver(n_train, n_components) if solver is None
                              else solver)
    try:
        resolved.check(n_train, n_examples, with_validation, n_components)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{context}solver {type(resolved).__name__} ({resolved.name!r})"
                         f" refuses its arguments: {error}") from error
    return resolved
