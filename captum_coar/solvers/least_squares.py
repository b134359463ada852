"""Closed-form solvers on sufficient statistics: ordinary least squares and ridge.

Contract
--------
Both centre the problem (``Sxx = X'X - m mx mx'``, ``Sxy = X'Y - m mx my'``), solve for the
weights of all ``n`` examples with ONE factorisation of ``Sxx`` and set
``intercept = my - mx . coef``. Results are float64 on the statistics' device.

- :class:`LeastSquares`: minimises ``||y - X w - b||^2``. Cholesky of ``Sxx``; when that
  fails or is numerically singular (smallest pivot below ``rcond`` relative to the largest
  diagonal entry) it warns with :class:`SingularMatrixWarning` and returns the
  minimum-norm solution from an eigendecomposition (pseudo-inverse). Needs more masks than
  components (``m > N``); otherwise a ``ValueError`` says how many are needed.
- :class:`Ridge`: minimises ``||y - X w - b||^2 + alpha ||w||^2`` (the objective of
  ``sklearn.linear_model.Ridge``; the intercept is not penalised). One alpha: Cholesky of
  ``Sxx + alpha I``. Several alphas: one eigendecomposition of ``Sxx`` reused for every
  alpha, and the alpha with the lowest validation mse is chosen from ``validation_stats``
  (globally or per example).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ._constraints import Boolean, Interval, RealSequence
from .base import (
    SELECTION,
    FitResult,
    Solver,
    _finish,
    _fit_path,
    alpha_list,
    check_alpha_or_alphas,
    choice_needs_validation,
)
from .statistics import SufficientStatistics
from .uncertainty import attach_standard_errors

__all__ = ["LeastSquares", "Ridge", "SingularMatrixWarning"]


class SingularMatrixWarning(UserWarning):
    """The centred Gram matrix was singular; a minimum-norm solution was returned."""


def _pinv_solve(sxx: torch.Tensor, sxy: torch.Tensor, rcond: float) -> Tuple[torch.Tensor, int]:
    """Minimum-norm solution of ``Sxx W = Sxy`` and the numerical rank of ``Sxx``."""
    evals, evecs = torch.linalg.eigh(sxx)
    top = float(evals.max().clamp_min(0.0))
    keep = evals > rcond * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    safe = torch.where(keep, evals, torch.ones_like(evals))
    inv = torch.where(keep, 1.0 / safe, torch.zeros_like(evals))
    W = evecs @ (inv[:, None] * (evecs.T @ sxy))
    return W, int(keep.sum())


def _cholesky_solve(
    sxx: torch.Tensor, sxy: torch.Tensor, rcond: float
) -> Tuple[Optional[torch.Tensor], float]:
    """Solve by Cholesky; ``(None, ratio)`` when the matrix is (numerically) singular."""
    L, info = torch.linalg.cholesky_ex(sxx)
    scale = float(torch.diagonal(sxx).max())
    if int(info) != 0 or scale <= 0:
        return None, 0.0
    ratio = float(torch.diagonal(L).min() ** 2) / scale
    if ratio <= rcond or not bool(torch.isfinite(L).all()):
        return None, ratio
    return torch.cholesky_solve(sxy, L), ratio


class LeastSquares(Solver):
    """Ordinary least squares with intercept for every example, one factorisation.

    Parameters
    ----------
    rcond:
        Relative threshold below which the Gram matrix counts as singular (Cholesky pivot
        or eigenvalue, relative to the largest diagonal entry / eigenvalue).
    standard_errors:
        Also compute classical standard errors (one extra eigendecomposition of ``Sxx``).
    """

    name = "least_squares"
    _parameter_constraints = {"rcond": [Interval(0.0, low_open=True)],
                              "standard_errors": [Boolean()]}

    def __init__(self, rcond: float = 1e-10, standard_errors: bool = True) -> None:
        self.rcond = rcond
        self.standard_errors = standard_errors

    @property
    def gives_standard_errors(self) -> bool:
        return bool(self.standard_errors)

    def _check_sizes(self, n_train: int, n_examples: Optional[int],
                     n_components: Optional[int]) -> None:
        m, N = n_train, n_components
        if N is not None and m <= N:
            raise ValueError(
                f"LeastSquares got m={m} masks for N={N} components: too small for least"
                f" squares with {N} components, which with an intercept is underdetermined"
                f" unless m > N, i.e. at least {N + 1} masks (in practice several times N,"
                f" e.g. {10 * N}). Record more masks or use solver='ridge' or 'ridge_auto'."
            )

    def _fit(
        self, stats: SufficientStatistics, validation_stats: Optional[SufficientStatistics]
    ) -> FitResult:
        rcond, N = float(self.rcond), stats.n_components
        sxx, sxy, _ = stats.centered()
        W, ratio = _cholesky_solve(sxx, sxy, rcond)
        diagnostics: Dict[str, Any] = {"factorization": "cholesky", "pivot_ratio": ratio}
        if W is None:
            W, rank = _pinv_solve(sxx, sxy, rcond)
            diagnostics = {"factorization": "eigh_pinv", "pivot_ratio": ratio, "rank": rank}
            warnings.warn(
                f"The centred mask Gram matrix is singular or nearly so (smallest Cholesky "
                f"pivot ratio {ratio:.2e} <= rcond={rcond:g}; numerical rank {rank} of {N}). "
                "Typical causes: a component that is always or never ablated, duplicated "
                "components, or masks with a fixed number of kept components "
                "(FixedFractionSampler), which makes the columns sum to a constant. Returning "
                "the minimum-norm least-squares solution; consider Ridge.",
                SingularMatrixWarning,
                stacklevel=3,
            )
        coef, intercept = _finish(stats, W)
        result = FitResult(
            coef=coef,
            intercept=intercept,
            solver=self.name,
            alpha=None,
            train_mse=stats.mse(coef, intercept),
            validation_mse=None
            if validation_stats is None
            else validation_stats.mse(coef, intercept),
            diagnostics=diagnostics,
        )
        if self.standard_errors:
            attach_standard_errors(result, stats, 0.0, rcond)
        return result


class Ridge(Solver):
    """Ridge regression with unpenalised intercept, for every example at once.

    Parameters
    ----------
    alpha:
        Penalty strength (sklearn ``Ridge`` scaling: ``||r||^2 + alpha ||w||^2``). Default
        1.0 when neither ``alpha`` nor ``alphas`` is given.
    alphas:
        Several strengths to choose among with ``validation_stats``.
    selection:
        ``"per_example"`` (default: each example its own alpha, so an example's fit does not
        depend on which other examples share its batch) or ``"global"`` (one alpha minimising
        the mean validation mse over examples).
    rcond:
        Eigenvalues of ``Sxx + alpha I`` below ``rcond`` times the largest count as zero
        (only matters for alpha = 0 on singular data).
    standard_errors:
        Also compute classical standard errors at the chosen alpha (they describe the
        sampling noise around the penalised fit; the penalty's bias is not included).
    """

    name = "ridge"
    _parameter_constraints = {"alpha": [Interval(0.0), None], "alphas": [RealSequence(), None],
                              "selection": [SELECTION], "rcond": [Interval(0.0, low_open=True)],
                              "standard_errors": [Boolean()]}

    def __init__(
        self,
        alpha: Optional[float] = None,
        alphas: Optional[Sequence[float]] = None,
        selection: str = "per_example",
        rcond: float = 1e-10,
        standard_errors: bool = True,
    ) -> None:
        self.alpha = alpha
        self.alphas = alphas
        self.selection = selection
        self.rcond = rcond
        self.standard_errors = standard_errors

    @property
    def gives_standard_errors(self) -> bool:
        return bool(self.standard_errors)

    def _check_arguments(self) -> None:
        check_alpha_or_alphas("Ridge", self.alpha, self.alphas)

    def _needs_validation(self) -> Optional[str]:
        return choice_needs_validation("Ridge", alpha_list(self.alpha, self.alphas, 1.0))

    def _fit(
        self, stats: SufficientStatistics, validation_stats: Optional[SufficientStatistics]
    ) -> FitResult:
        alphas = alpha_list(self.alpha, self.alphas, default=1.0)
        assert alphas is not None
        selection, rcond = str(self.selection), float(self.rcond)
        sxx, sxy, _ = stats.centered()
        N = stats.n_components
        eye = torch.eye(N, dtype=sxx.dtype, device=sxx.device)
        cache: Dict[str, torch.Tensor] = {}
        factorization = "cholesky"

        def eig() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            if not cache:
                evals, evecs = torch.linalg.eigh(sxx)
                cache["evals"] = evals.clamp_min(0.0)
                cache["evecs"] = evecs
                cache["proj"] = evecs.T @ sxy
            return cache["evals"], cache["evecs"], cache["proj"]

        def solve(a: float, _prev: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, Any]]:
            nonlocal factorization
            if len(alphas) == 1:
                W, _ = _cholesky_solve(sxx + a * eye, sxy, rcond)
                if W is not None:
                    return W, {}
            factorization = "eigh"
            evals, evecs, proj = eig()
            shifted = evals + a
            keep = shifted > rcond * float(shifted.max().clamp_min(1e-300))
            if not bool(keep.all()):
                warnings.warn(
                    f"Ridge(alpha={a:g}): Sxx + alpha I is singular (rank {int(keep.sum())} of "
                    f"{N}); using the minimum-norm solution. Use a larger alpha.",
                    SingularMatrixWarning,
                    stacklevel=5,
                )
            safe = torch.where(keep, shifted, torch.ones_like(shifted))
            inv = torch.where(keep, 1.0 / safe, torch.zeros_like(shifted))
            return evecs @ (inv[:, None] * proj), {}

        result = _fit_path(self.name, stats, validation_stats, alphas, solve, selection)
        result.diagnostics["factorization"] = factorization
        if self.standard_errors:
            assert result.alpha is not None
            attach_standard_errors(result, stats, result.alpha, rcond)
        return result
