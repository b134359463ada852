"""The engine's fast paths: in-place gating, lerp exactness, the device-dependent row budget."""

import pytest
import torch
from torch import nn
from toy_models import ConvNet, randomise_batchnorm

from captum_coar import ComponentGroup, ComponentSet, ablated, conv_filters, linear_neurons
from captum_coar._engine import default_max_rows, gated_outputs, rows_per_pass
from captum_coar.ablation import ConstantAblation
from captum_coar.engine import evaluate_masks
from captum_coar.gates import ComponentGates
from captum_coar.outputs import resolve_output
from captum_coar.recording import ActivationRecorder


def _setup():
    model = randomise_batchnorm(ConvNet()).eval()
    components = ComponentSet(model, conv_filters(model, ["conv1", "conv2"]).groups
                              + linear_neurons(model, ["fc1"]).groups)
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, components.n_components, generator=g) > 0.3
    return model, components, torch.randn(3, 1, 8, 8, generator=g), masks


def test_in_place_path_matches_autograd_path():
    """No-grad outputs (gated in place) equal the outputs computed with gates requiring grad."""
    model, components, x, masks = _setup()
    fast = evaluate_masks(model, components, x, masks, output="logit", target=1)
    gates = masks.float().requires_grad_(True)
    with ComponentGates(components, "weights") as hooks:
        slow = gated_outputs(model, hooks, (x,), (), gates, 1, resolve_output("logit", 1))
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=1e-6)
    slow.sum().backward()
    assert gates.grad is not None and gates.grad.abs().sum() > 0


def test_kept_components_are_bit_identical_with_a_bias_replacement():
    """lerp gives exactly the activation at g = 1 (conv1 and fc1 have biases)."""
    model, components, x, _ = _setup()
    with torch.no_grad():
        plain = model(x)
        with ablated(components, torch.ones(components.n_components, dtype=torch.bool)):
            gated = model(x)
    assert torch.equal(plain, gated)


def test_no_in_place_write_when_another_hook_holds_the_output():
    model, components, x, masks = _setup()
    seen = []
    handle = model.conv1.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            plain = model.conv1(x).clone()
            seen.clear()
            with ablated(components, masks[:1]):
                model(x)
    finally:
        handle.remove()
    assert torch.equal(seen[0], plain)  # the earlier hook's tensor was not overwritten


def test_recorded_activations_stay_ungated():
    model, components, x, masks = _setup()
    with torch.no_grad():
        plain = model.conv1(x).clone()
        with ActivationRecorder(components) as recorder, \
                ComponentGates(components, "weights") as hooks:
            hooks.values = masks[:1].float()
            model(x)
    assert torch.equal(recorder.recorded[("conv1", "output")], plain)


class _PassThrough(nn.Module):
    def forward(self, x):
        return x


class _Residual(nn.Module):
    """x + gate(x): an output that is the module's own input must not be written in place."""

    def __init__(self):
        super().__init__()
        self.inner = _PassThrough()

    def forward(self, x):
        return x + self.inner(x)


@pytest.mark.parametrize("ablation", ["zero", ConstantAblation(2.0)])
def test_outputs_of_other_modules_are_not_written_in_place(ablation):
    model = _Residual()
    components = ComponentSet(model, [ComponentGroup("inner", "unit", 4, "output", unit_axis=-1)])
    x = torch.randn(2, 4)
    keep = torch.tensor([[False, True, True, False]])
    with torch.no_grad(), ablated(components, keep, ablation):
        out = model(x)
    r = 0.0 if ablation == "zero" else 2.0
    expected = x + torch.where(keep, x, torch.full_like(x, r))
    torch.testing.assert_close(out, expected)


def test_default_row_budget_follows_the_device():
    assert default_max_rows("cpu") == 128
    assert default_max_rows(torch.device("cuda", 0)) == 4096
    assert rows_per_pass(32, None, None, "cpu") == 4
    assert rows_per_pass(32, None, 64) == 2
    model, components, x, _ = _setup()
    x = torch.randn(100, 1, 8, 8)
    masks = torch.ones(7, components.n_components, dtype=torch.bool)
    sizes = []
    handle = model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        evaluate_masks(model, components, x, masks, target=0)
    finally:
        handle.remove()
    assert max(sizes) <= 128 and sum(sizes) == 700
