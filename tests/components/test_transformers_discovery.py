"""Finding heads and MLP neurons from what gating needs (captum_coar._transformers).

Toy attention cores and MLPs whose answer is known by construction: the output projection is
found whatever the module order (fused q/k/v defined after it, as in CodeGen and Phi-3),
names only break ties between same-shaped maps, fused gate/up MLPs (``D -> 2I``) and up
projections defined after the down projection are found, and what cannot be told apart is
refused with the by-hand recipe.
"""

import pytest
import torch
import transformers as T
from torch import nn

from captum_coar import ComponentSet, attention_heads, mlp_neurons
from captum_coar._transformers import find_attention, find_mlp_down_projections


class Core(nn.Module):
    """States 4 heads of size 4 (q = 16) and holds the named maps, in the order given."""

    def __init__(self, **maps):
        super().__init__()
        self.num_heads, self.head_dim = 4, 4
        for name, (width_in, width_out) in maps.items():
            setattr(self, name, nn.Linear(width_in, width_out))


def _site(core):
    (site,) = find_attention(nn.Sequential(core))
    return site.projection_name.rpartition(".")[2], site.n_heads, site.head_dim


def test_the_output_projection_is_found_whatever_the_module_order():
    # fused q/k/v after the output projection (CodeGen, Phi-3), names saying nothing
    assert _site(Core(a=(16, 16), b=(16, 48))) == ("a", 4, 4)
    assert _site(Core(a=(16, 16), b=(16, 32))) == ("a", 4, 4)  # grouped-query q + 2 kv
    # separate same-shaped maps: the one not named like an input, first or last
    assert _site(Core(o=(16, 16), q=(16, 16), k=(16, 16), v=(16, 16))) == ("o", 4, 4)
    assert _site(Core(q_proj=(16, 16), k_proj=(16, 8), v_proj=(16, 8), dense=(16, 16))) == (
        "dense", 4, 4)


def test_maps_named_like_inputs_are_never_the_output_projection_and_errors_say_what_to_do():
    # every map named like an input, and nothing after the core: refused, never "v"
    with pytest.raises(ValueError, match=r"attention module '0' \(Core\) was found but 4 of its"
                       r" Linear maps .* could each consume its 16 = 4 heads x 4 features.*"
                       r"attention_heads\(model, names=\{'<output projection>': n_heads\}\)"):
        find_attention(nn.Sequential(Core(q=(16, 16), k=(16, 16), v=(16, 16), wq=(16, 16))))
    model = nn.Sequential(Core(a=(16, 20), b=(20, 16)))
    with pytest.raises(ValueError, match=r"none of its Linear maps \(a: 16 -> 20, b: 20 -> 16\)"):
        attention_heads(model)
    # the by-hand recipe of the message works
    assert attention_heads(model, names={"0.b": 4}).n_components == 4


class FusedMLP(nn.Module):
    def __init__(self, order):
        super().__init__()
        maps = {"gate_up": nn.Linear(8, 24), "down": nn.Linear(12, 8)}
        for name in order:
            setattr(self, name, maps[name])


class Block(nn.Module):
    def __init__(self, order):
        super().__init__()
        self.attn = Core(qkv=(8, 24), o=(8, 8))
        self.attn.num_heads, self.attn.head_dim = 2, 4
        self.mlp = FusedMLP(order)


@pytest.mark.parametrize("order", [("gate_up", "down"), ("down", "gate_up")])
def test_fused_gate_up_mlps_are_found_in_either_module_order(order):
    model = nn.Sequential(Block(order), Block(order))
    sites = find_attention(model)
    assert [s.projection_name for s in sites] == ["0.attn.o", "1.attn.o"]
    assert find_mlp_down_projections(model, sites) == ["0.mlp.down", "1.mlp.down"]
    assert mlp_neurons(model).n_components == 2 * 12


def test_phi3_and_codegen_heads_sit_at_their_output_projections():
    torch.manual_seed(0)
    phi3 = T.Phi3ForCausalLM(T.Phi3Config(num_hidden_layers=1, num_attention_heads=4,
                                          num_key_value_heads=2, hidden_size=32,
                                          intermediate_size=48, vocab_size=40, pad_token_id=0))
    codegen = T.CodeGenForCausalLM(T.CodeGenConfig(n_layer=1, n_head=4, n_embd=32,
                                                   vocab_size=40, n_positions=16, rotary_dim=4,
                                                   bos_token_id=1, eos_token_id=2))
    assert [(g.module_name, g.kind, g.n_units) for g in ComponentSet.from_model(phi3)] == [
        ("model.layers.0.self_attn.o_proj", "head", 4),  # not mlp.gate_up_proj (32 -> 96)
        ("model.layers.0.mlp.down_proj", "mlp_neuron", 48)]
    assert [(g.module_name, g.kind, g.n_units) for g in ComponentSet.from_model(codegen)] == [
        ("transformer.h.0.attn.out_proj", "head", 4),
        ("transformer.h.0.mlp.fc_out", "mlp_neuron", 128)]


def test_a_missing_mlp_down_projection_is_named_with_the_by_hand_recipe():
    class Odd(nn.Module):  # attention + an MLP whose up map (8 -> 36) is no D -> I or D -> 2I
        def __init__(self):
            super().__init__()
            self.config = T.PretrainedConfig(num_attention_heads=2)
            self.attn = Core(qkv=(8, 24), o=(8, 8))
            self.attn.num_heads, self.attn.head_dim = 2, 4
            self.up, self.down = nn.Linear(8, 36), nn.Linear(12, 8)

    model = Odd()
    with pytest.raises(ValueError, match=r"found 1 attention modules in Odd but no MLP down"
                       r" projection .*fused gate/up D -> 2I.*mlp_neurons\(model, names=\[...\]\)"):
        ComponentSet.from_model(model)
    assert mlp_neurons(model, names=["down"]).n_components == 12
