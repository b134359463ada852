"""Plots of component attributions and of how well they predict ablations (matplotlib).

Contract
--------
Every function draws on the ``ax`` it is given (or on a new figure when ``ax`` is None) and
returns that matplotlib ``Axes``; its figure is ``ax.figure``. matplotlib is imported inside
the functions, so ``import captum_coar`` never imports it. Nothing is shown or saved: call
``ax.figure.savefig(path)`` (``bbox_inches="tight"`` keeps the labels outside the axes).

Every plot names the quantity it explains. Pass ``output=`` (a name accepted by
:func:`~captum_coar.outputs.resolve_output`, an :class:`~captum_coar.outputs.OutputFunction` or any label);
without it the plot uses the ``output`` a result object records, if any, and otherwise
says "output". Attributions follow one sign convention everywhere: a positive attribution
means the component supports the output, so ablating it lowers the output.

Implementations
---------------
- :func:`plot_counterfactual_scatter` -- predicted vs actual output under held-out ablations
  for one example and one method, with the correlation, the line y = x and the
  least-squares fit (the COAR paper's scatter).
- :func:`plot_correlation_bars` -- mean counterfactual correlation per method at each test
  ablation fraction, with standard errors (the paper's grouped bars).
- :func:`plot_component_attributions` -- attributions of one example across the model: one
  heat strip per component group, the top-k components marked and named.
- :func:`plot_topk_curves` -- output after ablating the top-k components, one curve per
  method; methods whose curves coincide share one line and one legend entry ("A = B").
- :func:`output_label` -- the readable name of an output function used in the labels.
- :func:`method_colours` -- one colour per method, the same in every figure (fixed for the
  package's methods: :data:`METHOD_COLOURS`); every plot of methods here uses it.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor

from ._method_colours import METHOD_COLOURS, method_colours
from .components import ComponentSet
from .evaluation import CounterfactualCorrelationResult, TopKAblationCurve

__all__ = ["plot_counterfactual_scatter", "plot_correlation_bars", "plot_component_attributions",
           "plot_topk_curves", "output_label", "method_colours", "METHOD_COLOURS"]

_READABLE = {
    "margin": "correct-class margin",
    "logit": "target logit",
    "log_prob": "log-probability of the target",
    "logprob": "log-probability of the target",
    "loss": "cross-entropy loss",
    "sequence_margin": "mean next-token margin",
}

_STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"),
           ("X", "-."), ("*", ":")]


def output_label(output: Any = None) -> str:
    """A readable name for an output function, for axis labels and titles.

    Args:
        output: a registered name (``"margin"`` gives ``"correct-class margin"``), an
            :class:`~captum_coar.outputs.OutputFunction` (its ``name`` is used), a callable (its
            ``__name__``), any other string (used as it is) or None (``"output"``).

    Returns:
        The label, e.g. ``"correct-class margin"`` or ``"mean next-token margin"``.
    """
    if output is None:
        return "output"
    if isinstance(output, str):
        return _READABLE.get(output, output)
    name = getattr(output, "name", None)
    if not isinstance(name, str):
        name = str(getattr(output, "__name__", type(output).__name__))
    return _READABLE.get(name, name)


def _label(output: Any, result: Any) -> str:
    """``output`` if given, else the output the result records, else "output"."""
    if output is None:
        recorded = getattr(result, "output", None)
        if isinstance(recorded, dict):
            recorded = recorded.get("name")
        output = recorded
    return output_label(output)


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
    ablation_fraction: Optional[float] = None,
    ax: Any = None,
    color: Optional[str] = None,
    output: Any = None,
) -> Any:
    """Scatter of predicted vs actual output of one example under the held-out masks.

    Each point is one held-out ablation mask: x is the output the method's attributions
    predict, y the output the ablated model actually gave. The legend names the three lines:
    the grey dotted diagonal y = x (where a perfectly calibrated prediction would lie), the
    black dashed least-squares fit (its slope is printed; the correlation in the title
    measures how close the points are to this line, whatever its slope) and the unablated
    output (horizontal).

    Args:
        result: from :func:`~captum_coar.counterfactual_correlation`.
        method: method name; defaults to the first method.
        example: column of the batch to show.
        ablation_fraction: test ablation fraction; defaults to the first one.
        ax: matplotlib axes to draw on; a new figure when None.
        color: colour of the points; by default the method's (:func:`method_colours`).
        output: what the output is (see :func:`output_label`), e.g. ``"margin"``.

    Returns:
        The matplotlib ``Axes``.

    Example:
        >>> import torch
        >>> from captum_coar import counterfactual_correlation, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> scores = counterfactual_correlation(
        ...     model, neurons, x, {"exact": model.effects(x, y), "noise": torch.randn(4, 7)},
        ...     target=y, output="logit", ablation_fractions=[0.1, 0.2], n_masks=30)
        >>> from captum_coar import plot_counterfactual_scatter
        >>> ax = plot_counterfactual_scatter(scores, method="exact", example=0)
        >>> ax.get_title().splitlines()
        ['exact, example 0', 'Pearson r = 1.000']
    """
    a, m = result.index(method, ablation_fraction)
    name = result.methods[m]
    if not 0 <= example < result.actual.shape[-1]:
        raise IndexError(f"example {example} is out of range; the result has"
                         f" {result.actual.shape[-1]} examples")
    what = _label(output, result)
    actual = result.actual[a, :, example].double()
    predicted = result.predicted[a, m, :, example].double()
    ax = _axes(ax, (4.2, 4.0))
    color = color if color is not None else method_colours(result.methods)[name]
    ax.scatter(predicted.numpy(), actual.numpy(), s=14, alpha=0.7, color=color, edgecolors="none",
               label=f"one held-out mask (alpha = {result.ablation_fractions[a]:g})")
    low = float(torch.minimum(actual.min(), predicted.min()))
    high = float(torch.maximum(actual.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="0.55", lw=1, ls=":", label="y = x")
    if predicted.std() > 0:
        slope = ((predicted - predicted.mean()) * (actual - actual.mean())).sum() / (
            (predicted - predicted.mean()).square().sum())
        xs = torch.stack([predicted.min(), predicted.max()])
        ax.plot(xs.numpy(), (actual.mean() + slope * (xs - predicted.mean())).numpy(), "k--",
                lw=1, label=f"least-squares fit (slope {float(slope):.2g})")
    ax.axhline(float(result.unablated[example]), color="C3", lw=0.8, ls="-.",
               label=f"unablated {what}")
    r = float(result.values[a, m, example])
    ax.set_title(f"{name}, example {example}\n{result.correlation.capitalize()} r = {r:.3f}",
                 fontsize="medium")
    ax.set_xlabel(f"predicted {what}")
    ax.set_ylabel(f"actual {what} under ablation")
    ax.legend(loc="lower right", fontsize="x-small", framealpha=0.8)
    return ax


def plot_correlation_bars(
    result: CounterfactualCorrelationResult,
    methods: Optional[Sequence[str]] = None,
    ax: Any = None,
    errorbars: bool = True,
    output: Any = None,
) -> Any:
    """Grouped bars: mean correlation of every method (bars) at every test fraction (groups).

    Args:
        result: from :func:`~captum_coar.counterfactual_correlation`.
        methods: the methods to show, in this order; all by default.
        ax: matplotlib axes to draw on; a new figure when None.
        errorbars: draw one standard error over examples.
        output: what the output is (see :func:`output_label`), e.g. ``"margin"``.

    Returns:
        The matplotlib ``Axes``.

    Example:
        >>> import torch
        >>> from captum_coar import counterfactual_correlation, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> scores = counterfactual_correlation(
        ...     model, neurons, x, {"exact": model.effects(x, y), "noise": torch.randn(4, 7)},
        ...     target=y, output="logit", ablation_fractions=[0.1, 0.2], n_masks=30)
        >>> from captum_coar import plot_correlation_bars
        >>> ax = plot_correlation_bars(scores)           # ax.figure.savefig("bars.png") to keep it
        >>> ax.get_legend_handles_labels()[1]
        ['exact', 'noise']
    """
    names = list(result.methods if methods is None else methods)
    for name in names:
        result.index(name, None)
    what = _label(output, result)
    mean, err = result.mean(), result.std_error()
    n_alpha, n_meth = len(result.ablation_fractions), len(names)
    ax = _axes(ax, (max(5.0, 1.0 + 0.45 * n_alpha * n_meth), 3.8))
    width = 0.8 / max(1, n_meth)
    colours = method_colours(result.methods)
    for j, name in enumerate(names):
        col = result.methods.index(name)
        xs = [i + (j - (n_meth - 1) / 2) * width for i in range(n_alpha)]
        heights = [float(mean[i, col]) for i in range(n_alpha)]
        yerr = [float(err[i, col]) for i in range(n_alpha)] if errorbars else None
        ax.bar(xs, heights, width=width * 0.95, yerr=yerr, capsize=2, label=name,
               color=colours[name])
    ax.set_xticks(range(n_alpha))
    ax.set_xticklabels([f"alpha = {a:g}" for a in result.ablation_fractions])
    ax.set_xlabel("test ablation fraction (each component ablated with probability alpha)")
    ax.axhline(0.0, color="k", lw=0.8)
    bars = " ± 1 s.e." if errorbars else ""
    ax.set_ylabel(f"{result.correlation.capitalize()} r, actual vs predicted\n{what}"
                  f" (mean over examples{bars})", fontsize="small")
    ax.set_title(f"Counterfactual correlation of the {what}\n({result.n_masks} held-out masks per"
                 " fraction; higher = attributions predict ablations better)", fontsize="medium")
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
    output: Any = None,
) -> Any:
    """Heat map of one example's attributions: one strip per group (layer), units along x.

    The colour scale is symmetric around zero. Red (positive) = the component supports the
    output: ablating it lowers the output. Blue (negative) = ablating it raises the output.
    The colour bar and a note under the map say so in words.

    Args:
        attributions: ``(n_components,)`` or ``(batch, n_components)`` (then ``example``
            picks the row).
        components: the set the columns refer to; its group names label the strips.
        example: the row of a batch of attributions to show.
        top_k: the ``top_k`` components with the largest absolute attribution are circled,
            numbered and named (with their values) beside the map.
        ax: matplotlib axes to draw on; a new figure when None.
        title: the title; by default names the example and the output.
        cmap: a diverging matplotlib colour map.
        output: what the output is (see :func:`output_label`), e.g. ``"margin"``.

    Returns:
        The matplotlib ``Axes``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from captum_coar import linear_neurons, plot_component_attributions
        >>> neurons = linear_neurons(nn.Sequential(nn.Linear(4, 6), nn.ReLU()), names=["0"])
        >>> ax = plot_component_attributions(torch.randn(6), neurons, output="logit")
        >>> ax.get_title()
        'Component attributions to the target logit, example 0'
    """
    values = attributions.detach().double().cpu()
    if values.dim() == 2:
        values = values[example]
    if values.dim() != 1 or values.numel() != components.n_components:
        raise ValueError(f"attributions must have shape (n_components,) or (batch, n_components) with"
                         f" n_components = {components.n_components}, got {tuple(attributions.shape)}")
    what = output_label(output)
    groups = components.groups
    width = max(g.n_components for g in groups)
    grid = torch.full((len(groups), width), float("nan"), dtype=torch.float64)
    for pos, g in enumerate(groups):
        grid[pos, : g.n_components] = values[components.group_slice(pos)]
    scale = float(values.abs().max()) or 1.0
    ax = _axes(ax, (8.0, 1.6 + 0.45 * max(len(groups), 0.4 * top_k)))
    image = ax.imshow(grid.numpy(), aspect="auto", cmap=cmap, vmin=-scale, vmax=scale,
                      interpolation="nearest")
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels([f"{g.module_name} ({g.n_components} {g.kind}s)" for g in groups], fontsize="small")
    ax.set_xlabel(f"unit index within the group\nred (+) = supports the {what}: ablating it"
                  f" lowers the {what};  blue (-) = ablating it raises it", fontsize="small")
    ax.figure.colorbar(image, ax=ax, label=f"attribution ({what} units)", fraction=0.04, pad=0.02)
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
    ax.set_title(title if title is not None
                 else f"Component attributions to the {what}, example {example}")
    return ax


def _coinciding(curves: List[Tensor]) -> List[List[int]]:
    """Indices of curves grouped so that the curves in a group are (numerically) identical."""
    groups: List[List[int]] = []
    for i, y in enumerate(curves):
        for group in groups:
            ref = curves[group[0]]
            scale = float(ref.abs().max()) if ref.numel() else 0.0
            if torch.allclose(y, ref, rtol=1e-6, atol=1e-9 * max(1.0, scale)):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def plot_topk_curves(
    curve: TopKAblationCurve,
    example: Optional[int] = None,
    ax: Any = None,
    methods: Optional[Sequence[str]] = None,
    output: Any = None,
) -> Any:
    """Output after ablating each method's top-k components, one line per method.

    The curves show the mean over examples, or one ``example``. Each legend entry gives the
    method's average output along its curve (the area under the curve divided by the range
    of fractions, i.e. the normalised AUC of :meth:`~captum_coar.TopKAblationCurve.auc`);
    when the highest attributions are ablated first, a lower average means the method found
    the components that hold the output up. Methods whose curves are identical (for example
    attribution patching and gradient x parameter under weight ablation) are drawn as one
    line with one legend entry ``"A = B"``; every line has its own marker and line style.

    Args:
        curve: from :func:`~captum_coar.topk_ablation_curve`.
        example: a column of the batch; None for the mean over examples.
        ax: matplotlib axes to draw on; a new figure when None.
        methods: the methods to show, in this order; all by default.
        output: what the output is (see :func:`output_label`), e.g. ``"margin"``.

    Returns:
        The matplotlib ``Axes``.

    Example:
        >>> import torch
        >>> from captum_coar import plot_topk_curves
        >>> from captum_coar.evaluation import TopKAblationCurve
        >>> outputs = torch.tensor([[[3.0], [1.0], [0.0]]])      # 1 method, k = 0, 1, 2, 1 example
        >>> ax = plot_topk_curves(TopKAblationCurve(torch.tensor([0, 1, 2]), ("exact",), outputs, 2))
        >>> [line.get_label() for line in ax.get_lines()]  # avg = trapezoid mean of 3, 1, 0
        ['exact  (avg 1.25)']
    """
    names = list(curve.methods if methods is None else methods)
    for name in names:
        if name not in curve.methods:
            raise KeyError(f"unknown method {name!r}; methods are {list(curve.methods)}")
    what = _label(output, curve)
    ax = _axes(ax, (5.5, 3.8))
    auc = curve.auc()
    x = curve.ks.numpy()
    rows = [curve.methods.index(name) for name in names]
    ys = [curve.outputs[i].mean(-1) if example is None else curve.outputs[i, :, example]
          for i in rows]
    colours = method_colours(curve.methods)
    for j, group in enumerate(_coinciding(ys)):
        i = rows[group[0]]
        a = auc[i].mean() if example is None else auc[i, example]
        marker, style = _STYLES[j % len(_STYLES)]
        label = " = ".join(names[g] for g in group)
        ax.plot(x, ys[group[0]].numpy(), marker=marker, ms=4, ls=style, color=colours[names[group[0]]],
                label=f"{label}  (avg {float(a):.3g})")
    which = "highest" if curve.largest else "lowest"
    ax.set_xlabel(f"k = components ablated ({which} attributions first; of {curve.n_components})")
    scope = "mean over examples" if example is None else f"example {example}"
    ax.set_ylabel(f"{what} after ablation\n({scope})")
    better = "lower" if curve.largest else "higher"
    ax.set_title(f"Top-k ablation curves of the {what}\n(avg = mean {what} along the curve,"
                 f" i.e. normalised AUC; {better} = better)", fontsize="medium")
    ax.legend(fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax
