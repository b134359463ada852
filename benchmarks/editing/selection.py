"""Selection methods of the editing benchmarks, at equal forward cost, and their choice.

Contract
--------
``EditTask`` holds one edit: attribution / training examples (target ``xt, yt``, reference
``xr, yr``), the held-out ``validation`` tuple ``(target x, y, reference x, y)``, the
``direction``, the grid of ``k`` and the rule's ``goal`` / ``tolerance``.

``method_candidates(model, comps, task, n_masks, ...)`` builds, on one ablation, the
candidates of every selection method and counts their cost in forward equivalents
(:class:`~captum_coar.forward_cost.ForwardCounter`):

- ``"welch"``: COAR (``n_masks`` masks at alpha 0.05) -> Welch-t ranking (today's COAR-Edit);
- ``"joint"``: the same attributions -> joint selection (``joint_path``) at bounds
  ``JOINT_BOUNDS`` x the mean reference margin, one candidate per bound (the bound is chosen
  on validation with k);
- ``"reestimate"``: ``ROUNDS`` rounds of COAR with ``n_masks // ROUNDS`` masks each, adding
  ``ceil(max k / ROUNDS)`` components per round (Welch-t), so its cost equals Welch's;
- ``"gates"``: optimised gates with as many steps as Welch's cost buys
  (``cost / (3 x rows)``);
- ``"random"``: a seeded permutation (cost 0).

``choose(model, comps, candidates, task)`` applies :func:`~captum_coar.editing_choice.
choose_edit` (choose_k's rule over the candidates) on the validation examples.
``test_curves(...)`` traces a chosen candidate on test sets for the whole grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from captum_coar import ComponentAblationRegression, ComponentSet
from captum_coar.editing import component_scores, select_components
from captum_coar.editing_choice import EditCandidate, EditChoice, choose_edit, ranking_candidates
from captum_coar.editing_gates import optimise_gates
from captum_coar.editing_reestimate import reestimated_edit
from captum_coar.editing_sets import sets_curve
from captum_coar.forward_cost import ForwardCounter

METHODS = ("welch", "joint", "reestimate", "gates", "random")
JOINT_BOUNDS = (0.0, 0.05, 0.15)
JOINT_MAX_NODES = 2000  # per set; beyond it the best set found is used (info["optimal"] False)
ROUNDS = 5
ALPHA = 0.05


@dataclass
class EditTask:
    xt: torch.Tensor
    yt: torch.Tensor
    xr: torch.Tensor
    yr: torch.Tensor
    validation: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    direction: str
    grid: Tuple[int, ...]
    goal: Optional[float]
    tolerance: float


def coar(model, comps: ComponentSet, task: EditTask, n_masks: int, ablation: Any = "weights",
         seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """COAR attributions of the target and reference examples (one call), and their cost."""
    with ForwardCounter(model) as cost:
        a = ComponentAblationRegression(model, comps, ablation=ablation).attribute(
            torch.cat([task.xt, task.xr]), target=torch.cat([task.yt, task.yr]),
            n_masks=n_masks, ablation_fraction=ALPHA, seed=seed)
    n_t = task.yt.numel()
    return a[:n_t].detach(), a[n_t:].detach(), cost.equivalents


def mean_margin(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(x)
    correct = logits.gather(1, y[:, None]).squeeze(1)
    return float((correct - logits.scatter(1, y[:, None], float("-inf")).max(1).values).mean())


def method_candidates(model, comps: ComponentSet, task: EditTask, n_masks: int,
                      ablation: Any = "weights", methods: Sequence[str] = METHODS,
                      seed: int = 0, attributions: Optional[Tuple] = None
                      ) -> Dict[str, Dict[str, Any]]:
    """``{method: {"candidates": [...], "cost": forward equivalents, "seconds": s}}``."""
    import time

    out: Dict[str, Dict[str, Any]] = {}
    k_max = max(task.grid)
    start = time.time()
    a_t, a_r, budget = attributions or coar(model, comps, task, n_masks, ablation, seed)
    welch_seconds = time.time() - start
    if "welch" in methods:
        order = select_components(component_scores(a_t, a_r), k_max, task.direction)
        out["welch"] = {"candidates": [EditCandidate("welch", ablation, order=order)],
                        "cost": budget, "seconds": welch_seconds}
    if "joint" in methods:
        start = time.time()
        scale = abs(mean_margin(model, task.xr, task.yr))
        candidates = ranking_candidates(a_t, a_r, task.direction, task.grid, ablation=ablation,
                                        scores=("joint",),
                                        joint_bounds=[b * scale for b in JOINT_BOUNDS],
                                        max_nodes=JOINT_MAX_NODES)
        for c, b in zip(candidates, JOINT_BOUNDS):
            c.name = f"joint@{b:g}"
        out["joint"] = {"candidates": candidates, "cost": budget,
                        "seconds": welch_seconds + time.time() - start,
                        "optimal": all(c.info["optimal"] for c in candidates)}
    if "reestimate" in methods:
        start = time.time()
        per_round = max(2, n_masks // ROUNDS)
        step = math.ceil(k_max / ROUNDS)
        calls = iter(range(ROUNDS))

        def attribute():
            r = next(calls)
            t, ref, _ = coar(model, comps, task, per_round, ablation, seed + 1 + r)
            return t, ref

        result = reestimated_edit(comps, attribute, k_max=k_max, step=step,
                                  direction=task.direction, ablation=ablation)
        out["reestimate"] = {"candidates": [EditCandidate("reestimate", ablation,
                                                          order=result.order)],
                             "cost": result.forward_equivalents, "seconds": time.time() - start,
                             "rounds": len(result.rounds), "step": step,
                             "masks_per_round": per_round}
    if "gates" in methods:
        start = time.time()
        rows = task.yt.numel() + task.yr.numel()
        steps = max(10, round(budget / (3 * rows)))
        gates = optimise_gates(model, comps, task.xt, task.yt, task.xr, task.yr,
                               direction=task.direction, ablation=ablation, steps=steps,
                               seed=seed)
        out["gates"] = {"candidates": [EditCandidate("gates", ablation, order=gates.order)],
                        "cost": gates.forward_equivalents, "seconds": time.time() - start,
                        "steps": steps}
    if "random" in methods:
        order = torch.randperm(comps.n_components, generator=torch.Generator().manual_seed(seed))
        out["random"] = {"candidates": [EditCandidate("random", ablation, order=order[:k_max])],
                         "cost": 0, "seconds": 0.0}
    return out


def choose(model, comps: ComponentSet, candidates: List[EditCandidate], task: EditTask
           ) -> EditChoice:
    return choose_edit(model, comps, candidates, task.grid, task.validation, task.direction,
                       goal=task.goal, tolerance=task.tolerance)


def test_curves(model, comps: ComponentSet, candidate: EditCandidate,
                grid: Sequence[int], sets: Dict[str, Tuple[torch.Tensor, torch.Tensor]]
                ) -> Dict[str, List[float]]:
    """Accuracy on each named test set for every k of ``grid`` (the candidate's sets)."""
    ablated = candidate.ablated(list(grid))
    names = list(sets)
    curves: Dict[str, List[float]] = {}
    for first, second in zip(names[::2], names[1::2] + names[-1:] * (len(names) % 2)):
        curve = sets_curve(model, comps, ablated, list(grid), *sets[first], *sets[second],
                           ablation=candidate.ablation)
        curves[first], curves[second] = curve.target.tolist(), curve.reference.tolist()
    return curves
