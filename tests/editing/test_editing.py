"""COAR-Edit (captum_coar.editing): scores, selection, curves, choice of k, applying edits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from toy_models import ConvNet, assert_unchanged, hook_count, randomise_batchnorm, snapshot

from captum_coar import ComponentAblation, ComponentSet
from captum_coar.ablation import ConstantAblation
from captum_coar.editing import (
    apply_edit,
    choose_k,
    coar_edit,
    component_scores,
    edit_curve,
    edit_masks,
    edited_state_dict,
    select_components,
)
from captum_coar.editing_results import EditCurve
from captum_coar.engine import evaluate_masks

torch.set_num_threads(1)

TRIGGER = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])


class PlantedTrigger(nn.Module):
    """Filter 0 of ``features`` detects a 3x3 checker trigger and is wired to class 2 only."""

    def __init__(self, n_filters: int = 6, n_classes: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Conv2d(1, n_filters, 3, padding=1, bias=False)
        self.head = nn.Linear(n_filters, n_classes)
        with torch.no_grad():
            self.features.weight.copy_(torch.randn(n_filters, 1, 3, 3, generator=g) * 0.3)
            self.features.weight[0, 0] = TRIGGER
            self.head.weight.copy_(torch.randn(n_classes, n_filters, generator=g))
            self.head.weight[:, 0] = torch.tensor([0.0, 0.0, 20.0])
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.features(x) - torch.tensor([6.0, 0, 0, 0, 0, 0])[:, None, None])
        return self.head(h.amax(dim=(2, 3)))


def planted_data(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    triggered = clean.clone()
    triggered[:, 0, 1:4, 1:4] = TRIGGER * 2.0
    return clean, triggered


@pytest.fixture
def planted():
    model = PlantedTrigger().eval()
    components = ComponentSet.from_model(model, kinds=("conv_filters",))
    clean, triggered = planted_data()
    without_detector = copy.deepcopy(model)
    with torch.no_grad():
        without_detector.head.weight[:, 0] = 0
        labels = model(clean).argmax(1)  # the trigger filter is silent on clean images
        assert torch.equal(without_detector(clean).argmax(1), labels)
        labels_triggered = without_detector(triggered).argmax(1)  # behaviour without the plant
    return model, components, clean, triggered, labels, labels_triggered


def test_planted_trigger_ranked_first_and_removed(planted):
    model, components, clean, triggered, labels, labels_triggered = planted
    with torch.no_grad():
        assert (model(triggered).argmax(1) == 2).all()
        assert (labels_triggered != 2).float().mean() > 0.3
    loo = ComponentAblation(model, components)
    target = loo.attribute(triggered, target=labels_triggered)
    reference = loo.attribute(clean, target=labels)
    scores = component_scores(target, reference)
    assert select_components(scores, 1, direction="raise").tolist() == [0]
    result = coar_edit(model, components, target, reference, "raise", ks=range(1, 7),
                       validation=(triggered, labels_triggered, clean, labels), goal=0.99, tolerance=0.0)
    assert result.k == 1 and result.rule == "goal" and result.components.tolist() == [0]
    assert result.labels == [components.label(0)]
    assert result.before["target"] < 0.7 and result.after["target"] == 1.0
    before = snapshot(model)
    edit = apply_edit(components, result)
    with torch.no_grad():
        assert torch.equal(model(triggered).argmax(1), labels_triggered)
        assert torch.equal(model(clean).argmax(1), labels)
    edit.undo()
    assert_unchanged(model, before)


@pytest.fixture
def convnet():
    torch.manual_seed(0)
    model = randomise_batchnorm(ConvNet(width=4, n_classes=5))
    components = ComponentSet.from_model(model, kinds=("conv_filters",))
    x = torch.randn(10, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 5  # some wrong labels, so accuracy is not trivially 1
    return model, components, x, y


def _margins_by_hand(model, components, x, y, ablated, ablation="weights"):
    """Deep copy, zero the ablated filters' weights (and biases for "zero"), margin."""
    edited = copy.deepcopy(model)
    modules = dict(edited.named_modules())
    with torch.no_grad():
        for flat in ablated:
            position, unit = components.locate(int(flat))
            module = modules[components.groups[position].module_name]
            module.weight[unit] = 0
            if ablation == "zero" and module.bias is not None:
                module.bias[unit] = 0
        logits = edited(x)
    correct = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return correct - others


def test_curve_equals_separate_ablated_forwards(convnet):
    model, components, x, y = convnet
    order = torch.randperm(components.n_components, generator=torch.Generator().manual_seed(3))
    ks = [0, 1, 2, 5, 9, components.n_components]
    before = snapshot(model)
    for metric in ("accuracy", "margin"):
        curve = edit_curve(model, components, order, ks, x[:4], y[:4], x[4:], y[4:], metric=metric)
        for i, k in enumerate(ks):
            m = _margins_by_hand(model, components, x, y, order[:k])
            reduce = (lambda v: (v > 0).double().mean()) if metric == "accuracy" else (
                lambda v: v.double().mean())
            assert curve.target[i].item() == pytest.approx(reduce(m[:4]).item(), abs=1e-5)
            assert curve.reference[i].item() == pytest.approx(reduce(m[4:]).item(), abs=1e-5)
    assert_unchanged(model, before)
    assert hook_count(model) == 0


def test_edit_masks_rows():
    masks = edit_masks(torch.tensor([3, 0, 2, 1]), [0, 1, 3], 4)
    assert masks.tolist() == [[True] * 4, [True, True, True, False], [False, True, False, False]]


@pytest.mark.parametrize("ablation", ["weights", "zero"])
def test_exported_state_dict_in_fresh_instance(convnet, ablation):
    model, components, x, y = convnet
    chosen = torch.tensor([0, 5, 6, 11])
    before = snapshot(model)
    state = edited_state_dict(components, chosen, ablation=ablation)
    assert_unchanged(model, before)  # exporting leaves the model as it was
    fresh = ConvNet(width=4, n_classes=5).eval()
    fresh.load_state_dict(state)
    keep = torch.ones(1, components.n_components, dtype=torch.bool)
    keep[0, chosen] = False
    gated = evaluate_masks(model, components, x, keep, target=y, output="margin",
                           ablation=ablation)[0]
    with torch.no_grad():
        logits = fresh(x)
    direct = logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(
        1, y[:, None], float("-inf")).amax(1)
    torch.testing.assert_close(direct, gated, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(direct, _margins_by_hand(model, components, x, y, chosen, ablation))


def test_apply_edit_undo_bit_for_bit_and_hooks(convnet):
    model, components, x, y = convnet
    before = snapshot(model)
    edit = apply_edit(components, [1, 2, 7])
    assert not torch.equal(model.conv1.weight, before["conv1.weight"])
    edit.undo()
    assert_unchanged(model, before)
    with torch.no_grad():
        clean = model(x)
    hooks = apply_edit(components, [1, 2, 7], ablation=ConstantAblation(0.0))
    try:
        assert hook_count(model) > 0
        with torch.no_grad():
            assert not torch.allclose(model(x), clean)
    finally:
        hooks.remove()
    assert hook_count(model) == 0
    assert_unchanged(model, before)


def test_welch_t_equals_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    target = torch.randn(7, 5, generator=g) + torch.arange(5.0)
    reference = torch.randn(12, 5, generator=g) * 2
    ours = component_scores(target, reference)
    expected = stats.ttest_ind(target.double().numpy(), reference.double().numpy(),
                               equal_var=False).statistic
    torch.testing.assert_close(ours, torch.from_numpy(expected), rtol=1e-10, atol=0)
    diff = component_scores(target, reference, method="mean_difference")
    torch.testing.assert_close(diff, (target.mean(0) - reference.mean(0)).double())


def test_single_target_example_is_one_sample_t():
    reference = torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0]])
    target = torch.tensor([[5.0, 3.0]])
    scores = component_scores(target, reference)
    # column 0: (5 - 7/3) / sqrt(var_r / 3), var_r = ((1-7/3)^2 + (2-7/3)^2 + (4-7/3)^2) / 2
    var_r = ((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2
    assert scores[0].item() == pytest.approx((5 - 7 / 3) / (var_r / 3) ** 0.5, rel=1e-12)
    assert torch.isfinite(scores).all()


def test_zero_variance_components_do_not_come_first():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(6, 4, generator=g) + torch.tensor([2.0, -2.0, 0.0, 1.0])
    reference = torch.randn(9, 4, generator=g)
    target[:, 2] = 0.25  # constant and equal in both groups: a dead component
    reference[:, 2] = 0.25
    scores = component_scores(target, reference)
    assert torch.isfinite(scores).all() and scores[2].item() == 0.0
    for direction in ("lower", "raise"):
        assert select_components(scores, direction=direction)[0].item() != 2
    everything_constant = component_scores(torch.ones(3, 4), torch.ones(5, 4))
    assert torch.equal(everything_constant, torch.zeros(4, dtype=torch.float64))


def test_selection_directions_and_ties():
    scores = torch.tensor([0.5, -2.0, 3.0, 0.5, -1.0])
    assert select_components(scores, direction="lower").tolist() == [2, 0, 3, 4, 1]
    assert select_components(scores, 2, direction="raise").tolist() == [1, 4]


def test_choose_k_rules():
    curve = EditCurve(ks=(0, 1, 2, 4), target=torch.tensor([0.2, 0.5, 0.9, 1.0]),
                      reference=torch.tensor([0.9, 0.9, 0.8, 0.89]), order=torch.arange(4))
    assert choose_k(curve, "raise", goal=0.85, tolerance=0.02) == (4, "goal")
    assert choose_k(curve, "raise", goal=0.85, tolerance=0.2) == (2, "goal")
    assert choose_k(curve, "raise", goal=2.0, tolerance=0.0) == (1, "best_within_tolerance")
    assert choose_k(curve, "lower", goal=None, tolerance=0.0) == (0, "best_within_tolerance")


def test_errors(convnet):
    model, components, x, y = convnet
    n = components.n_components
    with pytest.raises(ValueError, match="same components"):
        component_scores(torch.randn(3, n), torch.randn(4, n + 1))
    with pytest.raises(ValueError, match="at least one example"):
        component_scores(torch.randn(0, n), torch.randn(4, n))
    with pytest.raises(TypeError, match="`target_attributions` must be a tensor"):
        component_scores([[1.0]], torch.randn(4, 1))
    with pytest.raises(ValueError, match="must not both hold a single example"):
        component_scores(torch.randn(1, n), torch.randn(1, n))
    with pytest.raises(ValueError, match="must be finite"):
        component_scores(torch.full((2, n), float("nan")), torch.randn(2, n))
    with pytest.raises(ValueError, match="`method` must be one of"):
        component_scores(torch.randn(2, n), torch.randn(2, n), method="t")
    scores = torch.randn(n)
    with pytest.raises(ValueError, match=rf"`k` must be an integer >= 0 and <= {n}; got {n + 1}"):
        select_components(scores, n + 1)
    with pytest.raises(ValueError, match="`direction` must be one of"):
        select_components(scores, 1, direction="up")
    with pytest.raises(ValueError, match="`ks` must be an integer >= 0 and <="):
        edit_curve(model, components, torch.arange(n), [n + 1], x, y, x, y)
    with pytest.raises(ValueError, match="`ks` must hold at least one k"):
        edit_curve(model, components, torch.arange(n), [], x, y, x, y)
    with pytest.raises(ValueError, match="`target_inputs` must be a tensor with at least one"):
        edit_curve(model, components, torch.arange(n), [1], x[:0], y[:0], x, y)
    with pytest.raises(ValueError, match="one column per component"):
        coar_edit(model, components, torch.randn(3, n + 2), torch.randn(3, n + 2), "lower",
                  [1], validation=(x, y, x, y))
    with pytest.raises(ValueError, match="`indices` must be component indices"):
        apply_edit(components, [n])
    with pytest.raises(ValueError, match="`ablation` must be 'weights' or 'zero'"):
        edited_state_dict(components, [0], ablation=ConstantAblation(1.0))


def test_overlapping_weight_edits_undone_in_any_order(convnet):
    model, components, x, y = convnet
    before = snapshot(model)
    first = apply_edit(components, [0, 1, 5])
    second = apply_edit(components, [1, 5, 9])  # filters 1 and 5 are already zero here
    first.undo()  # 1 and 5 stay zero (second still holds them); 0 comes back
    assert torch.equal(model.conv1.weight[0], before["conv1.weight"][0])
    assert not model.conv1.weight[1].any() and not model.conv2.weight[1].any()
    assert not first.active and second.active
    second.undo()
    assert_unchanged(model, before)
    with apply_edit(components, [2]):
        assert not model.conv1.weight[2].any()
    assert_unchanged(model, before)
