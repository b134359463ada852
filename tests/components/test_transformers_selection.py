"""Selection on transformers: defaults, summary, kind vocabulary, MLP-neuron and tied-weight
semantics, explicit names and the errors that replace silent miscounts."""

import copy
import warnings

import pytest
import torch
import transformers as T
from torch import nn
from toy_models import tiny_gpt2

from captum_coar import ComponentSet, ablated, attention_heads, linear_neurons
from captum_coar.selectors import mlp_neurons


def tiny_llama():
    torch.manual_seed(0)
    config = T.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           hidden_size=32, intermediate_size=48, vocab_size=40)
    return T.LlamaForCausalLM(config).eval()


def test_transformer_default_is_heads_and_mlp_neurons_only():
    model = tiny_gpt2()
    components = ComponentSet.from_model(model)
    names = [g.module_name for g in components]
    assert names == ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj",
                     "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_proj"]
    assert [g.kind for g in components] == ["head", "mlp_neuron"] * 2
    assert components.n_components == 2 * 4 + 2 * 128
    assert components.labels[4] == "transformer.h.0.mlp.c_proj/mlp_neuron[0]"
    # a model without a config keeps the general default (conv, Linear neurons, heads)
    plain = nn.Sequential(nn.Linear(3, 4))
    assert ComponentSet.from_model(plain).groups[0].kind == "neuron"


def test_llama_gqa_counts_query_heads_and_each_mlp_unit_once():
    model = tiny_llama()
    components = ComponentSet.from_model(model)
    assert [(g.module_name.split(".")[-1], g.n_units, g.unit_size) for g in components] == [
        ("o_proj", 4, 8), ("down_proj", 48, 1)] * 2


def test_summary_lists_kinds_groups_and_counts():
    components = ComponentSet.from_model(tiny_gpt2())
    text = components.summary()
    lines = text.splitlines()
    assert lines[0] == "GPT2LMHeadModel: 264 components in 4 groups"
    assert "attention_heads" in lines[1] and "2 groups x      4 =         8" in lines[1]
    assert "mlp_neurons" in lines[2] and "2 groups x    128 =       256" in lines[2]
    assert "transformer.h.0.mlp.c_proj ... transformer.h.1.mlp.c_proj" in lines[2]


def test_large_selection_and_tied_weights_warn():
    model = tiny_gpt2()
    with pytest.warns(UserWarning, match=r"'lm_head' shares its weight with \['transformer.wte'\]"):
        linear_neurons(model, ["lm_head"])
    import captum_coar.selectors as selectors

    old = selectors.LARGE_SELECTION
    selectors.LARGE_SELECTION = 100
    try:
        with pytest.warns(UserWarning, match="selected 264 components in 4 groups"):
            ComponentSet.from_model(model)
    finally:
        selectors.LARGE_SELECTION = old
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ComponentSet.from_model(model)  # 264 components, no tied weight: silent


def test_subset_uses_the_from_model_vocabulary():
    model = T.BartForConditionalGeneration(T.BartConfig(
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        d_model=16, encoder_ffn_dim=24, decoder_ffn_dim=24, vocab_size=30,
        max_position_embeddings=16))
    full = ComponentSet.from_model(model)
    heads, columns = full.subset(kinds="attention_heads")
    assert sorted({g.kind for g in heads}) == ["cross_head", "head"] and heads.n_components == 6
    cross = [g.module_name for g in heads if g.kind == "cross_head"]
    assert cross == ["model.decoder.layers.0.encoder_attn.out_proj"]
    assert [full.labels[int(c)] for c in columns] == heads.labels
    neurons, _ = full.subset(kinds=["mlp_neurons"])
    assert neurons.n_components == 48 and {g.kind for g in neurons} == {"mlp_neuron"}
    assert full.subset(kinds=["head"])[0].n_components == 6  # unit word = its kind
    with pytest.raises(ValueError, match="`kinds` must be kinds from .*got \\['heads'\\]"):
        full.subset(kinds="heads")


def test_mlp_neuron_weights_ablation_is_the_down_projection_column():
    """GPT-2 (bias + GELU): gating = zeroing c_proj's input row (Conv1D) and differs from
    zeroing the up projection's column; Llama (no bias, SiLU gate): gating = zeroing the
    gate projection's row as well."""
    model = tiny_gpt2()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias.normal_()  # GPT-2 starts with zero biases
    neurons = mlp_neurons(model, ["transformer.h.0.mlp.c_proj"])
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    keep = torch.ones(neurons.n_components, dtype=torch.bool)
    keep[[3, 17]] = False
    with torch.no_grad():
        with ablated(neurons, keep):
            gated = model(ids).logits
        down = copy.deepcopy(model)
        down.transformer.h[0].mlp.c_proj.weight[[3, 17], :] = 0
        up = copy.deepcopy(model)
        up.transformer.h[0].mlp.c_fc.weight[:, [3, 17]] = 0
        torch.testing.assert_close(gated, down(ids).logits, rtol=1e-5, atol=1e-6)
        assert (gated - up(ids).logits).abs().max() > 1e-5  # gelu(bias) != 0

    llama = tiny_llama()
    units = ComponentSet.from_model(llama, kinds="mlp_neurons", include="model.layers.1.*")
    keep = torch.ones(units.n_components, dtype=torch.bool)
    keep[[0, 5, 40]] = False
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with ablated(units, keep):
            gated = llama(ids).logits
        gate_row = copy.deepcopy(llama)
        gate_row.model.layers[1].mlp.gate_proj.weight[[0, 5, 40], :] = 0
        torch.testing.assert_close(gated, gate_row(ids).logits, rtol=1e-5, atol=1e-6)


def test_explicit_names_and_errors_instead_of_wrong_counts():
    model = T.BertModel(T.BertConfig(num_hidden_layers=1, num_attention_heads=4, hidden_size=16,
                                     intermediate_size=24, vocab_size=30))
    # the attention core holds q/k/v only; its projection is the sibling attention.output.dense
    heads = attention_heads(model, ["encoder.layer.0.attention.self"])
    assert [(g.module_name, g.n_units) for g in heads] == [
        ("encoder.layer.0.attention.output.dense", 4)]
    with pytest.raises(TypeError, match="mlp_neurons .* expects nn.Linear"):
        mlp_neurons(model, ["encoder.layer.0.attention"])

    class Odd(nn.Module):  # states its heads, but its maps fit no q/k/v layout
        def __init__(self):
            super().__init__()
            self.num_heads = 4
            self.a = nn.Linear(16, 20)
            self.b = nn.Linear(20, 16)

    odd = nn.Sequential(Odd())
    with pytest.raises(ValueError, match=r"attention module '0' \(Odd\) was found but none of"
                                         r" its Linear maps \(a: 16 -> 20, b: 20 -> 16\).*16 = 4"
                                         r" heads x 4.*names=\{'<output projection>': n_heads\}"):
        attention_heads(odd)


def _moe_config(cls, **extra):
    return cls(vocab_size=50, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, num_experts_per_tok=2, **extra)


def test_mixture_of_experts_experts_selected_never_counted_as_dense_mlps():
    torch.manual_seed(0)
    # Mixtral: fused expert weights only -> the default takes heads + routed experts; MLP
    # neurons alone are refused with the kinds that work
    mixtral = T.MixtralForCausalLM(_moe_config(T.MixtralConfig, num_local_experts=4)).eval()
    default = ComponentSet.from_model(mixtral)
    assert [(g.kind, g.n_units) for g in default] == [("head", 4), ("expert", 4)] * 2
    with pytest.raises(ValueError, match=r"mixture-of-experts.*model\.layers\.0\.mlp\.experts"
                       r".*kinds=\['attention_heads', 'mlp_neurons', 'moe_experts'\]"):
        ComponentSet.from_model(mixtral, kinds=["mlp_neurons"])
    heads = ComponentSet.from_model(mixtral, kinds=["attention_heads"])
    assert heads.n_components == 2 * 4
    # Qwen2-MoE: a dense shared expert beside the experts -> its neurons are MLP neurons; asked
    # for without the experts, a warning says they are left out
    qwen = T.Qwen2MoeForCausalLM(_moe_config(
        T.Qwen2MoeConfig, num_experts=4, moe_intermediate_size=8,
        shared_expert_intermediate_size=16)).eval()
    with pytest.warns(UserWarning, match="covers only the 2 dense MLP.*'moe_experts'"):
        components = ComponentSet.from_model(qwen, kinds=["attention_heads", "mlp_neurons"])
    mlps = [g.module_name for g in components if g.kind == "mlp_neuron"]
    assert mlps == [f"model.layers.{i}.mlp.shared_expert.down_proj" for i in range(2)]
    assert {g.kind for g in ComponentSet.from_model(qwen)} == {"head", "mlp_neuron", "expert"}


def test_expert_containers_are_found_by_structure_and_shared_experts_are_not():
    from captum_coar._transformers import find_expert_blocks

    def mlp():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

    class Block(nn.Module):
        def __init__(self, container):
            super().__init__()
            self.router = nn.Linear(8, 3)
            self.experts = container
            self.shared_expert = mlp()

    model = nn.Sequential(Block(nn.ModuleList([mlp() for _ in range(3)])),
                          Block(nn.ModuleDict({str(i): mlp() for i in range(3)})),
                          mlp())
    assert find_expert_blocks(model) == ["0.experts", "1.experts"]
    assert find_expert_blocks(nn.Sequential(mlp(), mlp())) == []
