"""Result objects of :mod:`captum_coar.evaluation`: the numbers, their summaries and tables.

Contract
--------
A result holds plain CPU tensors (outputs and scores in float64) and the method names in the
order given, so it can be saved, compared and plotted without the model. ``to_table()`` (also ``str()``)
renders a markdown table; ``to_dict()`` / ``mean_auc()`` give JSON-friendly summaries.

Implementations
---------------
- :class:`CounterfactualCorrelationResult` -- per-example correlations between actual and
  predicted outputs under held-out ablations, per test fraction and method, with the outputs
  and masks behind them; means, standard errors and a table.
- :class:`TopKAblationCurve` -- outputs after ablating each example's top-k components for k
  on a grid; normalised areas under the curves and a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["CounterfactualCorrelationResult", "TopKAblationCurve", "markdown_table"]


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """The lines of a markdown table with header ``head`` and one line per row of cells."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    return [line(head), "|" + "---|" * len(head)] + [line(cells) for cells in rows]


@dataclass
class CounterfactualCorrelationResult:
    """Correlations between actual and predicted outputs under held-out ablations.

    Attributes:
        ablation_fractions: test ablation fractions.
        methods: method names, in the order given.
        values: ``(n_fractions, n_methods, batch)`` per-example correlations (NaN where undefined).
        actual: ``(n_fractions, n_masks, batch)`` outputs under ablation.
        predicted: ``(n_fractions, n_methods, n_masks, batch)`` outputs the attributions predict.
        unablated: ``(batch,)`` outputs with nothing ablated.
        seed, n_masks, correlation, sampler: how the masks were drawn and scored.
        masks: ``(n_fractions, n_masks, n_components)`` keep masks, when kept.
    """

    ablation_fractions: Tuple[float, ...]
    methods: Tuple[str, ...]
    values: Tensor
    actual: Tensor
    predicted: Tensor
    unablated: Tensor
    seed: int
    n_masks: int
    correlation: str = "pearson"
    sampler: Dict[str, Any] = field(default_factory=dict)
    masks: Optional[Tensor] = None

    def index(self, method: Optional[str] = None,
              ablation_fraction: Optional[float] = None) -> Tuple[int, int]:
        """``(fraction index, method index)``; None = the first fraction / the first method."""
        m = 0 if method is None else self.methods.index(method) if method in self.methods else -1
        if m < 0:
            raise KeyError(f"unknown method {method!r}; methods are {list(self.methods)}")
        if ablation_fraction is None:
            return 0, m
        matches = [i for i, a in enumerate(self.ablation_fractions)
                   if math.isclose(a, float(ablation_fraction))]
        if not matches:
            raise KeyError(f"no test ablation fraction {ablation_fraction!r}; fractions are"
                           f" {list(self.ablation_fractions)}")
        return matches[0], m

    def per_example(self, method: Optional[str] = None,
                    ablation_fraction: Optional[float] = None) -> Tensor:
        """Per-example correlations ``(batch,)`` of one method at one fraction."""
        a, m = self.index(method, ablation_fraction)
        return self.values[a, m]

    def mean(self) -> Tensor:
        """Mean correlation over examples, ``(n_fractions, n_methods)`` (NaNs ignored)."""
        return self.values.nanmean(dim=-1)

    def std_error(self) -> Tensor:
        """Standard error of :meth:`mean`, ``(n_fractions, n_methods)``."""
        finite = torch.isfinite(self.values)
        n = finite.sum(-1).clamp(min=1)
        centred = torch.where(finite, self.values - self.mean()[..., None], torch.zeros_like(self.values))
        var = centred.square().sum(-1) / (n - 1).clamp(min=1)
        return (var / n).sqrt()

    def means(self) -> Dict[float, Dict[str, float]]:
        """``{ablation fraction: {method: mean correlation}}``."""
        mean = self.mean()
        return {a: {m: float(mean[i, j]) for j, m in enumerate(self.methods)}
                for i, a in enumerate(self.ablation_fractions)}

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable summary (means, per-example values, mask provenance)."""
        return {"ablation_fractions": list(self.ablation_fractions), "methods": list(self.methods), "seed": self.seed,
                "n_masks": self.n_masks, "correlation": self.correlation, "sampler": self.sampler,
                "mean": self.mean().tolist(), "per_example": self.values.tolist()}

    def to_table(self, run_times: Optional[Mapping[str, float]] = None, digits: int = 3) -> str:
        """Markdown table: one row per method, mean correlation per test fraction.

        ``run_times`` (seconds per method) adds a column, e.g. the attribution times.
        """
        mean, err = self.mean(), self.std_error()
        head = ["method"] + [f"alpha={a:g}" for a in self.ablation_fractions]
        if run_times is not None:
            head.append("time (s)")
        rows = []
        for j, name in enumerate(self.methods):
            cells = [name] + [f"{float(mean[i, j]):.{digits}f} ± {float(err[i, j]):.{digits}f}"
                              for i in range(len(self.ablation_fractions))]
            if run_times is not None:
                t = run_times.get(name)
                cells.append("" if t is None else f"{t:.3g}")
            rows.append(cells)
        note = (f"{self.correlation.capitalize()} correlation over {self.n_masks} held-out masks per"
                f" fraction (seed {self.seed}), mean ± s.e. over {self.values.shape[-1]} examples.")
        return "\n".join(markdown_table(head, rows) + ["", note])

    def __str__(self) -> str:
        return self.to_table()


@dataclass
class TopKAblationCurve:
    """Outputs after ablating each example's top-k components, for ``k`` on a grid.

    Attributes:
        ks: ``(n_k,)`` numbers of components ablated (0 = nothing ablated).
        methods: method names.
        outputs: ``(n_methods, n_k, batch)`` outputs.
        n_components: total number of components.
        largest: True when the highest attributions were ablated first.
    """

    ks: Tensor
    methods: Tuple[str, ...]
    outputs: Tensor
    n_components: int
    largest: bool = True

    @property
    def fractions(self) -> Tensor:
        """``ks`` as fractions of all components."""
        return self.ks.double() / self.n_components

    def auc(self) -> Tensor:
        """Normalised area under each curve, ``(n_methods, batch)``.

        Trapezoid rule over the fraction of components ablated, divided by the range of
        fractions: the average output along the curve, in output units. With ``largest=True``
        a lower value means the method found the components that hold the output up.
        """
        x = self.fractions
        if x.numel() < 2:
            return self.outputs[:, 0].double()
        area = torch.trapezoid(self.outputs.double(), x, dim=1)
        return area / (x[-1] - x[0])

    def mean_auc(self) -> Dict[str, float]:
        """``{method: mean AUC over examples}``."""
        auc = self.auc().mean(-1)
        return {m: float(auc[i]) for i, m in enumerate(self.methods)}

    def to_table(self, digits: int = 3) -> str:
        """Markdown table of the mean output at each k and, last, the mean output along the
        curve (:meth:`auc`, the area under the curve divided by its width: output units, not
        an area), per method; every number is a mean over examples."""
        mean = self.outputs.double().mean(-1)
        head = ["method"] + [f"k={int(k)}" for k in self.ks] + ["mean along curve"]
        rows = [[name] + [f"{float(v):.{digits}f}" for v in mean[i]] + [f"{auc:.{digits}f}"]
                for i, (name, auc) in enumerate(self.mean_auc().items())]
        return "\n".join(markdown_table(head, rows))

    def __str__(self) -> str:
        return self.to_table()
