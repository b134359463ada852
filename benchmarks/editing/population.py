"""The new selection methods on the five editing tasks, beside the attribution methods.

Contract
--------
``extra_methods(model, comps, task, coar_attr, k_coar, test_sets, n_masks, derive)`` adds,
for a population task (:func:`benchmarks.editing.run.population_task`), the selection methods
of :mod:`benchmarks.editing.selection` that the attribution methods do not cover: joint
selection on COAR's attributions (bound chosen on validation with k), re-estimation (COAR
rounds) and optimised gates at COAR's forward budget, and ``auto``: the choice on validation
among COAR's Welch-t and mean-difference rankings, the joint selections, re-estimation and the
gates (weights ablation only: a mean ablation would need every attribution again). Each entry
has the keys of the attribution methods' entries (test metrics at COAR's ``k``, curves, own
validation ``k``) plus ``own_k_after`` (test metrics at the method's own validation ``k``) and
``chosen`` (the candidate the rule chose). ``per_example_methods`` does the same for one
example of task 1 (joint selection, gates, auto), with the held-out images as reference.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from benchmarks.editing.selection import (
    JOINT_BOUNDS,
    JOINT_MAX_NODES,
    EditTask,
    choose,
    mean_margin,
    method_candidates,
    test_curves,
)
from captum_coar import ComponentSet
from captum_coar.editing_choice import EditCandidate, ranking_candidates
from captum_coar.editing_gates import optimise_gates


def _entry(model, comps, candidates: List[EditCandidate], task: EditTask, grid, k_coar: int,
           test_sets, derive: Optional[Callable], cost: int, seconds: float) -> Dict[str, Any]:
    choice = choose(model, comps, candidates, task)
    candidate = next(c for c in candidates if c.name == choice.name)
    curves = test_curves(model, comps, candidate, grid, test_sets)
    if derive is not None:
        curves.update(derive(curves))
    i, j = grid.index(k_coar), grid.index(choice.k)
    return {"before": {s: c[0] for s, c in curves.items()},
            "after": {s: c[i] for s, c in curves.items()},
            "own_k_after": {s: c[j] for s, c in curves.items()}, "curves": curves,
            "attribution_seconds": seconds, "forwards": cost, "own_validation_k": choice.k,
            "own_rule": choice.rule, "chosen": choice.name,
            "first_components": [comps.label(int(x)) for x in choice.components[:10]]}


def extra_methods(model, comps: ComponentSet, task: EditTask, coar_attr: Tuple, k_coar: int,
                  test_sets, n_masks: int, derive: Optional[Callable] = None
                  ) -> Dict[str, Dict[str, Any]]:
    a_t, a_r, budget, coar_seconds = coar_attr
    grid = list(task.grid)
    built = method_candidates(model, comps, task, n_masks, methods=("welch", "joint",
                                                                    "reestimate", "gates"),
                              attributions=(a_t, a_r, budget))
    built["welch"]["seconds"] = coar_seconds
    built["joint"]["seconds"] += coar_seconds
    mean_diff = ranking_candidates(a_t, a_r, task.direction, grid, scores=("mean_difference",))
    out: Dict[str, Dict[str, Any]] = {}
    for name in ("joint", "reestimate", "gates"):
        m = built[name]
        out[name] = _entry(model, comps, m["candidates"], task, grid, k_coar, test_sets, derive,
                           m["cost"], m["seconds"])
        if "optimal" in m:
            out[name]["joint_optimal"] = m["optimal"]
        print(f"    {name}: {m['seconds']:.1f} s, {m['cost']:,} forward equivalents", flush=True)
    pool = (built["welch"]["candidates"] + mean_diff + built["joint"]["candidates"]
            + built["reestimate"]["candidates"] + built["gates"]["candidates"])
    cost = budget + built["reestimate"]["cost"] + built["gates"]["cost"]
    seconds = sum(built[n]["seconds"] for n in ("joint", "reestimate", "gates"))
    out["auto"] = _entry(model, comps, pool, task, grid, k_coar, test_sets, derive, cost, seconds)
    return out


def per_example_methods(model, comps: ComponentSet, target: Tuple[torch.Tensor, torch.Tensor],
                        a_target: torch.Tensor, a_reference: torch.Tensor,
                        reference: Tuple[torch.Tensor, torch.Tensor],
                        held: Tuple[torch.Tensor, torch.Tensor], direction: str, goal: float,
                        ks: List[int], gate_steps: int) -> Dict[str, Dict[str, Any]]:
    """Task 1, one example: joint selection, gates and auto, k chosen on the held-out images."""
    task = EditTask(target[0], target[1], reference[0], reference[1],
                    (target[0], target[1], held[0], held[1]), direction, tuple(ks), goal, 0.02)
    scale = abs(mean_margin(model, *reference))
    joint = ranking_candidates(a_target, a_reference, direction, ks, scores=("joint",),
                               joint_bounds=[b * scale for b in JOINT_BOUNDS],
                               max_nodes=JOINT_MAX_NODES)
    start = time.time()
    gates = optimise_gates(model, comps, target[0], target[1], reference[0], reference[1],
                           direction=direction, steps=gate_steps)
    gate_seconds = time.time() - start
    gate_candidate = [EditCandidate("gates", order=gates.order[:max(ks)])]
    welch = ranking_candidates(a_target, a_reference, direction, ks,
                               scores=("welch_t", "mean_difference"))
    out = {}
    for name, pool, cost in (("joint", joint, 0), ("gates", gate_candidate,
                                                    gates.forward_equivalents),
                             ("auto", welch + joint + gate_candidate,
                              gates.forward_equivalents)):
        choice = choose(model, comps, pool, task)
        curve = choice.curves[choice.name]
        flips = [k for k, v in zip(curve.ks, curve.target.tolist()) if v == goal]
        out[name] = {"done": choice.rule == "goal", "k": choice.k if choice.rule == "goal" else None,
                     "chosen": choice.name, "held_out_before": curve.at(0)["reference"],
                     "held_out_after": (curve.at(choice.k)["reference"]
                                        if choice.rule == "goal" else None),
                     "k_any_held_out": flips[0] if flips else None, "cost": cost,
                     "seconds": gate_seconds if name != "joint" else 0.0}
    return out
