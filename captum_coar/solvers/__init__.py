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
- :class:`AutoRidge` -- ridge with its penalty chosen on held-out rows or by generalised
  cross-validation, optionally shrunk toward a prior attribution (``prior=``).
- :class:`AutoLasso` -- lasso with its penalty chosen on held-out rows, refitted on all rows,
  optionally sparse around a prior attribution (``prior=``).
- :class:`DifferenceOfMeans` -- ``E[y | kept] - E[y | ablated]`` per component (maximum
  sample reuse), defined at any ``m``.
- :class:`EmpiricalBayesRidge` -- ridge around a (scaled) prior attribution with one prior
  variance per component group, chosen per example by the marginal likelihood; posterior
  standard errors (the default at or below ``3 N`` training masks).

Least squares, ridge, AutoRidge and EmpiricalBayesRidge attach standard errors
(``FitResult.standard_errors``); :mod:`captum_coar.solvers.uncertainty` says what they mean and
computes confidence intervals.

:func:`resolve_solver` maps a name or an instance to a solver; :func:`default_solver` is the
one rule for ``solver=None`` (least squares above ``3 N`` training masks, ``"eb_ridge"`` at or
below, around attribution patching where COAR can compute it); :func:`checked_solver` applies
both and the solver's check, the one path every COAR fit takes (:mod:`captum_coar.solvers._choice`). Every solver checks itself before any data
exists: ``solver.check(n_train, n_examples, with_validation, n_components)`` (constraints
declared per class, as in scikit-learn), and ``solver.gives_standard_errors`` says whether its
fits carry standard errors.
"""

from __future__ import annotations

from ._choice import SOLVERS, checked_solver, default_solver, resolve_solver, wants_prior
from .base import ChunkSource, FitResult, Solver, StreamingSolver
from .bayes import EmpiricalBayesRidge
from .difference_of_means import DifferenceOfMeans
from .lasso import ConvergenceWarning, Lasso
from .least_squares import LeastSquares, Ridge, SingularMatrixWarning
from .selection import AutoLasso, AutoRidge
from .statistics import SufficientStatistics
from .streaming import MinibatchRidge
from .uncertainty import confidence_interval, sandwich_standard_errors

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
    "AutoRidge",
    "AutoLasso",
    "DifferenceOfMeans",
    "EmpiricalBayesRidge",
    "confidence_interval",
    "sandwich_standard_errors",
    "SingularMatrixWarning",
    "ConvergenceWarning",
    "resolve_solver",
    "default_solver",
    "checked_solver",
    "wants_prior",
    "SOLVERS",
]
