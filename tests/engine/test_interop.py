"""Captum's own methods and metrics over components, through the gated forward."""

from __future__ import annotations

import pytest
import torch
from captum._utils.models.linear_model import SkLearnLinearRegression
from captum.attr import (
    FeatureAblation,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    Lime,
    NoiseTunnel,
    ShapleyValueSampling,
)
from captum.metrics import infidelity, sensitivity_max
from toy_models import ConvNet, hook_count, randomise_batchnorm

from captum_coar.baselines import (
    ComponentAblation,
    ComponentAttributionPatching,
    ComponentConductance,
    ComponentIntegratedGradients,
)
from captum_coar.coar import ComponentAblationRegression
from captum_coar.gates import ablated
from captum_coar.interop import GatedForward, ablation_perturbation
from captum_coar.outputs import resolve_output
from captum_coar.selectors import conv_filters, linear_neurons
from captum_coar.testing import AdditiveNet


@pytest.fixture
def additive():
    torch.manual_seed(3)  # the inputs drawn below
    model = AdditiveNet(n_in=6, n_hidden=12, n_classes=3, seed=3).eval()
    x = torch.randn(4, 6)
    target = torch.tensor([0, 1, 2, 0])
    components = linear_neurons(model, ["hidden"])
    return model, components, x, target, model.effects(x, target).detach()


@pytest.fixture
def convnet():
    torch.manual_seed(1)
    model = randomise_batchnorm(ConvNet())
    return model, conv_filters(model), torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])


# ----------------------------------------------------------------------------- gated forward
def test_gated_forward_matches_model_and_ablated_forwards(convnet):
    model, components, x, target = convnet
    raw = GatedForward(model, components)
    with torch.no_grad():
        torch.testing.assert_close(raw(raw.kept(3), x), model(x), atol=1e-6, rtol=1e-5)
        keep = torch.rand(components.n_components) > 0.5
        with ablated(components, keep):
            expected = model(x)
        gates = keep.float().expand(3, -1)
        torch.testing.assert_close(raw(gates, x), expected, atol=1e-6, rtol=1e-5)
        margin = GatedForward(model, components, output="margin")
        torch.testing.assert_close(margin(gates, x, target),
                                   resolve_output("margin", target)(expected, target))
    assert hook_count(model) == 0


def test_gated_forward_row_matching(convnet):
    model, components, x, target = convnet
    gated = GatedForward(model, components, output="margin")
    n = components.n_components
    g1, g2 = torch.ones(3, n), (torch.rand(3, n) > 0.3).float()
    with torch.no_grad():
        separate = torch.cat([gated(g1, x, target), gated(g2, x, target)])
        # gate rows a multiple of the input rows: inputs and target repeated block-wise
        torch.testing.assert_close(gated(torch.cat([g1, g2]), x, target), separate)
        # one gate row for every input row; one input row for every gate row
        torch.testing.assert_close(gated(g2[:1], x, target), gated(g2[:1].expand(3, -1), x, target))
        one = gated(g2, x[:1], target[:1])
        torch.testing.assert_close(one[1], gated(g2[1:2], x[:1], target[:1])[0])
    with pytest.raises(ValueError, match="cannot be matched"):
        gated(torch.ones(4, n), x, target)
    with pytest.raises(ValueError, match="gates must have shape"):
        gated(torch.ones(3, n + 1), x, target)
    with pytest.raises(ValueError, match="target"):
        GatedForward(model, components).forward_args(x, target)


# ----------------------------------------------------------------------------- Captum methods
def test_feature_ablation_is_leave_one_out(convnet):
    model, components, x, target = convnet
    gated = GatedForward(model, components, output="margin")
    args = gated.forward_args(x, target)
    loo = ComponentAblation(model, components).attribute(x, target=target, perturbations_per_eval=1)
    fa = FeatureAblation(gated).attribute(gated.kept(3), baselines=0.0, additional_forward_args=args)
    assert torch.equal(fa, loo)
    fa4 = FeatureAblation(gated).attribute(gated.kept(3), baselines=0.0, additional_forward_args=args,
                                           perturbations_per_eval=4)
    torch.testing.assert_close(fa4, loo, atol=1e-6, rtol=1e-5)


def test_captum_integrated_gradients_is_gate_integrated_gradients(convnet):
    model, components, x, target = convnet
    gated = GatedForward(model, components, output="margin")
    ours = ComponentIntegratedGradients(model, components).attribute(x, target=target, n_steps=16)
    theirs = IntegratedGradients(gated).attribute(
        gated.kept(3), baselines=0.0, additional_forward_args=gated.forward_args(x, target),
        n_steps=16)
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-6, rtol=1e-4)
    # Captum's target selection works on the raw gated forward as well
    raw = GatedForward(model, components)
    logit_ig = IntegratedGradients(raw).attribute(raw.kept(3), target=target,
                                                  additional_forward_args=raw.forward_args(x),
                                                  n_steps=16)
    ours_logit = ComponentIntegratedGradients(model, components).attribute(
        x, target=target, n_steps=16, output="logit")
    torch.testing.assert_close(ours_logit, logit_ig.detach(), atol=1e-6, rtol=1e-4)


def test_input_x_gradient_at_kept_gates_is_attribution_patching(convnet):
    model, components, x, target = convnet
    gated = GatedForward(model, components, output="margin")
    ixg = InputXGradient(gated).attribute(gated.kept(3).requires_grad_(),
                                          additional_forward_args=gated.forward_args(x, target))
    atp = ComponentAttributionPatching(model, components).attribute(x, target=target)
    torch.testing.assert_close(atp, ixg.detach(), atol=1e-6, rtol=1e-5)


def test_shapley_kernel_shap_lime_and_noise_tunnel_over_components(additive):
    model, components, x, target, truth = additive
    gated = GatedForward(model, components, output="logit")
    args = gated.forward_args(x, target)
    shapley = ShapleyValueSampling(gated).attribute(gated.kept(4), baselines=0.0,
                                                    additional_forward_args=args, n_samples=3)
    torch.testing.assert_close(shapley, truth, atol=2e-6, rtol=1e-5)  # additive: exact
    one = gated.forward_args(x[:1], target[:1])
    kernel = KernelShap(gated).attribute(gated.kept(1), baselines=0.0, additional_forward_args=one,
                                         n_samples=150)
    torch.testing.assert_close(kernel, truth[:1], atol=1e-4, rtol=1e-3)
    # binary perturbations of an additive model: an unpenalised linear surrogate is exact
    lime = Lime(gated, interpretable_model=SkLearnLinearRegression()).attribute(
        gated.kept(1), baselines=0.0, additional_forward_args=one, n_samples=60)
    torch.testing.assert_close(lime, truth[:1], atol=1e-5, rtol=1e-4)
    # the gated forward is linear, so IG at gates 1 + noise is truth * (1 + noise): the smoothed
    # value is truth times the mean of three draws of 1 + N(0, 0.05^2)
    smooth = NoiseTunnel(IntegratedGradients(gated)).attribute(
        gated.kept(4), nt_samples=3, stdevs=0.05, baselines=0.0, additional_forward_args=args,
        n_steps=8)
    assert smooth.shape == (4, components.n_components)
    assert torch.all((smooth - truth).abs() <= 0.25 * truth.abs() + 1e-6)
    assert hook_count(model) == 0


# ----------------------------------------------------------------------------- metrics
def test_ablation_perturbation_draws_reproducible_alpha_subsets():
    gates = torch.ones(400, 50)
    a_pert, a_gates = ablation_perturbation(0.1, seed=4)(gates)
    b_pert, b_gates = ablation_perturbation(0.1, seed=4)(gates)
    assert torch.equal(a_gates, b_gates) and torch.equal(a_pert, b_pert)
    assert torch.equal(a_pert + a_gates, gates)
    assert set(a_gates.unique().tolist()) <= {0.0, 1.0}
    assert abs((1 - a_gates).mean().item() - 0.1) < 0.01
    perturb = ablation_perturbation(0.2, sampler="fixed", seed=0)
    first, second = perturb(gates[:3])[1], perturb(gates[:3])[1]
    assert torch.all((1 - first).sum(dim=1) == 10) and not torch.equal(first, second)
    _, with_baseline = perturb(gates[:2], torch.full((2, 50), 0.5))
    assert set(with_baseline.unique().tolist()) == {0.5, 1.0}


def test_infidelity_is_zero_for_exact_effects_on_an_additive_model(additive):
    model, components, x, target, truth = additive
    gated = GatedForward(model, components, output="logit")
    args = gated.forward_args(x, target)
    exact = infidelity(gated, ablation_perturbation(0.3), gated.kept(4), truth,
                       additional_forward_args=args, n_perturb_samples=20)
    wrong = infidelity(gated, ablation_perturbation(0.3), gated.kept(4), truth.flip(1),
                       additional_forward_args=args, n_perturb_samples=20)
    assert exact.max() < 1e-10
    assert wrong.min() > 1e3 * exact.max()


def test_infidelity_and_sensitivity_of_coar_leave_one_out_and_conductance(convnet):
    model, components, x, target = convnet
    gated = GatedForward(model, components, output="margin")
    coar = ComponentAblationRegression(model, components)
    methods = {
        "coar": (coar, dict(n_masks=60, ablation_fraction=0.1, solver="ridge")),
        "leave_one_out": (ComponentAblation(model, components), {}),
        "conductance": (ComponentConductance(model, components), dict(n_steps=8)),
    }
    for name, (method, kwargs) in methods.items():
        attributions = method.attribute(x, target=target, **kwargs).detach().float()
        score = infidelity(gated, ablation_perturbation(0.1, seed=1), gated.kept(3), attributions,
                           additional_forward_args=gated.forward_args(x, target),
                           n_perturb_samples=8)
        assert score.shape == (3,) and torch.isfinite(score).all(), name
        sens = sensitivity_max(method.attribute, x, target=target,
                               n_perturb_samples=2, perturb_radius=0.01, **kwargs)
        assert sens.shape == (3,) and torch.isfinite(sens).all() and (sens >= 0).all(), name
    assert hook_count(model) == 0
