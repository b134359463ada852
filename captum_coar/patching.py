"""Activation patching between paired prompts, with the metrics of best practice.

Contract
--------
:func:`activation_patching` runs exact activation patching for every component of a set:
the model on ``inputs``, with one component at a time replaced by its activation on the
paired ``baselines`` example (same row, same positions). It returns a
:class:`PatchingResult` holding

- ``effects`` ``(batch, N)`` = ``F(inputs) - F(inputs with c patched)``, the package's sign
  everywhere (positive: the component, as it is on the inputs, pushes the output up relative
  to its baseline value);
- ``input_value`` and ``baseline_value`` ``(batch,)``: ``F(inputs)`` and ``F(baselines)``;
- ``normalized`` ``(batch, N)`` = ``effects / (input_value - baseline_value)``: the fraction
  of the whole inputs -> baselines change that patching ``c`` alone reproduces. For
  *denoising* (``inputs`` = corrupted, ``baselines`` = clean) this is the usual
  ``(patched - corrupted) / (clean - corrupted)``, the fraction of the clean behaviour
  recovered; for *noising* (``inputs`` = clean, ``baselines`` = corrupted) it is the fraction
  of the behaviour destroyed. Rows whose two values are within ``1e-6`` of each other have no
  effect to normalise: their row is NaN and a warning names them.

``sign`` states the convention in words, for tables and plot titles; :meth:`PatchingResult.grid`
gives the layer x position (or block x head) map of :func:`captum_coar.positions.patching_grid`
averaged over examples, and :meth:`PatchingResult.top` the largest components. Outputs: any
output function; ``"logit_difference"`` (``target`` = ``[answer, distractor]``) and
``"answer_probability"`` are the recommended metrics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor

from ._engine import evaluate_masks
from .baselines.leave_one_out import ComponentAblation
from .components import ComponentSet
from .outputs import resolve_output
from .positions import patching_grid

__all__ = ["activation_patching", "PatchingResult"]

_FLAT = 1e-6


@dataclass
class PatchingResult:
    """Exact activation patching of every component (see the module docs)."""

    components: ComponentSet
    effects: Tensor
    input_value: Tensor
    baseline_value: Tensor
    normalized: Tensor
    output: str
    direction: str

    @property
    def sign(self) -> str:
        """The sign convention, in words."""
        return (f"effect = {self.output}(inputs) - {self.output}(inputs with the component"
                f" patched from its baseline) ({self.direction}); normalized = effect /"
                f" ({self.output}(inputs) - {self.output}(baselines)), 1 = patching it alone"
                " moves the output all the way to the baseline's")

    def grid(self, normalized: bool = True, example: Optional[int] = None
             ) -> Tuple[Tensor, List[str], List[str]]:
        """``(grid, row_labels, column_labels)``: the mean over examples (NaN rows left out),
        or one ``example``, of the normalised (or raw) effects, as groups x positions."""
        values = self.normalized if normalized else self.effects
        row = values[example] if example is not None else _nanmean(values)
        return patching_grid(self.components, row)

    def top(self, k: int = 10, normalized: bool = True) -> List[Tuple[str, float]]:
        """The ``k`` components with the largest mean absolute (normalised) effect."""
        values = _nanmean(self.normalized if normalized else self.effects)
        order = values.abs().argsort(descending=True)[:k]
        return [(self.components.label(int(i)), float(values[i])) for i in order]


def _nanmean(values: Tensor) -> Tensor:
    keep = ~torch.isnan(values).any(dim=1)
    if not bool(keep.any()):
        raise ValueError("every example has equal input and baseline outputs: nothing to"
                         " normalise; use normalized=False")
    return values[keep].mean(dim=0)


def activation_patching(
    forward_func: Callable[..., Any],
    components: ComponentSet,
    inputs: Any,
    baselines: Any,
    target: Any = None,
    additional_forward_args: Any = None,
    output: Any = None,
    perturbations_per_eval: Optional[int] = None,
    max_rows: Optional[int] = None,
    show_progress: bool = False,
    direction: str = "noising",
) -> PatchingResult:
    """Patch every component from ``baselines`` into the run on ``inputs``, one at a time.

    Args:
        forward_func: the model or a function of ``(*inputs, *additional_forward_args)``.
        components: the components (heads, neurons, residual stream, at positions or not).
        inputs, baselines: paired inputs of exactly the same shape (clean and corrupted for
            noising; corrupted and clean for denoising).
        target, additional_forward_args, output: as in every method (e.g.
            ``output="logit_difference"`` with ``target`` = ``[answer, distractor]`` ids).
        perturbations_per_eval, max_rows, show_progress: batching, as in
            :class:`~captum_coar.baselines.ComponentAblation`.
        direction: ``"noising"`` or ``"denoising"``, a label for :attr:`PatchingResult.sign`
            only (the arithmetic is the same; which prompt is which decides).

    Cost: ``N + 2`` forward passes of the batch (batched ``perturbations_per_eval`` at a time).

    Example:
        >>> import torch
        >>> from captum_coar import activation_patching, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> clean, corrupted = x, torch.randn(4, 5)                 # paired prompts
        >>> patched = activation_patching(model, neurons, clean, corrupted, target=y, output="logit")
        >>> by_hand = model.readout.weight[y] * (model.hidden(clean) - model.hidden(corrupted))
        >>> torch.allclose(patched.effects, by_hand, atol=1e-5)  # F(clean) - F(clean, one patched)
        True
    """
    if direction not in ("noising", "denoising"):
        raise ValueError(f"direction must be 'noising' or 'denoising', got {direction!r}")
    output_fn = resolve_output(output, target)
    effects = ComponentAblation(forward_func, components).attribute(
        inputs, target=target, additional_forward_args=additional_forward_args,
        baselines=baselines, output=output_fn, perturbations_per_eval=perturbations_per_eval,
        max_rows=max_rows, show_progress=show_progress)
    effects = effects[0] if isinstance(effects, tuple) else effects
    both = [evaluate_masks(forward_func, components, x, torch.ones(1, components.n_components),
                           target=target, additional_forward_args=additional_forward_args,
                           output=output_fn)[0] for x in (inputs, baselines)]
    input_value, baseline_value = (v.to(effects) for v in both)
    change = input_value - baseline_value
    flat = change.abs() <= _FLAT
    if bool(flat.any()):
        warnings.warn(
            f"examples {torch.nonzero(flat).flatten().tolist()[:10]} have the same"
            f" {output_fn.name} on inputs and baselines (|difference| <= {_FLAT}); their"
            " normalised effects are NaN", stacklevel=2)
    denominator = torch.where(flat, torch.full_like(change, float("nan")), change)
    return PatchingResult(components, effects, input_value, baseline_value,
                          effects / denominator[:, None], output_fn.name, direction)
