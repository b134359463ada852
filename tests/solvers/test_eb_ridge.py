"""EmpiricalBayesRidge against its definition computed by hand, and its intervals' coverage.

Known answers: the evidence of a Bayesian ridge is a Gaussian likelihood of the centred outputs
(covariance ``s2 (I + Xc D Xc' / s2)``), so the solver's objective, its chosen penalties (a
stationary point of evidence + hyperprior) and its posterior means and standard deviations are
recomputed here from the m x m covariance, without the solver's algebra. Coverage: on planted
linear models whose true coefficients are a scaled prior plus departures of a different size
per group (normal, heavy-tailed, sparse), the share of (example, component) pairs whose true
coefficient lies in ``coef +- 1.96 se``.
"""

from __future__ import annotations

import math

import pytest
import torch

from captum_coar.solvers import EmpiricalBayesRidge, SufficientStatistics
from captum_coar.solvers._evidence import Spectrum, grid_start
from captum_coar.solvers.bayes import group_index
from captum_coar.solvers.selection import prior_weights

F64 = torch.float64


def planted(N=24, n=8, m=36, q=0.85, groups=(8, 8, 8), scales=(1.0, 0.3, 0.05),
            kind="normal", r2=0.85, seed=0):
    """Masks, outputs, true coefficients and a prior: ``beta = 0.5 p + d``, ``d`` of a
    different size per group; the noise leaves a share ``1 - r2`` of the output unexplained."""
    g = torch.Generator().manual_seed(seed)
    group = group_index(groups, N)
    p = torch.randn(n, N, generator=g, dtype=F64)
    if kind == "normal":
        d = torch.randn(n, N, generator=g, dtype=F64)
    elif kind == "t3":  # Student t with 3 degrees of freedom, unit variance
        chi = (torch.randn(n, N, 3, generator=g, dtype=F64) ** 2).sum(-1) / 3
        d = torch.randn(n, N, generator=g, dtype=F64) / chi.sqrt() / math.sqrt(3)
    else:  # sparse: 10% of components depart, with the same variance
        d = torch.randn(n, N, generator=g, dtype=F64) * (torch.rand(n, N, generator=g) < 0.1)
        d = d * math.sqrt(10)
    beta = 0.5 * p + d * torch.tensor(scales, dtype=F64)[group]
    X = torch.rand(m, N, generator=g) < q
    signal = X.to(F64) @ beta.T
    noise = (signal.var(0) * (1 - r2) / r2).sqrt()
    Y = 2.0 + signal + torch.randn(m, n, generator=g, dtype=F64) * noise
    return X, Y, beta, p


def by_hand(X, y, penalties):
    """Posterior mean, posterior variances, s2 and ``f`` (minus twice the log evidence, s2
    profiled, up to a constant) from the m x m covariance of the centred outputs."""
    Xc = X.to(F64) - X.to(F64).mean(0)
    yc = y - y.mean()
    m = X.shape[0]
    D = torch.diag(1.0 / penalties)  # prior variances / s2
    K = torch.eye(m, dtype=F64) + Xc @ D @ Xc.T  # covariance / s2 (one direction, the mean,
    K = K + torch.ones(m, m, dtype=F64)  # ... is removed by centring; make it non-singular)
    Kinv_y = torch.linalg.solve(K, yc)
    R = float(yc @ Kinv_y)
    s2 = R / (m - 1)
    logdet = float(torch.linalg.slogdet(K)[1])
    f = (m - 1) * math.log(R) + logdet
    mean = D @ Xc.T @ Kinv_y
    cov = s2 * (D - D @ Xc.T @ torch.linalg.solve(K, Xc @ D))
    return mean, torch.diagonal(cov), s2, f


def test_one_group_is_the_evidence_optimum_with_posterior_errors():
    X, Y, _, p = planted(groups=(24,), scales=(0.5,), m=40)
    stats = SufficientStatistics.from_arrays(X, Y)
    fit = EmpiricalBayesRidge(prior=0.5 * p, rescale=False).fit(stats)  # the true scale
    Yr = Y - X.to(F64) @ (0.5 * p).T
    assert fit.diagnostics["mode"] == "one penalty per example"
    for j in range(3):
        lam = float(fit.diagnostics["penalties"][j, 0])
        mean, var, s2, f = by_hand(X, Yr[:, j], torch.full((24,), lam, dtype=F64))
        torch.testing.assert_close(fit.coef[j], mean + 0.5 * p[j], rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(fit.standard_errors[j], var.sqrt(), rtol=1e-7, atol=1e-12)
        assert math.isclose(float(fit.diagnostics["noise_variance"][j]), s2, rel_tol=1e-7)
        for factor in (0.999, 1.001):  # a minimum of the evidence
            other = by_hand(X, Yr[:, j], torch.full((24,), lam * factor, dtype=F64))[3]
            assert other >= f - 1e-9 * abs(f), (j, factor)


def test_an_estimated_prior_scale_adds_its_variance():
    """With ``rescale=True`` the prior's least-squares scale ``c`` is estimated on the rows, and
    ``var(c) p_i^2`` (``var(c)`` = residual variance around ``c X p`` over ``p' Sxx p``) is
    added to the posterior variances."""
    X, Y, _, p = planted(groups=(24,), scales=(0.5,), m=40)
    fit = EmpiricalBayesRidge(prior=p).fit(SufficientStatistics.from_arrays(X, Y))
    Xc = X.to(F64) - X.to(F64).mean(0)
    for j in range(3):
        u = Xc @ p[j]
        yc = Y[:, j] - Y[:, j].mean()
        c = float(u @ yc / (u @ u))
        rss = float(((yc - c * u) ** 2).sum())
        lam = float(fit.diagnostics["penalties"][j, 0])
        mean, var, _, _ = by_hand(X, Y[:, j] - c * X.to(F64) @ p[j], torch.full((24,), lam,
                                                                             dtype=F64))
        torch.testing.assert_close(fit.coef[j], mean + c * p[j], rtol=1e-7, atol=1e-9)
        expected = var + rss / (40 - 2) / float(u @ u) * p[j] ** 2
        torch.testing.assert_close(fit.standard_errors[j] ** 2, expected, rtol=1e-7, atol=1e-12)


def test_group_penalties_are_a_stationary_point_of_evidence_plus_hyperprior():
    X, Y, _, p = planted(m=30)
    stats = SufficientStatistics.from_arrays(X, Y)
    solver = EmpiricalBayesRidge(prior=p, groups=[8, 8, 8], tol=1e-10)
    fit = solver.fit(stats)
    assert fit.diagnostics["mode"].startswith("one penalty per group of components (3 groups)")
    assert bool(fit.converged.all())
    P = prior_weights(p, True, stats)
    Yr = Y - X.to(F64) @ P
    group = group_index([8, 8, 8], 24)
    sxx, sxy, syy = stats.minus_prediction(P).centered()
    centre = grid_start(Spectrum.of(sxx, sxy), syy, 30)
    sd = math.log(10.0)
    for j in range(3):
        u = torch.log(fit.diagnostics["penalties"][j])
        mean, var, _, _ = by_hand(X, Yr[:, j], torch.exp(u)[group])
        torch.testing.assert_close(fit.coef[j], mean + P[:, j], rtol=1e-6, atol=1e-9)

        def objective(v, y=Yr[:, j], c=centre[j]):
            return by_hand(X, y, torch.exp(v)[group])[3] + float(((v - c) ** 2).sum()) / sd ** 2

        for k in range(3):  # central differences of the brute-force objective vanish
            step = torch.zeros(3, dtype=F64)
            step[k] = 1e-4
            slope = (objective(u + step) - objective(u - step)) / 2e-4
            assert abs(slope) < 1e-3, (j, k, slope)


def test_groups_are_checked_and_the_large_n_fallback_is_stated():
    X, Y, _, p = planted()
    stats = SufficientStatistics.from_arrays(X, Y)
    with pytest.raises(ValueError, match=r"`EmpiricalBayesRidge groups` must be sizes summing"
                       r" to the 24 components; got '\[8, 8\] \(sum 16\)'"):
        EmpiricalBayesRidge(groups=[8, 8]).fit(stats)
    with pytest.raises(ValueError, match="positive integers"):
        EmpiricalBayesRidge(groups=[8, 0, 16]).check(30, 8, False, 24)
    fit = EmpiricalBayesRidge(groups=[8, 8, 8], max_group_components=10).fit(stats)
    assert fit.diagnostics["mode"].startswith("one penalty per example (24 components >")
    assert EmpiricalBayesRidge(prior=p).with_prior(None).prior is None
    assert EmpiricalBayesRidge(groups=[8, 16]).describe()["groups"] == [8, 16]


def _coverage(kind, factor, n=40, seed=0):
    N = 48
    X, Y, beta, p = planted(N=N, n=n, m=int(factor * N), kind=kind, seed=seed,
                            groups=(16, 16, 16))
    fit = EmpiricalBayesRidge(prior=p, groups=[16, 16, 16]).fit(
        SufficientStatistics.from_arrays(X, Y))
    return float(((fit.coef - beta).abs() <= 1.96 * fit.standard_errors).double().mean())


def test_intervals_cover_in_a_small_simulation():
    """A quick version of the slow test below: 2 x 40 examples x 48 components per m."""
    for factor in (1, 2):
        share = sum(_coverage("normal", factor, seed=s) for s in (1, 2)) / 2
        assert 0.91 <= share <= 0.98, (factor, share)


@pytest.mark.slow
@pytest.mark.parametrize("kind, high", [("normal", 0.96), ("t3", 0.96), ("sparse", 0.975)])
def test_intervals_cover_95_percent_at_n_and_2n(kind, high):
    """Planted models: 10 draws x 40 examples x 48 components per (kind, m); the share of true
    coefficients inside the nominal 95% intervals lies in [0.93, 0.96] (sparse departures, 90%
    of them exactly 0, are covered a little more often: up to 0.975)."""
    for factor in (1, 2):
        share = sum(_coverage(kind, factor, seed=s) for s in range(10)) / 10
        assert 0.93 <= share <= high, (kind, factor, share)
