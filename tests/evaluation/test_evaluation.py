"""Known answers for the evaluation metrics: counterfactual correlation and top-k curves."""

import math
import warnings

import pytest
import torch
from coar_fixtures import CountingForward
from toy_models import ConvNet, randomise_batchnorm

from captum_coar import conv_filters, linear_neurons
from captum_coar.evaluation import (
    EVALUATION_SEED,
    counterfactual_correlation,
    pearson,
    spearman,
    topk_ablation_curve,
)
from captum_coar.testing import AdditiveNet


@pytest.fixture
def additive():
    torch.manual_seed(0)  # the inputs drawn below
    model = AdditiveNet(n_in=6, n_hidden=40, n_classes=3, seed=0).eval()
    x = torch.randn(24, 6)
    target = torch.arange(24) % 3
    components = linear_neurons(model, ["hidden"])
    with torch.no_grad():
        effects = model.effects(x, target)
    return model, components, x, target, effects


def test_true_effects_give_correlation_one_at_every_alpha(additive):
    model, components, x, target, effects = additive
    result = counterfactual_correlation(model, components, x, effects, target=target,
                                        output="logit", ablation="weights",
                                        ablation_fractions=(0.05, 0.1, 0.3, 0.6), n_masks=60)
    assert result.values.shape == (4, 1, 24)
    assert torch.allclose(result.values, torch.ones_like(result.values), atol=1e-6)
    assert result.mean().shape == (4, 1)
    assert result.seed == EVALUATION_SEED and result.n_masks == 60
    # The prediction without an intercept is exact on an additive model, not only correlated.
    assert torch.allclose(result.predicted[:, 0], result.actual, atol=1e-5)


def test_intercept_shifts_prediction_but_not_correlation(additive):
    model, components, x, target, effects = additive
    with torch.no_grad():
        full = model(x).gather(1, target[:, None]).squeeze(1)
    intercept = full - effects.sum(1) + 3.0
    result = counterfactual_correlation(model, components, x,
                                        {"pair": (effects, intercept), "plain": effects},
                                        target=target, output="logit", n_masks=40)
    assert torch.allclose(result.values[0, 0], result.values[0, 1], atol=1e-9)
    assert torch.allclose(result.predicted[0, 0] - result.predicted[0, 1],
                          torch.full((40, 24), 3.0, dtype=torch.float64), atol=1e-5)


def test_random_attributions_give_about_zero(additive):
    model, components, x, target, effects = additive
    g = torch.Generator().manual_seed(1)
    random = torch.randn(effects.shape, generator=g)
    result = counterfactual_correlation(model, components, x, {"random": random}, target=target,
                                        output="logit", ablation_fractions=(0.1, 0.3), n_masks=200)
    assert result.mean().abs().max() < 0.1
    assert (result.values.abs() < 0.5).float().mean() > 0.95


def test_masks_shared_between_methods(additive):
    model, components, x, target, effects = additive
    methods = {f"m{i}": effects + 0.1 * i * torch.randn_like(effects) for i in range(7)}

    def calls_for(attributions):
        counter = CountingForward(model)
        counterfactual_correlation(counter, components, x, attributions, target=target,
                                   output="logit", ablation_fractions=(0.05, 0.2), n_masks=50,
                                   perturbations_per_eval=10)
        return counter.calls

    one, seven = calls_for({"m0": methods["m0"]}), calls_for(methods)
    # the preflight's probe (2 passes), one unablated pass, then 50 masks / 10 per pass per alpha
    assert one == seven == 2 + 1 + 2 * 5


def test_results_independent_of_rows_per_pass(additive):
    model, components, x, target, effects = additive
    kwargs = dict(target=target, output="logit", ablation_fractions=0.2, n_masks=30)
    a = counterfactual_correlation(model, components, x, effects, perturbations_per_eval=1, **kwargs)
    b = counterfactual_correlation(model, components, x, effects, max_rows=10_000, **kwargs)
    assert torch.equal(a.masks, b.masks)
    assert torch.allclose(a.actual, b.actual, atol=1e-5)


def test_seed_guard_and_fresh_masks(additive):
    model, components, x, target, effects = additive
    kwargs = dict(target=target, output="logit", ablation_fractions=0.2, n_masks=20)
    with pytest.warns(UserWarning, match="fitted with"):
        counterfactual_correlation(model, components, x, effects, seed=0, fit_seeds=[0], **kwargs)

    class FitResult:  # what a COAR result reports
        attributions, intercept, seed = effects, None, 7

    with pytest.warns(UserWarning, match="in-sample"):
        counterfactual_correlation(model, components, x, {"coar": FitResult()}, seed=7, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r1 = counterfactual_correlation(model, components, x, {"coar": FitResult()}, **kwargs)
    r2 = counterfactual_correlation(model, components, x, effects, seed=1, **kwargs)
    assert not torch.equal(r1.masks, r2.masks)
    r3 = counterfactual_correlation(model, components, x, effects, seed=1, **kwargs)
    assert torch.equal(r2.masks, r3.masks) and torch.equal(r2.values, r3.values)


def test_spearman_option(additive):
    model, components, x, target, effects = additive
    # A monotone but non-linear output (exp of the logit): Spearman stays 1, Pearson drops.
    def output(model_output, t):
        return torch.exp(model_output.gather(1, t[:, None]).squeeze(1))
    kwargs = dict(target=target, output=output, ablation_fractions=0.3, n_masks=80)
    rho = counterfactual_correlation(model, components, x, effects, correlation="spearman", **kwargs)
    r = counterfactual_correlation(model, components, x, effects, **kwargs)
    assert torch.allclose(rho.values, torch.ones_like(rho.values), atol=1e-9)
    assert r.mean().item() < 0.999
    assert rho.correlation == "spearman" and "Spearman" in rho.to_table()


def test_correlation_functions():
    x = torch.tensor([[1.0], [2.0], [2.0], [5.0]])
    y = torch.tensor([[10.0], [20.0], [20.0], [21.0]])
    assert math.isclose(spearman(x, y).item(), 1.0, abs_tol=1e-12)
    assert pearson(x, torch.ones_like(x)).isnan().all()


def test_table_and_dict(additive):
    model, components, x, target, effects = additive
    result = counterfactual_correlation(model, components, x, {"true": effects, "zero": 0 * effects},
                                        target=target, output="logit",
                                        ablation_fractions=(0.05, 0.1), n_masks=10)
    table = result.to_table(run_times={"true": 1.5})
    assert table.splitlines()[0] == "| method | alpha=0.05 | alpha=0.1 | time (s) |"
    assert "| true | 1.000 ± 0.000 | 1.000 ± 0.000 | 1.5 |" in table
    assert str(result).startswith("| method |")
    assert result.per_example("true", 0.1).shape == (24,)
    assert set(result.means()[0.1]) == {"true", "zero"}
    assert result.to_dict()["n_masks"] == 10
    # Constant predictions (all-zero attributions) give an undefined correlation: NaN.
    assert result.per_example("zero").isnan().all()


def test_validation_messages(additive):
    model, components, x, target, effects = additive
    with pytest.raises(ValueError, match=r"expected \(batch, n_components\) = \(24, 40\)"):
        counterfactual_correlation(model, components, x, effects[:, :5], target=target)
    with pytest.raises(ValueError, match=r"`correlation` must be one of \['pearson', 'spearman'\]; got 'kendall'"):
        counterfactual_correlation(model, components, x, effects, target=target, correlation="kendall")
    with pytest.raises(ValueError, match="ablation_fractions"):
        counterfactual_correlation(model, components, x, effects, target=target, ablation_fractions=1.5)
    with pytest.raises(ValueError, match=r"`ks` must be integers in \[0, 40\]; got \[0, 41\]"):
        topk_ablation_curve(model, components, x, effects, target=target, ks=[0, 41])


def test_topk_curve_equals_analytic_sum_of_removed_effects(additive):
    model, components, x, target, effects = additive
    ks = [0, 1, 2, 5, 10, 40]
    for largest in (True, False):
        curve = topk_ablation_curve(model, components, x, {"true": effects}, target=target,
                                    output="logit", ks=ks, largest=largest, max_rows=100)
        with torch.no_grad():
            full = model(x).gather(1, target[:, None]).squeeze(1).double()
        removed = effects.double().sort(dim=1, descending=largest).values.cumsum(1)
        for i, k in enumerate(ks):
            expected = full - (removed[:, k - 1] if k else 0.0)
            assert torch.allclose(curve.outputs[0, i], expected, atol=1e-5)
    assert curve.outputs.shape == (1, len(ks), 24)
    assert curve.auc().shape == (1, 24)
    head, _, row = curve.to_table().splitlines()
    assert head.endswith("| mean along curve |") and "AUC" not in head
    x = torch.tensor(ks, dtype=torch.float64) / components.n_components  # the mean by hand
    by_hand = torch.trapezoid(curve.outputs[0].double().mean(-1), x) / (x[-1] - x[0])
    assert row.endswith(f"| {float(by_hand):.3f} |")


def test_topk_true_effects_beat_random_and_default_grid():
    torch.manual_seed(0)
    model = randomise_batchnorm(ConvNet())
    components = conv_filters(model, ["conv1", "conv2"])
    x, target = torch.randn(6, 1, 8, 8), torch.arange(6) % 10
    curve = topk_ablation_curve(model, components, x, {"a": torch.randn(6, 24)}, target=target,
                                max_fraction=0.5, n_steps=5)
    assert curve.ks.tolist() == [0, 3, 6, 9, 12]
    assert torch.isfinite(curve.outputs).all()
    assert torch.allclose(curve.fractions, torch.tensor([0, 0.125, 0.25, 0.375, 0.5], dtype=torch.float64))


def test_convnet_scores_are_reasonable_and_parameters_unchanged():
    from toy_models import assert_unchanged, hook_count, snapshot

    torch.manual_seed(0)
    model = randomise_batchnorm(ConvNet())
    components = conv_filters(model, ["conv1", "conv2"])
    x, target = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    before = snapshot(model)
    result = counterfactual_correlation(model, components, x, {"r": torch.randn(4, 24)},
                                        target=target, ablation_fractions=0.1, n_masks=20)
    assert result.values.shape == (1, 1, 4)
    assert_unchanged(model, before)
    assert hook_count(model) == 0


@pytest.mark.cuda
def test_cuda_model_matches_cpu(additive):
    model, components, x, target, effects = additive
    kwargs = dict(target=target, output="logit", ablation_fractions=0.2, n_masks=30)
    cpu = counterfactual_correlation(model, components, x, {"e": effects}, **kwargs)
    curve_cpu = topk_ablation_curve(model, components, x, effects, target=target, output="logit")
    model.cuda()
    try:
        gpu = counterfactual_correlation(model, components, x.cuda(), {"e": effects.cuda()},
                                         **{**kwargs, "target": target.cuda()})
        curve_gpu = topk_ablation_curve(model, components, x.cuda(), effects.cuda(),
                                        target=target.cuda(), output="logit")
    finally:
        model.cpu()
    assert torch.allclose(cpu.values, gpu.values, atol=1e-5)
    assert torch.allclose(curve_cpu.outputs, curve_gpu.outputs, atol=1e-4)
