"""Heads, MLP neurons and routed experts in 26 more transformers families, from tiny configs.

Families with fused projections (Phi-3's ``qkv_proj`` and ``gate_up_proj``, CodeGen's
multi-partition ``qkv_proj``, GLM's ``gate_up_proj``, MPT's ``Wqkv``), output projections
defined before the query/key/value maps, shared layers (ALBERT), relative-position encoders
(DeBERTa-v2, BEiT), latent attention (DeepSeek-V2) and mixture-of-experts blocks (fused 3-d
expert weights: OLMoE, Qwen3-MoE, PhiMoE, GraniteMoE, GPT-OSS with expert biases, DeepSeek-V2;
one module per expert: Switch Transformers). For each: the default
selection finds layers x heads, layers x intermediate MLP neurons and layers x experts, and
gating a random 30% of them equals zeroing their weights by hand on a deep copy (the helpers
of ``test_transformers_architectures.py``).
"""

import pytest
import torch
import transformers as T
from test_transformers_architectures import (
    D,
    H,
    L,
    V,
    _seq2seq,
    _tokens,
    assert_gated_equals_zeroed,
    count_kinds,
)

from captum_coar import ComponentSet

pytestmark = pytest.mark.slow

FF = 48  # MLP intermediate size
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
DECODER = dict(num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=2, hidden_size=D,
               intermediate_size=FF, vocab_size=V, **IDS)
ENCODER = dict(num_hidden_layers=L, num_attention_heads=H, hidden_size=D, intermediate_size=FF,
               vocab_size=V, pad_token_id=0)
MOE = dict(DECODER, intermediate_size=16, num_experts_per_tok=2)
GPT = dict(n_layer=L, n_head=H, n_embd=D, vocab_size=V, n_positions=16, bos_token_id=1,
           eos_token_id=2)


def _pixels(model):
    return {"pixel_values": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))}


def _vision(cls):
    return lambda: cls(num_hidden_layers=L, num_attention_heads=H, hidden_size=D,
                       intermediate_size=FF, image_size=8, patch_size=4)


def _heads(n=L * H, cross=0):
    return {"head": n, **({"cross_head": cross} if cross else {})}


# family: (config, model class, inputs, {unit kind: count} of the default selection)
FAMILIES = {
    "phi3": (lambda: T.Phi3Config(**DECODER), T.Phi3ForCausalLM, _tokens,
             {**_heads(), "mlp_neuron": L * FF}),
    "codegen": (lambda: T.CodeGenConfig(rotary_dim=4, **GPT), T.CodeGenForCausalLM, _tokens,
                {**_heads(), "mlp_neuron": L * 4 * D}),
    "gptj": (lambda: T.GPTJConfig(rotary_dim=4, **GPT), T.GPTJForCausalLM, _tokens,
             {**_heads(), "mlp_neuron": L * 4 * D}),
    "bloom": (lambda: T.BloomConfig(n_layer=L, n_head=H, hidden_size=D, vocab_size=V, **IDS),
              T.BloomForCausalLM, _tokens, {**_heads(), "mlp_neuron": L * 4 * D}),
    "stablelm": (lambda: T.StableLmConfig(**DECODER), T.StableLmForCausalLM, _tokens,
                 {**_heads(), "mlp_neuron": L * FF}),
    "gemma": (lambda: T.GemmaConfig(head_dim=8, **DECODER), T.GemmaForCausalLM, _tokens,
              {**_heads(), "mlp_neuron": L * FF}),
    "gemma2": (lambda: T.Gemma2Config(head_dim=8, **DECODER), T.Gemma2ForCausalLM, _tokens,
               {**_heads(), "mlp_neuron": L * FF}),
    "olmo": (lambda: T.OlmoConfig(**DECODER), T.OlmoForCausalLM, _tokens,
             {**_heads(), "mlp_neuron": L * FF}),
    "starcoder2": (lambda: T.Starcoder2Config(**DECODER), T.Starcoder2ForCausalLM, _tokens,
                   {**_heads(), "mlp_neuron": L * FF}),
    "phi": (lambda: T.PhiConfig(**DECODER), T.PhiForCausalLM, _tokens,
            {**_heads(), "mlp_neuron": L * FF}),
    "glm": (lambda: T.GlmConfig(head_dim=8, **DECODER), T.GlmForCausalLM, _tokens,
            {**_heads(), "mlp_neuron": L * FF}),
    "mpt": (lambda: T.MptConfig(n_layers=L, n_heads=H, d_model=D, vocab_size=V, max_seq_len=16),
            T.MptForCausalLM, _tokens, {**_heads(), "mlp_neuron": L * 4 * D}),
    "electra": (lambda: T.ElectraConfig(embedding_size=D, **ENCODER),
                T.ElectraForSequenceClassification, _tokens, {**_heads(), "mlp_neuron": L * FF}),
    "deberta_v2": (lambda: T.DebertaV2Config(**ENCODER), T.DebertaV2ForSequenceClassification,
                   _tokens, {**_heads(), "mlp_neuron": L * FF}),
    "xlm_roberta": (lambda: T.XLMRobertaConfig(max_position_embeddings=20, **ENCODER),
                    T.XLMRobertaForSequenceClassification, _tokens,
                    {**_heads(), "mlp_neuron": L * FF}),
    # ALBERT shares one layer across its L passes: one group, gated on every pass
    "albert": (lambda: T.AlbertConfig(embedding_size=16, **ENCODER),
               T.AlbertForSequenceClassification, _tokens, {**_heads(H), "mlp_neuron": FF}),
    "deit": (_vision(T.DeiTConfig), T.DeiTForImageClassification, _pixels,
             {**_heads(), "mlp_neuron": L * FF}),
    "beit": (_vision(T.BeitConfig), T.BeitForImageClassification, _pixels,
             {**_heads(), "mlp_neuron": L * FF}),
    "mbart": (lambda: T.MBartConfig(encoder_layers=L, decoder_layers=L, encoder_attention_heads=H,
                                    decoder_attention_heads=H, d_model=D, encoder_ffn_dim=FF,
                                    decoder_ffn_dim=FF, vocab_size=V, max_position_embeddings=16),
              T.MBartForConditionalGeneration, _seq2seq,
              {**_heads(2 * L * H, cross=L * H), "mlp_neuron": 2 * L * FF}),
    "olmoe": (lambda: T.OlmoeConfig(num_experts=4, **MOE), T.OlmoeForCausalLM, _tokens,
              {**_heads(), "expert": L * 4}),
    "qwen3_moe": (lambda: T.Qwen3MoeConfig(num_experts=4, moe_intermediate_size=8, head_dim=8,
                                           **MOE), T.Qwen3MoeForCausalLM, _tokens,
                  {**_heads(), "expert": L * 4}),
    "phimoe": (lambda: T.PhimoeConfig(num_local_experts=4, **MOE), T.PhimoeForCausalLM, _tokens,
               {**_heads(), "expert": L * 4}),
    "granitemoe": (lambda: T.GraniteMoeConfig(num_local_experts=4, **MOE),
                   T.GraniteMoeForCausalLM, _tokens, {**_heads(), "expert": L * 4}),
    "gpt_oss": (lambda: T.GptOssConfig(num_local_experts=4, head_dim=8, **MOE),
                T.GptOssForCausalLM, _tokens, {**_heads(), "expert": L * 4}),
    # latent attention (o_proj reads heads x v_head_dim); layer 0 dense, layer 1 experts + a
    # shared expert (8 MLP neurons)
    "deepseek_v2": (lambda: T.DeepseekV2Config(
        n_routed_experts=4, moe_intermediate_size=8, first_k_dense_replace=1, n_shared_experts=1,
        kv_lora_rank=8, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=6,
        **dict(DECODER, num_key_value_heads=H, num_experts_per_tok=2)),
        T.DeepseekV2ForCausalLM, _tokens, {**_heads(), "mlp_neuron": FF + 8, "expert": 4}),
    # every feed-forward block sparse; each expert its own module, one-hot routing
    "switch_transformers": (
        lambda: T.SwitchTransformersConfig(
            num_layers=L, num_decoder_layers=L, num_heads=H, d_model=D, d_kv=8, d_ff=FF,
            vocab_size=V, num_experts=4, expert_capacity=64, encoder_sparse_step=1,
            decoder_sparse_step=1, decoder_start_token_id=0),
        T.SwitchTransformersForConditionalGeneration, _seq2seq,
        {**_heads(2 * L * H, cross=L * H), "expert": 2 * L * 4}),
}


def build(family):
    config_fn, cls, inputs_fn, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = cls(config_fn()).eval()
    return model, inputs_fn(model)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_default_selection_found_and_gated_equals_zeroed(family):
    model, inputs = build(family)
    components = ComponentSet.from_model(model)
    assert count_kinds(components) == FAMILIES[family][3]
    assert_gated_equals_zeroed(model, components, inputs)
