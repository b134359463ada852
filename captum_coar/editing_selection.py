"""Joint selection: the largest predicted target change under a bound on the reference change.

Contract
--------
Attributions ``(n_examples, N)`` of any method that predicts ablation effects additively
(COAR's coefficients, leave-one-out effects, attribution patching, AtP*) are read with the
package's sign: a positive entry means the component raises that example's output, so
ablating a set ``S`` changes example ``i``'s output by ``-sum_{j in S} A[i, j]``. Averaged
over the examples of each group, with ``s = +1`` for ``direction="raise"`` and ``-1`` for
``"lower"``:

- ``gain[j] = -s * mean_target A[:, j]``: the predicted change of the mean target output in
  the wanted direction;
- ``harm[j] = mean_reference A[:, j]``: the predicted fall of the mean reference output
  (negative when ablating ``j`` is predicted to raise it).

:func:`joint_select` solves the program ``max sum_{j in S} gain[j]`` subject to ``|S| <= k``
and ``sum_{j in S} harm[j] <= bound``: a 0-1 knapsack with one extra (cardinality)
constraint. It is solved **exactly** by best-first branch and bound on the LP relaxation. Why
this program and this solver: the predictions are linear, so the program is exactly what the
attributions say; its LP relaxation has at most two fractional variables, so the LP bound is
tight and few nodes are needed; a greedy ranking (one component at a time, by score) cannot
trade a component that helps the target a little but spares the reference for one that helps
more but harms it, and the LP's rounding alone is not always optimal. The LP bound at a node
comes from its Lagrangian dual ``min_{lam >= 0} lam * bound + (sum of the k largest positive
gain - lam * harm)``, minimised by bisection on its slope; every ``lam`` gives a valid upper
bound, so pruning never loses the optimum. With ``max_nodes`` reached the best set found is
returned with ``optimal=False`` and the remaining gap (never silently). The program is
feasible for every ``bound >= 0`` (the empty set); a negative ``bound`` that no set of ``k``
components meets raises a ``ValueError``.

:func:`joint_path` solves it for every ``k`` of a grid (the sets need not be nested) and
:func:`joint_terms` returns ``(gain, harm)``. Nothing here runs a model.
"""

from __future__ import annotations

import heapq
import itertools
import numbers
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ._checks import check_choice, check_int, fail

__all__ = ["JointSelection", "joint_terms", "joint_select", "joint_path"]

_BISECTION_STEPS = 60


@dataclass
class JointSelection:
    """The chosen set and its predicted effects.

    Attributes:
        indices: chosen component indices (int64), highest gain first.
        predicted_gain: ``sum gain`` over the set (target change in the wanted direction).
        predicted_harm: ``sum harm`` over the set (predicted fall of the reference output).
        upper_bound: an upper bound on the optimum (equals ``predicted_gain`` when optimal).
        optimal: whether the set is proven optimal.
        nodes: branch-and-bound nodes explored.
        k, bound: the program's cardinality and reference bound.
    """

    indices: Tensor
    predicted_gain: float
    predicted_harm: float
    upper_bound: float
    optimal: bool
    nodes: int
    k: int
    bound: float
    notes: Dict[str, str] = field(default_factory=dict)


def _matrix(name: str, values: object) -> np.ndarray:
    if not isinstance(values, Tensor) or values.dim() != 2 or values.numel() == 0:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise fail(name, "a non-empty tensor (n_examples, n_components)", shape)
    if not torch.isfinite(values).all():
        raise fail(name, "finite", "NaN or infinite entries")
    return values.detach().to(torch.float64).cpu().numpy()


def joint_terms(target_attributions: Tensor, reference_attributions: Tensor,
                direction: str = "raise") -> Tuple[Tensor, Tensor]:
    """``(gain, harm)``, each ``(n_components,)`` float64 (see the module contract)."""
    check_choice("direction", direction, ("lower", "raise"))
    t = _matrix("target_attributions", target_attributions)
    r = _matrix("reference_attributions", reference_attributions)
    if t.shape[1] != r.shape[1]:
        raise ValueError("`reference_attributions` must cover the same components as"
                         f" `target_attributions`; got {r.shape[1]} components against"
                         f" {t.shape[1]}")
    sign = 1.0 if direction == "raise" else -1.0
    return torch.from_numpy(-sign * t.mean(axis=0)), torch.from_numpy(r.mean(axis=0))


def _dual(gain: np.ndarray, harm: np.ndarray, budget: float, k: int
          ) -> Tuple[float, np.ndarray, np.ndarray]:
    """LP bound over ``gain``/``harm`` items; also the two integral sets around the optimum.

    Returns ``(bound, feasible_side, infeasible_side)``: index arrays of the top items at the
    bracketing multipliers (the first satisfies the budget whenever the LP is feasible).
    """
    def top(lam: float) -> np.ndarray:
        reduced = gain - lam * harm
        if k < reduced.size:
            idx = np.argpartition(-reduced, k - 1)[:k]
        else:
            idx = np.arange(reduced.size)
        return idx[reduced[idx] > 0]

    def value(lam: float, idx: np.ndarray) -> float:
        return lam * budget + float((gain[idx] - lam * harm[idx]).sum())

    at_zero = top(0.0)
    if harm[at_zero].sum() <= budget:  # the budget does not bind: lam = 0 is optimal
        return value(0.0, at_zero), at_zero, at_zero
    # the slope  budget - harm(top(lam))  rises with lam: grow an upper end until it is >= 0
    lo, hi = 0.0, 1.0
    hi_set = top(hi)
    for _ in range(400):
        if harm[hi_set].sum() <= budget:
            break
        lo, hi = hi, hi * 4.0
        hi_set = top(hi)
    else:  # pragma: no cover - excluded by the caller's feasibility check
        raise RuntimeError("joint selection: no multiplier meets the budget; please report")
    lo_set = top(lo)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        mid_set = top(mid)
        if harm[mid_set].sum() > budget:
            lo, lo_set = mid, mid_set
        else:
            hi, hi_set = mid, mid_set
    return min(value(lo, lo_set), value(hi, hi_set)), hi_set, lo_set


def _check_bound(bound: object) -> float:
    if (isinstance(bound, bool) or not isinstance(bound, numbers.Real)
            or not np.isfinite(float(bound))):
        raise fail("bound", "a finite number (the largest allowed predicted fall of the mean"
                   " reference output)", bound)
    return float(bound)


def _settled(upper: float, best_value: float) -> bool:
    """Whether a node bounded by ``upper`` cannot beat the incumbent (to 1e-9 relative)."""
    return bool(np.isfinite(best_value)) and upper <= best_value + 1e-9 * max(1.0, abs(best_value))


def _solve(gain: np.ndarray, harm: np.ndarray, k: int, bound: float, max_nodes: int
           ) -> Tuple[List[int], float, int, bool]:
    n = gain.size
    best: List[int] = []
    best_value = 0.0 if bound >= 0 else -np.inf  # the empty set is feasible for bound >= 0
    counter = itertools.count()
    # node: (-upper bound, tie, fixed_in, fixed_out)
    heap: List[Tuple[float, int, Tuple[int, ...], Tuple[int, ...]]] = []

    def expand(fixed_in: Tuple[int, ...], fixed_out: Tuple[int, ...]) -> None:
        nonlocal best, best_value
        slots = k - len(fixed_in)
        budget = bound - float(harm[list(fixed_in)].sum())
        free = np.setdiff1d(np.arange(n), np.array(fixed_in + fixed_out, dtype=np.int64))
        if slots < 0:
            return
        sparing = np.sort(harm[free])[:slots]
        if sparing[sparing < 0].sum() > budget + 1e-12:
            return  # no completion meets the budget
        base = float(gain[list(fixed_in)].sum())
        if slots == 0 or free.size == 0:
            if budget >= -1e-12 and base > best_value + 1e-12 and (fixed_in or bound >= 0):
                best, best_value = list(fixed_in), base
            return
        upper, feasible_side, infeasible_side = _dual(gain[free], harm[free], budget, slots)
        candidate = list(fixed_in) + free[feasible_side].tolist()
        value = base + float(gain[free[feasible_side]].sum())
        if float(harm[candidate].sum()) <= bound + 1e-12 and value > best_value + 1e-12:
            best, best_value = candidate, value
        upper += base
        if _settled(upper, best_value):
            return
        split = np.setxor1d(feasible_side, infeasible_side)
        if split.size == 0:  # integral LP solution: already the incumbent when feasible
            return
        pivot = int(free[split[np.argmax(gain[free[split]])]])
        heapq.heappush(heap, (-upper, next(counter), fixed_in + (pivot,), fixed_out))
        heapq.heappush(heap, (-upper, next(counter), fixed_in, fixed_out + (pivot,)))

    nodes = 0
    expand((), ())
    nodes += 1
    while heap and nodes < max_nodes:
        neg_upper, _, fixed_in, fixed_out = heapq.heappop(heap)
        if _settled(-neg_upper, best_value):
            heap.clear()
            break
        expand(fixed_in, fixed_out)
        nodes += 1
    open_upper = max([-h[0] for h in heap], default=best_value)
    optimal = not heap or _settled(open_upper, best_value)
    return best, max(best_value, open_upper), nodes, optimal


def joint_select(target_attributions: Tensor, reference_attributions: Tensor, k: int,
                 direction: str = "raise", bound: float = 0.0,
                 max_nodes: int = 20000) -> JointSelection:
    """The set of at most ``k`` components of largest predicted gain with harm ``<= bound``.

    Args:
        target_attributions: ``(n_target, N)`` attributions of the examples to change.
        reference_attributions: ``(n_reference, N)`` of the examples to spare.
        k: the largest number of components to ablate.
        direction: ``"raise"`` or ``"lower"`` the target output.
        bound: the largest allowed predicted fall of the mean reference output (in the
            attributions' output units, e.g. logits of margin); may be negative (demand a
            predicted rise).
        max_nodes: branch-and-bound node limit; beyond it ``optimal`` is False.

    Raises:
        ValueError: bad shapes or values, or no set meets a negative ``bound``.
    """
    gain_t, harm_t = joint_terms(target_attributions, reference_attributions, direction)
    n = gain_t.numel()
    k = check_int("k", k, minimum=0, maximum=n)
    bound = _check_bound(bound)
    max_nodes = check_int("max_nodes", max_nodes, minimum=1)
    gain, harm = gain_t.numpy(), harm_t.numpy()
    sparing = np.sort(harm)[:k]
    if sparing[sparing < 0].sum() > bound + 1e-12:
        raise ValueError(f"`bound` = {bound} cannot be met: the {k} components predicted to"
                             " raise the reference output most give only"
                             f" {-float(sparing[sparing < 0].sum()):.6g}; use a larger bound")
    chosen, upper, nodes, optimal = _solve(gain, harm, k, bound, max_nodes)
    chosen = sorted(chosen, key=lambda j: (-gain[j], j))
    idx = torch.tensor(chosen, dtype=torch.int64)
    return JointSelection(indices=idx, predicted_gain=float(gain[chosen].sum()),
                          predicted_harm=float(harm[chosen].sum()), upper_bound=float(upper),
                          optimal=bool(optimal), nodes=nodes, k=k, bound=bound,
                          notes={"program": "max sum gain s.t. |S| <= k, sum harm <= bound",
                                 "solver": "best-first branch and bound on the LP relaxation"
                                           " (Lagrangian dual, bisection)"})


def joint_path(target_attributions: Tensor, reference_attributions: Tensor, ks: Sequence[int],
               direction: str = "raise", bound: float = 0.0,
               max_nodes: int = 20000) -> List[JointSelection]:
    """:func:`joint_select` for every ``k`` of ``ks`` (sorted, distinct), in that order."""
    values = [ks] if isinstance(ks, numbers.Integral) else list(ks)
    if not values:
        raise fail("ks", "at least one k", ks)
    return [joint_select(target_attributions, reference_attributions, k, direction, bound,
                         max_nodes) for k in sorted(set(int(v) for v in values))]
