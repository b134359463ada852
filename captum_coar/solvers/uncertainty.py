"""Standard errors and confidence intervals of COAR coefficients.

Contract
--------
What an error bar means here: the masks are a random sample. Write ``beta`` for the
coefficients COAR converges to as the number of masks ``m`` grows (the population least-squares
coefficients for the mask distribution; with independent Bernoulli masks, component ``i``'s is
``E[y | i kept] - E[y | i ablated]``). A standard error ``se[j, i]`` estimates the standard
deviation of ``coef[j, i]`` over repeated draws of ``m`` masks, and ``coef +- z se`` is a
normal-approximation interval for ``beta[j, i]``. It covers the sampling noise of the masks
only: the model is deterministic, so there is no other noise, and the penalty's bias (ridge,
shrinkage toward a prior) is NOT included -- those intervals are centred on a shrunk value
and under-cover ``beta`` when the penalty is strong relative to ``m``.

For a linear fit ``W = A^{-1} (Sxy + a W0)`` with ``A = Sxx + a I`` (``a = 0``: least squares;
``W0 = 0``: ridge) and a residual variance ``s_j^2`` per example:

- :func:`linear_standard_errors` (``"classical"``, from :class:`SufficientStatistics` alone):
  ``se_ij^2 = s_j^2 [A^{-1} Sxx A^{-1}]_ii`` with ``s_j^2 = RSS_j / (m - 1 - df)`` and
  ``df = tr(A^{-1} Sxx)``. Exact for homoscedastic residuals; one eigendecomposition of ``Sxx``.
- :func:`sandwich_standard_errors` (``"sandwich"``, needs the raw rows, i.e. a store): the
  heteroscedasticity-robust (HC1) ``se_ij^2 = m / (m - 1 - df) sum_r (A^{-1} x_r)_i^2 e_rj^2``
  with centred masks ``x_r`` and residuals ``e_rj``, accumulated chunk by chunk. With random
  masks the residual of a misspecified (non-additive) model depends on the mask, which is what
  this form accounts for.

Without a penalty, a coefficient that the masks do not identify (a component never or always
ablated, so it touches the null space of ``Sxx``) gets an infinite standard error. Residuals
of a deterministic model are zero on repeated masks; with few components and many masks
duplicates are common and the classical estimate is then too small (use more components'
worth of masks, or the sandwich form, which has the same blind spot, with care).

:class:`~captum_coar.solvers.bayes.EmpiricalBayesRidge` (the default below ``3 N`` masks)
attaches posterior standard deviations instead, ``se_ij^2 = s_j^2 [A_j^{-1}]_ii`` with
``A_j = Sxx + diag(penalties of example j)``, plus the variance of the prior's estimated scale:
they add to the sampling noise the shrinkage bias its fitted prior expects, so its intervals
cover the large-``m`` coefficients for about 95% of components on average (measured on planted
models and trained networks in ``benchmarks/README.md``), not for each component. Like the
classical form they treat the residual as homoscedastic: where it is strongly not (few
components ablated per mask, very non-additive models) every classical interval, least
squares' included, covers a few points less.

:func:`normal_quantile` and :func:`confidence_interval` turn standard errors into intervals
(two-sided, normal quantile).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Optional, Tuple, Union

import torch

from .._checks import check_float, fail
from .statistics import SufficientStatistics

if TYPE_CHECKING:
    from .base import FitResult

__all__ = ["linear_standard_errors", "sandwich_standard_errors", "normal_quantile",
           "confidence_interval", "attach_standard_errors", "residual_dof", "Penalty"]

#: One penalty for all examples, or one per example ``(n,)``.
Penalty = Union[float, torch.Tensor]


def _penalty_column(penalty: Penalty, n: int, like: torch.Tensor) -> torch.Tensor:
    """Penalty as an (n,) tensor (one value repeated, or per example)."""
    a = torch.as_tensor(penalty, dtype=like.dtype, device=like.device).flatten()
    if a.numel() == 1:
        a = a.expand(n)
    if a.numel() != n or bool((a < 0).any()) or not bool(torch.isfinite(a).all()):
        raise fail("penalty", f"a finite number >= 0 or an ({n},) tensor of them", penalty)
    return a


def _spectrum(sxx: torch.Tensor, rcond: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigenvalues (clamped at 0), eigenvectors and the mask of numerically non-zero ones."""
    evals, evecs = torch.linalg.eigh(sxx)
    evals = evals.clamp_min(0.0)
    top = float(evals.max()) if evals.numel() else 0.0
    keep = evals > rcond * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    return evals, evecs, keep


def _filter_factors(evals: torch.Tensor, keep: torch.Tensor, a: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per example j and eigenvalue k: ``lam/(lam+a_j)^2`` (n, N) and ``df_j`` (n,)."""
    lam = evals[None, :]
    den = lam + a[:, None]
    ok = keep[None, :] & (den > 0)
    safe = torch.where(ok, den, torch.ones_like(den))
    var_factor = torch.where(ok, lam / (safe * safe), torch.zeros_like(den))
    df = torch.where(ok, lam / safe, torch.zeros_like(den)).sum(1)
    return var_factor, df


def residual_dof(m: int, df: torch.Tensor) -> torch.Tensor:
    """Residual degrees of freedom ``m - 1 - df`` (the intercept counts one)."""
    return m - 1.0 - df


def linear_standard_errors(stats: SufficientStatistics, coef: torch.Tensor,
                           intercept: torch.Tensor, penalty: Penalty = 0.0,
                           rcond: float = 1e-10) -> Tuple[torch.Tensor, torch.Tensor]:
    """Classical standard errors ``(n, N)`` and residual dof ``(n,)`` of a (penalised) fit.

    ``coef`` (n, N) and ``intercept`` (n,) are the fitted model (its residual sum of squares
    comes from ``stats``); ``penalty`` the ridge strength used (0 for least squares).
    Raises ``ValueError`` when no residual degree of freedom is left (``m - 1 - df <= 0``):
    then the residuals say nothing about the noise, and an error bar would be made up.
    """
    m = stats.count
    sxx, _, _ = stats.centered()
    a = _penalty_column(penalty, stats.n_outputs, sxx)
    evals, evecs, keep = _spectrum(sxx, rcond)
    var_factor, df = _filter_factors(evals, keep, a)
    dof = residual_dof(m, df)
    if bool((dof <= 0.5).any()):
        worst = float(dof.min())
        raise fail("residual degrees of freedom m - 1 - df", "> 0.5 for standard errors",
                   round(worst, 3), f"m = {m} masks leave no residual to estimate the noise "
                   "from; collect more masks or use a larger penalty")
    rss = stats.mse(coef, intercept) * m
    sigma2 = rss / dof
    # diag(V diag(f_j) V') for every example j: (V*V) @ f_j
    diag = (evecs * evecs) @ var_factor.T  # (N, n)
    se = (diag * sigma2[None, :]).clamp_min(0.0).sqrt().T.contiguous()
    return _unidentified_to_inf(se, evecs, keep, a), dof


def _unidentified_to_inf(se: torch.Tensor, evecs: torch.Tensor, keep: torch.Tensor,
                         a: torch.Tensor) -> torch.Tensor:
    """Without a penalty, a coefficient touching the null space of ``Sxx`` (a component never
    or always ablated, duplicated columns) is not identified: its standard error is inf."""
    null = (evecs[:, ~keep] ** 2).sum(1) > 1e-8  # (N,)
    if not bool(null.any()):
        return se
    bad = null[None, :] & (a[:, None] == 0)
    return torch.where(bad, torch.full_like(se, float("inf")), se)


def sandwich_standard_errors(chunks: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                             stats: SufficientStatistics, coef: torch.Tensor,
                             intercept: torch.Tensor, penalty: Penalty = 0.0,
                             rcond: float = 1e-10) -> Tuple[torch.Tensor, torch.Tensor]:
    """Heteroscedasticity-robust (HC1) standard errors ``(n, N)`` and residual dof ``(n,)``.

    ``chunks`` yields the same ``(X, Y)`` rows that ``stats`` summarises (one pass).
    """
    m = stats.count
    sxx, _, _ = stats.centered()
    n, N = stats.n_outputs, stats.n_components
    a = _penalty_column(penalty, n, sxx)
    evals, evecs, keep = _spectrum(sxx, rcond)
    _, df = _filter_factors(evals, keep, a)
    dof = residual_dof(m, df)
    if bool((dof <= 0.5).any()):
        raise fail("residual degrees of freedom m - 1 - df", "> 0.5 for standard errors",
                   round(float(dof.min()), 3), "collect more masks")
    if not bool((a == a[0]).all()):
        raise fail("penalty", "one value for all examples for sandwich standard errors",
                   penalty)
    den = evals + a[0]
    ok = keep & (den > 0)
    inv = torch.where(ok, 1.0 / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
    a_inv = (evecs * inv[None, :]) @ evecs.T  # (N, N)
    mx, _ = stats.means()
    coef = coef.to(sxx)
    intercept = intercept.to(sxx)
    acc = torch.zeros((N, n), dtype=sxx.dtype, device=sxx.device)
    rows = 0
    for X, Y in chunks:
        X = X.to(device=sxx.device, dtype=sxx.dtype)
        Y = Y.to(device=sxx.device, dtype=sxx.dtype)
        if Y.dim() == 1:
            Y = Y.unsqueeze(1)
        resid = Y - (X @ coef.T + intercept)
        z = (X - mx) @ a_inv
        acc += (z * z).T @ (resid * resid)
        rows += X.shape[0]
    if rows != m:
        raise fail("chunks", f"the {m} rows the statistics summarise", f"{rows} rows")
    se = (acc * (m / dof)[None, :]).clamp_min(0.0).sqrt().T.contiguous()
    return _unidentified_to_inf(se, evecs, keep, a), dof


def normal_quantile(level: float) -> float:
    """``z`` with ``P(|Z| <= z) = level`` for a standard normal ``Z``."""
    level = float(check_float("level", level, 0.0, 1.0, low_open=True, high_open=True) or 0.0)
    return math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(level, dtype=torch.float64)))


def confidence_interval(coef: torch.Tensor, standard_errors: Optional[torch.Tensor],
                        level: float = 0.95) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` = ``coef -+ z(level) * standard_errors`` (normal approximation)."""
    if standard_errors is None:
        raise fail("standard_errors", "a tensor (the solver computes none: use least_squares,"
                   " ridge, ridge_auto or eb_ridge)", None)
    z = normal_quantile(level)
    se = standard_errors.to(coef)
    return coef - z * se, coef + z * se


def attach_standard_errors(fit: "FitResult", stats: SufficientStatistics,
                           penalty: Penalty = 0.0, rcond: float = 1e-10) -> "FitResult":
    """Set ``fit.standard_errors`` / ``fit.residual_dof`` (classical); returns ``fit``.

    When no residual degree of freedom is left they stay None and
    ``fit.diagnostics["standard_errors"]`` says why.
    """
    try:
        se, dof = linear_standard_errors(stats, fit.coef, fit.intercept, penalty, rcond)
    except ValueError as err:
        fit.diagnostics["standard_errors"] = f"not available: {err}"
        return fit
    fit.standard_errors, fit.residual_dof = se, dof
    penalised = bool((torch.as_tensor(penalty) > 0).any())
    fit.diagnostics["standard_errors"] = (
        "classical, penalised fit: sampling noise only, the shrinkage bias is not included"
        if penalised else "classical")
    fit.diagnostics["effective_df"] = (stats.count - 1.0 - dof).tolist()
    return fit
