"""PyTorch transformer modules under gates: padded fast paths, dropout, tuple outputs."""

import copy

import pytest
import torch
from torch import nn

from captum_coar import ComponentGroup, ComponentSet, ablated


def encoder(batch_first=True):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2)


def padded_batch():
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True
    pad[2, 4:] = True
    return x, pad


def test_padded_encoder_in_eval_mode_is_gated_like_zeroed_weights():
    model = encoder().eval()
    components = ComponentSet.from_model(model, kinds=("attention_heads", "mlp_neurons"))
    assert [g.kind for g in components] == ["head", "mlp_neuron", "head", "mlp_neuron"]
    x, pad = padded_batch()
    real = ~pad
    keep = torch.rand(components.n_components, generator=torch.Generator().manual_seed(2)) > 0.4
    before = torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad():
        plain = model(x, src_key_padding_mask=pad)  # PyTorch's nested-tensor fast path
        with ablated(components, torch.ones(components.n_components)):
            assert not torch.backends.mha.get_fastpath_enabled()
            kept = model(x, src_key_padding_mask=pad)
        with ablated(components, keep):
            gated = model(x, src_key_padding_mask=pad)
        edited = copy.deepcopy(model)
        modules = dict(edited.named_modules())
        for position, group in enumerate(components.groups):
            for unit in range(group.n_units):
                if not keep[components.offsets[position] + unit]:
                    cols = slice(unit * group.unit_size, (unit + 1) * group.unit_size)
                    modules[group.module_name].weight[:, cols] = 0
        zeroed = edited(x, src_key_padding_mask=pad)
    assert torch.backends.mha.get_fastpath_enabled() == before
    torch.testing.assert_close(kept[real], plain[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gated[real], zeroed[real], rtol=1e-5, atol=1e-5)
    assert (gated[real] - plain[real]).abs().max() > 1e-2


def test_fast_path_setting_is_restored_after_an_exception():
    model = encoder().eval()
    components = ComponentSet.from_model(model, kinds=("attention_heads",))
    before = torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(RuntimeError, match="boom"):
        with ablated(components, torch.ones(components.n_components)):
            raise RuntimeError("boom")
    assert torch.backends.mha.get_fastpath_enabled() == before


@pytest.mark.parametrize("batch_first", [True, False])
def test_all_gates_one_reproduce_train_mode_bit_for_bit(batch_first):
    model = encoder(batch_first).train()
    components = ComponentSet.from_model(model, kinds=("attention_heads", "mlp_neurons"))
    x, pad = padded_batch()
    if not batch_first:
        x = x.transpose(0, 1)
    torch.manual_seed(5)
    plain = model(x, src_key_padding_mask=pad)
    with ablated(components, torch.ones(components.n_components)):
        torch.manual_seed(5)
        gated = model(x, src_key_padding_mask=pad)
    assert torch.equal(plain, gated)


def test_gpt2_train_mode_with_dropout_bit_for_bit():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=50,
                                       n_positions=16, attn_pdrop=0.2, resid_pdrop=0.2,
                                       embd_pdrop=0.2, attn_implementation="eager")).train()
    components = ComponentSet.from_model(model)
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(9)
    plain = model(ids).logits
    with ablated(components, torch.ones(components.n_components)):
        torch.manual_seed(9)
        gated = model(ids).logits
    assert torch.equal(plain, gated)


def test_tuple_output_modules_are_refused_with_the_alternative():
    model = nn.Sequential(nn.LSTM(4, 6, batch_first=True))
    components = ComponentSet(model, [ComponentGroup("0", "neuron", 6)])
    with pytest.raises(TypeError, match=r"module '0' \(LSTM\) gave a tuple of 2 items as its"
                                        r" output;.*tuple outputs are not.*site='input'"):
        with ablated(components, torch.ones(6)):
            model(torch.randn(2, 3, 4))
    assert not model[0]._forward_hooks
