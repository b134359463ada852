"""The result of a COAR fit: :class:`COARResult`.

Contract
--------
A :class:`COARResult` holds the attributions (coefficients of the keep indicators, one row per
example), the intercepts, the solver's :class:`~captum_coar.solvers.FitResult`, the
:class:`~captum_coar.components.ComponentSet` the columns refer to and the collection settings.
It predicts outputs under keep masks, splits attributions per component group, and gives
standard errors and confidence intervals when the solver provides them: they describe the
sampling noise of the random masks with respect to the coefficients COAR converges to as the
number of masks grows (see :mod:`captum_coar.solvers.uncertainty`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..components import ComponentSet
from ..solvers import FitResult
from ..solvers.uncertainty import confidence_interval

__all__ = ["COARResult"]


@dataclass
class COARResult:
    """A COAR fit: attributions (coefficients), intercepts, diagnostics and settings.

    Attributes:
        attributions: ``(n_examples, n_components)`` coefficients of the keep indicators, on
            the model's device (float32, or float64 for a float64 model).
        intercept: ``(n_examples,)``; the fitted model of the output under keep mask ``k`` is
            ``intercept + attributions @ k``.
        fit: the solver's :class:`~captum_coar.solvers.FitResult` (float64, with train and
            validation mean squared errors, chosen alpha, iterations).
        components: the :class:`ComponentSet` the columns refer to.
        n_masks: mask rows used for fitting; ``n_validation``: rows held out.
        settings: seed, sampler, ablation, output function and solver descriptions (and
            ``"adaptive"``: the stopping report, after ``n_masks="auto"``).

    Standard errors and confidence intervals describe the sampling noise of the random masks
    with respect to the large-``n_masks`` coefficients (the penalty's bias excluded; see
    :mod:`captum_coar.solvers.uncertainty`).
    """

    attributions: Tensor
    intercept: Tensor
    fit: FitResult
    components: ComponentSet
    n_masks: int
    n_validation: int = 0
    settings: Dict[str, Any] = field(default_factory=dict)

    @property
    def coef(self) -> Tensor:
        """Alias of :attr:`attributions` (scikit-learn's name)."""
        return self.attributions

    @property
    def standard_errors(self) -> Optional[Tensor]:
        """``(n_examples, n_components)`` standard errors of the attributions (same device
        and dtype), or None when the solver gives none (lasso)."""
        se = self.fit.standard_errors
        return None if se is None else se.to(self.attributions.device, self.attributions.dtype)

    def confidence_interval(self, level: float = 0.95) -> Tuple[Tensor, Tensor]:
        """``(low, high)``, each ``(n_examples, n_components)``: ``attributions -+ z se`` with
        the two-sided normal quantile ``z`` of ``level`` (1.96 for 0.95)."""
        return confidence_interval(self.attributions, self.standard_errors, level)

    @property
    def diagnostics(self) -> Dict[str, Any]:
        """Solver summary (alpha, mean train / validation mse, iterations) and extras."""
        return {**self.fit.summary(), **self.fit.diagnostics}

    @property
    def labels(self) -> List[str]:
        return self.components.labels

    def predict(self, keep_masks: Tensor) -> Tensor:
        """Predicted outputs ``(k, n_examples)`` under keep masks ``(k, n_components)``."""
        masks = torch.as_tensor(keep_masks).to(self.attributions.device, self.attributions.dtype)
        if masks.dim() != 2 or masks.shape[1] != self.attributions.shape[1]:
            raise ValueError(f"keep_masks must have shape (k, {self.attributions.shape[1]}), got"
                             f" {tuple(masks.shape)}")
        return masks @ self.attributions.T + self.intercept

    def split(self) -> Dict[str, Tensor]:
        """Attributions per group: ``{module_name: (n_examples, n_units)}``."""
        return self.components.split(self.attributions)

    def __repr__(self) -> str:
        n, N = self.attributions.shape
        return (f"COARResult({n} examples x {N} components, solver={self.fit.solver!r},"
                f" n_masks={self.n_masks}, n_validation={self.n_validation})")
