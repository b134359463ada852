"""Plots of component attributions and of how well they predict ablations (matplotlib).

Contract
--------
Every function draws on the ``ax`` it is given (or on a new figure when ``ax`` is None) and
returns that matplotlib ``Axes``; its figure is ``ax.figure``. matplotlib is imported inside
the functions, so ``import captum_coar`` never imports it. Nothing is shown or saved: call
``ax.figure.savefig(path)`` (``bbox_inches="tight"`` keeps the labels outside the axes).

Implementations
---------------
- :func:`plot_counterfactual_scatter` -- predicted vs actual output under held-out ablations
  for one example and one method, with the correlation (the COAR paper's scatter).
- :func:`plot_correlation_bars` -- mean counterfactual correlation per method at each test
  ablation fraction, with standard errors (the paper's grouped bars).
- :func:`plot_component_attributions` -- attributions of one example across the model: one
  heat strip per component group, the top-k components marked and named.
- :func:`plot_topk_curves` -- output after ablating the top-k components, one curve per method.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .components import ComponentSet
from .evaluation import CounterfactualCorrelationResult, TopKAblationCurve

__all__ = ["plot_counterfactual_scatter", "plot_correlation_bars", "plot_component_attributions",
           "plot_topk_curves"]


def _axes(ax: Any, figsize: Sequence[float]) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=tuple(figsize))
    return ax


def plot_counterfactual_scatter(
    result: CounterfactualCorrelationResult,
    method: Optional[str] = None,
    example: int = 0,
    alpha: Optional[float] = None,
    ax: Any = None,
    color: str = "C0",
) -> Any:
    """Scatter of predicted vs actual output of ``example`` under the held-out masks.

    ``method`` defaults to the first method and ``alpha`` to the first test fraction. The
    title gives the correlation; the dashed line is the least-squares fit through the points.
    """
    a, m = result._index(method, alpha)
    name = result.methods[m]
    if not 0 <= example < result.actual.shape[-1]:
        raise IndexError(f"example {example} is out of range; the result has"
                         f" {result.actual.shape[-1]} examples")
    actual = result.actual[a, :, example].double()
    predicted = result.predicted[a, m, :, example].double()
    ax = _axes(ax, (4.2, 4.0))
    ax.scatter(predicted.numpy(), actual.numpy(), s=14, alpha=0.7, color=color, edgecolors="none")
    if predicted.std() > 0:
        slope = ((predicted - predicted.mean()) * (actual - actual.mean())).sum() / (
            (predicted - predicted.mean()).square().sum())
        xs = torch.stack([predicted.min(), predicted.max()])
        ax.plot(xs.numpy(), (actual.mean() + slope * (xs - predicted.mean())).numpy(), "k--", lw=1)
    ax.axhline(float(result.unablated[example]), color="0.6", lw=0.8, ls=":",
               label="unablated output")
    r = float(result.values[a, m, example])
    ax.set_title(f"{name}, example {example}: {result.correlation} r = {r:.3f}")
    ax.set_xlabel(f"predicted output (alpha = {result.alphas[a]:g})")
    ax.set_ylabel("actual output under ablation")
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    return ax


def plot_correlation_bars(
    result: CounterfactualCorrelationResult,
    methods: Optional[Sequence[str]] = None,
    ax: Any = None,
    errorbars: bool = True,
) -> Any:
    """Grouped bars: mean correlation of every method (bars) at every test fraction (groups)."""
    names = list(result.methods if methods is None else methods)
    for name in names:
        result._index(name, None)
    mean, err = result.mean(), result.std_error()
    n_alpha, n_meth = len(result.alphas), len(names)
    ax = _axes(ax, (max(5.0, 1.0 + 0.45 * n_alpha * n_meth), 3.8))
    width = 0.8 / max(1, n_meth)
    for j, name in enumerate(names):
        col = result.methods.index(name)
        xs = [i + (j - (n_meth - 1) / 2) * width for i in range(n_alpha)]
        heights = [float(mean[i, col]) for i in range(n_alpha)]
        yerr = [float(err[i, col]) for i in range(n_alpha)] if errorbars else None
        ax.bar(xs, heights, width=width * 0.95, yerr=yerr, capsize=2, label=name, color=f"C{j % 10}")
    ax.set_xticks(range(n_alpha))
    ax.set_xticklabels([f"alpha = {a:g}" for a in result.alphas])
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_ylabel(f"mean {result.correlation} correlation")
    ax.set_title(f"Counterfactual correlation ({result.n_masks} held-out masks per fraction)")
    ax.legend(fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    low = min(0.0, float(mean.nan_to_num(0.0).min()) - 0.1)
    ax.set_ylim(low, 1.1)
    return ax


def plot_component_attributions(
    attributions: Tensor,
    components: ComponentSet,
    example: int = 0,
    top_k: int = 5,
    ax: Any = None,
    title: Optional[str] = None,
    cmap: str = "RdBu_r",
) -> Any:
    """Heat map of one example's attributions: one strip per group (layer), units along x.

    Args:
        attributions: ``(n_components,)`` or ``(batch, n_components)`` (then ``example``
            picks the row).
        components: the set the columns refer to; its group names label the strips.
        top_k: the ``top_k`` components with the largest absolute attribution are circled,
            numbered and named (with their values) under the map.

    The colour scale is symmetric around zero (red = pushes the output up).
    """
    values = attributions.detach().double().cpu()
    if values.dim() == 2:
        values = values[example]
    if values.dim() != 1 or values.numel() != components.n_components:
        raise ValueError(f"attributions must have shape (n_components,) or (batch, n_components) with"
                         f" n_components = {components.n_components}, got {tuple(attributions.shape)}")
    groups = components.groups
    width = max(g.n_units for g in groups)
    grid = torch.full((len(groups), width), float("nan"), dtype=torch.float64)
    for pos, g in enumerate(groups):
        grid[pos, : g.n_units] = values[components.group_slice(pos)]
    scale = float(values.abs().max()) or 1.0
    ax = _axes(ax, (8.0, 1.2 + 0.45 * max(len(groups), 0.4 * top_k)))
    image = ax.imshow(grid.numpy(), aspect="auto", cmap=cmap, vmin=-scale, vmax=scale,
                      interpolation="nearest")
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels([f"{g.module_name} ({g.n_units} {g.kind}s)" for g in groups], fontsize="small")
    ax.set_xlabel("unit index within the group")
    ax.figure.colorbar(image, ax=ax, label="attribution", fraction=0.04, pad=0.02)
    top = values.abs().argsort(descending=True)[: max(0, top_k)].tolist()
    lines = []
    for rank, index in enumerate(top, start=1):
        pos, unit = components.locate(index)
        ax.scatter([unit], [pos], s=90, facecolors="none", edgecolors="k", linewidths=1.2)
        ax.annotate(str(rank), (unit, pos), xytext=(4, 4), textcoords="offset points",
                    fontsize="x-small", fontweight="bold",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
        lines.append(f"{rank}. {components.label(index)}  {float(values[index]):+.3g}")
    if lines:  # to the right of the colour bar, so it works on any given axes
        ax.annotate(f"top {len(lines)} by |attribution|:\n" + "\n".join(lines), xy=(1.0, 1.0),
                    xycoords="axes fraction", xytext=(78, 0), textcoords="offset points",
                    va="top", ha="left", fontsize="small", family="monospace")
    ax.set_title(title if title is not None else f"Component attributions, example {example}")
    return ax


def plot_topk_curves(
    curve: TopKAblationCurve,
    example: Optional[int] = None,
    ax: Any = None,
    methods: Optional[Sequence[str]] = None,
) -> Any:
    """Output after ablating the top-k components, one line per method (mean over examples,
    or one ``example``); the legend gives each method's mean normalised AUC."""
    names = list(curve.methods if methods is None else methods)
    ax = _axes(ax, (5.5, 3.8))
    auc = curve.auc()
    x = curve.ks.numpy()
    for j, name in enumerate(names):
        if name not in curve.methods:
            raise KeyError(f"unknown method {name!r}; methods are {list(curve.methods)}")
        i = curve.methods.index(name)
        y = curve.outputs[i].mean(-1) if example is None else curve.outputs[i, :, example]
        a = auc[i].mean() if example is None else auc[i, example]
        ax.plot(x, y.numpy(), marker="o", ms=3, color=f"C{j % 10}",
                label=f"{name} (AUC {float(a):.3g})")
    which = "highest" if curve.largest else "lowest"
    ax.set_xlabel(f"k = components ablated ({which} attributions first; of {curve.n_components})")
    ax.set_ylabel("output" if example is None else f"output, example {example}")
    scope = "mean over examples" if example is None else f"example {example}"
    ax.set_title(f"Top-k ablation curves ({scope})")
    ax.legend(fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax
