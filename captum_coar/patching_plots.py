"""Heatmaps of activation patching: layer x position (causal tracing) and layer x head.

Contract
--------
:func:`plot_patching_grid` draws a ``(rows, columns)`` grid of patching effects, such as the
one :meth:`captum_coar.patching.PatchingResult.grid` or
:func:`captum_coar.positions.patching_grid` return, on a diverging colour map centred at 0.
Its title names the output, the colour bar states the sign convention, and the ``top_k``
cells with the largest absolute value are listed beside the map. :func:`head_grid` reshapes
per-head values of a head set (no positions) into blocks x heads for the same plot. Like
:mod:`captum_coar.visualization`: matplotlib is imported when called, the ``Axes`` is
returned, nothing is shown or saved.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .components import ComponentSet
from .visualization import output_label

__all__ = ["plot_patching_grid", "head_grid"]

NORMALIZED_SIGN = ("fraction of the inputs -> baselines change reproduced by patching this"
                   " cell alone (1 = all of it)")
RAW_SIGN = "output(inputs) - output(inputs with this cell patched from the baseline)"


def head_grid(components: ComponentSet, values: Tensor) -> Tuple[Tensor, List[str], List[str]]:
    """One example's (or a mean) per-head values ``(N,)`` as blocks x heads with labels."""
    values = torch.as_tensor(values)
    if values.dim() != 1 or values.numel() != components.n_components:
        raise ValueError(f"head_grid takes ({components.n_components},) values, got"
                         f" {tuple(values.shape)}")
    groups = components.groups
    sizes = {g.n_components for g in groups}
    if len(sizes) != 1 or any(g.positions for g in groups):
        raise ValueError("head_grid needs groups of equally many heads and no positions;"
                         f" got sizes {sorted(sizes)}")
    grid = values.reshape(len(groups), sizes.pop())
    return grid, [g.module_name for g in groups], [str(h) for h in range(grid.shape[1])]


def plot_patching_grid(grid: Tensor, row_labels: Sequence[str], column_labels: Sequence[str],
                       output: Any = None, normalized: bool = True, title: Optional[str] = None,
                       top_k: int = 5, ax: Any = None, cmap: str = "RdBu_r",
                       xlabel: str = "token position", ylabel: str = "layer") -> Any:
    """Heatmap of a patching grid (rows = layers / blocks, columns = positions or heads).

    Args:
        grid: ``(rows, columns)`` effects.
        row_labels, column_labels: labels for the axes (e.g. from ``PatchingResult.grid()``).
        output: the output patched (``"logit_difference"``...), named in the title.
        normalized: whether ``grid`` holds normalised effects (states the right sign text).
        top_k: the cells with the largest ``|value|`` listed beside the map.

    Example:
        >>> import torch
        >>> from captum_coar import plot_patching_grid
        >>> grid = torch.tensor([[0.1, 0.9], [0.5, -0.2]])        # layers x positions
        >>> ax = plot_patching_grid(grid, ["block 0", "block 1"], ["pos 0", "pos 1"],
        ...                         output="logit_difference")
        >>> [label.get_text() for label in ax.get_yticklabels()], ax.get_xlabel()
        (['block 0', 'block 1'], 'token position')
    """
    import matplotlib.pyplot as plt

    values = torch.as_tensor(grid).detach().double().cpu()
    if values.dim() != 2 or values.shape != (len(row_labels), len(column_labels)):
        raise ValueError(f"grid has shape {tuple(values.shape)} but {len(row_labels)} row and"
                         f" {len(column_labels)} column labels were given")
    what = output_label(output)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 0.45 * len(column_labels),
                                      1.4 + 0.35 * len(row_labels)))
    scale = float(values.abs().nan_to_num().max()) or 1.0
    image = ax.imshow(values.numpy(), aspect="auto", cmap=cmap, vmin=-scale, vmax=scale,
                      interpolation="nearest")
    ax.set_xticks(range(len(column_labels)))
    ax.set_xticklabels(list(column_labels), fontsize="small", rotation=90)
    ax.set_yticks(range(len(row_labels)))
    ax.set_yticklabels(list(row_labels), fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    sign = NORMALIZED_SIGN if normalized else RAW_SIGN
    ax.figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02,
                       label=("normalised patching effect" if normalized
                              else f"patching effect ({what} units)"))
    flat = values.nan_to_num().abs().flatten()
    lines = []
    for rank, index in enumerate(flat.argsort(descending=True)[:max(0, top_k)].tolist(), 1):
        r, c = divmod(index, values.shape[1])
        lines.append(f"{rank}. {row_labels[r]} @ {column_labels[c]}  {float(values[r, c]):+.3g}")
    if lines:
        ax.annotate("top by |effect|:\n" + "\n".join(lines), xy=(1.0, 1.0),
                    xycoords="axes fraction", xytext=(70, 0), textcoords="offset points",
                    va="top", ha="left", fontsize="small", family="monospace")
    ax.set_title(title if title is not None else f"Activation patching of the {what}\n{sign}",
                 fontsize="small")
    return ax
