"""baselines= as paired reference inputs: gated patching equals patching by hand.

Hand patching: forward hooks that copy the baseline (corrupted) run's activation into the
clean run at one component's slice and position, on a deep copy of the model.
"""

import copy

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from captum_coar import (
    ComponentAblation,
    ComponentAblationRegression,
    ComponentAtPStar,
    ComponentAttributionPatching,
    ComponentIntegratedGradients,
    attention_heads,
    linear_neurons,
    mlp_neurons,
)
from captum_coar.baselines import ComponentGradientXParameter
from captum_coar.positions import at_positions, patching_grid, residual_stream
from captum_coar.testing import AdditiveNet

VOCAB, SEQ, BATCH = 40, 6, 3


def _families():
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return {
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16,
                                                   n_positions=16, **common)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, hidden_size=16,
            intermediate_size=24, max_position_embeddings=16, **common)),
        "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(
            num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=24,
            max_position_embeddings=16, **common)),
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, hidden_size=16,
            intermediate_size=24, max_position_embeddings=16, **common)),
    }


def _model(family):
    torch.manual_seed(0)
    return _families()[family]().eval()


def _prompts():
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(1, VOCAB, (BATCH, SEQ), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 7) % (VOCAB - 1) + 1  # one token replaced per prompt
    target = torch.randint(1, VOCAB, (BATCH,), generator=generator)
    return clean, corrupted, target


def _value(model, ids, target):
    logits = model(ids).logits[:, -1]
    return torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0]


def _hand_patch(model, components, index, clean, corrupted, target):
    """F(clean) - F(clean with component ``index`` patched from corrupted), by hand."""
    model = copy.deepcopy(model)
    position, within = components.locate(index)
    group = components.groups[position]
    module = model.get_submodule(group.module_name)
    slot, unit = divmod(within, group.n_units)
    features = slice(unit * group.unit_size, (unit + 1) * group.unit_size)
    spec = group.positions[slot]
    rows = torch.arange(clean.shape[0])
    seq_index = (torch.full((clean.shape[0],), spec % SEQ) if isinstance(spec, int)
                 else torch.tensor(spec[1]))
    saved = {}

    def site(args, output):
        if group.site == "input":
            return args[0]
        return output[0] if isinstance(output, tuple) else output

    def record(mod, args, output=None):
        saved["a"] = site(args, output).detach().clone()

    def patch(mod, args, output=None):
        a = site(args, output).clone()
        a[rows, seq_index, features] = saved["a"][rows, seq_index, features]
        if group.site == "input":
            return (a,) + tuple(args[1:])
        return (a,) + tuple(output[1:]) if isinstance(output, tuple) else a

    register = (module.register_forward_pre_hook if group.site == "input"
                else module.register_forward_hook)
    with torch.no_grad():
        handle = register(record)
        model(corrupted)
        handle.remove()
        handle = register(patch)
        patched = _value(model, clean, target)
        handle.remove()
        return _value(model, clean, target) - patched


def _forward(model):
    return lambda ids: model(ids).logits


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "qwen2"])
def test_leave_one_out_with_baselines_equals_hand_patching(family):
    model = _model(family)
    clean, corrupted, target = _prompts()
    subject = ("subject", (2, 2, 1))
    kinds = {"heads": at_positions(attention_heads(model), [-1, 2, subject]),
             "mlp": at_positions(mlp_neurons(model), [2, -1]),
             "residual": residual_stream(model, seq_len=SEQ)}
    for name, components in kinds.items():
        effects = ComponentAblation(_forward(model), components).attribute(
            clean, target=target, baselines=corrupted, output="token_log_prob")
        assert effects.shape == (BATCH, components.n_components)
        # every component, for heads and residual; a spread sample of MLP neurons
        step = max(1, components.n_components // 12)
        for index in range(0, components.n_components, step):
            hand = _hand_patch(model, components, index, clean, corrupted, target)
            torch.testing.assert_close(effects[:, index], hand, atol=2e-5, rtol=1e-4,
                                       msg=f"{family} {name} {components.label(index)}")
        # a token that differs nowhere before position 2 cannot matter there: zero effect at 0
        if name == "residual":
            grid, rows, columns = patching_grid(components, effects[0])
            assert grid.shape == (len(rows), SEQ) and columns[0] == "0"
            assert torch.all(grid[:, :2] == 0)
            assert grid[:, 2].abs().max() > 0


def test_every_method_accepts_baselines_and_agrees_on_an_additive_model():
    model = AdditiveNet(n_in=5, n_hidden=7, n_classes=3).eval()
    components = linear_neurons(model, ["hidden"])
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=generator)
    base = torch.randn(6, 5, generator=generator)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():  # exact: w[target] * (hidden(x) - hidden(base))
        exact = model.readout.weight[target] * (model.hidden(x) - model.hidden(base))
    methods = {
        "leave-one-out": ComponentAblation(model, components).attribute(
            x, target=target, baselines=base, output="logit"),
        "AtP": ComponentAttributionPatching(model, components).attribute(
            x, target=target, baselines=base, output="logit"),
        "gradient x parameter": ComponentGradientXParameter(model, components).attribute(
            x, target=target, baselines=base, output="logit"),
        "gate IG": ComponentIntegratedGradients(model, components).attribute(
            x, target=target, baselines=base, output="logit", n_steps=4),
        "COAR": ComponentAblationRegression(model, components).attribute(
            x, target=target, baselines=base, output="logit", n_masks=80,
            ablation_fraction=0.3, solver="least_squares"),
    }
    for name, values in methods.items():
        torch.testing.assert_close(values, exact, atol=1e-4, rtol=1e-4, msg=name)
    # without baselines the same methods answer another question (weight ablation)
    weights = ComponentAblation(model, components).attribute(x, target=target, output="logit")
    assert (weights - exact).abs().max() > 0.1


def test_atp_star_with_baselines_runs_in_the_paper_setting():
    model = _model("gpt2")
    clean, corrupted, target = _prompts()
    components = attention_heads(model)
    forward = _forward(model)
    star = ComponentAtPStar(forward, components).attribute(
        clean, target=target, baselines=corrupted, output="token_log_prob")
    plain = ComponentAttributionPatching(forward, components).attribute(
        clean, target=target, baselines=corrupted, output="token_log_prob")
    exact = ComponentAblation(forward, components).attribute(
        clean, target=target, baselines=corrupted, output="token_log_prob")
    assert torch.isfinite(star).all() and star.shape == exact.shape
    # with the QK fix off AtP* is AtP
    none = ComponentAtPStar(forward, components).attribute(
        clean, target=target, baselines=corrupted, output="token_log_prob", qk_fix="none")
    torch.testing.assert_close(none, plain)
    # a random-init model: the estimates track the exact patching effects
    assert torch.corrcoef(torch.stack([star.flatten(), exact.flatten()]))[0, 1] > 0.5


def test_baselines_are_recorded_once_per_call_not_per_mask():
    model = AdditiveNet().eval()
    components = linear_neurons(model, ["hidden"])
    calls = []
    handle = model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    x, base = torch.randn(4, 5), torch.randn(4, 5)
    try:
        ComponentAblationRegression(model, components).attribute(
            x, target=torch.zeros(4, dtype=torch.long), baselines=base, n_masks=64,
            perturbations_per_eval=4)
    finally:
        handle.remove()
    baseline_runs = [n for n in calls if n == 4]  # only unrepeated batches: the baseline run
    assert len(baseline_runs) <= 2, calls  # one baseline recording (+ the identity probe)


@pytest.mark.parametrize("bad, message", [
    (lambda c: c[:, :-1], "exactly the inputs' shape"),
    (lambda c: c[:2], "exactly the inputs' shape"),
    (lambda c: c.float(), "dtype"),
    (lambda c: (c, c), "2 baselines for 1 inputs"),
])
def test_bad_baselines_are_refused_before_any_forward(bad, message):
    model = _model("gpt2")
    clean, corrupted, target = _prompts()
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        for method in (ComponentAblation, ComponentAttributionPatching,
                       ComponentAblationRegression):
            with pytest.raises((ValueError, TypeError), match=message):
                method(_forward(model), attention_heads(model)).attribute(
                    clean, target=target, baselines=bad(corrupted), output="token_log_prob")
    finally:
        handle.remove()
    assert not calls


def test_positions_outside_the_sequence_and_wrong_example_counts_are_refused():
    model = _model("gpt2")
    clean, corrupted, target = _prompts()
    forward = _forward(model)
    far = at_positions(attention_heads(model), [SEQ])
    with pytest.raises(IndexError, match="outside the sequence"):
        ComponentAblation(forward, far).attribute(clean, target=target, baselines=corrupted,
                                                  output="token_log_prob")
    short = at_positions(attention_heads(model), [("subject", (1, 2))])
    with pytest.raises(ValueError, match="2 indices but the batch has 3"):
        ComponentAblation(forward, short).attribute(clean, target=target, baselines=corrupted,
                                                    output="token_log_prob")
    with pytest.raises(ValueError, match="sums each unit over all positions"):
        ComponentGradientXParameter(forward, at_positions(mlp_neurons(model), [1])).attribute(
            clean, target=target, output="token_log_prob")


def test_explicit_ablation_with_baselines_is_refused():
    model = AdditiveNet().eval()
    components = linear_neurons(model, ["hidden"])
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="both define what replaces"):
        ComponentAblation(model, components, ablation="zero").attribute(
            x, target=torch.zeros(2, dtype=torch.long), baselines=x + 1)


def test_weight_edits_of_components_at_positions_are_refused():
    from captum_coar import zero_components

    model = _model("gpt2")
    components = at_positions(attention_heads(model), [-1])
    mask = torch.ones(components.n_components, dtype=torch.bool)
    mask[0] = False
    with pytest.raises(ValueError, match="shared by every position"):
        zero_components(components, mask)
