"""Relevance patching (RelP): LRP rules that change only the backward pass, checked by hand."""

import math

import pytest
import torch
import transformers as T
from torch import nn

import captum_coar.language_outputs  # noqa: F401  (registers the language-model outputs)
from captum_coar import (
    ComponentAblation,
    ComponentAttributionPatching,
    ComponentRelevancePatching,
    ComponentSet,
    linear_neurons,
    mlp_neurons,
)
from captum_coar.baselines._lrp_rules import half_rule, lrp_rules

V, D = 20, 16
ARGS = dict(output="token_log_prob")


def tiny(family, impl="sdpa", n_layer=2, seed=0):
    torch.manual_seed(seed)
    small = dict(num_hidden_layers=n_layer, hidden_size=D, intermediate_size=24, vocab_size=V,
                 max_position_embeddings=16)
    config = {
        "gpt2": lambda: T.GPT2Config(n_layer=n_layer, n_head=2, n_embd=D, vocab_size=V,
                                     n_positions=16, resid_pdrop=0.0, attn_pdrop=0.0,
                                     embd_pdrop=0.0, bos_token_id=0, eos_token_id=0),
        "llama": lambda: T.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **small),
        "gemma": lambda: T.GemmaConfig(num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                       **small),
        "qwen2": lambda: T.Qwen2Config(num_attention_heads=2, num_key_value_heads=1, **small),
    }[family]()
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation=impl).eval()
    ids = torch.randint(0, V, (4, 6), generator=torch.Generator().manual_seed(seed))
    return model, ids, torch.arange(4)


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def attention_functions():
    return dict(T.AttentionInterface._global_mapping)


@pytest.mark.parametrize("family, impl", [("gpt2", "sdpa"), ("gpt2", "eager"), ("llama", "sdpa"),
                                          ("llama", "eager"), ("gemma", "sdpa"), ("qwen2", "sdpa")])
def test_forward_values_unchanged_and_everything_removed(family, impl):
    model, ids, _ = tiny(family, impl)
    hooks, functions = hook_count(model), attention_functions()
    with torch.no_grad():
        plain = model(ids).logits
        with lrp_rules(model) as rules:
            ruled = model(ids).logits
            assert hook_count(model) > hooks
    assert torch.equal(plain, ruled)
    assert rules.attention_calls > 0 and len(rules.norm_forms) == 2 * 2 + 1
    # Gemma's norm is x / rms * (1 + w); GPT-2's is centred; Llama's and Qwen2's x / rms * w
    assert set(rules.norm_forms.values()) == {{"gpt2": (True, 0.0), "gemma": (False, 1.0)}.get(
        family, (False, 0.0))}
    assert hook_count(model) == hooks and attention_functions() == functions
    assert model.config._attn_implementation == impl
    assert torch._C._len_torch_function_stack() == 0


class LinearAfter(nn.Module):
    """Linear -> LayerNorm -> GELU -> hidden Linear -> readout: linear after ``hidden``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.first = nn.Linear(5, 8)
        self.norm = nn.LayerNorm(8)
        self.act = nn.GELU()
        self.hidden = nn.Linear(8, 7)
        self.readout = nn.Linear(7, 3)

    def forward(self, x):
        return self.readout(self.hidden(self.act(self.norm(self.first(x)))))


def test_linear_after_the_components_relp_equals_atp_equals_leave_one_out():
    model = LinearAfter().eval()
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    base = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    comps = linear_neurons(model, ["hidden"])
    for ablation, kwargs in (("zero", {}), ("weights", {}), ("weights", {"baselines": base})):
        relp = ComponentRelevancePatching(model, comps, ablation, require_attention=False
                                          ).attribute(x, target=target, output="logit", **kwargs)
        atp = ComponentAttributionPatching(model, comps, ablation).attribute(
            x, target=target, output="logit", **kwargs)
        exact = ComponentAblation(model, comps, ablation).attribute(
            x, target=target, output="logit", **kwargs)
        torch.testing.assert_close(relp, atp, rtol=0, atol=0)
        torch.testing.assert_close(relp, exact, rtol=1e-5, atol=1e-6)


def test_rules_through_layernorm_and_gelu_match_the_hand_rules():
    """Neurons of ``first``: the LN rule (std constant) and the identity rule on GELU."""
    model = LinearAfter().eval()
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    comps = linear_neurons(model, ["first"])
    relp = ComponentRelevancePatching(model, comps, "zero", require_attention=False).attribute(
        x, target=target, output="logit")
    gates = torch.ones(6, 8, requires_grad=True)
    a = model.first(x) * gates
    centred = a - a.mean(-1, keepdim=True)
    n = centred / (centred.detach().pow(2).mean(-1, keepdim=True) + model.norm.eps).sqrt()
    n = n * model.norm.weight + model.norm.bias
    g = nn.functional.gelu(n)
    g = g.detach() + (n - n.detach()) * (g / n).detach()
    value = model.readout(model.hidden(g)).gather(1, target[:, None]).sum()
    (hand,) = torch.autograd.grad(value, gates)
    torch.testing.assert_close(relp, hand, rtol=1e-5, atol=1e-6)
    atp = ComponentAttributionPatching(model, comps, "zero").attribute(x, target=target,
                                                                        output="logit")
    assert (relp - atp).abs().max() > 1e-3


def _ln_rule(norm, x):
    centred = x - x.mean(-1, keepdim=True)
    return centred / (centred.detach().pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() \
        * norm.weight + norm.bias


def _hand_gpt2(model, ids, gates, comps, rules):
    """GPT-2 written out, gates on heads and MLP neurons (zero ablation), rules optional."""
    tr = model.transformer
    n_rows, length = ids.shape
    offsets = {g.module_name: comps.offsets[p] for p, g in enumerate(comps.groups)}
    h = tr.wte(ids) + tr.wpe(torch.arange(length))
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for layer, block in enumerate(tr.h):
        attn, mlp = block.attn, block.mlp
        x = _ln_rule(block.ln_1, h) if rules else block.ln_1(h)
        q, k, v = (x @ attn.c_attn.weight + attn.c_attn.bias).split(D, dim=-1)
        q, k, v = (t.reshape(n_rows, length, 2, D // 2).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(D // 2)).masked_fill(~causal, -1e9)
        pattern = scores.softmax(-1)
        pattern = pattern.detach() if rules else pattern
        z = (pattern @ v).transpose(1, 2).reshape(n_rows, length, D)
        start = offsets[f"transformer.h.{layer}.attn.c_proj"]
        z = z * gates[:, start:start + 2].repeat_interleave(D // 2, dim=1)[:, None, :]
        h = h + attn.c_proj(z)
        x = _ln_rule(block.ln_2, h) if rules else block.ln_2(h)
        pre = mlp.c_fc(x)
        act = mlp.act(pre)
        act = act.detach() + (pre - pre.detach()) * (act / pre).detach() if rules else act
        start = offsets[f"transformer.h.{layer}.mlp.c_proj"]
        h = h + mlp.c_proj(act * gates[:, start:start + act.shape[-1]][:, None, :])
    h = _ln_rule(tr.ln_f, h) if rules else tr.ln_f(h)
    return model.lm_head(h)[:, -1].log_softmax(-1)


def test_gpt2_equals_the_rules_written_out_by_hand_and_differs_from_atp():
    model, ids, tokens = tiny("gpt2")
    comps = ComponentSet.from_model(model)  # heads and MLP neurons of both layers
    state = {k: v.clone() for k, v in model.state_dict().items()}
    relp = ComponentRelevancePatching(model, comps, "zero").attribute(ids, target=tokens, **ARGS)
    atp = ComponentAttributionPatching(model, comps, "zero").attribute(ids, target=tokens, **ARGS)
    hand = {}
    for rules in (True, False):
        gates = torch.ones(4, comps.n_components, requires_grad=True)
        out = _hand_gpt2(model, ids, gates, comps, rules)
        torch.testing.assert_close(out, model(ids).logits[:, -1].log_softmax(-1), rtol=1e-4,
                                   atol=1e-5)
        (hand[rules],) = torch.autograd.grad(out.gather(1, tokens[:, None]).sum(), gates)
    torch.testing.assert_close(relp, hand[True], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(atp, hand[False], rtol=1e-4, atol=1e-6)
    assert torch.isfinite(relp).all() and (relp - atp).abs().max() > 1e-4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_gated_models_run_finite_and_differ_from_atp(family):
    model, ids, tokens = tiny(family)
    comps = ComponentSet.from_model(model)
    corrupted = ids.flip(0)
    hooks = hook_count(model)
    for kwargs in ({}, {"baselines": corrupted}):
        relp = ComponentRelevancePatching(model, comps).attribute(ids, target=tokens, **ARGS,
                                                                  **kwargs)
        atp = ComponentAttributionPatching(model, comps).attribute(ids, target=tokens, **ARGS,
                                                                   **kwargs)
        assert relp.shape == atp.shape and torch.isfinite(relp).all()
        assert (relp - atp).abs().max() > 1e-4
        last = comps.offsets[-2]  # the last group (layer-1 MLP neurons): only the final norm
        assert (relp[:, last:] - atp[:, last:]).abs().max() < (relp - atp).abs().max()
    assert hook_count(model) == hooks


class GatedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.gate_proj, self.up_proj = nn.Linear(4, 6), nn.Linear(4, 6)
        self.down_proj, self.act_fn = nn.Linear(6, 2), nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_half_rule_on_the_gated_product_and_identity_rule_on_silu():
    model = GatedMLP()
    x = torch.randn(3, 4, requires_grad=True)
    with lrp_rules(model, require_attention=False):
        (ruled,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    g, u = model.gate_proj(x), model.up_proj(x)
    act = nn.functional.silu(g)
    act = act.detach() + (g - g.detach()) * (act / g).detach()
    h = act * u
    h = h.detach() + 0.5 * (h - h.detach())
    (hand,) = torch.autograd.grad(model.down_proj(h)[:, 0].sum(), x)
    torch.testing.assert_close(ruled, hand, rtol=1e-5, atol=1e-7)
    (plain,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    assert (ruled - plain).abs().max() > 1e-3
    # the rule acts before the gate on the same module: the product's own neurons are not halved
    x = x.detach()
    for names, hand_gates in ((["down_proj"], None), (["gate_proj"], "gate")):
        comps = (mlp_neurons if hand_gates is None else linear_neurons)(model, names)
        relp = ComponentRelevancePatching(model, comps, "zero", require_attention=False
                                          ).attribute(x, target=0, output="logit")
        atp = ComponentAttributionPatching(model, comps, "zero").attribute(x, target=0,
                                                                           output="logit")
        if hand_gates is None:
            torch.testing.assert_close(relp, atp, rtol=0, atol=0)
            continue
        gates = torch.ones(3, 6, requires_grad=True)
        g = model.gate_proj(x) * gates
        act = nn.functional.silu(g)
        h = (act.detach() + (g - g.detach()) * (act / g).detach()) * model.up_proj(x)
        (hand,) = torch.autograd.grad(model.down_proj(half_rule(h))[:, 0].sum(), gates)
        torch.testing.assert_close(relp, hand, rtol=1e-5, atol=1e-7)


class SdpaAttention(nn.Module):
    """Self-attention through F.scaled_dot_product_attention (nanoGPT style)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.embed, self.qkv = nn.Linear(3, 8), nn.Linear(8, 24)
        self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.embed(x)
        q, k, v = (t.reshape(*x.shape[:2], 2, 4).transpose(1, 2) for t in self.qkv(h).split(8, -1))
        z = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(h + self.proj(z.transpose(1, 2).reshape(*x.shape[:2], 8)))[:, -1]


def test_scaled_dot_product_attention_gets_the_ah_rule():
    model = SdpaAttention().eval()
    x = torch.randn(2, 5, 3, requires_grad=True)
    with lrp_rules(model) as rules:
        (ruled,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    assert rules.attention_calls == 1
    h = model.embed(x)
    q, k, v = (t.reshape(2, 5, 2, 4).transpose(1, 2) for t in model.qkv(h).split(8, -1))
    z = nn.functional.scaled_dot_product_attention(q.detach(), k.detach(), v, is_causal=True)
    out = model.head(h + model.proj(z.transpose(1, 2).reshape(2, 5, 8)))[:, -1]
    (hand,) = torch.autograd.grad(out[:, 0].sum(), x)
    torch.testing.assert_close(ruled, hand)


@pytest.mark.parametrize("torch_mha", [False, True], ids=["hand-written", "nn.MultiheadAttention"])
def test_refuses_attention_it_cannot_reach_and_cleans_up(torch_mha):
    from toy_models import AttentionClassifier

    model = AttentionClassifier(torch_mha=torch_mha).eval()
    comps = ComponentSet.from_model(model, kinds="attention_heads")
    hooks, functions = hook_count(model), attention_functions()
    x = torch.randn(2, 6, 3)
    with pytest.raises(TypeError, match="reached no attention it recognises"):
        ComponentRelevancePatching(model, comps).attribute(x, target=0)
    assert hook_count(model) == hooks and attention_functions() == functions
    assert torch._C._len_torch_function_stack() == 0
    # without attention required, the other rules run (GELU in the MLP)
    relp = ComponentRelevancePatching(model, comps, require_attention=False).attribute(x, target=0)
    assert torch.isfinite(relp).all() and hook_count(model) == hooks
    # a forward function that runs submodules only is checked when the pass ends
    neurons = linear_neurons(model, ["mlp.0"])
    with pytest.raises(TypeError, match="reached no attention it recognises"):
        ComponentRelevancePatching(lambda v: model.head(model.mlp(model.embed(v)).mean(1)),
                                   neurons).attribute(x, target=0)
    assert hook_count(model) == hooks


def test_norm_with_an_unknown_formula_is_refused():
    class ScaledLayerNorm(nn.Module):
        def forward(self, x):
            return 3 * x / x.norm(dim=-1, keepdim=True)

    model = nn.Sequential(nn.Linear(3, 4), ScaledLayerNorm(), nn.Linear(4, 2))
    comps = linear_neurons(model, ["0"])
    with pytest.raises(ValueError, match="the LN rule cannot be applied"):
        ComponentRelevancePatching(model, comps, require_attention=False).attribute(
            torch.randn(2, 3), target=0)
    assert hook_count(model) == 0
