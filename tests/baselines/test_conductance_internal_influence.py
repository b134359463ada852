"""Conductance and internal influence over components against Captum's layer methods."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InternalInfluence, LayerConductance
from toy_models import assert_close

from captum_coar.baselines import ComponentConductance, ComponentInternalInfluence
from captum_coar.components import ComponentGroup, ComponentSet
from captum_coar.selectors import attention_heads


def reduce_layer(attr: torch.Tensor, group: ComponentGroup) -> torch.Tensor:
    """Sum a Captum layer attribution within each component (written independently)."""
    attr = attr.detach()
    if group.kind == "filter":
        return attr.sum(dim=tuple(range(2, attr.dim())))
    if group.kind == "head":
        b, t, d = attr.shape
        return attr.reshape(b, t, group.n_units, group.unit_size).sum(dim=(1, 3))
    return attr.reshape(attr.shape[0], -1, group.n_units).sum(dim=1)


def captum_per_layer(captum_cls, model, components, x, **kwargs) -> torch.Tensor:
    columns = []
    for group in components.groups:
        method = captum_cls(model, components.module(group))
        attr = method.attribute(x, attribute_to_layer_input=group.site == "input", **kwargs)
        columns.append(reduce_layer(attr, group))
    return torch.cat(columns, dim=1)


# ----------------------------------------------------------------------------- conductance
@pytest.mark.parametrize("method,n_steps", [("gausslegendre", 20), ("riemann_trapezoid", 16)])
def test_conductance_matches_captum_layer_by_layer_on_cnn(convnet, method, n_steps):
    model, components, x, target = convnet
    ours = ComponentConductance(model, components).attribute(
        x, target=target, n_steps=n_steps, method=method, output="logit")
    reference = captum_per_layer(LayerConductance, model, components, x, target=target,
                                 n_steps=n_steps, method=method)
    assert ours.shape == (4, components.n_components)
    assert_close(ours, reference)


def test_conductance_matches_captum_on_attention_heads(attention):
    model, x, target = attention
    heads = attention_heads(model)
    ours = ComponentConductance(model, heads).attribute(x, target=target, n_steps=25, output="logit")
    lc = LayerConductance(model, model.attn.proj).attribute(
        x, target=target, n_steps=25, attribute_to_layer_input=True)
    assert_close(ours, reduce_layer(lc, heads.groups[0]))


def test_conductance_all_groups_of_a_transformer_in_one_pass(attention):
    model, x, target = attention
    components = ComponentSet.from_model(model)  # neurons of every Linear + heads
    ours = ComponentConductance(model, components).attribute(x, target=target, n_steps=10,
                                                             output="logit")
    reference = captum_per_layer(LayerConductance, model, components, x, target=target, n_steps=10)
    assert_close(ours, reference)


def test_conductance_convergence_delta(convnet):
    model, components, x, target = convnet
    attr, delta = ComponentConductance(model, components).attribute(
        x, target=target, n_steps=50, output="logit", return_convergence_delta=True)
    assert delta.shape == (4, len(components.groups))
    logits = model(x).gather(1, target[:, None]).squeeze(1) - model(torch.zeros_like(x)).gather(
        1, target[:, None]).squeeze(1)
    assert delta.abs().max() < 0.05 * logits.abs().max()
    # the same delta as Captum's own, layer by layer
    for position, group in enumerate(components.groups):
        _, captum_delta = LayerConductance(model, components.module(group)).attribute(
            x, target=target, n_steps=50, return_convergence_delta=True)
        torch.testing.assert_close(delta[:, position], captum_delta.detach(), atol=2e-6, rtol=1e-3)


@pytest.mark.parametrize("internal_batch_size", [4, 12, 29])
def test_conductance_internal_batch_size_does_not_change_results(convnet, internal_batch_size):
    model, components, x, target = convnet
    method = ComponentConductance(model, components)
    full = method.attribute(x, target=target, n_steps=10)
    chunked = method.attribute(x, target=target, n_steps=10, internal_batch_size=internal_batch_size)
    assert_close(chunked, full)


def test_conductance_with_baselines_and_additional_args(attention):
    model, x, target = attention

    def forward(tokens, scale):
        return model(tokens * scale)

    heads = attention_heads(model)
    baseline = torch.randn(1, 6, 3)
    scale = torch.full((3, 1, 1), 0.5)
    ours = ComponentConductance(forward, heads).attribute(
        x, baselines=baseline, target=target, additional_forward_args=(scale,), n_steps=12,
        output="logit")
    lc = LayerConductance(forward, model.attn.proj).attribute(
        x, baselines=baseline, target=target, additional_forward_args=(scale,), n_steps=12,
        attribute_to_layer_input=True)
    assert_close(ours, reduce_layer(lc, heads.groups[0]))


# ----------------------------------------------------------------------------- internal influence
def test_internal_influence_matches_captum(convnet, attention):
    model, components, x, target = convnet
    ours = ComponentInternalInfluence(model, components).attribute(
        x, target=target, n_steps=15, output="logit", internal_batch_size=20)
    reference = captum_per_layer(InternalInfluence, model, components, x, target=target, n_steps=15)
    assert_close(ours, reference)
    model, x, target = attention
    heads = attention_heads(model)
    ours = ComponentInternalInfluence(model, heads).attribute(x, target=target, n_steps=15,
                                                              output="logit")
    reference = captum_per_layer(InternalInfluence, model, heads, x, target=target, n_steps=15)
    assert_close(ours, reference)
