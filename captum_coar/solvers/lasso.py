"""Lasso for every example at once, on the centred Gram matrix.

Contract
--------
:class:`Lasso` minimises, for each example ``j`` independently,
``(1 / (2 m)) ||y_j - X w_j - b_j||^2 + alpha ||w_j||_1`` -- the objective of
``sklearn.linear_model.Lasso`` with ``fit_intercept=True``. It only needs
``C = Sxx / m`` and ``c = Sxy / m`` from :class:`SufficientStatistics`, and runs FISTA
(accelerated proximal gradient, step ``1 / lambda_max(C)``) with adaptive gradient
restart, batched over all examples as one (N, n) matrix; examples that converged are
dropped from the active set. Convergence per example is certified by the duality gap, as
in scikit-learn: ``gap <= tol * ||y_j - mean(y_j)||^2 / m``.

With several alphas (or none, giving an automatic geometric path of ``n_alphas`` values
from ``alpha_max`` down to ``eps * alpha_max``) the path is solved from the strongest
penalty down with warm starts, and the alpha with the lowest validation mse on
``validation_stats`` is chosen per example (the default) or globally, like :class:`Ridge`.
Per example, the automatic path is each example's own (``alpha_max`` of that example), so an
example's fit never depends on which other examples share its batch; ``alpha`` may also be an
``(n,)`` tensor, one penalty per example.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .._checks import fail
from ._constraints import Interval, RealSequence, TensorValue
from .base import (
    SELECTION,
    FitResult,
    Solver,
    _fit_path,
    alpha_list,
    check_alpha_or_alphas,
    choice_needs_validation,
)
from .statistics import SufficientStatistics

__all__ = ["Lasso", "ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at max_iter before reaching its tolerance."""


def _soft_threshold(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.sign(z) * (z.abs() - t).clamp_min(0.0)


def _duality_gap(
    C: torch.Tensor, c: torch.Tensor, yy: torch.Tensor, W: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """Duality gap (n,) of the lasso in Gram form, all quantities divided by m (``alpha``
    (n,), one penalty per example)."""
    CW = C @ W
    wc = (W * c).sum(0)
    r2 = (yy - 2.0 * wc + (W * CW).sum(0)).clamp_min(0.0)  # ||R||^2 / m
    dual_norm = (CW - c).abs().amax(0) if W.shape[0] else torch.zeros_like(yy)  # ||X'R||_inf/m
    scale = torch.where(
        dual_norm > alpha, alpha / dual_norm.clamp_min(1e-300), torch.ones_like(dual_norm)
    )
    gap = 0.5 * r2 * (1.0 + scale * scale) + alpha * W.abs().sum(0) - scale * (yy - wc)
    return gap.clamp_min(0.0)


def _fista(
    C: torch.Tensor,
    c: torch.Tensor,
    yy: torch.Tensor,
    alpha: torch.Tensor,
    lipschitz: float,
    W0: torch.Tensor,
    tol: float,
    max_iter: int,
    check_every: int,
) -> Tuple[torch.Tensor, int, torch.Tensor]:
    """Batched FISTA with gradient restart, ``alpha`` (n,) one penalty per example.
    Returns (W, iterations, converged (n,))."""
    n = c.shape[1]
    W = W0.clone()
    converged = torch.zeros(n, dtype=torch.bool, device=c.device)
    threshold = tol * yy
    active = torch.nonzero(_duality_gap(C, c, yy, W, alpha) > threshold).flatten()
    converged[:] = True
    converged[active] = False
    step = 1.0 / lipschitz
    Z = W.clone()
    t = torch.ones(n, dtype=c.dtype, device=c.device)
    it = 0
    while active.numel() and it < max_iter:
        ca, ya, Wa, Za, ta = c[:, active], yy[active], W[:, active], Z[:, active], t[active]
        aa = alpha[active]
        for _ in range(min(check_every, max_iter - it)):
            it += 1
            W_new = _soft_threshold(Za - step * (C @ Za - ca), aa * step)
            restart = ((Za - W_new) * (W_new - Wa)).sum(0) > 0
            t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * ta * ta))
            momentum = torch.where(restart, torch.zeros_like(ta), (ta - 1.0) / t_new)
            Za = W_new + momentum[None, :] * (W_new - Wa)
            ta = torch.where(restart, torch.ones_like(ta), t_new)
            Wa = W_new
        W[:, active], Z[:, active], t[active] = Wa, Za, ta
        done = _duality_gap(C, ca, ya, Wa, aa) <= threshold[active]
        converged[active[done]] = True
        active = active[~done]
    return W, it, converged


class Lasso(Solver):
    """L1-penalised least squares with intercept for every example (sklearn objective).

    Parameters
    ----------
    alpha:
        Penalty strength, sklearn ``Lasso`` scaling: one for every example, or an ``(n,)``
        tensor, one per example.
    alphas:
        Several strengths, solved strongest first with warm starts and chosen with
        ``validation_stats``. If neither ``alpha`` nor ``alphas`` is given, a geometric
        path of ``n_alphas`` values from ``alpha_max`` (the smallest alpha giving all-zero
        coefficients: per example with ``selection="per_example"``, for every example with
        ``"global"``) to ``eps * alpha_max`` is used.
    selection:
        ``"per_example"`` (default: each example its own penalty, independent of the others)
        or ``"global"`` (see :class:`Ridge`).
    tol:
        Relative duality-gap tolerance per example.
    max_iter:
        Maximum FISTA iterations per alpha.
    check_every:
        Iterations between duality-gap checks (each check costs one extra matrix product).
    """

    name = "lasso"
    _parameter_constraints = {
        "alpha": [Interval(0.0), TensorValue(), None], "alphas": [RealSequence(), None],
        "n_alphas": [Interval(1, integer=True)], "eps": [Interval(0.0, 1.0, True, True)],
        "selection": [SELECTION], "tol": [Interval(0.0, low_open=True)],
        "max_iter": [Interval(1, integer=True)], "check_every": [Interval(1, integer=True)]}

    def __init__(
        self,
        alpha: Optional[Union[float, torch.Tensor]] = None,
        alphas: Optional[Sequence[float]] = None,
        n_alphas: int = 20,
        eps: float = 1e-3,
        selection: str = "per_example",
        tol: float = 1e-8,
        max_iter: int = 10000,
        check_every: int = 10,
    ) -> None:
        self.alpha = alpha
        self.alphas = alphas
        self.n_alphas = n_alphas
        self.eps = eps
        self.selection = selection
        self.tol = tol
        self.max_iter = max_iter
        self.check_every = check_every

    def _check_arguments(self) -> None:
        check_alpha_or_alphas("Lasso", self.alpha, self.alphas)
        if isinstance(self.alpha, torch.Tensor) and (
                self.alpha.dim() != 1 or not bool(torch.isfinite(self.alpha).all())
                or bool((self.alpha < 0).any())):
            raise fail("Lasso alpha", "a number >= 0, an (n_examples,) tensor of them (one per"
                       " example) or None", self.alpha)

    def _check_sizes(self, n_train: int, n_examples: Optional[int],
                     n_components: Optional[int]) -> None:
        if isinstance(self.alpha, torch.Tensor) and n_examples is not None and \
                self.alpha.numel() != n_examples:
            raise fail("Lasso alpha", f"one penalty per example ({n_examples})", self.alpha)

    def _needs_validation(self) -> Optional[str]:
        if isinstance(self.alpha, torch.Tensor):
            return None
        alphas = alpha_list(self.alpha, self.alphas, None)
        if alphas is None and int(self.n_alphas) > 1:
            return (f"Lasso: its automatic path of n_alphas={self.n_alphas} penalties needs"
                    " validation_stats (statistics of held-out masks; validation_fraction > 0"
                    " in collection) to choose among them, and none were given; or pass one"
                    " alpha")
        return choice_needs_validation("Lasso", alphas)

    def _fit(
        self, stats: SufficientStatistics, validation_stats: Optional[SufficientStatistics]
    ) -> FitResult:
        selection, tol = str(self.selection), float(self.tol)
        max_iter, check_every = int(self.max_iter), int(self.check_every)
        m = stats.count
        sxx, sxy, syy = stats.centered()
        C, c, yy = sxx / m, sxy / m, syy / m
        # each step of the path: a ratio times a per-example scale (1 for given alphas)
        unit = torch.ones(c.shape[1], dtype=c.dtype, device=c.device)
        alphas: Optional[List[float]] = [1.0]
        if isinstance(self.alpha, torch.Tensor):
            unit = self.alpha.detach().to(c).flatten()
        else:
            alphas = alpha_list(self.alpha, self.alphas, default=None)
        if alphas is None:
            n_alphas, eps = int(self.n_alphas), float(self.eps)
            top = c.abs().amax(0) if c.shape[0] else torch.zeros_like(unit)
            if selection == "global":
                top = top.max().expand_as(unit).clone()
            unit = torch.where(top > 0, top, torch.ones_like(top))  # constant output: w = 0
            grid = torch.logspace(0, torch.log10(torch.tensor(eps)).item(), n_alphas)
            alphas = sorted({float(g) for g in grid}, reverse=True)
        if any(a == 0 for a in alphas) or bool((unit == 0).any()):
            warnings.warn(
                "Lasso with alpha=0 is plain least squares and converges slowly with FISTA; "
                "use LeastSquares or Ridge instead.",
                UserWarning,
                stacklevel=3,
            )
        lipschitz = float(torch.linalg.eigvalsh(C).max()) if C.numel() else 0.0
        if lipschitz <= 0:
            lipschitz = 1.0  # every column constant: the solution is w = 0
        n_iter_by_alpha: Dict[float, int] = {}

        def solve(a: float, prev: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, Any]]:
            W0 = torch.zeros_like(c) if prev is None else prev
            W, it, conv = _fista(C, c, yy, a * unit, lipschitz, W0, tol, max_iter,
                                 check_every)
            n_iter_by_alpha[a] = it
            if not bool(conv.all()):
                warnings.warn(
                    f"Lasso(alpha={a:g}) did not reach tol={tol:g} within max_iter={max_iter} "
                    f"iterations for {int((~conv).sum())} of {conv.numel()} examples; raise "
                    "max_iter or tol.",
                    ConvergenceWarning,
                    stacklevel=4,
                )
            return W, {"n_iter": it, "converged": conv}

        result = _fit_path(self.name, stats, validation_stats, alphas, solve, selection)
        if not bool((unit == 1).all()):  # ratios of per-example scales: report the penalties
            chosen = torch.as_tensor(result.alpha, dtype=unit.dtype, device=unit.device) * unit
            one = selection == "global" and not isinstance(self.alpha, torch.Tensor)
            ratios = torch.tensor(alphas, dtype=unit.dtype, device=unit.device)
            result.alpha = float(chosen[0]) if one else chosen
            result.alphas = ratios * unit[0] if one else ratios[:, None] * unit[None, :]
        result.diagnostics.update(
            {"method": "fista_restart", "lipschitz": lipschitz, "n_iter_by_alpha": n_iter_by_alpha}
        )
        return result
