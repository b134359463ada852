"""Editing beyond one-at-a-time rankings: joint selection, re-estimation, optimised gates,
choice on validation, filters at rows, curves over sets and the forward-cost counter."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from toy_models import ConvNet, randomise_batchnorm, snapshot

from captum_coar import ComponentAblation, ComponentSet
from captum_coar.editing import (
    apply_edit,
    component_scores,
    edit_curve,
    edited_state_dict,
    select_components,
)
from captum_coar.editing_choice import EditCandidate, choose_edit, ranking_candidates
from captum_coar.editing_gates import optimise_gates
from captum_coar.editing_reestimate import reestimated_edit
from captum_coar.editing_selection import joint_select, joint_terms
from captum_coar.editing_sets import sets_curve
from captum_coar.engine import evaluate_masks
from captum_coar.forward_cost import ForwardCounter
from captum_coar.gates import ablated
from captum_coar.spatial import filters_at_rows
from captum_coar.testing import AdditiveNet

torch.set_num_threads(1)


class Redundant(nn.Module):
    """Hidden units 0 and 1 both carry a trigger -> class 2, each enough on its own.

    ``6 * min(1, 2 * (h0 + h1))`` is added to the class-2 logit: with the trigger h0 = 0.5 and
    h1 = ``second``, so removing one unit alone changes nothing while ``second >= 0``... up to
    saturation; removing both removes the behaviour (a planted conjunction of ablations). Units
    2 and 4 carry some class-2 evidence on every input (distractors a ranking likes).
    """

    def __init__(self, second: float = 0.5) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():
            w, b = torch.zeros(6, 4), torch.zeros(6)
            w[0, 3] = w[1, 3] = 1.0
            b[0], b[1] = -0.5, -1.0 + second
            w[2, 3], w[2, 0] = 0.4, 1.0
            w[3, 1] = w[4, 2] = 1.0
            w[5, 0] = w[5, 1] = 0.5
            self.hidden.weight.copy_(w)
            self.hidden.bias.copy_(b)
            h = torch.zeros(3, 6)
            h[0, 2], h[0, 5], h[1, 3], h[1, 5], h[2, 4], h[2, 2] = 2.0, 1.0, 2.0, 1.0, 2.0, 1.0
            self.head.weight.copy_(h)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(x))
        trigger = 6.0 * torch.clamp(2.0 * (h[:, 0] + h[:, 1]), max=1.0)
        zeros = torch.zeros_like(trigger)
        return self.head(h) + torch.stack([zeros, zeros, trigger], dim=1)


def redundant_data(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 4, generator=g) * 0.3
    x[torch.arange(n), y] += 1.5
    triggered = x.clone()
    triggered[:, 3] = 1.0
    return x, triggered, y


@pytest.fixture
def redundant():
    model = Redundant().eval()
    return model, ComponentSet.from_model(model, kinds=("linear_neurons",), include=["hidden"])


# ----------------------------------------------------------------------------- joint selection
def _brute_force(gain, harm, k, bound):
    best, best_value = (), (0.0 if bound >= 0 else float("-inf"))
    for size in range(1, k + 1):
        for subset in itertools.combinations(range(len(gain)), size):
            if sum(harm[j] for j in subset) <= bound + 1e-12:
                value = sum(gain[j] for j in subset)
                if value > best_value + 1e-12:
                    best, best_value = subset, value
    return set(best), best_value


@pytest.mark.parametrize("seed", range(6))
def test_joint_select_is_optimal_by_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = 11
    a_t, a_r = torch.randn(3, n, generator=g), torch.randn(4, n, generator=g) + 0.3
    gain, harm = (v.tolist() for v in joint_terms(a_t, a_r, "raise"))
    for k, bound in ((1, 0.0), (3, 0.2), (4, 0.0), (5, -0.3), (11, 0.5), (2, -0.2)):
        _, value = _brute_force(gain, harm, k, bound)
        if value == float("-inf"):  # no set meets the (negative) bound
            with pytest.raises(ValueError, match="cannot be met"):
                joint_select(a_t, a_r, k, "raise", bound=bound)
            continue
        chosen = joint_select(a_t, a_r, k, "raise", bound=bound)
        assert chosen.optimal
        assert chosen.predicted_gain == pytest.approx(value, abs=1e-9)
        assert chosen.predicted_harm <= bound + 1e-9 and len(chosen.indices) <= k
        # a node limit of 1 may stop early but never claims more than it proved
        early = joint_select(a_t, a_r, k, "raise", bound=bound, max_nodes=1)
        assert early.upper_bound >= value - 1e-9 and early.predicted_gain <= value + 1e-9
        if early.optimal:
            assert early.predicted_gain == pytest.approx(value, abs=1e-9)


def test_joint_select_exact_predictions_on_additive_model_give_the_optimal_set():
    torch.manual_seed(3)  # the inputs drawn below
    model = AdditiveNet(n_in=5, n_hidden=8, n_classes=3, seed=3).eval()
    components = ComponentSet.from_model(model, kinds=("linear_neurons",), include=["hidden"])
    g = torch.Generator().manual_seed(4)
    x_t, x_r = torch.randn(6, 5, generator=g), torch.randn(9, 5, generator=g)
    target = torch.ones(6, dtype=torch.long)
    reference = torch.ones(9, dtype=torch.long)
    a_t = ComponentAblation(model, components).attribute(x_t, target=target, output="logit")
    a_r = ComponentAblation(model, components).attribute(x_r, target=reference, output="logit")
    torch.testing.assert_close(a_t, model.effects(x_t, target).detach())  # exact
    masks = torch.tensor(list(itertools.product([True, False], repeat=8)))
    with torch.no_grad():
        base_t, base_r = model(x_t)[:, 1].mean(), model(x_r)[:, 1].mean()
    out_t = evaluate_masks(model, components, x_t, masks, target=target, output="logit").mean(1)
    out_r = evaluate_masks(model, components, x_r, masks, target=reference, output="logit").mean(1)
    for k, bound in ((2, 0.0), (3, 0.1), (4, 0.05)):
        chosen = joint_select(a_t, a_r, k, "lower", bound=bound)
        size = (~masks).sum(1)
        feasible = (size <= k) & (base_r - out_r <= bound + 1e-6)
        best = torch.nonzero(feasible & ((base_t - out_t) >= (base_t - out_t)[feasible].max() - 1e-6))
        best_sets = [set(torch.nonzero(~masks[int(i)]).reshape(-1).tolist()) for i in best]
        assert set(chosen.indices.tolist()) in best_sets
        assert chosen.predicted_gain == pytest.approx(float((base_t - out_t)[best[0]]), abs=1e-5)


def test_joint_select_refuses_a_negative_bound_no_set_meets():
    a_t, a_r = torch.ones(2, 4), torch.ones(3, 4)
    with pytest.raises(ValueError, match="cannot be met"):
        joint_select(a_t, a_r, 2, "raise", bound=-1.0)
    assert joint_select(a_t, a_r, 2, "raise", bound=0.0).indices.numel() == 0


# ----------------------------------------------------------------------------- optimised gates
def test_optimised_gates_find_the_planted_conjunction_a_ranking_misses(redundant):
    model, components = redundant
    x, triggered, y = redundant_data()
    both = {0, 1}
    a = ComponentAblation(model, components).attribute(torch.cat([triggered, x]),
                                                       target=torch.cat([y, y]))
    ranking = select_components(component_scores(a[:40], a[40:]), 2, "raise")
    assert set(ranking.tolist()) != both  # one at a time: each unit alone changes nothing
    result = optimise_gates(model, components, triggered, y, x, y, steps=150, seed=0)
    assert set(result.select(2).tolist()) == both
    assert result.forward_equivalents == 150 * 80 * 3
    x2, triggered2, y2 = redundant_data(seed=1)
    curve = edit_curve(model, components, result.order, [0, 2], triggered2, y2, x2, y2)
    assert curve.at(0)["target"] == 0.0 and curve.at(2) == {"target": 1.0, "reference": 1.0}


def _gated(model, components, chosen, x):
    keep = torch.ones(components.n_components, dtype=torch.bool)
    keep[chosen] = False
    with torch.no_grad(), ablated(components, keep):
        return model(x)


@pytest.mark.parametrize("method", ["gates", "joint", "reestimate", "choice"])
def test_every_exported_edit_loads_into_the_unmodified_class_and_equals_the_gated_model(method):
    model = randomise_batchnorm(ConvNet(n_classes=4, width=4)).eval()
    components = ComponentSet.from_model(model, kinds=("conv_filters",))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 1, 6, 6, generator=g), torch.randint(0, 4, (12,), generator=g)
    x_t, y_t, x_r, y_r = x[:6], y[:6], x[6:], y[6:]
    loo = ComponentAblation(model, components)
    if method == "gates":
        chosen = optimise_gates(model, components, x_t, y_t, x_r, y_r, steps=20).select(3)
    elif method == "joint":
        chosen = joint_select(loo.attribute(x_t, target=y_t), loo.attribute(x_r, target=y_r),
                              3, "raise", bound=0.5).indices
    elif method == "reestimate":
        chosen = reestimated_edit(components, lambda: (loo.attribute(x_t, target=y_t),
                                                       loo.attribute(x_r, target=y_r)),
                                  k_max=3, step=1).order
    else:
        candidates = ranking_candidates(loo.attribute(x_t, target=y_t),
                                        loo.attribute(x_r, target=y_r), "raise", [1, 2, 3])
        chosen = choose_edit(model, components, candidates, [1, 2, 3], (x_t, y_t, x_r, y_r),
                             "raise", tolerance=1.0).components
        if chosen.numel() == 0:
            chosen = candidates[0].ablated([3])[0]
    assert chosen.numel() > 0
    before = snapshot(model)
    expected = _gated(model, components, chosen, x)
    fresh = ConvNet(n_classes=4, width=4)  # the unmodified class, no captum_coar involved
    fresh.load_state_dict(edited_state_dict(components, chosen))
    torch.testing.assert_close(fresh.eval()(x), expected, rtol=0, atol=1e-6)
    edit = apply_edit(components, chosen)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
    edit.undo()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- re-estimation
def test_reestimation_finds_the_unit_that_matters_once_the_first_is_gone():
    model = Redundant(second=0.3).eval()
    components = ComponentSet.from_model(model, kinds=("linear_neurons",), include=["hidden"])
    x, triggered, y = redundant_data()
    loo = ComponentAblation(model, components)
    seen = []

    def attribute():
        seen.append(model(triggered[:2]).detach())
        a = loo.attribute(torch.cat([triggered, x]), target=torch.cat([y, y]))
        return a[:40], a[40:]

    once = select_components(component_scores(*attribute()), 2, "raise")
    seen.clear()
    result = reestimated_edit(components, attribute, k_max=2, step=1)
    assert 1 not in once.tolist() and result.order.tolist() == [0, 1]
    # round 2 ran on the model with unit 0 gated off, and the model was never written
    torch.testing.assert_close(seen[1], _gated(model, components, [0], triggered[:2]))
    torch.testing.assert_close(model(triggered[:2]), seen[0])
    # leave-one-out: 80 examples x (6 ablations + 1 full pass), its preflight probe (2 rows,
    # twice) and the 2 rows run above
    assert [r["forward_equivalents"] for r in result.rounds] == [80 * 7 + 4 + 2] * 2
    assert result.forward_equivalents == 2 * (80 * 7 + 6)


def test_forward_counter_counts_rows_and_backwards_as_two():
    model = nn.Linear(3, 2)
    with ForwardCounter(model) as cost:
        model(torch.randn(5, 3)).sum().backward()
        with torch.no_grad():
            model(torch.randn(4, 3))
    assert (cost.forwards, cost.backwards, cost.equivalents) == (9, 5, 19)
    assert not model._forward_hooks


# ----------------------------------------------------------------------------- choice on validation
def test_choose_edit_takes_the_candidate_reaching_the_goal_with_the_smallest_k(redundant):
    model, components = redundant
    x, triggered, y = redundant_data(seed=2)
    validation = (triggered, y, x, y)
    candidates = [EditCandidate("slow", order=torch.tensor([4, 5, 0, 1, 2, 3])),
                  EditCandidate("fast", order=torch.tensor([1, 0, 4, 2, 3, 5])),
                  EditCandidate("sets", sets={1: torch.tensor([4]), 2: torch.tensor([2, 4]),
                                              4: torch.tensor([0, 1, 4, 5])})]
    choice = choose_edit(model, components, candidates, [1, 2, 4], validation, "raise",
                         goal=1.0, tolerance=0.0)
    assert (choice.name, choice.k, choice.rule) == ("fast", 2, "goal")
    assert set(choice.components.tolist()) == {0, 1}
    rows = {row["name"]: row for row in choice.table}
    assert [rows[n]["k"] for n in ("slow", "fast", "sets")] == [4, 2, 4]
    assert choice.curves["sets"].reference.tolist() == [1.0, 1.0, 0.55, 1.0]  # not nested
    # no goal: the best target within the tolerance, smallest k on ties, earlier candidate next
    choice = choose_edit(model, components, candidates[::-1], [1, 2, 4], validation, "raise",
                         tolerance=0.0)
    assert (choice.name, choice.k, choice.rule) == ("fast", 2, "best_within_tolerance")


def test_sets_curve_ablates_each_set_as_gating_by_hand_does(redundant):
    model, components = redundant
    x, triggered, y = redundant_data(seed=3)
    sets = [torch.tensor([], dtype=torch.long), torch.tensor([3]), torch.tensor([0, 1])]
    curve = sets_curve(model, components, sets, [0, 1, 2], triggered, y, x, y, metric="margin")
    for i, chosen in enumerate(sets):
        margins = [_margin(_gated(model, components, chosen, inputs), y)
                   for inputs in (triggered, x)]
        assert curve.target[i].item() == pytest.approx(margins[0].mean().item(), abs=1e-5)
        assert curve.reference[i].item() == pytest.approx(margins[1].mean().item(), abs=1e-5)
    assert [s.tolist() for s in curve.sets] == [s.tolist() for s in sets]
    with pytest.raises(ValueError, match="at most its k"):
        sets_curve(model, components, [torch.tensor([0, 1])], [1], triggered, y, x, y)


def _margin(logits, y):
    correct = logits.gather(1, y[:, None]).squeeze(1)
    return correct - logits.scatter(1, y[:, None], float("-inf")).max(1).values


# ----------------------------------------------------------------------------- filters at rows
def test_filters_at_rows_gate_one_row_of_one_filter_as_by_hand():
    model = randomise_batchnorm(ConvNet(n_classes=3, width=4)).eval()
    conv = ComponentSet.from_model(model, kinds=("conv_filters",), include=["conv1"])
    fine = filters_at_rows(conv, rows=[-2, -1])
    assert fine.n_components == 8 and fine.label(5) == "conv1/filter[1]@-1"
    x = torch.randn(3, 1, 6, 6)
    keep = torch.ones(8, dtype=torch.bool)
    keep[5] = False
    with torch.no_grad(), ablated(fine, keep):
        gated = model(x)

    def by_hand(module, inputs, output):
        output = output.clone()
        output[:, 1, 5, :] = module.bias[1]  # weights ablation keeps the bias
        return output

    reference = copy.deepcopy(model)
    handle = reference.conv1.register_forward_hook(by_hand)
    with torch.no_grad():
        torch.testing.assert_close(gated, reference(x))
    handle.remove()
    with pytest.raises(ValueError, match="token positions|shared by every"):
        edited_state_dict(fine, [5])
    with pytest.raises(ValueError, match="conv filters"):
        filters_at_rows(fine, rows=[0])
