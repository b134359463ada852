"""Dictionary latents (SAE / transcoder) as components: exact at all gates on, each latent's
ablation equal to removing its decoded contribution by hand, every gate method over latents,
patching by hand, identity and refusals."""

import copy
import json

import pytest
import torch
from toy_models import assert_close, assert_unchanged, hook_count, snapshot, tiny_gpt2

from captum_coar import (
    ComponentAblation,
    ComponentAblationRegression,
    ComponentAtPStar,
    ComponentAttributionPatching,
    ComponentGroup,
    ComponentIntegratedGradients,
    ComponentRelevancePatching,
    Dictionary,
    GatedForward,
    SparseAutoencoder,
    ablated,
    counterfactual_correlation,
    dictionary_latents,
    train_sparse_autoencoder,
    zero_components,
)
from captum_coar.ablation import MeanAblation
from captum_coar.baselines import (
    ComponentConductance,
    ComponentGradientXParameter,
    ComponentInternalInfluence,
)
from captum_coar.editing import apply_edit, edited_state_dict
from captum_coar.edits import ablate_persistently
from captum_coar.positions import at_positions
from captum_coar.selectors import attention_heads
from captum_coar.testing import AdditiveNet, check_attribution_method

MLP0, MLP1, BLOCK0 = "transformer.h.0.mlp", "transformer.h.1.mlp", "transformer.h.0"
N_LATENTS = 24


def random_sae(d_in, n_latents=N_LATENTS, d_out=None, seed=0):
    """An untrained SAE whose latents are active about half the time."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sae = SparseAutoencoder(d_in, n_latents, d_out).eval()
        with torch.no_grad():
            sae.W_enc.normal_(0, d_in ** -0.5)
            sae.b_enc.uniform_(-0.2, 0.2)
            sae.b_dec.normal_(0, 0.1)
    return sae


@pytest.fixture
def gpt2():
    model = tiny_gpt2(n_layer=2, n_head=4, n_embd=16, vocab=30)
    with torch.no_grad():  # large weights: sharp attention, effects far from linear
        g = torch.Generator().manual_seed(3)
        for name, p in model.named_parameters():
            if p.dim() == 2 and "wpe" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    ids = torch.randint(0, 30, (3, 7), generator=torch.Generator().manual_seed(1))
    corrupt = torch.randint(0, 30, (3, 7), generator=torch.Generator().manual_seed(2))
    target = torch.tensor([3, 11, 20])
    return model, (lambda x: model(x).logits[:, -1]), ids, corrupt, target


def by_hand(model, module_name, sae, edit, ids, transcoder=False, change=None):
    """Last logits with ``z -> edit(z)`` at the site and ``a + (dec(z') - dec(z))`` (or
    ``a + change(z)``), by a plain hook."""
    def hook(module, args, output):
        z = sae.encode(args[0] if transcoder else output)
        if change is not None:
            return output + change(z)
        return output + (sae.decode(edit(z.clone())) - sae.decode(z))
    handle = model.get_submodule(module_name).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(ids).logits[:, -1]
    finally:
        handle.remove()


def sae_sets(model):
    """(name, components, module, sae, transcoder) for an SAE on an MLP output, on the residual
    stream after a block, on the MLP hidden units (input site) and a transcoder."""
    on_mlp, on_resid = random_sae(16, seed=1), random_sae(16, seed=2)
    hidden, transcoder = random_sae(64, seed=3), random_sae(16, seed=4)
    return [
        ("mlp output", dictionary_latents(model, {MLP1: Dictionary(on_mlp)}), MLP1, on_mlp, False),
        ("residual", dictionary_latents(model, {BLOCK0: Dictionary(on_resid)}, output_index=0),
         None, on_resid, False),
        ("mlp hidden (input site)", dictionary_latents(
            model, {"transformer.h.1.mlp.c_proj": Dictionary(hidden)}, site="input"),
         None, hidden, False),
        ("transcoder", dictionary_latents(model, {MLP0: Dictionary(transcoder, transcoder=True)}),
         MLP0, transcoder, True),
    ]


# ------------------------------------------------------------------ exactness
def test_all_gates_on_is_exactly_the_original_model(gpt2):
    model, forward, ids, _, target = gpt2
    with torch.no_grad():
        reference = forward(ids)
    for name, components, _, _, _ in sae_sets(model):
        with torch.no_grad(), ablated(components, torch.ones(components.n_components)):
            kept = forward(ids)
        assert (kept - reference).abs().max().item() == 0.0, name
        gates = torch.ones(1, components.n_components, requires_grad=True)
        with ablated(components, gates):  # with autograd through the gates too
            kept = forward(ids)
        assert (kept - reference).abs().max().item() <= 1e-6, name


def test_one_latent_off_removes_exactly_its_decoded_contribution(gpt2):
    model, forward, ids, _, _ = gpt2
    for name, components, module, sae, transcoder in sae_sets(model):
        if module is None:
            continue
        changed = 0
        for latent in (0, 7, N_LATENTS - 1):
            keep = torch.ones(components.n_components, dtype=torch.bool)
            keep[latent] = False
            with torch.no_grad(), ablated(components, keep):
                gated = forward(ids)

            def edit(z, latent=latent):
                z[..., latent] = 0
                return z
            hand = by_hand(model, module, sae, edit, ids, transcoder)
            assert (gated - hand).abs().max().item() == 0.0, (name, latent)
            subtracted = by_hand(model, module, sae, None, ids, transcoder,
                                 change=lambda z, i=latent, s=sae: -z[..., i:i + 1] * s.W_dec[i])
            assert_close(gated, subtracted, rtol=1e-5)  # a - z_i W_dec[i], up to rounding
            changed += int((gated - forward(ids)).abs().max().item() > 1e-3)
        assert changed, f"{name}: no ablation changed the output; the test would not fail"


def test_transcoder_reads_the_module_input(gpt2):
    model, _, ids, _, _ = gpt2
    seen, inputs = {}, {}
    sae = random_sae(16, seed=5)

    def encode(x):
        seen["x"] = x
        return sae.encode(x)
    dictionary = Dictionary(encode, sae.decode, transcoder=True, parameters=[sae],
                            n_latents=N_LATENTS)
    components = dictionary_latents(model, {MLP0: dictionary})
    handle = model.get_submodule(MLP0).register_forward_pre_hook(
        lambda m, args: inputs.update(x=args[0]))
    with torch.no_grad(), ablated(components, torch.zeros(N_LATENTS)):
        model(ids)
    handle.remove()
    assert torch.equal(seen["x"], inputs["x"])


def test_float64_model_with_a_float32_dictionary(gpt2):
    model, forward, ids, _, _ = gpt2
    model = copy.deepcopy(model).double()
    components = dictionary_latents(model, {MLP1: Dictionary(random_sae(16))})
    with torch.no_grad():
        reference = model(ids).logits
        with ablated(components, torch.ones(N_LATENTS)):
            kept = model(ids).logits
    assert torch.equal(kept, reference) and kept.dtype == torch.float64


# ------------------------------------------------------------------ additive toy: known answers
def additive_toy():
    """AdditiveNet with an overcomplete SAE on ``hidden``: logits are exactly additive in the
    latents' gates; latent i contributes ``readout.weight[c] . W_dec[i] * z_i``."""
    model = AdditiveNet(n_in=5, n_hidden=7).eval()
    sae = random_sae(7, n_latents=12, seed=6)
    components = dictionary_latents(model, {"hidden": Dictionary(sae)})
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        z = sae.encode(model.hidden(x))
        truth = z * (model.readout.weight[target] @ sae.W_dec.T)
    assert (truth.abs() > 1e-3).sum() > 20  # many latents matter
    return model, components, x, target, truth


@pytest.mark.parametrize("make, kwargs", [
    (lambda m, c: ComponentAblation(m, c), {}),
    (lambda m, c: ComponentAttributionPatching(m, c), {}),
    (lambda m, c: ComponentIntegratedGradients(m, c), {"n_steps": 8}),
    (lambda m, c: ComponentAblationRegression(m, c), {"n_masks": 200, "ablation_fraction": 0.3}),
    (lambda m, c: ComponentRelevancePatching(m, c, require_attention=False), {}),
], ids=["leave-one-out", "AtP", "gate IG", "COAR", "RelP"])
def test_every_gate_method_recovers_the_exact_latent_effects(make, kwargs):
    model, components, x, target, truth = additive_toy()
    result = make(model, components).attribute(x, target=target, output="logit", **kwargs)
    assert_close(result, truth, rtol=1e-4, atol_scale=1e-4)


def identity_dictionary(model, components):
    """Latents = the hidden neurons minus their bias: ablating latent j (r = 0) is the
    'weights' ablation of neuron j, so the contract's exact answer applies (plain callables)."""
    bias = model.hidden.bias
    return dictionary_latents(model, {"hidden": Dictionary(
        lambda h: h - bias, lambda z: z + bias, n_latents=components.n_components,
        parameters=[bias], name="identity")})


@pytest.mark.parametrize("make, kwargs", [
    (ComponentAblation, {}),
    (ComponentAttributionPatching, {}),
    (ComponentIntegratedGradients, {"n_steps": 8}),
    (ComponentAblationRegression, {"n_masks": 60, "ablation_fraction": 0.3}),
], ids=["leave-one-out", "AtP", "gate IG", "COAR"])
def test_methods_over_latents_pass_the_attribution_contract(make, kwargs):
    check_attribution_method(lambda m, c: make(m, identity_dictionary(m, c)), exact=True,
                             **kwargs)


def test_counterfactual_correlation_over_latents_is_one_on_the_additive_toy():
    model, components, x, target, truth = additive_toy()
    scores = counterfactual_correlation(model, components, x, {"truth": truth}, target=target,
                                        output="logit", ablation_fractions=(0.3,), n_masks=30)
    assert scores.mean()[0][0] > 0.9999


# ------------------------------------------------------------------ strategies and patching
def test_baselines_patch_each_latent_from_the_paired_example(gpt2):
    model, forward, ids, corrupt, target = gpt2
    sae = random_sae(16, seed=7)
    components = dictionary_latents(model, {MLP0: Dictionary(sae)})
    effects = ComponentAblation(forward, components).attribute(
        ids, target=target, output="logit", baselines=corrupt)
    stored = {}
    handle = model.get_submodule(MLP0).register_forward_hook(
        lambda m, a, o: stored.update(z=sae.encode(o)))
    with torch.no_grad():
        model(corrupt)
    handle.remove()
    clean = forward(ids).gather(1, target[:, None])[:, 0]
    for latent in range(N_LATENTS):
        def edit(z, latent=latent):
            z[..., latent] = stored["z"][..., latent]
            return z
        patched = by_hand(model, MLP0, sae, edit, ids).gather(1, target[:, None])[:, 0]
        assert_close(effects[:, latent], (clean - patched).detach(), atol_scale=1e-5)
    assert effects.abs().max() > 1e-2


def test_mean_ablation_uses_the_mean_latent_and_weights_equals_zero(gpt2):
    model, forward, ids, corrupt, target = gpt2
    sae = random_sae(16, seed=8)
    components = dictionary_latents(model, {MLP1: Dictionary(sae)})
    keep = torch.ones(N_LATENTS, dtype=torch.bool)
    keep[[2, 9]] = False
    with torch.no_grad():
        z = {}
        handle = model.get_submodule(MLP1).register_forward_hook(
            lambda m, a, o: z.update(z=sae.encode(o)))
        model(corrupt)
        handle.remove()
        mean = z["z"].mean(dim=(0, 1))
        with ablated(components, keep, MeanAblation(corrupt), forward_func=model):
            gated = forward(ids)

    def edit(latents):
        latents[..., [2, 9]] = mean[[2, 9]]
        return latents
    assert (gated - by_hand(model, MLP1, sae, edit, ids)).abs().max() <= 1e-6
    with torch.no_grad(), ablated(components, keep, "weights"):
        weights = forward(ids)
    with torch.no_grad(), ablated(components, keep, "zero"):
        zero = forward(ids)
    assert torch.equal(weights, zero) and not torch.allclose(weights, gated)


def test_latents_at_a_token_position(gpt2):
    model, forward, ids, _, _ = gpt2
    sae = random_sae(16, seed=9)
    components = dictionary_latents(model, {MLP0: Dictionary(sae)}, positions=(-1, 2))
    assert components.labels[N_LATENTS + 4] == f"{MLP0}/latent[4]@2"
    assert at_positions(dictionary_latents(model, {MLP0: Dictionary(sae)}),
                        (-1, 2)).fingerprint == components.fingerprint
    keep = torch.ones(components.n_components, dtype=torch.bool)
    keep[4] = False  # latent 4 at the last position only
    with torch.no_grad(), ablated(components, keep):
        gated = model(ids).logits

    def hook(module, args, output):
        z = sae.encode(output)
        edited = z.clone()
        edited[:, -1, 4] = 0
        return output + (sae.decode(edited) - sae.decode(z))
    handle = model.get_submodule(MLP0).register_forward_hook(hook)
    with torch.no_grad():
        hand = model(ids).logits
    handle.remove()
    assert (gated - hand).abs().max() <= 1e-6
    assert torch.equal(gated[:, :-1], model(ids).logits[:, :-1])


def test_atp_star_fixes_latents_and_matches_atp_after_the_last_attention(gpt2):
    model, forward, ids, corrupt, target = gpt2
    early = dictionary_latents(model, {MLP0: Dictionary(random_sae(16, seed=10))})
    late = dictionary_latents(model, {MLP1: Dictionary(random_sae(16, seed=11))})
    args = dict(target=target, output="logit")
    star = ComponentAtPStar(forward, late).attribute(ids, qk_fix="all", **args)
    atp = ComponentAttributionPatching(forward, late).attribute(ids, **args)
    assert_close(star, atp, atol_scale=1e-5)  # no attention after the last MLP
    star = ComponentAtPStar(forward, early).attribute(ids, qk_fix="all", baselines=corrupt,
                                                      **args)
    atp = ComponentAttributionPatching(forward, early).attribute(ids, baselines=corrupt, **args)
    loo = ComponentAblation(forward, early).attribute(ids, baselines=corrupt, **args)
    assert (star - atp).abs().max() > 0.05  # the exact softmax of layer 1 moved the estimates
    assert (star - loo).abs().mean() < (atp - loo).abs().mean()


# ------------------------------------------------------------------ interop and edits
def test_gated_forward_and_persistent_hooks_over_latents(gpt2):
    model, forward, ids, _, _ = gpt2
    components = dictionary_latents(model, {MLP1: Dictionary(random_sae(16, seed=12))})
    keep = torch.ones(N_LATENTS)
    keep[[1, 5, 6]] = 0
    with torch.no_grad():
        reference = forward(ids)
        with ablated(components, keep):
            gated = forward(ids)
        gated_forward = GatedForward(forward, components)
        assert torch.equal(gated_forward(torch.ones(1, N_LATENTS), ids), reference)
        assert torch.equal(gated_forward(keep[None], ids), gated)
        before, hooks_before = snapshot(model), hook_count(model)
        hooks = ablate_persistently(components, keep, ablation="zero")
        assert torch.equal(forward(ids), gated) and not torch.equal(gated, reference)
        hooks.remove()
        assert torch.equal(forward(ids), reference) and hook_count(model) == hooks_before
        assert_unchanged(model, before)


def test_weight_edits_and_summing_methods_refuse_latents(gpt2):
    model, forward, ids, _, target = gpt2
    components = dictionary_latents(model, {MLP1: Dictionary(random_sae(16, seed=13))})
    keep = torch.ones(N_LATENTS, dtype=torch.bool)
    keep[0] = False
    for edit in (lambda: zero_components(components, keep),
                 lambda: apply_edit(components, [0]),
                 lambda: edited_state_dict(components, [0], ablation="zero")):
        with pytest.raises(ValueError, match="no slice of any weight.*ablate_persistently"):
            edit()
    x = model.transformer.wte(ids).detach()

    def embeds(e):
        return model(inputs_embeds=e).logits[:, -1]
    for method in (ComponentConductance, ComponentInternalInfluence,
                   ComponentGradientXParameter):
        with pytest.raises(ValueError, match="latent is no slice.*ComponentAblation"):
            method(embeds, components).attribute(x, target=target, output="logit")


# ------------------------------------------------------------------ identity and declaration
def test_identity_survives_combination_and_tells_dictionaries_apart(gpt2):
    model, forward, ids, _, target = gpt2
    sae = random_sae(16, seed=14)
    latents = dictionary_latents(model, {MLP1: Dictionary(sae)})
    again = dictionary_latents(model, {MLP1: Dictionary(random_sae(16, seed=14))})
    other = dictionary_latents(model, {MLP1: Dictionary(random_sae(16, seed=15))})
    assert latents.fingerprint == again.fingerprint != other.fingerprint
    heads = attention_heads(model)
    both = heads + latents
    assert both.labels[-1] == f"{MLP1}/latent[{N_LATENTS - 1}]"
    sub, columns = both.subset(kinds="latent")
    assert sub.fingerprint == latents.fingerprint
    assert torch.equal(columns, torch.arange(heads.n_components, both.n_components))
    described = json.loads(json.dumps(both.describe()))
    assert "dictionary" not in described[0]
    assert described[-1]["dictionary"]["parameters"] == latents.groups[0].dictionary.parameters
    twin = copy.deepcopy(latents.groups[0].dictionary)
    assert twin == latents.groups[0].dictionary and twin._owners[0] is not sae
    coar = ComponentAblationRegression(forward, both).attribute(
        ids, target=target, output="logit", n_masks=40, ablation_fraction=0.2)
    assert coar.shape == (3, both.n_components) and torch.isfinite(coar).all()


def test_a_dictionary_changed_after_declaration_is_refused(gpt2):
    model, forward, ids, _, _ = gpt2
    sae = random_sae(16, seed=16)
    components = dictionary_latents(model, {MLP1: Dictionary(sae)})
    with torch.no_grad():
        sae.b_enc.add_(0.1)
    with pytest.raises(RuntimeError, match="changed after it was declared"):
        with torch.no_grad(), ablated(components, torch.ones(N_LATENTS)):
            forward(ids)


def test_declarations_that_cannot_work_are_refused(gpt2):
    model, _, ids, _, _ = gpt2
    sae = random_sae(16)
    with pytest.raises(ValueError, match="site='output'"):
        dictionary_latents(model, {MLP0: Dictionary(sae, transcoder=True)}, site="input")
    with pytest.raises(ValueError, match="reads a module's output or input"):
        dictionary_latents(model, {MLP0: Dictionary(sae)}, site="routing")
    with pytest.raises(ValueError, match="n_units=5"):
        ComponentGroup(MLP0, "latent", 5, dictionary=Dictionary(sae))
    with pytest.raises(ValueError, match="parameters="):
        Dictionary(lambda x: x, lambda z: z, n_latents=16)
    with pytest.raises(TypeError, match="encode"):
        Dictionary(torch.nn.Linear(2, 2))
    wrong = dictionary_latents(model, {MLP0: Dictionary(sae.encode, sae.decode, n_latents=30)})
    with pytest.raises(ValueError, match=r"expected \(3, 7, 30\)"):
        with torch.no_grad(), ablated(wrong, torch.ones(30)):
            model(ids)


# ------------------------------------------------------------------ the SAE module
def test_sparse_autoencoder_loads_released_weights_and_trains():
    sae = random_sae(6, n_latents=10, seed=17)
    loaded = SparseAutoencoder.from_weights(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    x = torch.randn(4, 6)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    with pytest.raises(ValueError, match="transpose"):
        SparseAutoencoder.from_weights(sae.W_enc.T, sae.b_enc, sae.W_dec, sae.b_dec)
    jump = SparseAutoencoder.from_weights(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec,
                                          activation="jumprelu", threshold=torch.full((10,), 0.1))
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert torch.equal(jump.encode(x), pre * (pre > 0.1))
    top = SparseAutoencoder.from_weights(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec,
                                         activation="topk", k=2)
    assert ((top.encode(x) > 0).sum(dim=-1) <= 2).all()
    assert Dictionary(top).parameters != Dictionary(loaded).parameters  # same tensors, other k
    # data made of 3 sparse directions: a trained SAE explains most of it
    g = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(512, 3, generator=g)) * (torch.rand(512, 3, generator=g) < 0.4)
    data = codes @ torch.randn(3, 6, generator=g)
    trained = train_sparse_autoencoder(data, 8, steps=300, l1=1e-3)
    assert trained.explained_variance_ > 0.9 and not trained.training
