"""Re-estimation: ablate a few components, attribute again on the edited model, repeat.

Contract
--------
A ranking read once from attributions of the unedited model misses components that matter
only once others are gone (and keeps ones made redundant). :func:`reestimated_edit` builds an
edit in rounds: in round ``r`` it calls ``attribute()`` on the model with the components chosen
so far ablated, scores the components not yet chosen (``score``: ``"welch_t"``,
``"mean_difference"`` as in :func:`~captum_coar.editing.component_scores`, or a callable
``(target_attributions, reference_attributions) -> (n_components,)`` scores), and adds the
``step`` best of them for ``direction`` (ties: lower index first) until ``k_max`` are chosen.

The edited model is GATED, never modified: during ``attribute()`` the chosen components are
ablated by the persistent hooks of :func:`~captum_coar.ablate_persistently` (with
``ablation``), which are removed afterwards, also after an exception. ``attribute`` is any
function of no arguments returning ``(target_attributions, reference_attributions)`` on
whatever the model computes when called (e.g. a closure over COAR, leave-one-out or
attribution patching on ``components``); a method that gates the same components stacks its
gates on the persistent ones, so components already ablated stay ablated.

Costs are counted, not estimated: every round runs under a
:class:`~captum_coar.forward_cost.ForwardCounter` on ``components.model``, and the result
lists each round's forward equivalents (forwards + 2 x backwards) and their total. The result's
``order`` is the components in the order chosen (nested: ``order[:k]`` is the edit of size
``k`` for every ``k`` that ends a round, and the prefix of a round in score order in between).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple, Union

import torch
from torch import Tensor

from ._checks import check_callable, check_choice, check_int, fail
from .ablation import AblationStrategy, fitted_ablation
from .components import ComponentSet
from .editing import component_scores
from .edits import ablate_persistently
from .forward_cost import ForwardCounter

__all__ = ["ReestimatedEdit", "reestimated_edit"]

ScoreLike = Union[str, Callable[[Tensor, Tensor], Tensor]]


@dataclass
class ReestimatedEdit:
    """Components in the order chosen, with each round's picks and cost.

    Attributes:
        order: chosen component indices, int64, in the order chosen.
        rounds: per round ``{"picked": [...], "forward_equivalents": int}``.
        forward_equivalents: total over rounds.
        direction, step, score: the settings.
    """

    order: Tensor
    rounds: List[Dict[str, Any]]
    forward_equivalents: int
    direction: str
    step: int
    score: str
    notes: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"order": [int(i) for i in self.order], "rounds": list(self.rounds),
                "forward_equivalents": self.forward_equivalents, "direction": self.direction,
                "step": self.step, "score": self.score, "notes": dict(self.notes)}


def _scores(score: ScoreLike, target: Tensor, reference: Tensor, n_components: int) -> Tensor:
    values = (score(target, reference) if callable(score)
              else component_scores(target, reference, method=score))
    if not isinstance(values, Tensor) or values.shape != (n_components,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise fail("score", f"scores of shape ({n_components},)", shape)
    if torch.isnan(values).any():
        raise fail("score", "scores without NaN", "NaN entries")
    return values.detach().to(torch.float64).cpu()


def _attributions(attribute: Callable[[], Any], round_index: int) -> Tuple[Tensor, Tensor]:
    pair = attribute()
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(a, Tensor) for a in pair)):
        raise fail("attribute()", "a pair (target_attributions, reference_attributions) of"
                   " tensors", pair, f"round {round_index}")
    return pair[0], pair[1]


def reestimated_edit(components: ComponentSet, attribute: Callable[[], Tuple[Tensor, Tensor]],
                     k_max: int, step: int = 2, direction: str = "raise",
                     score: ScoreLike = "welch_t",
                     ablation: Union[str, AblationStrategy] = "weights",
                     forward_func: Any = None) -> ReestimatedEdit:
    """Choose ``k_max`` components in rounds of ``step``, re-attributing after each round.

    Args:
        components: the components (their model is gated, never written).
        attribute: ``() -> (target_attributions, reference_attributions)``, each
            ``(n_examples, n_components)``, computed on the model as it runs when called.
        k_max: components to choose in all.
        step: components added per round (the last round may add fewer).
        direction: ``"raise"`` or ``"lower"`` the target output.
        score: ``"welch_t"``, ``"mean_difference"`` or a callable (see the module contract).
        ablation: how chosen components are ablated while re-attributing.
        forward_func: fits a data-dependent ``ablation`` (mean, resample) when not yet fitted.
    """
    if not isinstance(components, ComponentSet):
        raise TypeError(f"`components` must be a ComponentSet; got {type(components).__name__}")
    check_callable("attribute", attribute)
    n = components.n_components
    k_max = check_int("k_max", k_max, minimum=1, maximum=n)
    step = check_int("step", step, minimum=1)
    check_choice("direction", direction, ("lower", "raise"))
    if not callable(score):
        check_choice("score", score, ("welch_t", "mean_difference"))
    strategy = fitted_ablation(ablation, forward_func or components.model, components)
    chosen: List[int] = []
    rounds: List[Dict[str, Any]] = []
    while len(chosen) < k_max:
        keep = torch.ones(n, dtype=torch.bool)
        keep[chosen] = False
        hooks = ablate_persistently(components, keep, ablation=strategy) if chosen else None
        try:
            with ForwardCounter(components.model) as cost:
                target, reference = _attributions(attribute, len(rounds))
        finally:
            if hooks is not None:
                hooks.remove()
        values = _scores(score, target, reference, n)
        key = -values if direction == "lower" else values.clone()
        key[chosen] = float("inf")  # never pick a chosen component again
        picked = torch.sort(key, stable=True).indices[:min(step, k_max - len(chosen))].tolist()
        chosen.extend(int(i) for i in picked)
        rounds.append({"picked": [int(i) for i in picked],
                       "forward_equivalents": int(cost.equivalents)})
    return ReestimatedEdit(order=torch.tensor(chosen, dtype=torch.int64), rounds=rounds,
                           forward_equivalents=sum(r["forward_equivalents"] for r in rounds),
                           direction=direction, step=step,
                           score=score if isinstance(score, str) else getattr(
                               score, "__name__", "callable"))
