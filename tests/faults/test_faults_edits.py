"""Faults in weight edits: parameters replaced, converted or reshaped after an edit, and tied
weights. Each fault is handled correctly (checked against the values before the edit, bit for
bit) or refused with an error naming the parameter and what changed, leaving the model as it was.
"""

import copy
import warnings

import pytest
import torch
from torch import nn
from toy_models import ConvNet, assert_unchanged, randomise_batchnorm, snapshot, tiny_gpt2

from captum_coar import ComponentSet
from captum_coar.editing import apply_edit, edited_state_dict
from captum_coar.edits import ablate_persistently
from captum_coar.selectors import conv_filters, linear_neurons


@pytest.fixture
def edited():
    """A ConvNet, its conv filters, the state before any edit and an edit of filters 1, 2, 7."""
    model = randomise_batchnorm(ConvNet())
    components = conv_filters(model)
    before = snapshot(model)
    return model, components, before, apply_edit(components, [1, 2, 7])


def test_undo_after_load_state_dict_with_assign(edited):
    model, _, before, edit = edited
    model.load_state_dict(copy.deepcopy(model.state_dict()), assign=True)  # new tensor objects
    assert not model.conv1.weight[1].any()
    edit.undo()
    assert_unchanged(model, before)


def test_undo_after_a_new_parameter_is_assigned(edited):
    model, _, before, edit = edited
    model.conv1.weight = nn.Parameter(model.conv1.weight.detach().clone())
    edit.undo()
    assert_unchanged(model, before)


@pytest.mark.parametrize("overwrite", [False, True])
def test_undo_after_double_restores_the_original_values_in_float64(edited, overwrite):
    """With overwrite on conversion, ``.double()`` makes new parameter objects."""
    model, _, before, edit = edited
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
    try:
        weight = model.conv1.weight
        model.double()
        assert (model.conv1.weight is weight) != overwrite
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)
    edit.undo()
    assert_unchanged(model, {k: v.double() if v.is_floating_point() else v for k, v in before.items()})


def test_second_edit_after_a_dtype_change_and_undo_in_any_order(edited):
    model, components, before, first = edited
    model.double()
    second = apply_edit(components, [2, 3])  # crashed: "Index put requires ... dtypes match"
    assert not model.conv1.weight[3].any() and not model.conv1.weight[1].any()
    first.undo()
    assert not model.conv1.weight[2].any() and model.conv1.weight[1].any()
    second.undo()
    assert_unchanged(model, {k: v.double() if v.is_floating_point() else v for k, v in before.items()})


def test_undo_refuses_a_lossy_dtype_and_changes_nothing(edited):
    model, _, before, edit = edited
    model.half()
    during = snapshot(model)
    with pytest.raises(RuntimeError, match=r"'conv1.weight' is now torch.float16, not torch.float32"):
        edit.undo()
    assert_unchanged(model, during)
    assert edit.active
    model.float()
    edit.undo()  # the ablated slices come back exactly; the rest went through float16
    for unit in (1, 2, 7):  # filters of conv1
        assert torch.equal(model.conv1.weight[unit], before["conv1.weight"][unit])


def test_undo_refuses_another_shape_and_changes_nothing(edited):
    model, _, _, edit = edited
    model.conv1.weight = nn.Parameter(torch.ones(8, 1, 5, 5))
    during = snapshot(model)
    with pytest.raises(RuntimeError, match=r"'conv1.weight' now has shape \(8, 1, 5, 5\), not"
                                           r" \(8, 1, 3, 3\)"):
        edit.undo()
    assert_unchanged(model, during)


def test_undo_refuses_a_removed_parameter(edited):
    model, _, _, edit = edited
    del model.conv1.weight
    with pytest.raises(RuntimeError, match="no parameter 'conv1.weight' any more"):
        edit.undo()


def test_edits_hold_no_parameter_objects(edited):
    model, _, _, edit = edited
    held = [value for entry in edit._saved for value in entry]
    assert not any(isinstance(value, torch.Tensor) for value in held)
    assert all(isinstance(name, str) for name, _ in edit._saved)


# ----------------------------------------------------------------------------- tied weights
TOKENS = [3, 5]


@pytest.fixture
def tied_gpt2():
    model = tiny_gpt2(n_layer=1, n_head=2, n_embd=8, vocab=16)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.transformer.wte.weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the selector's own tied-weight warning
        components = linear_neurons(model, ["lm_head"])
    ids = torch.tensor([[3, 1, 5, 2, 3], [5, 5, 0, 4, 1]])  # holds the ablated tokens
    keep = torch.ones(components.n_components, dtype=torch.bool)
    keep[TOKENS] = False
    with torch.no_grad(), ablate_persistently(components, keep) as gates:
        gated = model(ids).logits
    assert gates is not None
    return model, components, ids, gated


def _fresh(model, tie):
    config = copy.deepcopy(model.config)
    config.tie_word_embeddings = tie
    fresh = type(model)(config).eval()
    assert (fresh.lm_head.weight is fresh.transformer.wte.weight) == tie
    return fresh


def test_tied_export_warns_names_the_sharing_module_and_is_exact_untied(tied_gpt2):
    model, components, ids, gated = tied_gpt2
    before = snapshot(model)
    with pytest.warns(UserWarning, match=r"'lm_head.weight' shares its tensor with"
                                         r" \['transformer.wte.weight'\]"):
        state = edited_state_dict(components, TOKENS)
    assert_unchanged(model, before)  # the model itself is never written
    assert not state["lm_head.weight"][TOKENS].any()
    assert torch.equal(state["transformer.wte.weight"], before["transformer.wte.weight"])
    untied = _fresh(model, tie=False)
    untied.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(untied(ids).logits, gated, rtol=0, atol=1e-6)


def test_tied_export_loaded_into_a_tied_model_does_what_the_warning_says(tied_gpt2):
    """Tied: the last key written (lm_head.weight) wins, so embeddings 3 and 5 are zero too,
    as with the in-place edit."""
    model, components, ids, gated = tied_gpt2
    with pytest.warns(UserWarning, match=r"key written last \('lm_head.weight'.*also zeroes the"
                                         r" same entries of 'transformer.wte.weight'"):
        state = edited_state_dict(components, TOKENS)
    tied = _fresh(model, tie=True)
    tied.load_state_dict(state)
    assert not tied.transformer.wte.weight[TOKENS].any()
    with torch.no_grad():
        logits = tied(ids).logits
    assert (logits - gated).abs().max() > 1e-3  # differs from the gated model, as warned
    before = snapshot(model)  # the in-place edit does the same, and says so
    with pytest.warns(UserWarning, match=r"'lm_head.weight' is the same tensor as"
                                         r" \['transformer.wte.weight'\].*\['transformer.wte'\]"):
        edit = apply_edit(components, TOKENS)
    assert not model.transformer.wte.weight[TOKENS].any()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits, rtol=0, atol=1e-6)
    edit.undo()
    assert_unchanged(model, before)


def test_untied_export_does_not_warn():
    model = randomise_batchnorm(ConvNet())
    components = ComponentSet(model, conv_filters(model).groups)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = edited_state_dict(components, [0, 9])
    assert not state["conv1.weight"][0].any() and not state["conv2.weight"][1].any()
