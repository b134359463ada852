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
``"eb_ridge"`` (:class:`~captum_coar.solvers.bayes.EmpiricalBayesRidge`: ridge around a cheap
prior attribution, one prior variance per component group chosen per example by the marginal
likelihood, posterior standard errors) at or below: least squares is undefined at ``m <= N``,
and, as measured in ``benchmarks/README.md`` ("Fewer masks"), the empirical-Bayes fit around
attribution patching reaches 91-93% of the large-``m`` answer at ``N`` and 96% at ``2 N`` with
intervals that cover. Above ``3 N`` least squares (one factorisation for every example, no
prior to compute) is within a point or two of it.
:func:`checked_solver` gives an ``EmpiricalBayesRidge`` made from None or a name the
component groups (``groups=``); the estimator gives the default its prior (attribution
patching with the same ablation, :mod:`captum_coar.coar._prior`; none where the data is not at
hand, e.g. a store: then it departs from 0). :func:`wants_prior` says whether a resolved solver
is the default that takes a prior.

:func:`checked_solver` is the one path from a ``solver`` argument to a solver ready to fit:
the rule for None, :func:`resolve_solver`, then the solver's own ``check`` (declared
constraints, no fit, no data), its refusal re-raised as ``ValueError`` naming the solver and,
via ``context``, the call.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from .._registry import Registry
from .base import Solver, StreamingSolver
from .bayes import EmpiricalBayesRidge
from .difference_of_means import DifferenceOfMeans
from .lasso import Lasso
from .least_squares import LeastSquares, Ridge
from .selection import AutoLasso, AutoRidge
from .streaming import MinibatchRidge

__all__ = ["SOLVERS", "resolve_solver", "default_solver", "checked_solver",
           "LEAST_SQUARES_ABOVE", "wants_prior"]

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
SOLVERS.register("eb_ridge", EmpiricalBayesRidge, "bayes_ridge")

#: Least squares is the default above this many training masks per component.
LEAST_SQUARES_ABOVE = 3


def resolve_solver(name_or_solver: SolverLike = "least_squares") -> Union[Solver, StreamingSolver]:
    """A solver from a name (``"least_squares"``/``"lstsq"``/``"ols"``, ``"ridge"``,
    ``"lasso"``, ``"streaming"``, ``"ridge_auto"``/``"auto"``, ``"lasso_auto"``,
    ``"difference_of_means"``, ``"eb_ridge"``) with default parameters, or an instance returned as is.

    Callers check ``isinstance(solver, StreamingSolver)`` to know whether to pass chunks
    instead of :class:`~captum_coar.solvers.statistics.SufficientStatistics`.
    """
    return SOLVERS.resolve(name_or_solver)


def default_solver(n_train: int, n_components: int) -> str:
    """``"least_squares"`` above ``3 N`` training masks, ``"eb_ridge"`` at or below."""
    return "least_squares" if n_train > LEAST_SQUARES_ABOVE * n_components else "eb_ridge"


def wants_prior(solver: Optional[SolverLike], resolved: Union[Solver, StreamingSolver]) -> bool:
    """Whether ``resolved`` is the default (``solver`` None) that departs from a prior the
    estimator computes (attribution patching) and has none yet."""
    return (solver is None and isinstance(resolved, EmpiricalBayesRidge)
            and resolved.prior is None)


def checked_solver(solver: Optional[SolverLike], n_train: int, n_examples: Optional[int],
                   with_validation: bool, n_components: int, context: str = "",
                   groups: Optional[Sequence[int]] = None) -> Union[Solver, StreamingSolver]:
    """The solver for ``solver`` (None: :func:`default_solver`), checked by its own ``check``
    for ``n_train`` training masks, ``n_examples`` examples (None: not known yet) and
    ``n_components`` components, with or without held-out statistics. ``groups`` (sizes of
    the component groups) are given to an :class:`EmpiricalBayesRidge` made from None or a
    name.

    Raises ``ValueError`` ``"<context>solver <class> ('<name>') refuses its arguments:
    <why>"``; an unknown name or a non-solver raises as :func:`resolve_solver` does.
    """
    resolved = resolve_solver(default_solver(n_train, n_components) if solver is None
                              else solver)
    if (isinstance(resolved, EmpiricalBayesRidge) and not isinstance(solver, Solver)
            and groups is not None):
        resolved.groups = [int(size) for size in groups]
    try:
        resolved.check(n_train, n_examples, with_validation, n_components)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{context}solver {type(resolved).__name__} ({resolved.name!r})"
                         f" refuses its arguments: {error}") from error
    return resolved
