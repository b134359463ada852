"""Gate hooks against weight zeroing, pass-through, batching, hook removal, strategies."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from toy_models import (
    AttentionClassifier,
    ConvNet,
    assert_unchanged,
    hook_count,
    randomise_batchnorm,
    snapshot,
    tiny_gpt2,
)

from captum_coar import (
    ComponentGroup,
    ComponentSet,
    ablated,
    attention_heads,
    conv_filters,
    linear_neurons,
    zero_components,
)
from captum_coar.ablation import ConstantAblation, MeanAblation, ResampleAblation
from captum_coar.edits import ablate_persistently
from captum_coar.engine import evaluate_masks
from captum_coar.gates import ComponentGates
from captum_coar.recording import ActivationRecorder


def _random_keep(n, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(n, generator=g) > p
    keep[0] = False
    return keep


def _hook_vs_weights(model, components, x, ablation="weights", forward=None, atol=1e-5):
    forward = forward or model
    keep = _random_keep(components.n_components)
    with torch.no_grad():
        with ablated(components, keep, ablation):
            hooked = forward(x)
        before = snapshot(model)
        with zero_components(components, keep, ablation):
            zeroed = forward(x)
        assert_unchanged(model, before)  # undo restored every parameter
        plain = forward(x)
    hooked, zeroed, plain = (getattr(t, "logits", t) for t in (hooked, zeroed, plain))
    torch.testing.assert_close(hooked, zeroed, atol=atol, rtol=1e-4)
    assert not torch.allclose(hooked, plain, atol=1e-4), "the ablation had no effect"


@pytest.mark.parametrize("ablation", ["weights", "zero"])
def test_conv_filters_with_and_without_bias_then_batchnorm(ablation):
    model = randomise_batchnorm(ConvNet())
    x = torch.randn(4, 1, 8, 8)
    _hook_vs_weights(model, conv_filters(model, ["conv1", "conv2"]), x, ablation)


@pytest.mark.cuda
def test_cpu_keep_mask_on_a_cuda_model():
    model = randomise_batchnorm(ConvNet()).cuda()
    x = torch.randn(4, 1, 8, 8, device="cuda")
    _hook_vs_weights(model, conv_filters(model, ["conv1", "conv2"]), x)  # keep mask on the CPU


def test_linear_neurons_match_zeroed_rows():
    model = randomise_batchnorm(ConvNet())
    _hook_vs_weights(model, linear_neurons(model, ["fc1"]), torch.randn(4, 1, 8, 8))


def test_hf_conv1d_neurons_and_gpt2_heads_match_zeroed_weights():
    model = tiny_gpt2()
    ids = torch.randint(0, 50, (3, 10))
    mlp = linear_neurons(model, ["transformer.h.0.mlp.c_fc", "transformer.h.1.attn.c_attn"])
    _hook_vs_weights(model, mlp, ids)
    heads = attention_heads(model, ["transformer.h.0.attn", "transformer.h.1.attn.c_proj"])
    assert heads.labels[5] == "transformer.h.1.attn.c_proj/head[1]"
    _hook_vs_weights(model, heads, ids)


def test_hand_written_attention_heads_match_zeroed_columns():
    model = AttentionClassifier().eval()
    heads = attention_heads(model, ["attn"])
    assert heads.groups[0].module_name == "attn.proj" and heads.n_components == 4
    _hook_vs_weights(model, heads, torch.randn(5, 7, 3))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_heads_match_zeroed_columns(batch_first):
    model = AttentionClassifier(torch_mha=True, batch_first=batch_first).eval()
    heads = ComponentSet.from_model(model, kinds=("attention_heads",))
    assert [g.module_name for g in heads] == ["attn.out_proj"] and heads.n_components == 4
    x = torch.randn(5, 7, 3)
    _hook_vs_weights(model, heads, x)
    # the patched forward reproduces nn.MultiheadAttention's own output with all gates open
    with torch.no_grad():
        plain = model(x)
        with ablated(heads, torch.ones(4)):
            gated = model(x)
    torch.testing.assert_close(gated, plain, atol=1e-5, rtol=1e-5)
    assert "forward" not in model.attn.__dict__, "the MultiheadAttention patch was not removed"


def test_open_gates_give_the_unablated_output_and_leave_parameters_untouched():
    model = randomise_batchnorm(ConvNet())
    components = ComponentSet.from_model(model)
    x = torch.randn(6, 1, 8, 8)
    before = snapshot(model)
    with torch.no_grad():
        plain = model(x)
        with ablated(components, torch.ones(6, components.n_components)):
            gated = model(x)
    assert torch.equal(plain, gated)
    assert_unchanged(model, before)


def test_hooks_are_removed_after_success_and_after_an_exception():
    model = randomise_batchnorm(ConvNet())
    components = ComponentSet.from_model(model)
    assert hook_count(model) == 0
    with ablated(components, torch.ones(components.n_components)):
        assert hook_count(model) == len(components.groups)
        model(torch.randn(2, 1, 8, 8))
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with ablated(components, torch.ones(components.n_components)):
            raise RuntimeError("boom")
    assert hook_count(model) == 0
    with pytest.raises(ValueError, match="gates have 3 rows"):
        with ablated(components, torch.ones(3, components.n_components)):
            model(torch.randn(2, 1, 8, 8))
    assert hook_count(model) == 0


def test_gradients_flow_through_gates():
    model = randomise_batchnorm(ConvNet())
    components = conv_filters(model)
    gates = torch.full((2, components.n_components), 0.5, requires_grad=True)
    with ComponentGates(components) as hooks:
        hooks.values = gates
        model(torch.randn(2, 1, 8, 8))[:, 0].sum().backward()
    assert gates.grad is not None and gates.grad.abs().sum() > 0


@pytest.mark.parametrize("per_pass", [1, 3, None])
def test_k_masks_in_one_batch_equal_k_separate_forwards(per_pass):
    model = randomise_batchnorm(ConvNet())
    components = ComponentSet.from_model(model)
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    masks = torch.rand(7, components.n_components) > 0.2
    before = snapshot(model)
    batched = evaluate_masks(model, components, x, masks, target=y, output="margin",
                             perturbations_per_eval=per_pass)
    assert batched.shape == (7, 5)
    for i in range(7):
        zeroed = copy.deepcopy(model)
        zero_components(ComponentSet(zeroed, components.groups), masks[i])
        logits = zeroed(x).detach()
        correct = logits.gather(1, y[:, None]).squeeze(1)
        logits[torch.arange(5), y] = float("-inf")
        torch.testing.assert_close(batched[i], correct - logits.max(1).values, atol=1e-5, rtol=1e-5)
    assert_unchanged(model, before)


def test_mha_heads_batched_across_masks():
    model = AttentionClassifier(torch_mha=True).eval()
    heads = attention_heads(model, ["attn"])
    x = torch.randn(3, 6, 3)
    masks = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    batched = evaluate_masks(model, heads, x, masks, output=lambda out, t: out[:, 0])
    for i in range(3):
        with torch.no_grad(), ablated(heads, masks[i]):
            torch.testing.assert_close(batched[i], model(x)[:, 0], atol=1e-5, rtol=1e-5)


def test_mean_constant_and_resample_strategies():
    model = AttentionClassifier().eval()
    components = linear_neurons(model, ["embed"])
    reference = torch.randn(20, 7, 3)
    x = torch.randn(4, 7, 3)
    with torch.no_grad():
        h_ref = model.embed(reference)
        cases = {
            "mean": (MeanAblation(reference), h_ref.mean(dim=(0, 1)).expand(4, 7, 16)),
            "mean_pos": (MeanAblation(reference, per_position=True), h_ref.mean(0).expand(4, 7, 16)),
            "constant": (ConstantAblation(0.7), torch.full((4, 7, 16), 0.7)),
        }
        for name, (strategy, expected) in cases.items():
            with ActivationRecorder(components) as recorder, \
                    ablated(components, torch.zeros(16), strategy, forward_func=model):
                model(x)
            recorded = recorder.recorded[("embed", "output")]
            out = model.attn(expected)  # recompute downstream from the expected replacement
            with ablated(components, torch.zeros(16), strategy, forward_func=model):
                got = model(x)
            h = expected + out
            h = h + model.mlp(h)
            torch.testing.assert_close(got, model.head(h.mean(1)), atol=1e-5, rtol=1e-5, msg=name)
            assert recorded.shape == (4, 7, 16)
        resample = ResampleAblation(reference, seed=3)
        with ablated(components, torch.zeros(16), resample, forward_func=model):
            got = model(x)
        paired = reference[resample.permutation_[torch.arange(4)]]
        torch.testing.assert_close(got, model(paired), atol=1e-5, rtol=1e-5)


def test_persistent_hooks_and_weight_edit_agree_and_can_be_removed():
    model = randomise_batchnorm(ConvNet())
    components = conv_filters(model)
    keep = _random_keep(components.n_components, seed=4)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        plain = model(x)
        handle = ablate_persistently(components, keep)
        hooked = model(x)
        handle.remove()
        assert hook_count(model) == 0
        torch.testing.assert_close(model(x), plain)
        edit = zero_components(components, keep)
        torch.testing.assert_close(model(x), hooked, atol=1e-5, rtol=1e-5)
        edit.undo()
        assert torch.equal(model(x), plain)


def test_mean_ablation_rejects_other_strategies_for_weight_edits():
    model = ConvNet()
    with pytest.raises(ValueError, match="weight edit"):
        zero_components(conv_filters(model), torch.ones(24, dtype=torch.bool), ConstantAblation(1.0))


def test_model_in_training_mode_is_not_required():
    model = ConvNet().train()
    components = conv_filters(model)
    out = evaluate_masks(model, components, torch.randn(2, 1, 8, 8), torch.ones(2, 24, dtype=torch.bool),
                         output=lambda o, t: o[:, 0])
    assert out.shape == (2, 2)


def test_resample_pairing_does_not_depend_on_example_chunking():
    model = AttentionClassifier().eval()
    components = linear_neurons(model, ["embed", "mlp.0"])
    strategy = ResampleAblation(torch.randn(9, 7, 3), seed=1)
    x = torch.randn(6, 7, 3)
    masks = torch.rand(4, components.n_components) > 0.5
    kwargs = dict(output=lambda o, t: o[:, 0], ablation=strategy)
    whole = evaluate_masks(model, components, x, masks, **kwargs)
    chunked = evaluate_masks(model, components, x, masks, max_rows=2, **kwargs)
    torch.testing.assert_close(whole, chunked, atol=1e-5, rtol=1e-5)
    halves = torch.cat([evaluate_masks(model, components, x[:3], masks, **kwargs),
                        evaluate_masks(model, components, x[3:], masks, example_offset=3, **kwargs)],
                       dim=1)
    torch.testing.assert_close(whole, halves, atol=1e-5, rtol=1e-5)


def test_model_without_parameters_runs_on_the_cpu():
    model = nn.Sequential(nn.Identity())  # no parameters, no buffers: the device is the CPU
    components = ComponentSet(model, [ComponentGroup("0", "unit", 3, unit_axis=-1)])
    x = torch.tensor([[1.0, 2.0, 3.0]])
    masks = torch.tensor([[True, False, True], [False, False, False]])
    out = evaluate_masks(model, components, x, masks, output=lambda o, t: o.sum(dim=1),
                         ablation="zero")
    assert torch.equal(out, torch.tensor([[4.0], [0.0]]))


def test_row_budget_validation():
    from captum_coar._engine import rows_per_pass

    assert rows_per_pass(10, None, 100) == 10
    assert rows_per_pass(10, None, np.int64(35)) == 3
    with pytest.raises(ValueError, match="`max_rows` must be an integer >= 1; got 0"):
        rows_per_pass(10, None, 0)
    for bad in (2.5, True, "64"):
        with pytest.raises(TypeError, match=f"`max_rows` must be an integer >= 1; got .*{bad}"):
            rows_per_pass(10, None, bad)
