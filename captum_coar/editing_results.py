"""Result objects of COAR-Edit: the edit curve and the edit result (with a plot).

Contract
--------
:class:`EditCurve` holds, for each ``k`` of a sorted grid ``ks``, the target and reference
metrics with the first ``k`` components of ``order`` ablated (as computed by
:func:`captum_coar.editing.edit_curve`), or with ``sets[i]`` ablated when the sets are not
nested (:func:`captum_coar.editing_sets.sets_curve`); ``ablated_at(k)`` gives either. :class:`EditResult` holds the component scores, the
direction, the chosen ``k`` and the rule that chose it, the chosen component indices and
labels, the (validation) curve and the metrics before (``k = 0``) and after (chosen ``k``).
Both turn into plain JSON-able dicts with ``to_dict()``; ``plot()`` draws the curve with
matplotlib, imported only when called. Nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor

__all__ = ["EditCurve", "EditResult"]


@dataclass
class EditCurve:
    """Target / reference metric for each ``k`` (first ``k`` of ``order`` ablated)."""

    ks: Tuple[int, ...]
    target: Tensor
    reference: Tensor
    order: Tensor
    target_metric: str = "accuracy"
    reference_metric: str = "accuracy"
    sets: Optional[List[Tensor]] = None

    def ablated_at(self, k: int) -> Tensor:
        """The components ablated at ``k`` (``sets[i]``, or ``order[:k]`` for a ranking)."""
        if k not in self.ks:
            raise ValueError(f"`k` must be one of the curve's ks {list(self.ks)}; got {k!r}")
        return (self.sets[self.ks.index(k)] if self.sets is not None else self.order[:k]).clone()

    def at(self, k: int) -> Dict[str, float]:
        """``{"target": ..., "reference": ...}`` at ``k`` (which must be on the grid)."""
        if k not in self.ks:
            raise ValueError(f"`k` must be one of the curve's ks {list(self.ks)}; got {k!r}")
        i = self.ks.index(k)
        return {"target": float(self.target[i]), "reference": float(self.reference[i])}

    def to_dict(self) -> Dict[str, Any]:
        return {"ks": list(self.ks), "target": [float(v) for v in self.target],
                "reference": [float(v) for v in self.reference],
                "target_metric": self.target_metric, "reference_metric": self.reference_metric,
                "order": [int(i) for i in self.order],
                **({"sets": [[int(i) for i in chosen] for chosen in self.sets]}
                   if self.sets is not None else {})}

    def plot(self, ax: Any = None, label: str = "", **kwargs: Any) -> Any:
        """Target (solid) and reference (dashed) metric against ``k``; returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        prefix = f"{label} " if label else ""
        line, = ax.plot(self.ks, self.target.tolist(), marker="o", ms=3,
                        label=f"{prefix}target {self.target_metric}", **kwargs)
        ax.plot(self.ks, self.reference.tolist(), ls="--", color=line.get_color(),
                label=f"{prefix}reference {self.reference_metric}")
        ax.set_xlabel("components ablated (k)")
        ax.set_ylabel("metric")
        ax.legend(fontsize=7)
        return ax


@dataclass
class EditResult:
    """A chosen edit: scores, components (indices and labels), curve, before / after."""

    scores: Tensor
    direction: str
    k: int
    rule: str
    components: Tensor
    labels: List[str]
    curve: EditCurve
    before: Dict[str, float]
    after: Dict[str, float]
    score_method: str = "welch_t"
    ablation: str = "weights"
    notes: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self, top_scores: Optional[int] = 20) -> Dict[str, Any]:
        """JSON-able summary (the ``top_scores`` first components of the order with scores)."""
        order = self.curve.order.tolist()[:top_scores]
        return {"direction": self.direction, "k": self.k, "rule": self.rule,
                "score_method": self.score_method, "ablation": self.ablation,
                "components": [int(i) for i in self.components], "labels": list(self.labels),
                "before": dict(self.before), "after": dict(self.after),
                "top_scores": {int(i): float(self.scores[i]) for i in order},
                "curve": self.curve.to_dict(), "notes": dict(self.notes)}

    def plot(self, ax: Any = None, title: Optional[str] = None) -> Any:
        """The curve with the chosen ``k`` marked; returns the axes."""
        ax = self.curve.plot(ax=ax)
        ax.axvline(self.k, color="grey", lw=0.8, ls=":")
        ax.set_title(title or f"COAR-Edit ({self.direction}), k = {self.k} [{self.rule}]",
                     fontsize=9)
        return ax

    def __repr__(self) -> str:
        return (f"EditResult(direction={self.direction!r}, k={self.k}, rule={self.rule!r},"
                f" before={self.before}, after={self.after}, labels={self.labels[:5]}"
                f"{'...' if len(self.labels) > 5 else ''})")
