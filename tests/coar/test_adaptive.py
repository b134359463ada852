"""Adaptive stopping: rounds, stopping reasons, resuming a store, statistics vs store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coar_fixtures import CountingForward, digits_cnn

from captum_coar.coar import ComponentAblationRegression, tensor_batches
from captum_coar.coar.adaptive import (
    StopWhen,
    collect_until,
    held_out_correlation,
    masks_for_share,
    predicted_share,
    relative_interval_width,
)
from captum_coar.sampling import BernoulliSampler
from captum_coar.selectors import conv_filters, linear_neurons
from captum_coar.solvers import LeastSquares, SufficientStatistics
from captum_coar.stores import InMemoryStore
from captum_coar.testing import AdditiveNet


def _additive(n=5):
    torch.manual_seed(0)  # the inputs drawn below
    model = AdditiveNet(n_in=6, n_hidden=12, n_classes=3, seed=0).double().eval()
    x = torch.randn(n, 6, dtype=torch.float64)
    y = torch.arange(n) % 3
    return model, linear_neurons(model, ["hidden"]), x, y


@pytest.fixture(scope="module")
def digits():
    model, x, y = digits_cnn()
    return model, conv_filters(model, ["conv1", "conv2"]), x[:4], y[:4]  # N = 18


def test_held_out_correlation_is_the_pearson_correlation_of_the_rows():
    g = torch.Generator().manual_seed(0)
    X = BernoulliSampler(0.3).sample(6, 0, 50, seed=2)
    Y = torch.randn(50, 3, generator=g, dtype=torch.float64)
    coef = torch.randn(3, 6, generator=g, dtype=torch.float64)
    got = held_out_correlation(SufficientStatistics.from_arrays(X, Y), coef)
    pred = X.double() @ coef.T
    want = [np.corrcoef(Y[:, j].numpy(), pred[:, j].numpy())[0, 1] for j in range(3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_relative_interval_width_by_hand():
    coef = torch.tensor([[3.0, -4.0], [1.0, 1.0]], dtype=torch.float64)
    se = torch.tensor([[1.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    z = 1.959963984540054
    want = ((2 * z * 1.0) / np.sqrt(12.5) + (2 * z * 0.5) / 1.0) / 2
    assert relative_interval_width(coef, se) == pytest.approx(want, rel=1e-9)


def test_additive_model_stops_after_the_first_round():
    model, components, x, y = _additive()
    coar = ComponentAblationRegression(model, components)
    # the first round needs m > N + 1 masks for the exact answer (12 components here)
    out = coar.attribute(x, target=y, output="logit", ablation_fraction=0.3,
                         stop_when=StopWhen(criterion="correlation", first_masks=24))
    report = coar.last_result_.settings["adaptive"]
    assert len(report["rounds"]) == 1 and report["reason"] == "converged"
    assert report["n_masks"] == 24 and report["n_validation"] == 100
    assert report["rounds"][0]["correlation"] == pytest.approx(1.0, abs=1e-9)
    # exactly additive: GCV picks no penalty (zero residual), the exact single effects
    torch.testing.assert_close(out, model.effects(x, y).detach(), rtol=1e-5, atol=1e-6)


def test_relative_width_rule_runs_to_the_cap_and_a_store_is_resumed_without_forwards(digits):
    model, components, x, y = digits
    data = tensor_batches(x, y)
    rule = StopWhen(criterion="relative_width", tol=1e-6, first_masks=40, max_masks=160,
                    n_validation=10)
    counting = CountingForward(model)
    coar = ComponentAblationRegression(counting, components)
    store = InMemoryStore()
    first, report = collect_until(coar, data, rule, "least_squares", store,
                                  ablation_fraction=0.3, seed=3)
    assert report.reason == "max_masks"
    assert [r["n_masks"] for r in report.rounds] == [40, 80, 160]
    assert store.n_masks == 170 and store.n_completed == 170
    rows = counting.rows
    assert rows >= 170 * 4  # every (mask, example) evaluated once, plus identity probes
    again, report2 = collect_until(coar, data, rule, "least_squares", store,
                                   ablation_fraction=0.3, seed=3)
    # the second run collects no mask row: only each collect call's identity probe (at most
    # 3 probe masks x 4 examples) and re-check of one stored row (4 examples), 4 calls
    # (held-out rows + 3 rounds), plus the preflight's probe (2 passes of 2 rows) per call
    assert counting.rows - rows <= 4 * (3 * 4 + 4 + 2 * 2)
    torch.testing.assert_close(again.attributions, first.attributions, rtol=0, atol=0)
    assert [r["correlation"] for r in report2.rounds] == [r["correlation"] for r in report.rounds]
    # the same fit as least squares on the first 160 rows of the store
    direct = coar.fit(store, solver=LeastSquares(), rows=(0, 160))
    torch.testing.assert_close(first.attributions, direct.attributions, rtol=1e-6, atol=1e-7)


def test_statistics_rounds_equal_store_rounds(digits):
    model, components, x, y = digits
    data = tensor_batches(x, y)
    rule = StopWhen(tol=0.05, first_masks=18, max_masks=72, n_validation=12)
    coar = ComponentAblationRegression(model, components)
    stats_result, stats_report = collect_until(coar, data, rule, "ridge_auto",
                                               ablation_fraction=0.1, seed=1)
    store_result, store_report = collect_until(coar, data, rule, "ridge_auto", InMemoryStore(),
                                               ablation_fraction=0.1, seed=1)
    assert stats_report.reason == store_report.reason
    assert [r["n_masks"] for r in stats_report.rounds] == [r["n_masks"] for r in
                                                           store_report.rounds]
    torch.testing.assert_close(stats_result.attributions, store_result.attributions,
                               rtol=1e-5, atol=1e-6)


def test_correlation_rule_stops_when_the_gain_falls_below_tol(digits):
    model, components, x, y = digits
    rule = StopWhen(criterion="correlation", tol=0.02, first_masks=18, growth=2.0,
                    max_masks=18 * 32, n_validation=40)
    coar = ComponentAblationRegression(model, components)
    _, report = collect_until(coar, tensor_batches(x, y), rule, "ridge_auto",
                              ablation_fraction=0.1, seed=0)
    corr = [r["correlation"] for r in report.rounds]
    ms = [r["n_masks"] for r in report.rounds]
    assert ms == [18 * 2 ** k for k in range(len(ms))]
    if report.reason == "converged":
        assert corr[-1] - corr[-2] < 0.02 or 1 - corr[-1] < 0.02
        assert all(b - a >= 0.02 for a, b in zip(corr[:-2], corr[1:-1]))
    else:
        assert ms[-1] == 18 * 32


def test_adaptive_arguments_are_checked_before_any_forward_pass(digits):
    model, components, x, y = digits
    counting = CountingForward(model)
    coar = ComponentAblationRegression(counting, components)
    with pytest.raises(ValueError, match=r"`n_masks` must be None or 'auto'"):
        coar.attribute(x, target=y, n_masks=100, stop_when=StopWhen())
    with pytest.raises(ValueError, match=r"`validation_fraction` must be 0 in adaptive mode"):
        coar.attribute(x, target=y, n_masks="auto", validation_fraction=0.2)
    with pytest.raises(TypeError, match=r"`stop_when` must be a StopWhen or None"):
        coar.attribute(x, target=y, stop_when={"tol": 0.1})
    with pytest.raises(ValueError, match=r"`stop_when.criterion` must be one of"):
        coar.attribute(x, target=y, stop_when=StopWhen(criterion="width"))
    with pytest.raises(ValueError, match=r"`stop_when.first_masks` must be <= max_masks"):
        coar.attribute(x, target=y, stop_when=StopWhen(first_masks=50, max_masks=20))
    assert counting.calls == 0


def test_predicted_share_and_the_masks_it_asks_for_by_hand():
    coef = torch.tensor([[3.0, -4.0], [1.0, 0.0]], dtype=torch.float64)
    se = torch.tensor([[1.0, 2.0], [0.5, 0.5]], dtype=torch.float64)  # V/S = 5/25 and 0.5/1
    share = predicted_share(coef, se)
    torch.testing.assert_close(share, torch.tensor([np.sqrt(25 / 30), np.sqrt(1 / 1.5)],
                                                   dtype=torch.float64))
    wanted = masks_for_share(100, coef, se, 0.9)
    # with V falling as 1 / m, the mean share at the returned m is the target
    at = ((1 / (1 + torch.tensor([0.2, 0.5], dtype=torch.float64) * 100 / wanted)).sqrt())
    assert float(at.mean()) == pytest.approx(0.9, abs=1e-9)
    assert masks_for_share(100, coef, torch.zeros_like(se), 0.9) == 100.0


def test_the_default_rule_stops_when_the_error_bars_predict_95_percent(digits):
    model, components, x, y = digits
    coar = ComponentAblationRegression(model, components)
    N = components.n_components
    coar.attribute(x, target=y, n_masks="auto", ablation_fraction=0.1, seed=2)
    result = coar.last_result_
    report = result.settings["adaptive"]
    shares = [r["predicted_share"] for r in report["rounds"]]
    ms = [r["n_masks"] for r in report["rounds"]]
    assert report["rule"]["criterion"] == "share" and report["n_validation"] == 0
    assert result.fit.solver == "eb_ridge" and result.settings["prior"]["method"]
    assert ms[0] == N and all(1.1 * a <= b + 1 <= 2 * a + 1 for a, b in zip(ms, ms[1:]))
    if report["reason"] == "converged":
        assert shares[-1] >= 0.95 and all(s < 0.95 for s in shares[:-1])
    assert all(r["correlation"] is None for r in report["rounds"])  # no held-out masks
