"""The estimators compared with exact activation patching, and how they are scored.

Contract
--------
``run_methods(task, components, settings) -> Dict[str, MethodRun]`` runs, on
``task.inputs`` with ``baselines=task.baselines`` (noising: clean inputs, corrupted
baselines), ``output="logit_difference"`` and ``target=task.target``:

- ``"exact patching"``: :class:`~captum_coar.ComponentAblation` with baselines, the reference;
- ``"AtP"``: :class:`~captum_coar.ComponentAttributionPatching` with baselines;
- ``"AtP*"``: :class:`~captum_coar.baselines.ComponentAtPStar`, ``qk_fix="heads"`` (its
  default: later attention softmaxes recomputed exactly for every head's effect; on MLP
  neurons it is then AtP, as ``qk_fix="all"`` would cost about one forward per neuron, as
  much as exact patching), signed;
- ``"AtP* + GradDrop"``: the same with ``grad_drop=True``, magnitudes (the paper's AtP*);
  scored against ``|exact|``;
- ``"RelP"``: ``ComponentRelevancePatching`` when ``captum_coar.baselines`` has it (absent:
  left out and named in ``MISSING``);
- ``"gate IG"``: :class:`~captum_coar.ComponentIntegratedGradients`, ``n_steps`` Gauss-Legendre
  points on the gate path from the baseline activation to the input activation;
- ``"COAR"``: :class:`~captum_coar.ComponentAblationRegression` with baselines,
  ``coar_masks`` masks at ``coar_alpha`` (each mask patches the components it drops).

Each :class:`MethodRun` holds the attributions ``(n, N)``, wall seconds and forward-pass
equivalents per example (rows through the forward function: no-grad rows + 3 x rows with
autograd, a backward counted as two forwards, divided by ``n``; forward-mode tangents count
as forwards).

``score(runs) -> Dict[str, Dict]`` compares every method with exact patching:
``pearson`` over all (example, component) pairs, ``pearson_mean`` and ``spearman_mean`` over
components of the effects averaged over examples, and ``topk_cost[k]``, the AtP* paper's
verification cost: checking components in the method's order (by ``|mean estimate|``) one
exact patch each, the forward equivalents per example until the true top-k (by ``|mean
exact effect|``) are all verified = method cost + the largest rank of a true top-k component
(exact patching itself: its own cost, about N + 2).
``random order`` gives the expected cost without an estimator, ``k (N + 1) / (k + 1)``.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from benchmarks.paper_setups import CountingForward
from captum_coar import (
    ComponentAblation,
    ComponentAblationRegression,
    ComponentAttributionPatching,
    ComponentIntegratedGradients,
    ComponentSet,
)
from captum_coar.baselines import ComponentAtPStar

REFERENCE = "exact patching"
MAGNITUDES = ("AtP* + GradDrop",)
MISSING: List[str] = []


def relevance_patching_class() -> Optional[type]:
    """``ComponentRelevancePatching`` if the package has it yet, else None."""
    for where in ("captum_coar.baselines", "captum_coar.baselines.relevance_patching"):
        try:
            cls = getattr(importlib.import_module(where), "ComponentRelevancePatching", None)
        except ImportError:
            cls = None
        if cls is not None:
            return cls
    return None


@dataclass
class MethodRun:
    """One method's attributions ``(n, N)`` with its cost."""

    values: Tensor
    seconds: float
    forwards_per_example: float


def _first(value: Any) -> Tensor:
    return (value[0] if isinstance(value, tuple) else value).detach().double()


def method_calls(forward: Any, components: ComponentSet, task: Any,
                 settings: Dict[str, Any]) -> Dict[str, Callable[[], Any]]:
    """``{name: f() -> attributions}`` in table order (module docstring)."""
    x, common = task.inputs, dict(target=task.target, output="logit_difference",
                                  baselines=task.baselines)
    rows = settings.get("max_rows")
    calls: Dict[str, Callable[[], Any]] = {
        REFERENCE: lambda: ComponentAblation(forward, components).attribute(
            x, max_rows=rows, **common),
        "AtP": lambda: ComponentAttributionPatching(forward, components).attribute(x, **common),
        "AtP*": lambda: ComponentAtPStar(forward, components).attribute(
            x, qk_fix="heads", **common),
        "AtP* + GradDrop": lambda: ComponentAtPStar(forward, components).attribute(
            x, qk_fix="heads", grad_drop=True, **common),
    }
    relp = relevance_patching_class()
    if relp is not None:
        calls["RelP"] = lambda: relp(forward, components).attribute(x, **common)
    elif "RelP" not in MISSING:
        MISSING.append("RelP")
    calls["gate IG"] = lambda: ComponentIntegratedGradients(forward, components).attribute(
        x, n_steps=settings["n_steps"], **common)
    masks = max(2, int(settings["coar_masks_per_component"] * components.n_components))
    calls["COAR"] = lambda: ComponentAblationRegression(forward, components).attribute(
        x, n_masks=masks, ablation_fraction=settings["coar_alpha"], seed=0, max_rows=rows,
        **common)
    return calls


def run_methods(task: Any, components: ComponentSet, settings: Dict[str, Any],
                only: Optional[Sequence[str]] = None, log: Callable[[str], None] = print
                ) -> Dict[str, MethodRun]:
    """Run every method of :func:`method_calls` (or those in ``only``) and time it."""
    counter = CountingForward(task.forward)
    n = int(task.target.shape[0])
    runs: Dict[str, MethodRun] = {}
    for name, call in method_calls(counter, components, task, settings).items():
        if only is not None and name not in only:
            continue
        before, tick = counter.snapshot(), time.perf_counter()
        values = _first(call())
        seconds = time.perf_counter() - tick
        forwards = counter.since(before)["forward_equivalents"] / n
        runs[name] = MethodRun(values, seconds, forwards)
        log(f"    {name}: {seconds:.1f} s, {forwards:.0f} forward equivalents per example")
    return runs


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    if float(a.std()) == 0.0 or float(b.std()) == 0.0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def _ranks(v: Tensor) -> Tensor:
    return v.argsort().argsort().double()


def verification_cost(estimate: Tensor, exact: Tensor, k: int) -> int:
    """Components checked, in ``|estimate|`` order, until the true top-k are all checked."""
    truth = exact.abs().argsort(descending=True)[:k]
    rank = torch.empty(estimate.numel(), dtype=torch.long)
    rank[estimate.abs().argsort(descending=True)] = torch.arange(1, estimate.numel() + 1)
    return int(rank[truth].max())


def score(runs: Dict[str, MethodRun], ks: Sequence[int]) -> Dict[str, Dict[str, Any]]:
    """Every method against exact patching (module docstring)."""
    exact = runs[REFERENCE].values
    exact_mean = exact.mean(dim=0)
    n_components = exact.shape[1]
    table: Dict[str, Dict[str, Any]] = {}
    for name, run in runs.items():
        truth, truth_mean = (exact.abs(), exact_mean.abs()) if name in MAGNITUDES else \
            (exact, exact_mean)
        mean = run.values.mean(dim=0)
        costs = {str(k): run.forwards_per_example  # exact patching has checked them all
                 + (0 if name == REFERENCE else verification_cost(mean, exact_mean, k))
                 for k in ks if k <= n_components}
        table[name] = {
            "pearson": _pearson(run.values, truth),
            "pearson_mean": _pearson(mean, truth_mean),
            "spearman_mean": _pearson(_ranks(mean), _ranks(truth_mean)),
            "seconds": run.seconds, "forwards_per_example": run.forwards_per_example,
            "topk_cost": costs, "magnitudes": name in MAGNITUDES,
        }
    table["random order"] = {"topk_cost": {str(k): k * (n_components + 1) / (k + 1)
                                           for k in ks if k <= n_components}}
    return table
