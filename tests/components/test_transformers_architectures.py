"""Heads and MLP neurons found in 15 transformers families built from tiny configs, and the
heads, routed experts and any dense MLP beside them of two mixture-of-experts families
(more families: ``test_transformers_architectures_more.py``, which shares these helpers).

For every family: the heads found equal layers x heads per attention role (query heads for
grouped- and multi-query attention; self and cross attention in separately labelled groups),
the MLP neurons found equal layers x intermediate size, and gating a random set of heads and
MLP neurons gives the same logits as zeroing the matching input columns of the output / down
projections on a deep copy (and, for experts, every weight of the expert).
"""

import copy
import warnings

import pytest
import torch
import transformers as T

from captum_coar import ComponentSet, ablated

pytestmark = pytest.mark.slow

V, D, H, L = 40, 32, 4, 2


def _ids(batch=2, length=6, seed=0):
    return torch.randint(1, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def _tokens(model):
    return {"input_ids": _ids()}


def _seq2seq(model):
    return {"input_ids": _ids(), "decoder_input_ids": _ids(length=5, seed=1)}


# family: (config, model class, inputs, {role: heads}, mlp neurons, intermediate per layer)
FAMILIES = {
    "gpt2": (lambda: T.GPT2Config(n_layer=L, n_head=H, n_embd=D, vocab_size=V, n_positions=16,
                                  bos_token_id=0, eos_token_id=0), T.GPT2LMHeadModel, _tokens,
             {"head": L * H}, L * 4 * D),
    "gpt_neox": (lambda: T.GPTNeoXConfig(num_hidden_layers=L, num_attention_heads=H,
                                         hidden_size=D, intermediate_size=48, vocab_size=V,
                                         max_position_embeddings=16),
                 T.GPTNeoXForCausalLM, _tokens, {"head": L * H}, L * 48),
    "llama_gqa": (lambda: T.LlamaConfig(num_hidden_layers=L, num_attention_heads=H,
                                        num_key_value_heads=2, hidden_size=D,
                                        intermediate_size=48, vocab_size=V),
                  T.LlamaForCausalLM, _tokens, {"head": L * H}, L * 48),
    "mistral": (lambda: T.MistralConfig(num_hidden_layers=L, num_attention_heads=H,
                                        num_key_value_heads=1, hidden_size=D,
                                        intermediate_size=40, vocab_size=V),
                T.MistralForCausalLM, _tokens, {"head": L * H}, L * 40),
    "qwen2": (lambda: T.Qwen2Config(num_hidden_layers=L, num_attention_heads=H,
                                    num_key_value_heads=2, hidden_size=D, intermediate_size=40,
                                    vocab_size=V), T.Qwen2ForCausalLM, _tokens,
              {"head": L * H}, L * 40),
    "falcon_mqa": (lambda: T.FalconConfig(num_hidden_layers=L, num_attention_heads=H,
                                          hidden_size=D, vocab_size=V, multi_query=True,
                                          new_decoder_architecture=False),
                   T.FalconForCausalLM, _tokens, {"head": L * H}, L * 4 * D),
    "gpt_bigcode_mqa": (lambda: T.GPTBigCodeConfig(n_layer=L, n_head=H, n_embd=D, vocab_size=V,
                                                   n_positions=16, multi_query=True),
                        T.GPTBigCodeForCausalLM, _tokens, {"head": L * H}, L * 4 * D),
    "opt": (lambda: T.OPTConfig(num_hidden_layers=L, num_attention_heads=H, hidden_size=D,
                                ffn_dim=48, vocab_size=V, word_embed_proj_dim=D,
                                max_position_embeddings=16), T.OPTForCausalLM, _tokens,
            {"head": L * H}, L * 48),
    "bert": (lambda: T.BertConfig(num_hidden_layers=L, num_attention_heads=H, hidden_size=D,
                                  intermediate_size=48, vocab_size=V),
             T.BertForSequenceClassification, _tokens, {"head": L * H}, L * 48),
    "roberta": (lambda: T.RobertaConfig(num_hidden_layers=L, num_attention_heads=H,
                                        hidden_size=D, intermediate_size=48, vocab_size=V,
                                        max_position_embeddings=20, pad_token_id=0),
                T.RobertaForSequenceClassification, _tokens, {"head": L * H}, L * 48),
    "distilbert": (lambda: T.DistilBertConfig(n_layers=L, n_heads=H, dim=D, hidden_dim=48,
                                              vocab_size=V),
                   T.DistilBertForSequenceClassification, _tokens, {"head": L * H}, L * 48),
    "vit": (lambda: T.ViTConfig(num_hidden_layers=L, num_attention_heads=H, hidden_size=D,
                                intermediate_size=48, image_size=8, patch_size=4),
            T.ViTForImageClassification,
            lambda m: {"pixel_values": torch.randn(2, 3, 8, 8,
                                                   generator=torch.Generator().manual_seed(0))},
            {"head": L * H}, L * 48),
    "t5": (lambda: T.T5Config(num_layers=L, num_decoder_layers=L, num_heads=H, d_model=D,
                              d_kv=8, d_ff=48, vocab_size=V, decoder_start_token_id=0),
           T.T5ForConditionalGeneration, _seq2seq, {"head": 2 * L * H, "cross_head": L * H},
           2 * L * 48),
    "bart": (lambda: T.BartConfig(encoder_layers=L, decoder_layers=L, encoder_attention_heads=H,
                                  decoder_attention_heads=H, d_model=D, encoder_ffn_dim=48,
                                  decoder_ffn_dim=48, vocab_size=V, max_position_embeddings=16),
             T.BartForConditionalGeneration, _seq2seq, {"head": 2 * L * H, "cross_head": L * H},
             2 * L * 48),
    "whisper": (lambda: T.WhisperConfig(encoder_layers=L, decoder_layers=L,
                                        encoder_attention_heads=H, decoder_attention_heads=H,
                                        d_model=D, encoder_ffn_dim=48, decoder_ffn_dim=48,
                                        vocab_size=V, num_mel_bins=8, max_source_positions=8,
                                        max_target_positions=16, pad_token_id=0,
                                        bos_token_id=1, eos_token_id=2,
                                        decoder_start_token_id=1),
                T.WhisperForConditionalGeneration,
                lambda m: {"input_features": torch.randn(2, 8, 16, generator=torch.Generator()
                                                         .manual_seed(0)),
                           "decoder_input_ids": _ids(length=5, seed=1)},
                {"head": 2 * L * H, "cross_head": L * H}, 2 * L * 48),
}


def build(family):
    config_fn, cls, inputs_fn, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = config_fn()
    model = cls(config).eval()
    return model, inputs_fn(model)


def zero_input_columns(model, components, keep):
    """A deep copy with every ablated unit's weights zeroed: the input columns of heads and MLP
    neurons; every weight and bias of a routed expert (its slice of fused 3-d weights, or all
    parameters of its own module), so that expert's output is 0."""
    edited = copy.deepcopy(model)
    modules = dict(edited.named_modules())
    with torch.no_grad():
        for position, group in enumerate(components.groups):
            module = modules[group.module_name]
            for unit in range(group.n_units):
                if keep[components.offsets[position] + unit]:
                    continue
                if group.kind == "expert":
                    zero_expert(module, unit, group.n_units)
                    continue
                cols = slice(unit * group.unit_size, (unit + 1) * group.unit_size)
                if type(module).__name__ == "Conv1D":  # weight [in, out]
                    module.weight[cols, :] = 0
                else:
                    module.weight[:, cols] = 0
    return edited


def zero_expert(container, expert, n_experts):
    fused = [p for p in container.parameters(recurse=False) if p.dim() >= 2
             and p.shape[0] == n_experts]
    if fused:
        for parameter in fused:
            parameter[expert] = 0
    else:
        for parameter in list(container.children())[expert].parameters():
            parameter.zero_()


def count_kinds(components):
    found = {}
    for group in components.groups:
        found[group.kind] = found.get(group.kind, 0) + group.n_units
    return found


def assert_gated_equals_zeroed(model, components, inputs):
    """Gating a random 30% of the components gives the logits of a deep copy with their
    weights zeroed, and changes the logits by far more than the tolerance; returns the largest
    difference relative to the largest logit."""
    keep = torch.rand(components.n_components,
                      generator=torch.Generator().manual_seed(3)) > 0.3
    with torch.no_grad():
        with ablated(components, keep):
            gated = model(**inputs).logits
        zeroed = zero_input_columns(model, components, keep)(**inputs).logits
        plain = model(**inputs).logits
    scale = plain.abs().max().item()
    torch.testing.assert_close(gated, zeroed, rtol=1e-5, atol=1e-6 * scale)
    assert (gated - plain).abs().max() > 1e-3 * scale
    return (gated - zeroed).abs().max().item() / scale


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_heads_and_mlp_neurons_found_and_gated_equals_zeroed(family):
    model, inputs = build(family)
    components = ComponentSet.from_model(model)  # default for transformers: heads + MLP neurons
    expected_heads, expected_neurons = FAMILIES[family][3], FAMILIES[family][4]
    found = count_kinds(components)
    assert found == {**expected_heads, "mlp_neuron": expected_neurons}, found
    assert all(g.site == "input" for g in components.groups)
    assert_gated_equals_zeroed(model, components, inputs)


MOE = {
    "mixtral": (lambda: T.MixtralConfig(num_hidden_layers=L, num_attention_heads=H,
                                        num_key_value_heads=2, hidden_size=D, intermediate_size=16,
                                        vocab_size=V, num_local_experts=4,
                                        num_experts_per_tok=2),
                T.MixtralForCausalLM, {"head": L * H, "expert": L * 4}),
    "qwen2_moe": (lambda: T.Qwen2MoeConfig(num_hidden_layers=L, num_attention_heads=H,
                                           num_key_value_heads=2, hidden_size=D,
                                           intermediate_size=16, moe_intermediate_size=8,
                                           shared_expert_intermediate_size=24, vocab_size=V,
                                           num_experts=4, num_experts_per_tok=2),
                  T.Qwen2MoeForCausalLM, {"head": L * H, "mlp_neuron": L * 24, "expert": L * 4}),
}


@pytest.mark.parametrize("family", sorted(MOE))
def test_mixture_of_experts_heads_experts_and_dense_neurons_gated_equals_zeroed(family):
    config_fn, cls, expected = MOE[family]
    torch.manual_seed(0)
    model = cls(config_fn()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the experts are selected, so nothing is left out
        components = ComponentSet.from_model(model)
    assert count_kinds(components) == expected
    assert {g.site for g in components.groups if g.kind == "expert"} == {"routing"}
    assert_gated_equals_zeroed(model, components, _tokens(model))
