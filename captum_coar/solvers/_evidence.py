"""The marginal likelihood (evidence) of a ridge model with one prior variance per group.

Contract
--------
For one example (one output column), centred sums ``Sxx`` (N, N), ``b = Sxy`` (N,), ``syy``
over ``m`` rows, and the Bayesian linear model ``y = b0 + X w + e``, ``e ~ N(0, s2 I)``,
``w_i ~ N(0, s2 / lam_g(i))`` with one penalty ``lam_g`` per group ``g`` of components, the
posterior of ``w`` is ``N(mu, s2 A^-1)`` with ``A = Sxx + diag(lam)`` and ``mu = A^-1 b``.
With ``s2`` profiled out (``s2 = R / (m - 1)``, ``R = syy - b' mu``) minus twice the log
evidence is, up to a constant,

    f(u) = (m - 1) log R + log|A| - sum_g n_g u_g,     u_g = log lam_g

(Wahba; MacKay's evidence framework). :func:`grid_start` maximises the evidence with ONE
penalty for every example from a single eigendecomposition of ``Sxx`` (the start, and the
whole answer when there is one group). :func:`newton_groups` minimises
``f(u) + sum_g (u_g - c)^2 / sd^2`` over the group penalties of one example by damped Newton
steps with exact gradient and Hessian (one Cholesky factorisation and inverse of ``A`` per
step); the quadratic term is a normal hyperprior on the log penalties around ``c`` (the
one-penalty optimum) that keeps a small group's variance from collapsing to 0 on weak
evidence, which would make its intervals far too narrow. Everything is float64 and
deterministic; nothing here reads another example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = ["Spectrum", "grid_start", "single_penalty_posterior", "GroupFit", "newton_groups"]

#: Penalties are searched within this many decades either side of ``mean(diag(Sxx))``.
DECADES = 10.0


@dataclass
class Spectrum:
    """Eigendecomposition of the shared ``Sxx``: values (clamped at 0), vectors, ``V' Sxy``."""

    values: torch.Tensor
    vectors: torch.Tensor
    projections: torch.Tensor
    scale: float

    @classmethod
    def of(cls, sxx: torch.Tensor, sxy: torch.Tensor) -> "Spectrum":
        values, vectors = torch.linalg.eigh(sxx)
        scale = float(torch.diagonal(sxx).mean().clamp_min(1e-300))
        return cls(values.clamp_min(0.0), vectors, vectors.T @ sxy, scale)


def _floor(syy: torch.Tensor) -> torch.Tensor:
    """A positive floor for residual sums (an exact fit leaves ``R = 0``)."""
    return 1e-12 * syy.clamp_min(0.0) + 1e-300


def _single_slope(spectrum: Spectrum, syy: torch.Tensor, m: int,
                  u: torch.Tensor) -> torch.Tensor:
    """Derivative in ``u = log lam`` of the one-penalty ``f``, ``(n,)``."""
    e, p2 = spectrum.values, spectrum.projections ** 2
    N = e.numel()
    lam = torch.exp(u)
    inv = 1.0 / (e[:, None] + lam[None, :])  # (N, n)
    R = (syy - (inv * p2).sum(0)).clamp_min(0.0) + _floor(syy)
    r1 = (inv * inv * p2).sum(0)  # dR/dlam
    return lam * ((m - 1) * r1 / R + inv.sum(0)) - N


def grid_start(spectrum: Spectrum, syy: torch.Tensor, m: int,
               n_grid: int = 81) -> torch.Tensor:
    """``log`` of the single penalty maximising each example's evidence, ``(n,)``: the best of
    a grid of ``n_grid`` values over :data:`DECADES` either side of the scale, then the zero of
    the derivative between its neighbours (bisection, 60 halvings)."""
    e, p2 = spectrum.values, spectrum.projections ** 2  # (N,), (N, n)
    N = e.numel()
    logs = (math.log(spectrum.scale)
            + torch.linspace(-DECADES, DECADES, n_grid, dtype=e.dtype) * math.log(10.0))
    lam = torch.exp(logs)  # (K,)
    den = e[None, :] + lam[:, None]  # (K, N)
    R = (syy[None, :] - (1.0 / den) @ p2).clamp_min(0.0) + _floor(syy)[None, :]  # (K, n)
    f = (m - 1) * torch.log(R) + torch.log(den).sum(1, keepdim=True) - N * logs[:, None]
    best = torch.argmin(f, 0)
    low = logs[(best - 1).clamp_min(0)]
    high = logs[(best + 1).clamp_max(n_grid - 1)]
    slope_low = _single_slope(spectrum, syy, m, low)
    for _ in range(60):  # the derivative changes sign in [low, high] (or the bound is best)
        middle = 0.5 * (low + high)
        slope = _single_slope(spectrum, syy, m, middle)
        left = (slope > 0) == (slope_low > 0)
        low = torch.where(left, middle, low)
        slope_low = torch.where(left, slope, slope_low)
        high = torch.where(left, high, middle)
    return 0.5 * (low + high)


def single_penalty_posterior(spectrum: Spectrum, syy: torch.Tensor, m: int,
                             log_penalty: torch.Tensor
                             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one penalty per example: ``(mu (N, n), posterior variances (N, n), s2 (n,),
    effective degrees of freedom (n,))`` from the shared eigendecomposition."""
    e, V, proj = spectrum.values, spectrum.vectors, spectrum.projections
    inv = 1.0 / (e[:, None] + torch.exp(log_penalty)[None, :])  # (N, n)
    mu = V @ (inv * proj)
    R = (syy - (inv * proj * proj).sum(0)).clamp_min(0.0) + _floor(syy)
    s2 = R / (m - 1)
    variances = (V * V) @ inv * s2[None, :]
    dof = (e[:, None] * inv).sum(0)
    return mu, variances, s2, dof


@dataclass
class GroupFit:
    """One example's fit with group penalties."""

    mu: torch.Tensor  # (N,)
    variances: torch.Tensor  # (N,) posterior variances
    s2: float
    log_penalties: torch.Tensor  # (G,)
    dof: float  # effective degrees of freedom tr(A^-1 Sxx)
    n_iter: int
    converged: bool


def _group_sum(values: torch.Tensor, group: torch.Tensor, G: int) -> torch.Tensor:
    return torch.zeros(G, dtype=values.dtype).index_add_(0, group, values)


def _block_sum(matrix: torch.Tensor, group: torch.Tensor, G: int) -> torch.Tensor:
    rows = torch.zeros(G, matrix.shape[1], dtype=matrix.dtype).index_add_(0, group, matrix)
    return torch.zeros(G, G, dtype=matrix.dtype).index_add_(1, group, rows)


class _State:
    """``A``'s factorisation and what the objective needs at one ``u``."""

    def __init__(self, sxx: torch.Tensor, b: torch.Tensor, syy: float, m: int,
                 u: torch.Tensor, group: torch.Tensor, counts: torch.Tensor, center: float,
                 sd: float) -> None:
        self.u, self.lam = u, torch.exp(u)
        A = sxx + torch.diag(self.lam[group])
        L, info = torch.linalg.cholesky_ex(A)
        self.ok = int(info) == 0
        if not self.ok:
            return
        self.mu = torch.cholesky_solve(b[:, None], L)[:, 0]
        self.R = max(syy - float(b @ self.mu), 1e-12 * max(syy, 0.0) + 1e-300)
        self.inverse = torch.cholesky_inverse(L)
        logdet = 2.0 * float(torch.log(torch.diagonal(L)).sum())
        self.f = ((m - 1) * math.log(self.R) + logdet - float((counts * u).sum())
                  + float(((u - center) ** 2).sum()) / sd ** 2)


def newton_groups(sxx: torch.Tensor, b: torch.Tensor, syy: float, m: int,
                  group: torch.Tensor, n_groups: int, start: float, sd: float,
                  max_iter: int = 50, tol: float = 1e-7,
                  scale: Optional[float] = None) -> GroupFit:
    """Minimise the penalised ``f(u)`` of the module docstring for one example.

    Args:
        sxx, b, syy, m: centred sums of the example (``b`` its column of ``Sxy``).
        group: ``(N,)`` group index of every component; ``n_groups`` groups.
        start: the one-penalty optimum (log), start and centre of the hyperprior.
        sd: standard deviation of the hyperprior on each log penalty.
        max_iter, tol: Newton steps, and the gradient size (relative to ``m``) that stops them.
        scale: ``mean(diag(Sxx))`` (bounds the penalties to :data:`DECADES` around it).
    """
    G = n_groups
    counts = torch.bincount(group, minlength=G).to(sxx.dtype)
    scale = float(torch.diagonal(sxx).mean().clamp_min(1e-300)) if scale is None else scale
    lo = math.log(scale) - DECADES * math.log(10.0)
    hi = math.log(scale) + DECADES * math.log(10.0)
    u = torch.full((G,), min(max(start, lo), hi), dtype=sxx.dtype)
    state = _State(sxx, b, syy, m, u, group, counts, start, sd)
    if not state.ok:  # Sxx + lam I is positive definite for lam > 0; guard anyway
        raise ValueError("the penalised Gram matrix is not positive definite at the start")
    converged, steps = False, 0
    for steps in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        grad, H = _derivatives(state, m, group, G, counts, start, sd)
        free = ~(((state.u <= lo) & (grad > 0)) | ((state.u >= hi) & (grad < 0)))
        if not bool(free.any()) or float(grad[free].abs().max()) < tol * max(1.0, m):
            converged = True
            break
        values, vectors = torch.linalg.eigh(H[free][:, free])
        values = values.abs().clamp_min(1e-8 * max(1.0, float(values.abs().max())))
        step = torch.zeros_like(state.u)
        step[free] = -(vectors @ ((vectors.T @ grad[free]) / values))
        step = step.clamp(-5.0, 5.0)
        size, new = 1.0, None
        while size >= 1e-6:
            trial = (state.u + size * step).clamp(lo, hi)
            candidate = _State(sxx, b, syy, m, trial, group, counts, start, sd)
            if candidate.ok and candidate.f <= state.f + 1e-4 * float(grad @ (trial - state.u)):
                new = candidate
                break
            size *= 0.5
        if new is None:  # no descent along the Newton direction: at the optimum numerically
            converged = True
            break
        change = state.f - new.f
        state = new
        if change < 1e-12 * max(1.0, abs(state.f)):
            converged = True
            break
    s2 = state.R / (m - 1)
    dof = float(counts.sum()) - float((state.lam[group] * torch.diagonal(state.inverse)).sum())
    variances = torch.diagonal(state.inverse) * s2
    return GroupFit(state.mu, variances, s2, state.u.clone(), dof, steps, converged)


def _derivatives(state: _State, m: int, group: torch.Tensor, G: int, counts: torch.Tensor,
                 start: float, sd: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradient and Hessian in ``u`` of the penalised ``f`` at ``state``."""
    lam, mu, R, inv = state.lam, state.mu, state.R, state.inverse
    s = _group_sum(mu * mu, group, G)
    t = _group_sum(torch.diagonal(inv), group, G)
    first = lam * ((m - 1) * s / R + t)
    grad = first - counts + 2.0 * (state.u - start) / sd ** 2
    Q = _block_sum(inv * inv, group, G)
    V = _block_sum(mu[:, None] * inv * mu[None, :], group, G)
    hess_lam = (m - 1) * (-2.0 * V / R - torch.outer(s, s) / R ** 2) - Q
    H = (lam[:, None] * lam[None, :] * hess_lam + torch.diag(first)
         + 2.0 * torch.eye(G, dtype=lam.dtype) / sd ** 2)
    return grad, H
