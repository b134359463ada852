"""Component baselines: known answers, agreement with Captum, completeness, hygiene."""

from __future__ import annotations

import pytest
import torch
from captum.attr import FeatureAblation, NoiseTunnel
from toy_models import (
    AttentionClassifier,
    assert_close,
    assert_unchanged,
    hook_count,
    snapshot,
)

from captum_coar.baselines import (
    ComponentAblation,
    ComponentAttributionPatching,
    ComponentConductance,
    ComponentGradientXParameter,
    ComponentIntegratedGradients,
    ComponentInternalInfluence,
)
from captum_coar.components import ComponentGroup, ComponentSet
from captum_coar.edits import _weight_index, zero_components
from captum_coar.gates import ablated
from captum_coar.interop import GatedForward
from captum_coar.outputs import resolve_output
from captum_coar.selectors import attention_heads, linear_neurons

ALL_METHODS = [ComponentAblation, ComponentAttributionPatching, ComponentIntegratedGradients,
               ComponentGradientXParameter, ComponentConductance, ComponentInternalInfluence]


# ----------------------------------------------------------------------------- leave-one-out
def test_leave_one_out_equals_feature_ablation_on_gated_forward_exactly(convnet):
    model, components, x, target = convnet
    loo = ComponentAblation(model, components).attribute(x, target=target, perturbations_per_eval=1)
    gated = GatedForward(model, components, output="margin")
    fa = FeatureAblation(gated).attribute(gated.kept(4), baselines=0.0,
                                          additional_forward_args=gated.forward_args(x, target),
                                          perturbations_per_eval=1)
    assert torch.equal(loo, fa)
    batched = ComponentAblation(model, components).attribute(x, target=target,
                                                             perturbations_per_eval=7)
    assert_close(batched, loo, rtol=1e-5)


def test_leave_one_out_equals_separate_ablated_forwards(convnet):
    model, components, x, target = convnet
    margin = resolve_output("margin", target)
    loo = ComponentAblation(model, components).attribute(x, target=target)
    with torch.no_grad():
        full = margin(model(x), target)
        for c in range(0, components.n_components, 5):
            keep = torch.ones(components.n_components, dtype=torch.bool)
            keep[c] = False
            with ablated(components, keep):
                effect = full - margin(model(x), target)
            torch.testing.assert_close(loo[:, c], effect, atol=1e-5, rtol=1e-5)


def test_leave_one_out_progress_and_validation(convnet):
    model, components, x, target = convnet
    method = ComponentAblation(model, components)
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        method.attribute(x, target=target, perturbations_per_eval=0)
    shown = method.attribute(x, target=target, show_progress=True, max_rows=40)
    assert_close(shown, method.attribute(x, target=target))


# ----------------------------------------------------------------------------- exact additivity
def test_additive_model_every_ablation_method_gives_the_true_effects(additive):
    from captum_coar.coar import ComponentAblationRegression

    model, components, x, target = additive
    truth = model.effects(x, target).detach()
    results = {
        "leave_one_out": ComponentAblation(model, components).attribute(x, target=target,
                                                                        output="logit"),
        "attribution_patching": ComponentAttributionPatching(model, components).attribute(
            x, target=target, output="logit"),
        "integrated_gradients": ComponentIntegratedGradients(model, components).attribute(
            x, target=target, output="logit", n_steps=8),
        "gradient_x_parameter": ComponentGradientXParameter(model, components).attribute(
            x, target=target, output="logit"),
        "coar": ComponentAblationRegression(model, components, ablation="weights").attribute(
            x, target=target, output="logit", n_masks=120, ablation_fraction=0.3),
    }
    for name, attr in results.items():
        assert attr.shape == truth.shape, name
        torch.testing.assert_close(attr.detach().float(), truth, atol=2e-6, rtol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_additive_model_with_fitted_ablations(additive):
    from captum_coar.ablation import MeanAblation, ResampleAblation

    model, components, x, target = additive
    reference = torch.randn(7, 6)
    hidden_mean = model.hidden(reference).mean(dim=0).detach()
    mean_effects = (model.readout.weight[target] * (model.hidden(x) - hidden_mean)).detach()
    for strategy, truth in [(MeanAblation(reference), mean_effects),
                            (ResampleAblation(reference, seed=1), None)]:
        results = [cls(model, components, strategy).attribute(x, target=target, output="logit")
                   for cls in (ComponentAblation, ComponentAttributionPatching,
                               ComponentIntegratedGradients)]
        truth = results[0] if truth is None else truth
        for attr in results:
            torch.testing.assert_close(attr, truth, atol=2e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- gate IG
@pytest.mark.parametrize("output", ["logit", "log_prob"])
def test_gate_integrated_gradients_completeness(attention, output):
    model, x, target = attention
    components = ComponentSet.from_model(model)
    attr, delta = ComponentIntegratedGradients(model, components).attribute(
        x, target=target, output=output, n_steps=50, return_convergence_delta=True)
    change = attr.sum(dim=1) - delta
    gated = GatedForward(model, components, output=output)
    with torch.no_grad():
        truth = (gated(gated.kept(3), x, target)
                 - gated(torch.zeros(3, components.n_components), x, target))
    torch.testing.assert_close(change, truth, atol=1e-6, rtol=1e-5)
    assert (attr.sum(dim=1) - truth).abs().max() <= 1e-3 * truth.abs().max()


def test_gate_integrated_gradients_baselines_and_chunks(convnet):
    model, components, x, target = convnet
    method = ComponentIntegratedGradients(model, components)
    full = method.attribute(x, target=target, n_steps=12)
    assert_close(method.attribute(x, target=target, n_steps=12, internal_batch_size=8), full)
    # gates that start at 1 have nothing to integrate
    start = torch.zeros(components.n_components)
    start[:5] = 1.0
    partial = method.attribute(x, target=target, n_steps=12, gate_baselines=start)
    assert torch.all(partial[:, :5] == 0)
    with pytest.raises(ValueError, match="starting gate values"):
        method.attribute(x, target=target, gate_baselines=torch.zeros(3))
    # the old meaning of baselines= (a gate value) still works, with a deprecation warning
    with pytest.warns(DeprecationWarning, match="gate_baselines"):
        old = method.attribute(x, target=target, n_steps=12, baselines=start)
    assert_close(old, partial)


# ----------------------------------------------------------------------------- grad x param
def direct_gradient_x_parameter(model, components, x, target, output):
    """<dF/dW_c, W_c> with true per-example parameter gradients (one backward per example)."""
    output_fn = resolve_output(output, target)
    rows = []
    for i in range(x.shape[0]):
        value = output_fn(model(x[i:i + 1]), target[i:i + 1]).sum()
        modules = [components.module(g) for g in components.groups]
        grads = torch.autograd.grad(value, [m.weight for m in modules])
        row = []
        for group, module, grad in zip(components.groups, modules, grads):
            for unit in range(group.n_units):
                index = _weight_index(group, module, unit)
                row.append((grad[index] * module.weight.detach()[index]).sum())
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_gradient_x_parameter_equals_parameter_gradients(convnet, attention):
    model, components, x, target = convnet
    ours = ComponentGradientXParameter(model, components).attribute(x, target=target)
    assert_close(ours, direct_gradient_x_parameter(model, components, x, target, "margin"))
    atp = ComponentAttributionPatching(model, components, "weights").attribute(x, target=target)
    assert_close(atp, ours)
    model, x, target = attention
    heads = attention_heads(model) + linear_neurons(model, ["mlp.0"])
    ours = ComponentGradientXParameter(model, heads).attribute(x, target=target, output="logit",
                                                               internal_batch_size=2)
    assert_close(ours, direct_gradient_x_parameter(model, heads, x, target, "logit"))


def test_gradient_x_parameter_on_gpt2_conv1d_layouts():
    pytest.importorskip("transformers")
    from toy_models import tiny_gpt2

    from captum_coar.outputs import SequenceMargin

    model = tiny_gpt2(n_embd=16)
    components = attention_heads(model) + linear_neurons(model, ["transformer.h.1.mlp.c_fc"])
    ids = torch.randint(0, 50, (2, 8))
    ours = ComponentGradientXParameter(model, components).attribute(ids, target=ids,
                                                                    output=SequenceMargin())
    direct = direct_gradient_x_parameter(model, components, ids, ids, SequenceMargin())
    assert_close(ours, direct)
    loo = ComponentAblation(model, components).attribute(ids, target=ids, output=SequenceMargin())
    assert loo.shape == ours.shape
    # leave-one-out through the gates equals zeroing the Conv1D weight slices (heads: rows of
    # c_proj's [in, out] weight; neurons: columns of c_fc's)
    with torch.no_grad():
        full = SequenceMargin()(model(ids), ids)
        for c in (0, 3, components.n_components - 1):
            keep = torch.ones(components.n_components, dtype=torch.bool)
            keep[c] = False
            with zero_components(components, keep):
                edited = SequenceMargin()(model(ids), ids)
            torch.testing.assert_close(loo[:, c], full - edited, atol=1e-5, rtol=1e-4)


def test_gradient_x_parameter_rejects_components_without_weights(convnet):
    model, _, x, target = convnet
    channels = ComponentSet(model, [ComponentGroup("bn1", "channel", 8, unit_axis=1)])
    with pytest.raises(TypeError, match="weight-based"):
        ComponentGradientXParameter(model, channels).attribute(x, target=target)


# ----------------------------------------------------------------------------- shared contract
@pytest.mark.parametrize("cls", ALL_METHODS)
def test_hooks_removed_and_parameters_untouched(cls, convnet):
    model, components, x, target = convnet
    before, hooks = snapshot(model), hook_count(model)
    method = cls(model, components)
    attr = method.attribute(x, target=target)
    assert attr.shape == (4, components.n_components)
    assert torch.isfinite(attr).all()
    assert hook_count(model) == hooks
    assert_unchanged(model, before)

    def failing(inputs):
        model(inputs)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cls(failing, components).attribute(x, target=target)
    assert hook_count(model) == hooks
    assert_unchanged(model, before)


@pytest.mark.parametrize("cls", [ComponentAblation, ComponentAttributionPatching,
                                 ComponentIntegratedGradients, ComponentConductance])
def test_multihead_attention_patch_is_removed(cls):
    model = AttentionClassifier(torch_mha=True).eval()
    heads = attention_heads(model)
    x = torch.randn(2, 5, 3)
    attr = cls(model, heads).attribute(x, target=torch.tensor([0, 1]))
    assert attr.shape == (2, 4) and torch.isfinite(attr).all()
    assert "forward" not in model.attn.__dict__
    assert hook_count(model) == 0


@pytest.mark.parametrize("cls", ALL_METHODS)
def test_tuple_in_tuple_out(cls, attention):
    model, x, target = attention

    def forward(tokens, shift):
        return model(tokens + shift)

    heads = attention_heads(model)
    shift = torch.zeros(1, 6, 3)
    single = cls(forward, heads).attribute(x, target=target, additional_forward_args=(shift,))
    as_tuple = cls(forward, heads).attribute((x,), target=target, additional_forward_args=(shift,))
    assert isinstance(single, torch.Tensor) and isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert_close(as_tuple[0], single)
    if cls in (ComponentConductance, ComponentIntegratedGradients):
        attr, delta = cls(forward, heads).attribute((x,), target=target, n_steps=5,
                                                    additional_forward_args=(shift,),
                                                    return_convergence_delta=True)
        assert isinstance(attr, tuple) and delta.shape[0] == 3


def test_output_option_is_shared_with_coar(convnet):
    model, components, x, target = convnet
    method = ComponentAttributionPatching(model, components)
    default = method.attribute(x, target=target)
    assert torch.equal(default, method.attribute(x, target=target, output="margin"))
    logit = method.attribute(x, target=target, output="logit")
    assert not torch.allclose(default, logit)

    def doubled_logit(model_output, tgt):
        return 2 * model_output.gather(1, tgt[:, None]).squeeze(1)

    assert_close(method.attribute(x, target=target, output=doubled_logit), 2 * logit)


def test_validation_messages(convnet):
    model, components, x, target = convnet
    with pytest.raises(ValueError, match="n_steps"):
        ComponentConductance(model, components).attribute(x, target=target, n_steps=0)
    with pytest.raises(ValueError, match="method='simpson'"):
        ComponentInternalInfluence(model, components).attribute(x, target=target, method="simpson")
    with pytest.raises(ValueError, match="baseline 0 has shape"):
        ComponentConductance(model, components).attribute(x, baselines=torch.zeros(2, 1, 4, 4))
    with pytest.raises(TypeError, match="floating point"):
        ComponentConductance(model, components).attribute(x.long(), target=target)
    with pytest.raises(TypeError, match="ComponentSet"):
        ComponentAblation(model, components.groups).attribute(x, target=target)
    with pytest.raises(ValueError, match=r"`ablation` must be one of .*; got 'median'"):
        ComponentAblation(model, components, ablation="median").attribute(x, target=target)


def test_methods_run_inside_noise_tunnel(convnet):
    model, components, x, target = convnet
    for cls in (ComponentAttributionPatching, ComponentConductance):
        smoothed = NoiseTunnel(cls(model, components)).attribute(
            x, nt_samples=3, stdevs=0.1, target=target)
        assert smoothed.shape == (4, components.n_components)
        assert torch.isfinite(smoothed).all()
        # without noise, the smoothed attributions (run under torch.no_grad) are the plain ones
        noiseless = NoiseTunnel(cls(model, components)).attribute(
            x, nt_samples=3, stdevs=0.0, target=target)
        assert_close(noiseless, cls(model, components).attribute(x, target=target))
