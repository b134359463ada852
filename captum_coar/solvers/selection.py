"""Solvers that choose their own penalty: ridge (optionally shrunk toward a prior) and lasso.

Contract
--------
- :class:`AutoRidge` (``"ridge_auto"``) minimises, for every example ``j``,
  ``||y_j - X w_j - b_j||^2 + a ||w_j - c_j p_j||^2`` over ``w_j, b_j`` where ``p_j`` is an
  optional prior attribution (``prior=None``: ``p = 0``, plain ridge; any method's output
  otherwise, e.g. leave-one-out or attribution patching) and ``c_j`` its least-squares scale
  on the training rows (``rescale=True``; 1 otherwise), so a prior in other units still helps.
  ``a = 0`` is least squares; ``a -> inf`` gives ``c_j p_j``. The penalty is chosen on a
  grid of ``n_alphas`` values ``ratio * tr(Sxx) / N`` (ratios geometric in
  ``[min_ratio, max_ratio]``, plus 0 when least squares is defined) by

  * the mean squared error on held-out rows (``validation_stats``), when given; the fit is
    then redone on training + held-out rows with the chosen penalty scaled by the row ratio
    (``refit=True``), so no mask is wasted; or
  * generalised cross-validation, ``GCV(a) = m RSS(a) / (m - 1 - df(a))^2`` with
    ``df(a) = tr((Sxx + a I)^{-1} Sxx)``, from the statistics alone (no rows held out).

  Everything comes from one eigendecomposition of ``Sxx``. Standard errors are attached as
  for :class:`~captum_coar.solvers.least_squares.Ridge` (sampling noise of the penalised
  fit; the prior is treated as fixed).
- :class:`AutoLasso` (``"lasso_auto"``): :class:`~captum_coar.solvers.lasso.Lasso` over its
  automatic path, penalty chosen on ``validation_stats`` (required), then refitted on training
  + held-out rows with that penalty (the sklearn objective is per row, so it is not rescaled).
  With ``prior=`` it is sparse around the (scaled) prior: the lasso of the prior's residual
  ``y - X c p``, plus ``c p``. No standard errors.

Both are deterministic: given the same statistics they pick the same penalty.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .._checks import fail
from ._constraints import Boolean, Choice, Interval, RealSequence, TensorValue
from .base import SELECTION, FitResult, Solver
from .lasso import Lasso
from .statistics import SufficientStatistics
from .uncertainty import attach_standard_errors

__all__ = ["AutoRidge", "AutoLasso", "PriorSolver", "merged_statistics", "prior_weights",
           "check_prior", "without_prior"]


def merged_statistics(stats: SufficientStatistics,
                      validation_stats: SufficientStatistics) -> SufficientStatistics:
    """A new object holding the sums of both (neither input is changed)."""
    both = SufficientStatistics.from_dict(stats.to_dict(), device=stats.device)
    return both.merge(validation_stats)


def _prior_matrix(prior: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """The prior (checked by :meth:`PriorSolver.check`) as an (N, n) float64 matrix (columns =
    examples)."""
    p = prior.detach().to(device=like.device, dtype=like.dtype)
    if p.dim() == 1 and n == 1:
        p = p.unsqueeze(0)
    return p.T.contiguous()


def prior_weights(prior: Optional[torch.Tensor], rescale: bool,
                  stats: SufficientStatistics) -> Optional[torch.Tensor]:
    """The prior as ``(N, n)`` weights (None without one), times its per-example
    least-squares scale on ``stats`` when ``rescale`` (0 where the prior predicts nothing)."""
    if prior is None:
        return None
    sxx, sxy, _ = stats.centered()
    P = _prior_matrix(prior, stats.n_outputs, sxx)
    if rescale:
        num = (P * sxy).sum(0)
        den = (P * (sxx @ P)).sum(0)
        P = P * torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(den))
    return P


class PriorSolver(Solver):
    """A solver that can be given a prior attribution: its constructor stores ``prior``
    (``(n_examples, n_components)`` or None) and ``rescale`` (see :func:`prior_weights`)."""

    prior: Optional[torch.Tensor] = None
    rescale: bool = True

    def describe(self) -> Dict[str, Any]:
        out = super().describe()
        if isinstance(self.prior, torch.Tensor):
            out["prior"] = f"tensor{tuple(self.prior.shape)}"  # not the values
        return out

    def _check_sizes(self, n_train: int, n_examples: Optional[int],
                     n_components: Optional[int]) -> None:
        """A prior of shape ``(n_examples, N)`` (``(N,)`` for one example)."""
        if self.prior is None or n_examples is None or n_components is None:
            return
        shape = tuple(self.prior.shape)
        if shape != (n_examples, n_components) and not (n_examples == 1
                                                         and shape == (n_components,)):
            raise fail("prior", f"a tensor of shape ({n_examples}, {n_components}) (examples,"
                       " components)", self.prior)


def check_prior(solver: Any, n_examples: int, n_components: int) -> None:
    """Deprecated: ``solver.check(n_train, n_examples, with_validation, n_components)`` checks
    the prior with every other rule of the solver."""
    warnings.warn("captum_coar.solvers.selection.check_prior is deprecated and will be removed"
                  " in the next release; call solver.check(n_train, n_examples,"
                  " with_validation, n_components)", DeprecationWarning, stacklevel=2)
    if isinstance(solver, PriorSolver):
        solver._check_sizes(2, n_examples, n_components)


def without_prior(solver: Any) -> Any:
    """Deprecated (it served a trial fit that solvers' ``check`` replaces): ``solver`` itself,
    or for a solver with a prior a copy without it."""
    warnings.warn("captum_coar.solvers.selection.without_prior is deprecated and will be"
                  " removed in the next release", DeprecationWarning, stacklevel=2)
    if isinstance(solver, PriorSolver) and solver.prior is not None:
        params = solver.get_params()
        params["prior"] = None
        return type(solver)(**params)
    return solver


class AutoRidge(PriorSolver):
    """Ridge, optionally shrunk toward a prior attribution, with the penalty chosen for you.

    Parameters
    ----------
    prior:
        ``(n_examples, n_components)`` attributions to shrink toward, or None (toward 0).
    rescale:
        Fit one scale per example for the prior by least squares before shrinking toward it.
    n_alphas, min_ratio, max_ratio:
        The penalty grid, relative to the mean diagonal of ``Sxx`` (``m q (1 - q)`` for
        Bernoulli masks with keep probability ``q``).
    alphas:
        An explicit grid of penalties (absolute, sklearn ``Ridge`` scaling) instead; one value
        means no choice at all.
    criterion:
        ``"auto"`` (held-out rows when ``validation_stats`` is given, else GCV),
        ``"validation"`` or ``"gcv"``.
    selection:
        ``"per_example"`` (default: each example its own penalty, so an example's fit does not
        depend on which other examples share its batch) or ``"global"`` (one penalty for all
        examples, chosen on their mean score).
    refit:
        After choosing on held-out rows, refit on training + held-out rows.
    standard_errors:
        Attach classical standard errors at the chosen penalty.
    """

    name = "ridge_auto"
    _parameter_constraints = {
        "prior": [TensorValue(), None], "rescale": [Boolean()],
        "n_alphas": [Interval(1, integer=True)], "min_ratio": [Interval(0.0, low_open=True)],
        "max_ratio": [Interval(0.0, low_open=True)], "alphas": [RealSequence(), None],
        "criterion": [Choice(("auto", "validation", "gcv"))], "selection": [SELECTION],
        "refit": [Boolean()], "rcond": [Interval(0.0, low_open=True)],
        "standard_errors": [Boolean()]}

    def __init__(self, prior: Optional[torch.Tensor] = None, rescale: bool = True,
                 n_alphas: int = 25, min_ratio: float = 1e-4, max_ratio: float = 1e3,
                 alphas: Optional[Sequence[float]] = None, criterion: str = "auto",
                 selection: str = "per_example", refit: bool = True,
                 rcond: float = 1e-10, standard_errors: bool = True) -> None:
        self.prior = prior
        self.rescale = rescale
        self.n_alphas = n_alphas
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.alphas = alphas
        self.criterion = criterion
        self.selection = selection
        self.refit = refit
        self.rcond = rcond
        self.standard_errors = standard_errors

    @property
    def gives_standard_errors(self) -> bool:
        return bool(self.standard_errors)

    def _check_arguments(self) -> None:
        if self.alphas is None and float(self.max_ratio) <= float(self.min_ratio):
            raise fail("AutoRidge max_ratio", f"> min_ratio = {self.min_ratio!r}",
                       self.max_ratio)

    def _needs_validation(self) -> Optional[str]:
        if self.criterion != "validation":
            return None
        return str(fail("validation_stats", "statistics of held-out rows for"
                        " criterion='validation'", None, "pass validation_fraction > 0"))

    # -- the pieces ----------------------------------------------------------------------
    def _grid(self, sxx: torch.Tensor, m: int, N: int) -> torch.Tensor:
        if self.alphas is not None:
            values = torch.as_tensor(self.alphas, dtype=torch.float64).flatten().tolist()
            return torch.tensor(values, dtype=sxx.dtype, device=sxx.device)
        n_alphas, lo, hi = int(self.n_alphas), float(self.min_ratio), float(self.max_ratio)
        scale = float(torch.diagonal(sxx).mean().clamp_min(1e-300))
        ratios = torch.logspace(torch.log10(torch.tensor(hi)).item(),
                                torch.log10(torch.tensor(lo)).item(), n_alphas,
                                dtype=torch.float64)
        grid = [scale * float(r) for r in ratios]
        if m > N + 1:
            grid.append(0.0)
        return torch.tensor(grid, dtype=sxx.dtype, device=sxx.device)

    def _target(self, stats: SufficientStatistics
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centred ``Sxx``, and ``Sxy``/``Syy`` of ``y - X P`` with the (scaled) prior ``P``."""
        P = prior_weights(self.prior, self.rescale, stats)
        if P is None:
            sxx, sxy, syy = stats.centered()
            return sxx, sxy, syy, torch.zeros_like(sxy)
        sxx, sxy, syy = stats.minus_prediction(P).centered()
        return sxx, sxy, syy, P

    def _fit(self, stats: SufficientStatistics,
             validation_stats: Optional[SufficientStatistics]) -> FitResult:
        criterion, selection, rcond = self.criterion, self.selection, float(self.rcond)
        if criterion == "auto":
            criterion = "validation" if validation_stats is not None else "gcv"
        m, N = stats.count, stats.n_components
        sxx, sxy, syy, P = self._target(stats)
        grid = self._grid(sxx, m, N)
        evals, evecs = torch.linalg.eigh(sxx)
        evals = evals.clamp_min(0.0)
        top = float(evals.max()) if evals.numel() else 0.0
        keep = evals > rcond * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
        proj = evecs.T @ sxy  # (N, n)
        den = evals[None, :] + grid[:, None]  # (A, N)
        ok = keep[None, :] & (den > 0)
        inv = torch.where(ok, 1.0 / torch.where(ok, den, torch.ones_like(den)),
                          torch.zeros_like(den))
        df = (inv * evals[None, :]).sum(1)  # (A,)
        mx, my = stats.means()

        def weights(k: int) -> torch.Tensor:
            return P + evecs @ (inv[k][:, None] * proj)

        if criterion == "gcv":
            # RSS(a) = Syy - sum_k proj_k^2 (lam_k + 2a) / (lam_k + a)^2 on the residual target
            shrink = inv * inv * (evals[None, :] + 2.0 * grid[:, None])  # (A, N)
            rss = (syy[None, :] - shrink @ (proj * proj)).clamp_min(0.0)  # (A, n)
            dof = m - 1.0 - df
            score = torch.where(dof[:, None] > 0.5, m * rss / dof.clamp_min(0.5)[:, None] ** 2,
                                torch.full_like(rss, float("inf")))
        else:
            assert validation_stats is not None
            rows = []
            for k in range(len(grid)):
                W = weights(k)
                rows.append(validation_stats.mse(W.T, my - mx @ W))
            score = torch.stack(rows)  # (A, n)
        if selection == "global":
            best = int(torch.argmin(score.mean(1)))
            chosen: Any = float(grid[best])
            W = weights(best)
        else:
            idx = torch.argmin(score, 0)  # (n,)
            chosen = grid[idx]
            W = P + evecs @ (inv[idx].T * proj)
        fit_stats = stats
        val_mse: Optional[torch.Tensor] = None
        info: Dict[str, Any] = {"criterion": criterion, "selection": selection,
                                "prior": self.prior is not None}
        if criterion == "validation" and self.refit:
            assert validation_stats is not None
            val_mse = validation_stats.mse(W.T, my - mx @ W)
            fit_stats = merged_statistics(stats, validation_stats)
            factor = fit_stats.count / m
            chosen = chosen * factor
            W = self._solve_at(fit_stats, chosen, rcond)
            info["refit_rows"] = fit_stats.count
        coef = W.T.contiguous()
        fmx, fmy = fit_stats.means()
        intercept = fmy - fmx @ W
        if not (criterion == "validation" and self.refit):
            val_mse = None if validation_stats is None else validation_stats.mse(coef, intercept)
        result = FitResult(coef=coef, intercept=intercept, solver=self.name, alpha=chosen,
                           train_mse=fit_stats.mse(coef, intercept), validation_mse=val_mse,
                           alphas=grid, validation_mse_path=score if criterion == "validation"
                           else None, diagnostics={**info, "selection_score": score})
        if self.standard_errors:
            attach_standard_errors(result, fit_stats, chosen, rcond)
        return result

    def _solve_at(self, stats: SufficientStatistics, alpha: Any, rcond: float) -> torch.Tensor:
        """Weights (N, n) at a fixed penalty (float, or (n,) per example)."""
        sxx, sxy, _, P = self._target(stats)
        evals, evecs = torch.linalg.eigh(sxx)
        evals = evals.clamp_min(0.0)
        a = torch.as_tensor(alpha, dtype=sxx.dtype, device=sxx.device).flatten()
        den = evals[None, :] + a[:, None]  # (1 or n, N)
        top = float(evals.max()) if evals.numel() else 0.0
        ok = (evals[None, :] > rcond * top) & (den > 0) if top > 0 else den > 0
        inv = torch.where(ok, 1.0 / torch.where(ok, den, torch.ones_like(den)),
                          torch.zeros_like(den))
        return P + evecs @ (inv.T * (evecs.T @ sxy))


class AutoLasso(PriorSolver):
    """Lasso with its penalty chosen on held-out rows, then refitted on all rows; optionally
    sparse *around* a prior attribution.

    Parameters are those of :class:`~captum_coar.solvers.lasso.Lasso`'s automatic path
    (``n_alphas``, ``eps``, ``tol``, ``max_iter``, ``selection``: per example by default, each
    example on its own path) plus ``refit``, and ``prior`` / ``rescale``
    as for :class:`AutoRidge`: with a prior ``p_j`` the L1 penalty is on ``w_j - c_j p_j``
    (a lasso fit to the prior's residual ``y - X c p``), so a huge penalty gives ``c_j p_j``
    and the fit departs from the prior on few components.
    """

    name = "lasso_auto"
    _parameter_constraints = {
        "prior": [TensorValue(), None], "rescale": [Boolean()],
        "n_alphas": [Interval(1, integer=True)], "eps": [Interval(0.0, 1.0, True, True)],
        "tol": [Interval(0.0, low_open=True)], "max_iter": [Interval(1, integer=True)],
        "refit": [Boolean()], "selection": [SELECTION]}

    def __init__(self, prior: Optional[torch.Tensor] = None, rescale: bool = True,
                 n_alphas: int = 12, eps: float = 1e-2, tol: float = 1e-6,
                 max_iter: int = 5000, refit: bool = True,
                 selection: str = "per_example") -> None:
        self.prior = prior
        self.rescale = rescale
        self.n_alphas = n_alphas
        self.eps = eps
        self.tol = tol
        self.max_iter = max_iter
        self.refit = refit
        self.selection = selection

    def _needs_validation(self) -> Optional[str]:
        return str(fail("validation_stats", "statistics of held-out rows (lasso_auto chooses"
                        " its penalty on them)", None, "pass validation_fraction > 0 (e.g."
                        " 0.2)"))

    def _fit(self, stats: SufficientStatistics,
             validation_stats: Optional[SufficientStatistics]) -> FitResult:
        assert validation_stats is not None  # the solver's check
        P = prior_weights(self.prior, self.rescale, stats)
        if P is None:
            return self._fit_plain(stats, validation_stats)
        # The residual fit's intercept is already that of the full model: mean(y - X P) -
        # mean(X) w = mean(y) - mean(X) (P + w); its mse values are the full model's too.
        fit = self._fit_plain(stats.minus_prediction(P), validation_stats.minus_prediction(P))
        fit.coef = fit.coef + P.T
        fit.diagnostics["prior"] = True
        return fit

    def _fit_plain(self, stats: SufficientStatistics,
                   validation_stats: SufficientStatistics) -> FitResult:
        path = Lasso(n_alphas=self.n_alphas, eps=self.eps, tol=self.tol, max_iter=self.max_iter,
                     selection=self.selection)
        chosen = path.fit(stats, validation_stats)
        if not self.refit:
            chosen.solver = self.name
            return chosen
        both = merged_statistics(stats, validation_stats)
        assert chosen.alpha is not None
        final = Lasso(alpha=chosen.alpha, tol=self.tol, max_iter=self.max_iter).fit(both)
        final.solver = self.name
        final.validation_mse = chosen.validation_mse
        final.alphas = chosen.alphas
        final.validation_mse_path = chosen.validation_mse_path
        final.diagnostics.update({"criterion": "validation", "refit_rows": both.count})
        return final
