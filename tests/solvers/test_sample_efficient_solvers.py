"""The sample-efficient estimators (automatic penalties, priors, difference of means) against
hand computations and scikit-learn, and behind ``attribute(solver=...)``: the default by m,
priors, error bars."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import pytest
import torch
from coar_fixtures import CountingForward, digits_cnn
from test_solvers import make_problem

from captum_coar.coar import ComponentAblationRegression, tensor_batches
from captum_coar.selectors import conv_filters
from captum_coar.solvers import (
    AutoLasso,
    AutoRidge,
    Lasso,
    LeastSquares,
    SufficientStatistics,
    resolve_solver,
)
from captum_coar.stores import InMemoryStore

F64 = torch.float64

sklearn_linear = pytest.importorskip("sklearn.linear_model")


@pytest.fixture(scope="module")
def digits():
    model, x, y = digits_cnn()
    return model, conv_filters(model, ["conv1", "conv2"]), x[:5], y[:5]  # N = 18


def test_default_solver_follows_the_number_of_masks(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    assert coar.default_solver(54) == "eb_ridge" and coar.default_solver(55) == "least_squares"
    coar.attribute(x, target=y, n_masks=30, ablation_fraction=0.2)
    assert coar.last_result_.fit.solver == "eb_ridge"
    small = coar.last_result_
    coar.attribute(x, target=y, n_masks=90, ablation_fraction=0.2)
    assert coar.last_result_.fit.solver == "least_squares"
    # explicit least squares on the same 90 masks: identical
    explicit = coar.attribute(x, target=y, n_masks=90, ablation_fraction=0.2,
                              solver="least_squares")
    torch.testing.assert_close(explicit, coar.last_result_.attributions)
    assert small.standard_errors is not None and small.standard_errors.shape == (5, 18)


def test_prior_shrinkage_through_attribute(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    prior = torch.randn(5, 18, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    held = coar.attribute(x, target=y, n_masks=40, ablation_fraction=0.2,
                          solver=AutoRidge(prior=prior, rescale=False, alphas=[1e12]))
    torch.testing.assert_close(held.double(), prior, rtol=0, atol=1e-5)
    free = coar.attribute(x, target=y, n_masks=40, ablation_fraction=0.2,
                          solver=AutoRidge(prior=prior, alphas=[0.0]))
    ls = coar.attribute(x, target=y, n_masks=40, ablation_fraction=0.2, solver=LeastSquares())
    torch.testing.assert_close(free, ls, rtol=1e-4, atol=1e-5)


def test_wrong_prior_shape_is_refused_before_any_forward_pass(digits):
    model, components, x, y = digits
    counter = CountingForward(model)
    coar = ComponentAblationRegression(counter, components)
    with pytest.raises(ValueError, match=r"`prior` must be a tensor of shape \(5, 18\)"):
        coar.attribute(x, target=y, n_masks=40, solver=AutoRidge(prior=torch.zeros(4, 18)))
    with pytest.raises(ValueError, match=r"`prior` must be a tensor of shape \(5, 18\)"):
        coar.attribute(x, target=y, n_masks="auto", solver=AutoRidge(prior=torch.zeros(5, 3)))
    assert counter.rows == 0


def test_lasso_auto_through_attribute_is_deterministic_and_matches_sklearn(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    kwargs = dict(target=y, n_masks=60, ablation_fraction=0.2, solver="lasso_auto",
                  validation_fraction=0.25, seed=4)
    a = coar.attribute(x, **kwargs)
    fit = coar.last_result_.fit
    b = coar.attribute(x, **kwargs)
    assert torch.equal(a, b) and torch.equal(coar.last_result_.fit.alpha, fit.alpha)
    assert coar.last_result_.standard_errors is None
    with pytest.raises(ValueError, match=r"`standard_errors` must be a tensor"):
        coar.last_result_.confidence_interval()
    # the same 60 masks from a store, and sklearn's Lasso on all of them at the chosen alpha
    store = coar.collect(tensor_batches(x, y), InMemoryStore(), n_masks=60,
                         ablation_fraction=0.2, seed=4)
    X = store.read_masks().numpy().astype(float)
    Y = store.read_outputs().numpy().astype(float)
    for j in range(5):  # each example at its own chosen penalty
        ref = sklearn_linear.Lasso(alpha=float(fit.alpha[j]), tol=1e-10,
                                   max_iter=100000).fit(X, Y[:, j])
        np.testing.assert_allclose(fit.coef[j].numpy(), ref.coef_, atol=2e-4)


def test_confidence_interval_is_coef_plus_minus_z_se(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    coar.attribute(x, target=y, n_masks=120, ablation_fraction=0.2, solver="least_squares")
    result = coar.last_result_
    low, high = result.confidence_interval(0.9)
    z = 1.6448536269514722
    torch.testing.assert_close(high - result.attributions, z * result.standard_errors)
    torch.testing.assert_close(result.attributions - low, z * result.standard_errors)
    assert result.standard_errors.dtype == result.attributions.dtype


# ----------------------------------------------------------------------------- automatic penalties
def _centred(X: torch.Tensor, Y: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    Xn, Yn = X.numpy().astype(float), Y.numpy()
    return Xn - Xn.mean(0), Yn - Yn.mean(0)


def test_auto_ridge_gcv_choice_matches_hand_computation() -> None:
    X, Y, _, _ = make_problem(60, 15, 4, noise=1.0, seed=3)
    grid = [0.01, 0.3, 1.0, 3.0, 10.0, 30.0]
    fit = AutoRidge(alphas=grid, selection="global").fit(SufficientStatistics.from_arrays(X, Y))
    Xc, Yc = _centred(X, Y)
    scores = []
    for a in grid:
        H = Xc @ np.linalg.inv(Xc.T @ Xc + a * np.eye(15)) @ Xc.T
        rss = ((Yc - H @ Yc) ** 2).sum(0)
        scores.append((60 * rss / (60 - 1 - np.trace(H)) ** 2).mean())
    assert fit.alpha == grid[int(np.argmin(scores))]
    np.testing.assert_allclose(fit.diagnostics["selection_score"].mean(1).numpy(), scores,
                               rtol=1e-9)
    ref = sklearn_linear.Ridge(alpha=fit.alpha).fit(X.numpy().astype(float), Y.numpy())
    np.testing.assert_allclose(fit.coef.numpy(), ref.coef_, rtol=1e-8, atol=1e-10)


def test_auto_ridge_held_out_choice_and_refit_match_sklearn() -> None:
    X, Y, _, _ = make_problem(80, 12, 3, noise=1.0, seed=4)
    grid = [0.1, 1.0, 10.0, 100.0]
    train = SufficientStatistics.from_arrays(X[:60], Y[:60])
    val = SufficientStatistics.from_arrays(X[60:], Y[60:])
    fit = AutoRidge(alphas=grid).fit(train, val)
    Xn, Yn = X.numpy().astype(float), Y.numpy()
    mses = [((sklearn_linear.Ridge(alpha=a).fit(Xn[:60], Yn[:60]).predict(Xn[60:]) - Yn[60:])
             ** 2).mean() for a in grid]
    best = grid[int(np.argmin(mses))]
    assert fit.alpha == pytest.approx(best * 80 / 60, rel=1e-12)  # penalty scaled to 80 rows
    assert fit.diagnostics["refit_rows"] == 80
    ref = sklearn_linear.Ridge(alpha=best * 80 / 60).fit(Xn, Yn)
    np.testing.assert_allclose(fit.coef.numpy(), ref.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fit.intercept.numpy(), ref.intercept_, rtol=1e-8, atol=1e-10)


def test_prior_ridge_is_the_prior_for_a_huge_penalty_and_least_squares_for_none() -> None:
    X, Y, w, _ = make_problem(90, 10, 3, noise=0.5, seed=5)
    stats = SufficientStatistics.from_arrays(X, Y)
    prior = w + 0.3 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1),
                                  dtype=F64)
    huge = AutoRidge(prior=prior, rescale=False, alphas=[1e12]).fit(stats)
    torch.testing.assert_close(huge.coef, prior, rtol=0, atol=1e-8)
    zero = AutoRidge(prior=prior, alphas=[0.0]).fit(stats)
    torch.testing.assert_close(zero.coef, LeastSquares().fit(stats).coef, rtol=1e-9, atol=1e-10)
    # with rescaling, the huge penalty gives the prior times its least-squares scale
    scaled = AutoRidge(prior=2.0 * prior, rescale=True, alphas=[1e12]).fit(stats)
    Xc, Yc = _centred(X, Y)
    for j in range(3):
        z = Xc @ prior[j].numpy()
        c = (z @ Yc[:, j]) / (z @ z)
        np.testing.assert_allclose(scaled.coef[j].numpy(), c * prior[j].numpy(), atol=1e-8)
    # a prior near the truth beats plain ridge (both penalties chosen by GCV) at m < N
    Xs, Ys, ws, _ = make_problem(30, 40, 20, noise=0.5, seed=6)
    small = SufficientStatistics.from_arrays(Xs, Ys)
    near = ws + 0.1 * torch.randn(ws.shape, generator=torch.Generator().manual_seed(2),
                                  dtype=F64)
    err_prior = float(((AutoRidge(prior=near).fit(small).coef - ws) ** 2).mean())
    err_plain = float(((AutoRidge().fit(small).coef - ws) ** 2).mean())
    assert err_prior < 0.2 * err_plain


def test_auto_lasso_picks_on_held_out_rows_and_refits_like_sklearn() -> None:
    X, Y, _, _ = make_problem(100, 10, 2, noise=0.3, seed=7, sparse=0.3)
    train = SufficientStatistics.from_arrays(X[:75], Y[:75])
    val = SufficientStatistics.from_arrays(X[75:], Y[75:])
    fit = AutoLasso(tol=1e-10, max_iter=50000, selection="global").fit(train, val)
    path = Lasso(n_alphas=12, eps=1e-2, tol=1e-10, max_iter=50000,
                 selection="global").fit(train, val)
    assert fit.alpha == path.alpha
    ref = sklearn_linear.Lasso(alpha=float(fit.alpha), tol=1e-12, max_iter=100000).fit(
        X.numpy().astype(float), Y.numpy())
    np.testing.assert_allclose(fit.coef.numpy(), ref.coef_, atol=1e-6)
    assert fit.standard_errors is None
    with pytest.raises(ValueError, match=r"`validation_stats` must be statistics of held-out"):
        AutoLasso().fit(train)


def test_minus_prediction_equals_statistics_of_the_residual_rows() -> None:
    X, Y, _, _ = make_problem(40, 6, 3, noise=0.5, seed=9)
    W = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    shifted = SufficientStatistics.from_arrays(X, Y).minus_prediction(W)
    direct = SufficientStatistics.from_arrays(X, Y - X.to(F64) @ W)
    for key, value in direct.to_dict().items():
        torch.testing.assert_close(shifted.to_dict()[key], value, rtol=1e-12, atol=1e-10)
    with pytest.raises(ValueError, match=r"weights must have shape \(6, 3\)"):
        SufficientStatistics.from_arrays(X, Y).minus_prediction(W.T)


def test_prior_lasso_is_sklearn_lasso_of_the_prior_residual() -> None:
    """Known answer: with a prior ``p``, lasso_auto is sklearn's Lasso of ``y - X p'`` (at the
    chosen penalty) plus ``p``; and when the truth is the prior plus a few large departures,
    it recovers the truth from fewer masks than plain lasso or ridge toward the prior."""
    X, Y, _, _ = make_problem(100, 10, 2, noise=0.3, seed=7, sparse=0.3)
    prior = torch.randn(2, 10, generator=torch.Generator().manual_seed(3), dtype=F64)
    train = SufficientStatistics.from_arrays(X[:75], Y[:75])
    val = SufficientStatistics.from_arrays(X[75:], Y[75:])
    fit = AutoLasso(prior=prior, rescale=False, tol=1e-10, max_iter=50000,
                    selection="global").fit(train, val)
    Xn = X.numpy().astype(float)
    residual = Y.numpy() - Xn @ prior.numpy().T
    ref = sklearn_linear.Lasso(alpha=float(fit.alpha), tol=1e-12, max_iter=100000).fit(
        Xn, residual)
    np.testing.assert_allclose(fit.coef.numpy(), ref.coef_ + prior.numpy(), atol=1e-6)
    np.testing.assert_allclose(fit.intercept.numpy(), ref.intercept_, atol=1e-6)
    assert fit.diagnostics["prior"] is True
    assert AutoLasso(prior=prior).describe()["prior"] == "tensor(2, 10)"
    # the truth = a dense prior (known up to scale) + 3 large departures per example, m < N
    N, n, m = 60, 4, 45
    g = torch.Generator().manual_seed(11)
    base = torch.randn(n, N, generator=g, dtype=F64)
    truth = base.clone()
    for j in range(n):
        truth[j, torch.randperm(N, generator=g)[:3]] += 4.0
    Xs, _, _, _ = make_problem(m + 15, N, 1, seed=12)
    Ys = Xs.to(F64) @ truth.T + 0.2 * torch.randn(m + 15, n, generator=g, dtype=F64)
    tr = SufficientStatistics.from_arrays(Xs[:m], Ys[:m])
    va = SufficientStatistics.from_arrays(Xs[m:], Ys[m:])
    errors = {name: float(((solver.fit(tr, va).coef - truth) ** 2).mean()) for name, solver in {
        "prior lasso": AutoLasso(prior=0.5 * base), "lasso": AutoLasso(),
        "prior ridge": AutoRidge(prior=0.5 * base)}.items()}
    assert errors["prior lasso"] < 0.5 * min(errors["lasso"], errors["prior ridge"]), errors


def test_prior_lasso_through_attribute_checks_the_prior_first(digits):
    model, components, x, y = digits
    counted = CountingForward(model)
    coar = ComponentAblationRegression(counted, components)
    with pytest.raises(ValueError, match=r"`prior` must be a tensor of shape \(5, 18\)"):
        coar.attribute(x, target=y, n_masks=40, validation_fraction=0.2,
                       solver=AutoLasso(prior=torch.zeros(4, 18)))
    with pytest.raises(ValueError, match=r"solver AutoLasso \('lasso_auto'\) refuses its arguments"
                       r".*validation_fraction > 0"):
        coar.attribute(x, target=y, n_masks=40, solver=AutoLasso(prior=torch.zeros(5, 18)))
    assert counted.calls == 0
    prior = torch.randn(5, 18, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = coar.attribute(x, target=y, n_masks=40, ablation_fraction=0.2, validation_fraction=0.2,
                         solver=AutoLasso(prior=prior))
    assert out.shape == (5, 18) and torch.isfinite(out).all()
    assert coar.last_result_.settings["solver"]["prior"] == "tensor(5, 18)"


def test_automatic_choices_are_deterministic_and_arguments_checked() -> None:
    X, Y, _, _ = make_problem(50, 20, 3, noise=1.0, seed=8)
    stats = SufficientStatistics.from_arrays(X, Y)
    a, b = AutoRidge().fit(stats), AutoRidge().fit(stats)
    assert torch.equal(a.alpha, b.alpha) and torch.equal(a.coef, b.coef)
    assert len(a.alphas) == 26  # 25 relative penalties and 0 (least squares is defined)
    with pytest.raises(ValueError, match=r"`AutoRidge criterion` must be one of"):
        AutoRidge(criterion="loo").fit(stats)
    with pytest.raises(ValueError, match=r"`prior` must be a tensor of shape \(3, 20\)"):
        AutoRidge(prior=torch.zeros(3, 19)).fit(stats)
    with pytest.raises(ValueError, match=r"`validation_stats` must be statistics"):
        AutoRidge(criterion="validation").fit(stats)


def test_difference_of_means_by_hand_and_unbiased_for_the_additive_target() -> None:
    X, Y, w, _ = make_problem(40, 6, 2, noise=0.1, seed=9, alpha=0.3)
    fit = resolve_solver("difference_of_means").fit(SufficientStatistics.from_arrays(X, Y))
    Xn, Yn = X.numpy(), Y.numpy()
    for i in range(6):
        want = Yn[Xn[:, i]].mean(0) - Yn[~Xn[:, i]].mean(0)
        np.testing.assert_allclose(fit.coef[:, i].numpy(), want, rtol=1e-10)
    # unbiased: averaged over 400 independent mask sets of 30 rows, within 4 standard errors
    draws = []
    for s in range(400):
        Xs, Ys, ws, _ = make_problem(30, 6, 2, seed=9, mask_seed=100 + s, alpha=0.3)
        draws.append(resolve_solver("msr").fit(SufficientStatistics.from_arrays(Xs, Ys)).coef)
    stack = torch.stack(draws)
    err = (stack.mean(0) - ws).abs() / (stack.std(0) / 20)
    assert float(err.max()) < 4.0
    # a component never ablated is not identified: coefficient 0, listed
    X[:, 2] = True
    fit = resolve_solver("msr").fit(SufficientStatistics.from_arrays(X, Y))
    assert fit.diagnostics["unidentified"] == [2] and bool((fit.coef[:, 2] == 0).all())
