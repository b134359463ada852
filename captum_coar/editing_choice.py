"""Choice on validation: the ablation, the score and the method of an edit, by the rule for k.

Contract
--------
An :class:`EditCandidate` is one way to edit: a name, an ``ablation`` (``"weights"``,
``"zero"`` or a fitted strategy such as ``MeanAblation``) and, for every ``k`` of a grid, the
set of components it would ablate: either an ``order`` (nested sets ``order[:k]``: Welch-t or
mean-difference rankings, re-estimation, optimised gates) or explicit ``sets`` (joint
selection). :func:`choose_edit` traces every candidate's curve on the SAME held-out target and
reference examples (:func:`~captum_coar.editing_sets.sets_curve`; ``k = 0`` is always on the
grid and is the unedited model for every candidate) and chooses by the rule of
:func:`~captum_coar.editing.choose_k`, stated over all candidates together:

1. each candidate's ``k`` and rule come from :func:`~captum_coar.editing.choose_k` on its own
   curve (``goal``, ``tolerance``: the drop of the reference metric allowed from ``k = 0``);
2. if any candidate reaches the goal (rule ``"goal"``), the chosen one is the one reaching it
   with the smallest ``k``; ties go to the better target metric, then the better reference
   metric, then the earlier candidate;
3. otherwise (rule ``"best_within_tolerance"``), the one with the best target metric at its
   ``k``; ties go to the smaller ``k``, then the better reference metric, then the earlier
   candidate.

:func:`ranking_candidates` makes the candidates of one set of attributions: Welch-t and
mean-difference rankings (:func:`~captum_coar.editing.component_scores`) and joint selection
(:func:`~captum_coar.editing_selection.joint_path`) at each of ``joint_bounds``. The
:class:`EditChoice` holds the chosen candidate, ``k``, rule and components (apply or export
them with :func:`~captum_coar.editing.apply_edit` / :func:`~captum_coar.editing.
edited_state_dict` and ``choice.ablation``) and a row per candidate. Held-out examples used
here must not be the ones the candidates were built from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from torch import Tensor

from ._checks import check_integer_values, fail
from .ablation import AblationStrategy
from .components import ComponentSet
from .editing import choose_k, component_scores, select_components
from .editing_results import EditCurve
from .editing_selection import joint_path
from .editing_sets import MetricLike, check_ks, sets_curve

__all__ = ["EditCandidate", "EditChoice", "choose_edit", "ranking_candidates"]


@dataclass
class EditCandidate:
    """One way to edit: an ablation and a set of components per ``k``.

    Args:
        name: how tables call it.
        ablation: what ablating means for this candidate.
        order: nested sets (the first ``k``); or
        sets: ``{k: indices}`` for every ``k`` of the grid (may include ``0``).
        cost: forward equivalents spent to build it (reported, not used by the rule).
    """

    name: str
    ablation: Union[str, AblationStrategy] = "weights"
    order: Optional[Tensor] = None
    sets: Optional[Dict[int, Tensor]] = None
    cost: Optional[float] = None
    info: Dict[str, Any] = field(default_factory=dict)

    def ablated(self, ks: Sequence[int]) -> List[Tensor]:
        """The set for every ``k`` of ``ks``."""
        if (self.order is None) == (self.sets is None):
            raise fail(f"candidate {self.name!r}", "given an order or sets (one of the two)",
                       "both" if self.order is not None else "neither")
        if self.order is not None:
            order = check_integer_values("order", self.order).reshape(-1)
            if order.numel() < max(ks):
                raise ValueError(f"candidate {self.name!r}: `order` lists {order.numel()}"
                                 f" components; the grid needs {max(ks)}")
            return [order[:k] for k in ks]
        assert self.sets is not None
        missing = [k for k in ks if k and k not in self.sets]
        if missing:
            raise ValueError(f"candidate {self.name!r}: `sets` has no set for k = {missing}")
        return [check_integer_values("sets", self.sets[k]).reshape(-1) if k else
                check_integer_values("sets", []).reshape(-1) for k in ks]


@dataclass
class EditChoice:
    """The chosen candidate and the table of every candidate (see the module contract)."""

    name: str
    k: int
    rule: str
    components: Tensor
    ablation: Union[str, AblationStrategy]
    curves: Dict[str, EditCurve]
    table: List[Dict[str, Any]]

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "k": self.k, "rule": self.rule,
                "components": [int(i) for i in self.components],
                "ablation": self.ablation if isinstance(self.ablation, str) else repr(self.ablation),
                "table": [dict(row) for row in self.table],
                "curves": {name: curve.to_dict() for name, curve in self.curves.items()}}


def _key(row: Dict[str, Any], sign: float, index: int) -> Tuple[Any, ...]:
    if row["rule"] == "goal":
        return (0, row["k"], -sign * row["target"], -row["reference"], index)
    return (1, -sign * row["target"], row["k"], -row["reference"], index)


def choose_edit(forward_func: Callable[..., Any], components: ComponentSet,
                candidates: Sequence[EditCandidate], ks: Sequence[int],
                validation: Tuple[Tensor, Any, Tensor, Any], direction: str,
                goal: Optional[float] = None, tolerance: float = 0.01,
                metric: MetricLike = "accuracy", max_rows: Optional[int] = None) -> EditChoice:
    """Trace every candidate on ``validation`` and choose one and its ``k`` by the rule.

    ``validation`` = ``(target_inputs, target_labels, reference_inputs, reference_labels)``.
    """
    if not candidates:
        raise fail("candidates", "at least one EditCandidate", candidates)
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise fail("candidates", "candidates with distinct names", names)
    if not isinstance(validation, (tuple, list)) or len(validation) != 4:
        raise ValueError("`validation` must be (target_inputs, target_labels, reference_inputs,"
                         f" reference_labels); got {type(validation).__name__}")
    grid = tuple(sorted({0} | set(check_ks(ks, components.n_components))))
    sign = 1.0 if direction == "raise" else -1.0
    curves: Dict[str, EditCurve] = {}
    table: List[Dict[str, Any]] = []
    for candidate in candidates:
        curve = sets_curve(forward_func, components, candidate.ablated(grid), grid, *validation,
                           metric=metric, ablation=candidate.ablation, max_rows=max_rows)
        k, rule = choose_k(curve, direction, goal=goal, tolerance=tolerance)
        at = curve.at(k)
        curves[candidate.name] = curve
        table.append({"name": candidate.name, "k": k, "rule": rule, "target": at["target"],
                      "reference": at["reference"], "before": curve.at(0), "cost": candidate.cost,
                      "ablation": (candidate.ablation if isinstance(candidate.ablation, str)
                                   else repr(candidate.ablation))})
    best = min(range(len(table)), key=lambda i: _key(table[i], sign, i))
    row, chosen = table[best], candidates[best]
    return EditChoice(name=row["name"], k=row["k"], rule=row["rule"],
                      components=curves[row["name"]].ablated_at(row["k"]),
                      ablation=chosen.ablation, curves=curves, table=table)


def ranking_candidates(target_attributions: Tensor, reference_attributions: Tensor,
                       direction: str, ks: Sequence[int], prefix: str = "",
                       ablation: Union[str, AblationStrategy] = "weights",
                       scores: Sequence[str] = ("welch_t", "mean_difference", "joint"),
                       joint_bounds: Sequence[float] = (0.0,), cost: Optional[float] = None,
                       max_nodes: int = 20000) -> List[EditCandidate]:
    """Candidates of one set of attributions: rankings by score and joint selections.

    Names are ``f"{prefix}{score}"`` and ``f"{prefix}joint@{bound}"``; a joint candidate's
    ``info["optimal"]`` says whether every set was proven optimal within ``max_nodes``.
    """
    grid = [k for k in sorted(set(int(k) for k in ks)) if k]
    out: List[EditCandidate] = []
    for score in scores:
        if score == "joint":
            for bound in joint_bounds:
                path = joint_path(target_attributions, reference_attributions, grid, direction,
                                  bound=bound, max_nodes=max_nodes)
                out.append(EditCandidate(
                    f"{prefix}joint@{bound:g}", ablation, sets={s.k: s.indices for s in path},
                    cost=cost, info={"optimal": all(s.optimal for s in path)}))
        else:
            values = component_scores(target_attributions, reference_attributions, method=score)
            out.append(EditCandidate(f"{prefix}{score}", ablation, cost=cost,
                                     order=select_components(values, max(grid), direction)))
    return out
