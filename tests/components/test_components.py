"""ComponentSet: selection, labels, index maps, splitting, fingerprints and bad specs."""

import pytest
import torch
from torch import nn
from toy_models import AttentionClassifier, ConvNet, tiny_gpt2

from captum_coar import ComponentGroup, ComponentSet, attention_heads, conv_filters, linear_neurons


def test_from_model_selects_kinds_in_module_order_with_labels():
    model = ConvNet()
    components = ComponentSet.from_model(model)
    assert [g.module_name for g in components] == ["conv1", "conv2", "fc1", "fc2"]
    assert components.n_components == 8 + 16 + 16 + 10 == len(components.labels)
    assert components.labels[8 + 3] == "conv2/filter[3]"
    assert components.label(24) == "fc1/neuron[0]"
    convs = ComponentSet.from_model(model, kinds=("conv_filters",), exclude="conv1")
    assert [g.module_name for g in convs] == ["conv2"]
    fcs = ComponentSet.from_model(model, kinds="linear_neurons", include=["fc*"], exclude=lambda n: n == "fc2")
    assert [g.module_name for g in fcs] == ["fc1"]


def test_index_maps_round_trip_and_split():
    components = ComponentSet.from_model(ConvNet())
    for i in range(components.n_components):
        position, unit = components.locate(i)
        assert components.index(components.groups[position].module_name, unit) == i
    values = torch.arange(2 * components.n_components).reshape(2, -1)
    parts = components.split(values)
    assert list(parts) == ["conv1", "conv2", "fc1", "fc2"]
    assert torch.equal(torch.cat(list(parts.values()), dim=1), values)
    assert parts["conv2"].shape == (2, 16)
    with pytest.raises(IndexError, match="out of range"):
        components.locate(components.n_components)
    with pytest.raises(ValueError, match="last axis has 50 components"):
        components.split(torch.zeros(2, 3))


def test_fingerprint_changes_when_components_change():
    model = ConvNet()
    a = ComponentSet.from_model(model)
    assert a.fingerprint == ComponentSet.from_model(model).fingerprint
    assert a.fingerprint != ComponentSet.from_model(model, exclude="fc2").fingerprint
    assert a.fingerprint != ComponentSet.from_model(ConvNet(width=4)).fingerprint


def test_gpt2_selection_heads_and_conv1d_neurons():
    model = tiny_gpt2()
    components = ComponentSet.from_model(model, kinds=("attention_heads", "linear_neurons"),
                                         include="transformer.h.*")
    names = [g.module_name for g in components]
    assert "transformer.h.0.attn.c_proj" in names and "transformer.h.0.mlp.c_fc" in names
    heads = [g for g in components if g.kind == "head"]
    assert all(g.n_units == 4 and g.unit_size == 8 and g.site == "input" for g in heads)
    # Conv1D neurons ablate output features: nf of them, whatever the [in, out] storage
    fc = next(g for g in components if g.module_name == "transformer.h.0.mlp.c_fc")
    assert fc.n_units == model.transformer.h[0].mlp.c_fc.nf == 128


def test_multihead_attention_heads_are_found_at_out_proj():
    model = AttentionClassifier(torch_mha=True)
    heads = attention_heads(model)
    assert heads.labels == [f"attn.out_proj/head[{h}]" for h in range(4)]
    everything = ComponentSet.from_model(model)
    assert "attn.out_proj" in [g.module_name for g in everything if g.kind == "head"]
    assert not any(g.module_name == "attn.out_proj" and g.kind == "neuron" for g in everything)


def test_bad_specs_raise_clear_errors():
    model = AttentionClassifier()
    with pytest.raises(ValueError, match="no module named 'atn'.*did you mean"):
        linear_neurons(model, ["atn"])
    with pytest.raises(TypeError, match="'embed' is Linear; conv_filters expects"):
        conv_filters(model, ["embed"])
    with pytest.raises(TypeError, match="'mlp.1' is GELU; linear_neurons expects"):
        linear_neurons(model, ["mlp.1"])
    with pytest.raises(ValueError, match="input width 16, which 3 heads do not divide"):
        attention_heads(model, {"attn.proj": 3})
    with pytest.raises(ValueError, match="does not state its number of heads"):
        attention_heads(model, ["mlp.0"])
    with pytest.raises(TypeError, match="attention_heads expects an attention module"):
        attention_heads(model, ["mlp"])
    with pytest.raises(ValueError, match="at least one group"):
        ComponentSet(model, [])
    with pytest.raises(ValueError, match="no components of kinds"):
        ComponentSet.from_model(model, kinds=("conv_filters",))
    with pytest.raises(ValueError, match="kinds=.*not allowed"):
        ComponentSet.from_model(model, kinds=("filters",))
    with pytest.raises(ValueError, match="site='middle' is not allowed"):
        ComponentGroup("embed", "neuron", 16, site="middle")
    with pytest.raises(ValueError, match="listed twice"):
        ComponentSet(model, [ComponentGroup("embed", "neuron", 16)] * 2)
    with pytest.raises(ValueError, match="found no attention module in Sequential"):
        attention_heads(nn.Sequential(nn.Linear(2, 2)))


def test_subset_by_kind_and_name_maps_columns_back():
    model = tiny_gpt2()
    full = ComponentSet.from_model(model, kinds=("attention_heads", "linear_neurons"),
                                   include="transformer.h.*")
    heads, columns = full.subset(kinds=["head"])
    assert all(g.kind == "head" for g in heads) and heads.n_components == 8
    assert [full.labels[int(c)] for c in columns] == heads.labels
    first, cols0 = full.subset(include="transformer.h.0.*", exclude="*c_attn")
    assert {g.module_name for g in first} == {"transformer.h.0.attn.c_proj",
                                              "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"}
    assert [full.labels[int(c)] for c in cols0] == first.labels
    with pytest.raises(ValueError, match="no group matches kinds=\\['filter'\\]"):
        full.subset(kinds=["filter"])
