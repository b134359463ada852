"""The difference-of-means (maximum-sample-reuse) estimator of COAR's target.

Contract
--------
With independent Bernoulli masks, the coefficient COAR converges to for component ``i`` is
``E[y | i kept] - E[y | i ablated]`` (a weighted Banzhaf value). :class:`DifferenceOfMeans`
(``"difference_of_means"``) estimates it directly from :class:`SufficientStatistics`, reusing
every mask for every component::

    coef_i    = xty_i / x_sum_i - (y_sum - xty_i) / (m - x_sum_i)
    intercept = mean(y) - mean(x) . coef

It is defined for any ``m`` at which each component has been seen both kept and ablated (a
component that has not gets 0 and is listed in ``diagnostics["unidentified"]``), costs
``O(N n)``, and is unbiased for that target under independent masks; it does not remove the
other components' contribution to the output variance, so it is noisier than regression once
``m`` is a few times ``N``. Other mask distributions (fixed-fraction masks) make components
dependent and the estimator biased. No standard errors (they would need per-component sums of
squared outputs).
"""

from __future__ import annotations

from typing import Optional

import torch

from .base import FitResult, Solver
from .statistics import SufficientStatistics

__all__ = ["DifferenceOfMeans"]


class DifferenceOfMeans(Solver):
    """``E[y | kept] - E[y | ablated]`` per component, from sufficient statistics."""

    name = "difference_of_means"

    def _fit(self, stats: SufficientStatistics,
             validation_stats: Optional[SufficientStatistics]) -> FitResult:
        m = float(stats.count)
        kept = stats.x_sum[:, None]  # (N, 1)
        ablated = m - kept
        ok = (kept > 0) & (ablated > 0)
        mean_kept = stats.xty / torch.where(ok, kept, torch.ones_like(kept))
        mean_abl = (stats.y_sum[None, :] - stats.xty) / torch.where(ok, ablated,
                                                                  torch.ones_like(ablated))
        W = torch.where(ok, mean_kept - mean_abl, torch.zeros_like(mean_kept))  # (N, n)
        mx, my = stats.means()
        coef = W.T.contiguous()
        intercept = my - mx @ W
        return FitResult(
            coef=coef, intercept=intercept, solver=self.name,
            train_mse=stats.mse(coef, intercept),
            validation_mse=None if validation_stats is None else validation_stats.mse(coef,
                                                                                   intercept),
            diagnostics={"unidentified": torch.nonzero(~ok.flatten()).flatten().tolist()})
