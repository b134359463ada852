"""Standard errors and confidence intervals: hand computations, coverage, 1/sqrt(m) scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_coar.coar import ComponentAblationRegression
from captum_coar.sampling import BernoulliSampler
from captum_coar.selectors import linear_neurons
from captum_coar.solvers import (
    AutoRidge,
    LeastSquares,
    Ridge,
    SufficientStatistics,
    confidence_interval,
    sandwich_standard_errors,
)
from captum_coar.solvers.uncertainty import linear_standard_errors, normal_quantile
from captum_coar.testing import AdditiveNet

F64 = torch.float64


def linear_problem(m, N, n, noise=0.5, seed=0, alpha=0.2):
    """Bernoulli keep masks, Y = b + X w' + Gaussian noise, and the truth (w, b)."""
    g = torch.Generator().manual_seed(seed)
    X = BernoulliSampler(alpha).sample(N, 0, m, seed=seed + 1)
    w = torch.randn(n, N, generator=g, dtype=F64)
    b = torch.randn(n, generator=g, dtype=F64)
    Y = X.to(F64) @ w.T + b + noise * torch.randn(m, n, generator=g, dtype=F64)
    return X, Y, w, b


def covered(coef, se, truth, z=1.96):
    return ((coef - truth).abs() <= z * se).double()


def test_least_squares_standard_errors_match_hand_computation():
    X, Y, _, _ = linear_problem(60, 7, 3)
    fit = LeastSquares().fit(SufficientStatistics.from_arrays(X, Y))
    D = np.c_[np.ones(60), X.numpy().astype(float)]
    beta = np.linalg.lstsq(D, Y.numpy(), rcond=None)[0]
    s2 = ((Y.numpy() - D @ beta) ** 2).sum(0) / (60 - 7 - 1)
    se = np.sqrt(np.outer(s2, np.diag(np.linalg.inv(D.T @ D))[1:]))
    np.testing.assert_allclose(fit.standard_errors.numpy(), se, rtol=1e-9)
    np.testing.assert_allclose(fit.residual_dof.numpy(), np.full(3, 52.0))


def test_ridge_standard_errors_match_hand_computation():
    X, Y, _, _ = linear_problem(40, 9, 2)
    a = 3.0
    fit = Ridge(alpha=a).fit(SufficientStatistics.from_arrays(X, Y))
    Xc = X.numpy().astype(float) - X.numpy().mean(0)
    Yc = Y.numpy() - Y.numpy().mean(0)
    A_inv = np.linalg.inv(Xc.T @ Xc + a * np.eye(9))
    W = A_inv @ Xc.T @ Yc
    df = np.trace(A_inv @ Xc.T @ Xc)
    s2 = ((Yc - Xc @ W) ** 2).sum(0) / (40 - 1 - df)
    cov_diag = np.diag(A_inv @ Xc.T @ Xc @ A_inv)
    np.testing.assert_allclose(fit.standard_errors.numpy(), np.sqrt(np.outer(s2, cov_diag)),
                               rtol=1e-9)
    np.testing.assert_allclose(fit.residual_dof.numpy(), 40 - 1 - df, rtol=1e-12)


def test_nominal_95_intervals_cover_the_truth_95_percent_of_the_time():
    # 400 examples x 20 components = 8000 intervals: binomial sd of the coverage ~ 0.0025
    X, Y, w, _ = linear_problem(200, 20, 400, noise=1.0)
    fit = LeastSquares().fit(SufficientStatistics.from_arrays(X, Y))
    coverage = float(covered(fit.coef, fit.standard_errors, w).mean())
    assert 0.94 <= coverage <= 0.96
    low, high = confidence_interval(fit.coef, fit.standard_errors, 0.95)
    inside = float(((low <= w) & (w <= high)).double().mean())
    assert inside == pytest.approx(coverage, abs=2e-3)  # 1.96 vs the exact quantile


def test_standard_errors_shrink_like_one_over_sqrt_m():
    X, Y, _, _ = linear_problem(3200, 10, 50, noise=1.0)
    small = LeastSquares().fit(SufficientStatistics.from_arrays(X[:800], Y[:800]))
    large = LeastSquares().fit(SufficientStatistics.from_arrays(X, Y))
    ratio = float(small.standard_errors.mean() / large.standard_errors.mean())
    assert ratio == pytest.approx(2.0, rel=0.05)


def test_sandwich_matches_hc1_hand_computation_and_fixes_heteroscedastic_coverage():
    m, N, n = 400, 10, 2000
    X = BernoulliSampler(0.2).sample(N, 0, m, seed=1)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, N, generator=g, dtype=F64)
    # the noise is ten times larger when component 0 is ablated
    sd = 0.1 + 1.0 * (~X[:, 0]).to(F64)
    Y = X.to(F64) @ w.T + sd[:, None] * torch.randn(m, n, generator=g, dtype=F64)
    stats = SufficientStatistics.from_arrays(X, Y)
    fit = LeastSquares().fit(stats)
    chunks = [(X[:150], Y[:150]), (X[150:], Y[150:])]
    se, dof = sandwich_standard_errors(chunks, stats, fit.coef, fit.intercept)
    # HC1 by hand for the first 3 examples
    D = np.c_[np.ones(m), X.numpy().astype(float)]
    bread = np.linalg.inv(D.T @ D)
    for j in range(3):
        e = Y[:, j].numpy() - D @ np.r_[fit.intercept[j].item(), fit.coef[j].numpy()]
        meat = (D * (e ** 2)[:, None]).T @ D
        hc1 = np.diag(bread @ meat @ bread)[1:] * m / (m - N - 1)
        np.testing.assert_allclose(se[j].numpy(), np.sqrt(hc1), rtol=1e-8)
    assert float(dof[0]) == m - N - 1
    classical = float(covered(fit.coef, fit.standard_errors, w)[:, 0].mean())
    robust = float(covered(fit.coef, se, w)[:, 0].mean())
    assert classical < 0.8  # the classical interval is far too narrow for component 0
    assert 0.93 <= robust <= 0.97


def test_no_residual_degree_of_freedom_gives_no_error_bars():
    X, Y, _, _ = linear_problem(8, 7, 2)  # m - 1 - N = 0
    fit = LeastSquares().fit(SufficientStatistics.from_arrays(X, Y))
    assert fit.standard_errors is None and fit.residual_dof is None
    assert "not available" in fit.diagnostics["standard_errors"]
    with pytest.raises(ValueError, match=r"`residual degrees of freedom m - 1 - df` must be"):
        linear_standard_errors(SufficientStatistics.from_arrays(X, Y), fit.coef, fit.intercept)
    with pytest.raises(ValueError, match=r"`standard_errors` must be a tensor"):
        confidence_interval(fit.coef, None)


def test_normal_quantile_and_level_checks():
    assert normal_quantile(0.95) == pytest.approx(1.959963984540054, rel=1e-12)
    assert normal_quantile(0.99) == pytest.approx(2.5758293035489004, rel=1e-12)
    with pytest.raises(ValueError, match=r"`level` must be a finite number in \(0, 1\)"):
        normal_quantile(1.0)
    with pytest.raises(TypeError, match=r"`level` must be"):
        normal_quantile("0.95")


def test_auto_ridge_attaches_standard_errors_at_the_chosen_penalty():
    X, Y, _, _ = linear_problem(120, 10, 4)
    stats = SufficientStatistics.from_arrays(X, Y)
    auto = AutoRidge(selection="global").fit(stats)
    fixed = Ridge(alpha=float(auto.alpha)).fit(stats)
    torch.testing.assert_close(auto.standard_errors, fixed.standard_errors, rtol=1e-9, atol=0)
    assert auto.alpha > 0 and "shrinkage bias is not included" in auto.diagnostics[
        "standard_errors"]
    assert all(df < 10 for df in auto.diagnostics["effective_df"])
    plain = LeastSquares().fit(stats)
    assert plain.diagnostics["standard_errors"] == "classical"
    assert plain.diagnostics["effective_df"] == pytest.approx([10.0] * 4)


class NoisyLogit:
    """Target logit of the additive model plus Gaussian noise (a stand-in for a model whose
    output is not exactly additive); the coefficients COAR converges to are still the exact
    single effects."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.generator = torch.Generator().manual_seed(5)

    def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logit = out.gather(1, target.view(-1, 1)).squeeze(1)
        noise = torch.randn(logit.shape, generator=self.generator, dtype=logit.dtype)
        return logit + self.scale * noise


def test_additive_model_intervals_contain_the_truth_and_shrink_like_sqrt_m():
    torch.manual_seed(0)  # the inputs drawn below
    model = AdditiveNet(n_in=6, n_hidden=12, n_classes=3, seed=0).double().eval()
    components = linear_neurons(model, ["hidden"])
    x = torch.randn(40, 6, dtype=F64)
    y = torch.randint(0, 3, (40,))
    truth = model.effects(x, y).detach()
    widths, coverage = [], []
    for m in (200, 800):
        coar = ComponentAblationRegression(model, components, ablation="weights")
        coar.attribute(x, target=y, output=NoisyLogit(0.05), n_masks=m, ablation_fraction=0.3,
                       solver="least_squares", seed=1)
        result = coar.last_result_
        low, high = result.confidence_interval(0.95)
        coverage.append(float(((low <= truth) & (truth <= high)).double().mean()))
        widths.append(float((high - low).mean()))
    # 480 intervals per m: 95% coverage up to binomial noise (sd ~ 0.01)
    assert all(0.91 <= c <= 0.99 for c in coverage)
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.08)
