"""Empirical-Bayes ridge around a prior attribution: the default below ``3 N`` masks.

Contract
--------
:class:`EmpiricalBayesRidge` (``"eb_ridge"``) fits, for every example ``j`` on its own, the
Bayesian linear model ``y = b0 + X w + e`` with ``e ~ N(0, s2)`` and

    w_i = c_j p_ji + d_i,      d_i ~ N(0, s2 / lam_jg),  g = the group of component i,

where ``p_j`` is an optional prior attribution (``prior=None``: 0; the default of COAR passes
attribution patching, computed with the same ablation), ``c_j`` its least-squares scale on the
training rows (``rescale=True``) and ``groups`` the sizes of consecutive component groups (COAR
passes its :class:`~captum_coar.components.ComponentSet`'s modules: a layer's departures from
the prior share one variance). The penalties ``lam_jg`` and the noise ``s2_j`` are chosen by
maximising the example's marginal likelihood (type-II maximum likelihood, with a normal
hyperprior of ``hyper_decades`` decades on each log penalty around the one-penalty optimum;
:mod:`captum_coar.solvers._evidence`). The coefficients are the posterior means, and the
standard errors the posterior standard deviations ``sqrt(s2 [A^-1]_ii)``,
``A = Sxx + diag(lam)``, plus the variance that estimating the prior's scale ``c_j`` adds:
unlike the sampling standard errors of a penalised fit they include the shrinkage bias as the
fitted prior expects it, so ``coef +- 1.96 se`` covers the
large-``m`` coefficients for about 95% of components on average (not for each component: one
far from its layer's prior is covered less often; measured in ``benchmarks/README.md``, "Fewer
masks"). They need no held-out rows; ``validation_stats`` only report a held-out error.

Nothing is shared between examples except the masks: an example's coefficients are the same
alone or in any batch. Cost: one eigendecomposition of ``Sxx``, then per example a few damped
Newton steps of one ``N x N`` Cholesky factorisation and inverse each; with one group, or more
than ``max_group_components`` components, one penalty per example from the eigendecomposition
alone.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional, Sequence

import torch

from .._checks import fail
from ._constraints import Boolean, Interval, RealSequence, TensorValue
from ._evidence import Spectrum, grid_start, newton_groups, single_penalty_posterior
from .base import FitResult, _finish
from .lasso import ConvergenceWarning
from .selection import PriorSolver, prior_weights
from .statistics import SufficientStatistics
from .uncertainty import residual_dof

__all__ = ["EmpiricalBayesRidge"]


def _scale_variance(prior: Any, stats: SufficientStatistics, syy: torch.Tensor,
                    m: int) -> torch.Tensor:
    """``(N, n)``: ``var(c_j) p_ji^2``, the variance the least-squares scale ``c_j`` of the
    prior adds (``var(c_j)`` = the residual variance around ``c_j X p_j`` over ``p_j' Sxx p_j``;
    ``syy`` is that residual's centred sum of squares)."""
    p = prior_weights(prior, False, stats)
    assert p is not None
    sxx, _, _ = stats.centered()
    den = (p * (sxx @ p)).sum(0)
    var = torch.where(den > 0, syy / max(m - 2, 1) / den.clamp_min(1e-300),
                      torch.zeros_like(den))
    return var[None, :] * p * p


def group_index(groups: Optional[Sequence[int]], n_components: int) -> torch.Tensor:
    """``(N,)`` group number of every component (all 0 without groups)."""
    if groups is None:
        return torch.zeros(n_components, dtype=torch.long)
    sizes = torch.as_tensor([int(s) for s in groups], dtype=torch.long)
    return torch.repeat_interleave(torch.arange(len(sizes)), sizes)


class EmpiricalBayesRidge(PriorSolver):
    """Ridge around a (scaled) prior with one variance per component group, chosen per
    example by the marginal likelihood; posterior standard errors.

    Parameters
    ----------
    prior:
        ``(n_examples, n_components)`` attributions the fit departs from, or None (0).
    rescale:
        Fit one scale per example for the prior by least squares first.
    groups:
        Sizes of consecutive groups of components (summing to ``N``), each with its own prior
        variance; None: one group.
    hyper_decades:
        Standard deviation, in decades, of the hyperprior on each group's log penalty around
        the one-penalty optimum (0 < value; smaller ties the groups closer together).
    max_group_components:
        Above this many components, one penalty per example from the shared
        eigendecomposition instead of the per-group fits, whose work grows as ``N^3`` per
        example (measured: about 0.5 s per example at N = 928 on one CPU core, so about 6 s at
        the default limit of 2048). A limit on ``N`` alone, so that the choice never depends on
        the other examples of the batch.
    max_iter, tol:
        Newton steps per example, and the gradient size that stops them.
    standard_errors:
        Attach posterior standard errors.
    """

    name = "eb_ridge"
    _parameter_constraints = {
        "prior": [TensorValue(), None], "rescale": [Boolean()],
        "groups": [RealSequence(), None], "hyper_decades": [Interval(0.0, low_open=True)],
        "max_group_components": [Interval(1, integer=True)],
        "max_iter": [Interval(1, integer=True)], "tol": [Interval(0.0, low_open=True)],
        "standard_errors": [Boolean()]}

    def __init__(self, prior: Optional[torch.Tensor] = None, rescale: bool = True,
                 groups: Optional[Sequence[int]] = None, hyper_decades: float = 1.0,
                 max_group_components: int = 2048, max_iter: int = 50, tol: float = 1e-7,
                 standard_errors: bool = True) -> None:
        self.prior = prior
        self.rescale = rescale
        self.groups = groups
        self.hyper_decades = hyper_decades
        self.max_group_components = max_group_components
        self.max_iter = max_iter
        self.tol = tol
        self.standard_errors = standard_errors

    @property
    def gives_standard_errors(self) -> bool:
        return bool(self.standard_errors)

    def describe(self) -> Dict[str, Any]:
        out = super().describe()
        if self.groups is not None:
            out["groups"] = [int(s) for s in self.groups]
        return out

    def _check_arguments(self) -> None:
        if self.groups is not None:
            sizes = list(self.groups)
            if not sizes or any(float(s) != int(s) or int(s) < 1 for s in sizes):
                raise fail("EmpiricalBayesRidge groups", "a sequence of positive integers"
                           " (the sizes of consecutive component groups) or None", self.groups)

    def _check_sizes(self, n_train: int, n_examples: Optional[int],
                     n_components: Optional[int]) -> None:
        super()._check_sizes(n_train, n_examples, n_components)
        if self.groups is not None and n_components is not None:
            total = sum(int(s) for s in self.groups)
            if total != n_components:
                raise fail("EmpiricalBayesRidge groups", f"sizes summing to the {n_components}"
                           " components", f"{list(self.groups)} (sum {total})",
                           "pass [g.n_components for g in components.groups]")

    def with_prior(self, prior: Optional[torch.Tensor]) -> "EmpiricalBayesRidge":
        """A copy of this solver with ``prior`` (its other parameters unchanged)."""
        params = self.get_params()
        params["prior"] = prior
        return type(self)(**params)

    def _fit(self, stats: SufficientStatistics,
             validation_stats: Optional[SufficientStatistics]) -> FitResult:
        m, N, n = stats.count, stats.n_components, stats.n_outputs
        P = prior_weights(self.prior, self.rescale, stats)
        target = stats if P is None else stats.minus_prediction(P)
        sxx, sxy, syy = target.centered()
        spectrum = Spectrum.of(sxx, sxy)
        start = grid_start(spectrum, syy, m)
        group = group_index(self.groups, N).to(sxx.device)
        n_groups = int(group.max()) + 1
        mode = "one penalty per example"
        if n_groups > 1 and N > int(self.max_group_components):
            mode = (f"one penalty per example ({N} components > max_group_components="
                    f"{self.max_group_components})")
            n_groups = 1
        if n_groups == 1:
            W, variances, s2, dof = single_penalty_posterior(spectrum, syy, m, start)
            penalties = torch.exp(start)[:, None]
            n_iter, converged = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool)
        else:
            mode = f"one penalty per group of components ({n_groups} groups) and example"
            W, variances, s2, dof, penalties, n_iter, converged = self._fit_groups(
                sxx, sxy, syy, m, group, n_groups, start, spectrum.scale)
        if P is not None:
            W = P + W
            if self.rescale:  # the prior's scale is estimated too: add its variance
                variances = variances + _scale_variance(self.prior, stats, syy, m)
        coef, intercept = _finish(stats, W)
        result = FitResult(
            coef=coef, intercept=intercept, solver=self.name, alpha=penalties.mean(1),
            train_mse=stats.mse(coef, intercept),
            validation_mse=None if validation_stats is None else
            validation_stats.mse(coef, intercept),
            n_iter=int(n_iter.sum()), converged=converged,
            diagnostics={"mode": mode, "penalties": penalties, "noise_variance": s2,
                         "prior": P is not None, "effective_df": dof.tolist(),
                         "iterations": n_iter.tolist()})
        if self.standard_errors:
            result.standard_errors = variances.clamp_min(0.0).sqrt().T.contiguous()
            result.residual_dof = residual_dof(m, dof)
            result.diagnostics["standard_errors"] = (
                "posterior (empirical Bayes): sampling noise and the expected shrinkage bias;"
                " 95% intervals cover about 95% of components on average")
        return result

    def _fit_groups(self, sxx: torch.Tensor, sxy: torch.Tensor, syy: torch.Tensor, m: int,
                    group: torch.Tensor, n_groups: int, start: torch.Tensor,
                    scale: float) -> Any:
        N, n = sxy.shape
        W = torch.zeros(N, n, dtype=sxx.dtype, device=sxx.device)
        variances = torch.zeros_like(W)
        s2 = torch.zeros(n, dtype=sxx.dtype, device=sxx.device)
        dof = torch.zeros_like(s2)
        penalties = torch.zeros(n, n_groups, dtype=sxx.dtype, device=sxx.device)
        n_iter = torch.zeros(n, dtype=torch.long)
        converged = torch.ones(n, dtype=torch.bool)
        sd = float(self.hyper_decades) * math.log(10.0)
        for j in range(n):
            fit = newton_groups(sxx, sxy[:, j], float(syy[j]), m, group, n_groups,
                                float(start[j]), sd, int(self.max_iter), float(self.tol), scale)
            W[:, j], variances[:, j], s2[j], dof[j] = fit.mu, fit.variances, fit.s2, fit.dof
            penalties[j] = torch.exp(fit.log_penalties)
            n_iter[j], converged[j] = fit.n_iter, fit.converged
        if not bool(converged.all()):
            warnings.warn(
                f"EmpiricalBayesRidge: the penalties of {int((~converged).sum())} of {n}"
                f" examples did not settle within max_iter={self.max_iter} Newton steps; their"
                " fits are usable but the penalties may be off; raise max_iter",
                ConvergenceWarning, stacklevel=4)
        return W, variances, s2, dof, penalties, n_iter, converged
