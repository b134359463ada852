"""Mixture-of-experts experts as components (captum_coar.experts).

Known answers: on a toy whose output is linear in every expert's contribution, leave-one-out,
attribution patching and COAR all equal the contribution computed by hand; on Mixtral and
Switch Transformers, ablating an expert equals zeroing it by hand on a deep copy (its weights,
or its module's output through a hook), per row, at one position, and with the router left
unchanged; an expert no token was routed to is accepted, a dense module that never ran is not.
"""

import copy

import pytest
import torch
import transformers as T
from torch import nn

from captum_coar import (
    ComponentAblation,
    ComponentAblationRegression,
    ComponentAttributionPatching,
    ComponentSet,
    ablated,
    linear_neurons,
    moe_experts,
    zero_components,
)
from captum_coar.ablation import MeanAblation

N_EXPERTS, WIDTH, HIDDEN = 4, 6, 5


class ToyExperts(nn.Module):
    """Fused expert weights called as experts(hidden_states, top_k_index, top_k_weights)."""

    def __init__(self):
        super().__init__()
        self.num_experts = N_EXPERTS
        self.up = nn.Parameter(torch.randn(N_EXPERTS, HIDDEN, WIDTH) * 0.7)
        self.down = nn.Parameter(torch.randn(N_EXPERTS, WIDTH, HIDDEN) * 0.7)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for slot in range(top_k_index.shape[1]):
            for expert in range(self.num_experts):
                rows = top_k_index[:, slot] == expert
                y = torch.relu(hidden_states[rows] @ self.up[expert].T) @ self.down[expert].T
                out = out.index_add(0, rows.nonzero()[:, 0], y * top_k_weights[rows, slot, None])
        return out


class ToyBlock(nn.Module):
    """A router and the experts, called on (batch, seq, width) hidden states."""

    def __init__(self, top_k):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(WIDTH, N_EXPERTS, bias=False)
        self.experts = ToyExperts()

    def forward(self, x):
        flat = x.reshape(-1, WIDTH)
        weights, index = self.router(flat).softmax(-1).topk(self.top_k, dim=-1)
        return self.experts(flat, index, weights / weights.sum(-1, keepdim=True)).reshape(x.shape)


class ToyMoE(nn.Module):
    """features -> x + block(x) -> mean over positions -> logits: linear in each expert's
    contribution, so every single-expert effect is exact and additive."""

    def __init__(self, top_k=2):
        super().__init__()
        self.embed = nn.Linear(3, WIDTH)
        self.block = ToyBlock(top_k)
        self.readout = nn.Linear(WIDTH, 2)

    def forward(self, features):
        x = self.embed(features)
        return self.readout((x + self.block(x)).mean(1))


def _toy():
    torch.manual_seed(0)
    model = ToyMoE().eval()
    x = torch.randn(5, 8, 3, generator=torch.Generator().manual_seed(0))
    return model, x, torch.tensor([0, 1, 0, 1, 1])


def _zeroed_expert(model, container, expert):
    """A deep copy with every weight of one expert zeroed (its output is then 0)."""
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in edited.get_submodule(container).parameters(recurse=False):
            parameter[expert] = 0
    return edited


def test_every_method_over_experts_equals_the_contribution_by_hand():
    model, x, target = _toy()
    experts = moe_experts(model)
    assert experts.labels == [f"block.experts/expert[{e}]" for e in range(N_EXPERTS)]
    with torch.no_grad():
        plain = model(x).gather(1, target[:, None])[:, 0]
        exact = torch.stack([plain - _zeroed_expert(model, "block.experts", e)(x)
                             .gather(1, target[:, None])[:, 0] for e in range(N_EXPERTS)], 1)
    assert exact.abs().sum(0).min() > 0.1  # every expert matters (where tokens are routed)
    methods = {
        "leave-one-out": ComponentAblation(model, experts),
        "AtP": ComponentAttributionPatching(model, experts),
    }
    for name, method in methods.items():
        torch.testing.assert_close(method.attribute(x, target=target, output="logit"), exact,
                                   atol=1e-5, rtol=1e-5, msg=name)
    coar = ComponentAblationRegression(model, experts).attribute(
        x, target=target, output="logit", n_masks=40, ablation_fraction=0.5,
        solver="least_squares")
    torch.testing.assert_close(coar.float(), exact, atol=1e-4, rtol=1e-4)


def _mixtral(layers=1, top_k=2):
    torch.manual_seed(0)
    config = T.MixtralConfig(num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, hidden_size=32, intermediate_size=16,
                             vocab_size=40, num_local_experts=N_EXPERTS,
                             num_experts_per_tok=top_k, pad_token_id=0, bos_token_id=1,
                             eos_token_id=2)
    model = T.MixtralForCausalLM(config).eval()
    with torch.no_grad():  # experts far from zero, so their effects are well above rounding
        for layer in model.model.layers:
            layer.mlp.experts.down_proj.mul_(30)
    ids = torch.randint(3, 40, (3, 7), generator=torch.Generator().manual_seed(1))
    return model, ids


def test_mixtral_expert_ablation_per_row_equals_zeroed_by_hand_and_keeps_the_router():
    model, ids = _mixtral(layers=2)
    experts = moe_experts(model)
    assert [(g.module_name, g.n_units, g.site) for g in experts] == [
        (f"model.layers.{i}.mlp.experts", N_EXPERTS, "routing") for i in range(2)]
    gates = torch.ones(3, experts.n_components)
    ablate = [(0, 2), (1, N_EXPERTS + 2), (2, 3)]  # (row, component): layer 0 or 1
    for row, column in ablate:
        gates[row, column] = 0
    routers = []
    handle = model.model.layers[0].mlp.gate.register_forward_hook(
        lambda m, a, o: routers.append([t.clone() for t in o]))
    with torch.no_grad():
        with ablated(experts, gates):
            gated = model(ids).logits
        plain = model(ids).logits
        handle.remove()
        for row, column in ablate:
            group, unit = experts.locate(column)
            by_hand = _zeroed_expert(model, experts.groups[group].module_name, unit)
            torch.testing.assert_close(gated[row], by_hand(ids[row:row + 1]).logits[0],
                                       atol=1e-5, rtol=1e-5)
            assert (gated[row] - plain[row]).abs().max() > 1e-2
    for ablated_out, plain_out in zip(*routers):  # first router: same logits, weights, choice
        torch.testing.assert_close(ablated_out, plain_out, atol=0, rtol=0)


def test_a_gate_scales_the_weighted_contribution_of_the_tokens_routed_to_the_expert():
    model, ids = _mixtral()
    experts = moe_experts(model)
    block = model.model.layers[0].mlp
    outputs, chosen = [], []
    handles = [block.register_forward_hook(lambda m, a, o: outputs.append(o)),
               block.gate.register_forward_hook(lambda m, a, o: chosen.append(o[2]))]
    with torch.no_grad():
        for gate in (1.0, 0.0, 0.25):
            values = torch.ones(experts.n_components)
            values[2] = gate
            with ablated(experts, values):
                model(ids)
    for handle in handles:
        handle.remove()
    full, without, quarter = outputs
    contribution = (full - without).reshape(-1, 32)
    torch.testing.assert_close(quarter, full - 0.75 * (full - without), atol=1e-6, rtol=1e-5)
    # nonzero exactly on the tokens the (unchanged) router sent to expert 2
    routed = (chosen[0] == 2).any(-1)
    assert 0 < int(routed.sum()) < ids.numel()
    assert torch.all(contribution[~routed] == 0)
    assert contribution[routed].abs().amax(-1).min() > 1e-4


def test_experts_at_one_position_change_only_that_position():
    model, ids = _mixtral()
    at_last = moe_experts(model, positions=[-1])
    everywhere = moe_experts(model)
    with torch.no_grad():
        plain = model(ids).logits
        with ablated(at_last, torch.tensor([1.0, 0.0, 1.0, 1.0])):
            last = model(ids).logits
        with ablated(everywhere, torch.tensor([1.0, 0.0, 1.0, 1.0])):
            full = model(ids).logits
    assert at_last.labels[1] == "model.layers.0.mlp.experts/expert[1]@-1"
    # one layer, the experts after attention: position -1 is all that changes
    torch.testing.assert_close(last[:, :-1], plain[:, :-1], atol=0, rtol=0)
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-6, rtol=1e-5)


def test_switch_experts_modules_ablated_equal_their_output_times_zero_by_hook():
    torch.manual_seed(0)
    config = T.SwitchTransformersConfig(
        num_layers=1, num_decoder_layers=1, num_heads=2, d_model=16, d_kv=8, d_ff=24,
        vocab_size=40, num_experts=N_EXPERTS, expert_capacity=64, encoder_sparse_step=1,
        decoder_sparse_step=1, decoder_start_token_id=0)
    model = T.SwitchTransformersForConditionalGeneration(config).eval()
    inputs = {"input_ids": torch.randint(1, 40, (2, 6), generator=torch.Generator().manual_seed(1)),
              "decoder_input_ids": torch.randint(1, 40, (2, 5))}
    experts = moe_experts(model)
    assert [g.module_name for g in experts] == ["encoder.block.0.layer.1.mlp.experts",
                                                "decoder.block.0.layer.2.mlp.experts"]
    keep = torch.ones(experts.n_components, dtype=torch.bool)
    keep[[1, N_EXPERTS + 3]] = False
    by_hand = copy.deepcopy(model)
    for name, expert in [("encoder.block.0.layer.1.mlp.experts", 1),
                         ("decoder.block.0.layer.2.mlp.experts", 3)]:
        by_hand.get_submodule(f"{name}.expert_{expert}").register_forward_hook(
            lambda m, a, o: o * 0)
    with torch.no_grad():
        with ablated(experts, keep):
            gated = model(**inputs).logits
        torch.testing.assert_close(gated, by_hand(**inputs).logits, atol=1e-6, rtol=1e-5)
        assert (gated - model(**inputs).logits).abs().max() > 1e-3


def test_an_expert_no_token_was_routed_to_is_accepted_an_unused_dense_module_is_not():
    model = ToyMoE(top_k=1).eval()
    with torch.no_grad():  # expert 3's router logit is 0, below max(|a|, b) > 0: never chosen
        v, u = torch.randn(WIDTH), torch.randn(WIDTH)
        model.block.router.weight.copy_(torch.stack([v, -v, u, torch.zeros(WIDTH)]))
    x = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(1))
    chosen = model.block.router(model.embed(x)).argmax(-1)
    assert 3 not in chosen and set(chosen.unique().tolist()) <= {0, 1, 2}
    experts = moe_experts(model)
    with torch.no_grad():
        with ablated(experts, torch.tensor([1.0, 1.0, 1.0, 0.0])):  # runs: no error
            unused = model(x)
        torch.testing.assert_close(unused, model(x), atol=0, rtol=0)
    effects = ComponentAblation(model, experts).attribute(x, target=0, output="logit")
    assert effects[:, 3].abs().max() < 1e-6 and effects[:, :3].abs().max() > 1e-2
    # a dense module that never runs is still an error, next to experts that are fine
    with_dense = experts + linear_neurons(model, ["readout"])
    with pytest.raises(ValueError, match=r"did not run 1 of the 2 component modules:"
                                         r" \['readout'\]"):
        with torch.no_grad(), ablated(with_dense, torch.ones(with_dense.n_components)):
            model.block(model.embed(x))  # the experts run, the readout does not


def test_replacements_other_than_zero_and_weight_edits_are_refused():
    model, x, target = _toy()
    experts = moe_experts(model)
    with pytest.raises(ValueError, match="cannot ablate mixture-of-experts experts.*'block"
                                         r"\.experts'.*ablation='weights' or 'zero'"):
        ComponentAblation(model, experts, ablation=MeanAblation(x)).attribute(
            x, target=target, output="logit")
    with pytest.raises(ValueError, match="patched \\(baselines=\\) replacement"):
        ComponentAblation(model, experts).attribute(x, target=target, output="logit",
                                                    baselines=torch.zeros_like(x))
    with pytest.raises(TypeError, match="no known weight layout; use ablate_persistently"):
        zero_components(experts, torch.tensor([True, False, True, True]))


def test_containers_that_cannot_be_gated_are_named():
    class HiddenOnlyExperts(nn.Module):  # Llama 4 style: scores applied to the inputs
        def __init__(self):
            super().__init__()
            self.num_experts = 2
            self.w = nn.Parameter(torch.zeros(2, 4, 4))

        def forward(self, hidden_states):
            return hidden_states

    model = nn.Sequential(nn.Linear(4, 4))
    model.experts = HiddenOnlyExperts()
    with pytest.raises(ValueError, match=r"expert containers \['experts'\].*cannot be gated"):
        moe_experts(model)
    with pytest.raises(ValueError, match="found no mixture-of-experts experts container"):
        moe_experts(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="'0' \\(Linear\\) is not an experts container"):
        moe_experts(model, names=["0"])
    with pytest.raises(ValueError, match="found no mixture-of-experts"):
        ComponentSet.from_model(nn.Sequential(nn.Linear(4, 4)), kinds=["moe_experts"])


def test_a_token_routed_twice_to_one_expert_is_refused():
    model, x, _ = _toy()
    experts = moe_experts(model)
    flat = model.embed(x).reshape(-1, WIDTH)
    twice = torch.zeros(flat.shape[0], 2, dtype=torch.long)  # slot 0 and slot 1: expert 0
    with pytest.raises(ValueError, match="routed to the same expert in two of its slots"):
        with torch.no_grad(), ablated(experts, torch.ones(N_EXPERTS)):
            model.block(model.embed(x))  # sets the (batch, seq) shape for the container
            model.block.experts(flat, twice, torch.full((flat.shape[0], 2), 0.5))

