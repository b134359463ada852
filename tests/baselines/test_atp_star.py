"""AtP*: against exact leave-one-out where attention saturates; reductions to AtP; GradDrop."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import captum_coar.language_outputs  # noqa: F401  (registers the language-model outputs)
from captum_coar import ComponentAblation, ComponentAttributionPatching, ComponentSet
from captum_coar.baselines.atp_star import ComponentAtPStar


def saturated_gpt2(n_layer=2, seed=0):
    """Small weights except queries and keys (x10): attention patterns are near one-hot."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=2, n_embd=16, vocab_size=20, n_positions=16,
                        initializer_range=0.1, resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :32] *= 10  # query and key columns of the fused map
    ids = torch.randint(0, 20, (6, 8), generator=torch.Generator().manual_seed(seed))
    return model, ids, torch.arange(6)


def corr(a, b):
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


def test_qk_fix_recovers_leave_one_out_where_attribution_patching_fails():
    model, ids, tokens = saturated_gpt2()
    heads = ComponentSet.from_model(model, kinds="attention_heads")
    args = dict(target=tokens, output="token_log_prob")
    exact = ComponentAblation(model, heads).attribute(ids, **args)
    atp = ComponentAttributionPatching(model, heads).attribute(ids, **args)
    star = ComponentAtPStar(model, heads).attribute(ids, **args)
    first = slice(0, 2)  # layer-0 heads act through layer 1's queries and keys
    assert corr(atp[:, first], exact[:, first]) < 0.5
    assert corr(star[:, first], exact[:, first]) > 0.9
    assert (star - exact)[:, first].abs().mean() < 0.5 * (atp - exact)[:, first].abs().mean()
    # layer-1 heads feed no later attention: the QK fix changes nothing there
    torch.testing.assert_close(star[:, 2:], atp[:, 2:], rtol=1e-4, atol=1e-6)
    assert model.config._attn_implementation == "sdpa"  # restored


def test_without_the_qk_fix_or_later_attention_it_is_attribution_patching():
    model, ids, tokens = saturated_gpt2()
    components = ComponentSet.from_model(model)  # heads + MLP neurons
    args = dict(target=tokens, output="token_log_prob")
    atp = ComponentAttributionPatching(model, components).attribute(ids, **args)
    none = ComponentAtPStar(model, components).attribute(ids, qk_fix="none", **args)
    torch.testing.assert_close(none, atp, rtol=1e-5, atol=1e-6)
    one_layer, ids1, _ = saturated_gpt2(n_layer=1)
    comps1 = ComponentSet.from_model(one_layer)
    torch.testing.assert_close(
        ComponentAtPStar(one_layer, comps1).attribute(ids1, qk_fix="all", **args),
        ComponentAttributionPatching(one_layer, comps1).attribute(ids1, **args),
        rtol=1e-4, atol=1e-6)


def test_grad_drop_magnitudes_known_answer_for_the_last_block():
    """With two blocks, a last-block component's only outside block is block 0, upstream of
    it: dropping block 0's gradient leaves its estimate unchanged, so GradDrop = |AtP*|."""
    model, ids, tokens = saturated_gpt2()
    components = ComponentSet.from_model(model)
    args = dict(target=tokens, output="token_log_prob")
    star = ComponentAtPStar(model, components).attribute(ids, **args)
    dropped = ComponentAtPStar(model, components).attribute(ids, grad_drop=True, **args)
    last = torch.tensor([g.module_name.startswith("transformer.h.1.") for g in components.groups
                         for _ in range(g.n_units)])
    torch.testing.assert_close(dropped[:, last], star[:, last].abs(), rtol=1e-4, atol=1e-6)
    assert (dropped >= 0).all()
    # block-0 components: block 1's gradient dropped removes the paths through block 1
    assert not torch.allclose(dropped[:, ~last], star[:, ~last].abs(), atol=1e-4)


def test_refuses_models_without_the_attention_interface_and_restores_config():
    from toy_models import AttentionClassifier

    model = AttentionClassifier().eval()
    components = ComponentSet.from_model(model, kinds="attention_heads")
    with pytest.raises(TypeError, match="Hugging Face model with a config"):
        ComponentAtPStar(model, components).attribute(torch.randn(2, 6, 3), target=0)
    gpt2, ids, tokens = saturated_gpt2()
    heads = ComponentSet.from_model(gpt2, kinds="attention_heads")
    with pytest.raises(ValueError, match="`qk_fix` must be one of"):
        ComponentAtPStar(gpt2, heads).attribute(ids, target=tokens, qk_fix="some")
    with pytest.raises(ValueError, match="eval mode"):
        gpt2.config.attn_pdrop = 0.1
        train = GPT2LMHeadModel(gpt2.config).train()
        ComponentAtPStar(train, ComponentSet.from_model(train, kinds="attention_heads")
                         ).attribute(ids, target=tokens, output="token_log_prob")
    assert gpt2.config._attn_implementation == "sdpa"


def test_left_padding_gives_each_row_its_unpadded_estimate():
    from captum_coar.language_outputs import LanguageModelForward

    model, ids, tokens = saturated_gpt2()
    heads = ComponentSet.from_model(model, kinds="attention_heads")
    forward = LanguageModelForward(model)
    rows = [ids[0, :8], ids[1, 3:]]  # lengths 8 and 5
    padded = torch.zeros(2, 8, dtype=torch.long)
    mask = torch.zeros(2, 8, dtype=torch.long)
    for i, r in enumerate(rows):
        padded[i, 8 - len(r):], mask[i, 8 - len(r):] = r, 1
    together = ComponentAtPStar(forward, heads).attribute(
        (padded, mask), target=tokens[:2], output="token_log_prob")[0]
    for i, r in enumerate(rows):
        alone = ComponentAtPStar(forward, heads).attribute(
            (r[None], torch.ones(1, len(r), dtype=torch.long)), target=tokens[i:i + 1],
            output="token_log_prob")[0]
        assert torch.isfinite(together[i]).all()
        torch.testing.assert_close(together[i], alone[0], rtol=1e-4, atol=1e-5)


def test_qk_fix_through_output_site_neurons_of_fresh_conv1d_outputs():
    """Neurons gated at a Conv1D *output* (in-place fast path of the gates) under forward-mode AD:
    the gates must not write into a dual tensor, and the QK fix must still run."""
    from captum_coar import linear_neurons

    model, ids, tokens = saturated_gpt2()
    heads = ComponentSet.from_model(model, kinds="attention_heads")
    fc = linear_neurons(model, ["transformer.h.0.mlp.c_fc"])
    components = ComponentSet(model, list(heads.groups) + list(fc.groups))
    args = dict(target=tokens, output="token_log_prob")
    star = ComponentAtPStar(model, components).attribute(ids, qk_fix="all", **args)
    exact = ComponentAblation(model, components).attribute(ids, **args)
    assert star.shape == exact.shape and torch.isfinite(star).all()
    assert corr(star[:, :2], exact[:, :2]) > 0.9  # the layer-0 heads, as without the neurons


def test_atp_star_runs_on_mixture_of_experts_with_fused_kernels_and_restores_them():
    from transformers import MixtralConfig, MixtralForCausalLM

    from captum_coar import ComponentAblation, ComponentAtPStar, attention_heads

    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
        intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, vocab_size=40,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=0)).eval()
    before = model.config._experts_implementation
    ids, target = torch.randint(1, 40, (3, 6)), torch.randint(1, 40, (3,))
    components = attention_heads(model)
    forward = lambda x: model(x).logits  # noqa: E731
    star = ComponentAtPStar(forward, components).attribute(ids, target=target,
                                                           output="token_log_prob")
    exact = ComponentAblation(forward, components).attribute(ids, target=target,
                                                             output="token_log_prob")
    assert model.config._experts_implementation == before
    assert torch.corrcoef(torch.stack([star.flatten(), exact.flatten()]))[0, 1] > 0.9
