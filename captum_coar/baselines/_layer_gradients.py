"""Gradients at every component site, or at the gates, in one forward and one backward.

Contract
--------
:class:`SiteRecorder` is an :class:`~captum_coar.recording.ActivationRecorder` that records, for every group of a :class:`ComponentSet`, the activation at the
group's site (a module's output, or its first input for heads) as a node of the autograd
graph. It complains when a site runs more than once per forward (weights shared across calls),
because a per-call activation would then be ambiguous.

:func:`site_gradients` runs one forward of a batch of rows and one backward of the sum of the
per-row outputs, giving every group's activation and its gradient; because each row's output
depends only on that row, the gradient of the sum holds every row's own gradient (Captum's
layer methods rely on the same fact). :func:`gate_gradients` does the same for per-row gate
values. :func:`per_component` sums an activation-shaped tensor within each component (over
positions for a filter, over the head's features and positions for a head), giving
``(rows, n_units)``. :func:`point_chunks` splits path points into passes the way Captum's
``internal_batch_size`` does, and :func:`path_site_gradients` runs :func:`site_gradients` on
the inputs scaled along the path from baselines (:func:`scaled_path`), one pass per chunk of
points (conductance and internal influence).

Both gradient functions enable gradients themselves, so they work under ``torch.no_grad()``
(Captum's ``NoiseTunnel`` calls attribution methods inside one).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._engine import checked_outputs, gates_applied
from .._inputs import expand_target, repeat_rows
from ..components import ComponentGroup, ComponentSet
from ..gates import ComponentGates
from ..outputs import OutputFunction
from ..recording import ActivationRecorder

__all__ = ["SiteRecorder", "site_gradients", "gate_gradients", "per_component", "refuse_latents",
           "point_chunks",
           "scaled_path", "path_site_gradients", "forward_values"]


class SiteRecorder(ActivationRecorder):
    """Records each group's site activation as a gradient leaf, without changing it."""

    def __init__(self, components: ComponentSet) -> None:
        super().__init__(components, leaf=True)


def site_gradients(
    forward_func: Callable[..., Any],
    recorder: SiteRecorder,
    inputs: Tuple[Tensor, ...],
    extra: Tuple[Any, ...],
    target: Any,
    output_fn: OutputFunction,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """``(outputs (rows,), activations, gradients)`` per group for one batch of rows."""
    n_rows = inputs[0].shape[0]
    recorder.reset()
    try:
        with torch.enable_grad():
            values = checked_outputs(output_fn(forward_func(*inputs, *extra), target), n_rows,
                                     output_fn)
            activations = recorder.activations()
            grads: Sequence[Optional[Tensor]] = [None] * len(activations)
            if values.requires_grad:
                grads = torch.autograd.grad(values.sum(), activations, allow_unused=True)
    finally:
        recorder.reset()
    grads_out = [torch.zeros_like(a) if g is None else g.detach() for a, g in zip(activations, grads)]
    return values.detach(), [a.detach() for a in activations], grads_out


def gate_gradients(
    forward_func: Callable[..., Any],
    hooks: ComponentGates,
    inputs: Tuple[Tensor, ...],
    extra: Tuple[Any, ...],
    gates: Tensor,
    example_index: Optional[Tensor],
    target: Any,
    output_fn: OutputFunction,
) -> Tuple[Tensor, Tensor]:
    """``(outputs (rows,), d output / d gates (rows, n_components))``, one gate row per row."""
    n_rows = inputs[0].shape[0]
    with torch.enable_grad():
        gates = gates.detach().requires_grad_()
        with gates_applied(hooks, gates, example_index):
            values = checked_outputs(output_fn(forward_func(*inputs, *extra), target), n_rows,
                                     output_fn)
        if values.requires_grad:
            (grad,) = torch.autograd.grad(values.sum(), gates, allow_unused=True)
        else:
            grad = None
    grad = torch.zeros_like(gates) if grad is None else grad.detach()
    return values.detach(), grad


def forward_values(forward_func: Callable[..., Any], hooks: Optional[ComponentGates],
                   inputs: Tuple[Tensor, ...], extra: Tuple[Any, ...], gates: Optional[Tensor],
                   example_index: Optional[Tensor], target: Any,
                   output_fn: OutputFunction) -> Tensor:
    """Outputs ``(rows,)`` without gradients, with per-row ``gates`` when hooks are given."""
    n_rows = inputs[0].shape[0]
    with torch.no_grad(), gates_applied(hooks, gates, example_index):
        values = output_fn(forward_func(*inputs, *extra), target)
    return checked_outputs(values, n_rows, output_fn)


def per_component(group: ComponentGroup, tensor: Tensor) -> Tensor:
    """Sum an activation-shaped ``(rows, ...)`` tensor within each unit: ``(rows, n_units)``.

    Groups at token positions are refused: these sums run over every position; so are
    dictionary latents (:func:`refuse_latents`).
    """
    refuse_latents(group)
    if group.positions:
        raise ValueError(
            f"group {group.module_name!r} declares token positions {list(group.positions)[:4]},"
            " but this method sums each unit over all positions (and weights are shared across"
            " positions). Use a gate method for components at positions: ComponentAblation,"
            " ComponentAttributionPatching, ComponentAtPStar, ComponentIntegratedGradients or"
            " COAR")
    axis = group.unit_axis % tensor.dim()
    if tensor.shape[axis] != group.width:
        raise ValueError(
            f"module {group.module_name!r}: the {group.site} has {tensor.shape[axis]} features on"
            f" axis {group.unit_axis}, but the group declares {group.n_units} {group.kind}s x"
            f" {group.unit_size} = {group.width}"
        )
    moved = tensor.movedim(axis, -1)
    return moved.reshape(tensor.shape[0], -1, group.n_units, group.unit_size).sum(dim=(1, 3))


def refuse_latents(group: ComponentGroup) -> None:
    """``ValueError`` for a group of dictionary latents: they are no slice of the site's
    features (or of a weight), which methods summing per unit rely on."""
    if group.dictionary is not None:
        raise ValueError(
            f"group {group.module_name!r} holds the latents of dictionary"
            f" {group.dictionary.name!r}, but this method sums the site's features (or weights)"
            " per unit and a latent is no slice of them. Use a gate method for latents:"
            " ComponentAblation, ComponentAttributionPatching, ComponentAtPStar,"
            " ComponentIntegratedGradients or COAR (ComponentAblationRegression)")


def point_chunks(n_points: int, n_examples: int, internal_batch_size: Optional[int]) -> Iterator[range]:
    """Consecutive ranges of path points, each run as one pass of ``len(range) * b`` rows."""
    if internal_batch_size is None:
        per_pass = n_points
    else:
        per_pass = max(1, internal_batch_size // n_examples)
    for start in range(0, n_points, per_pass):
        yield range(start, min(start + per_pass, n_points))


def scaled_path(inputs: Tuple[Tensor, ...], baselines: Tuple[Tensor, ...],
                alphas: List[float]) -> Tuple[Tensor, ...]:
    """Inputs at ``alphas`` on the path from baselines, stacked point-major (Captum's layout)."""
    return tuple(torch.cat([base + alpha * (x - base) for alpha in alphas], dim=0)
                 for x, base in zip(inputs, baselines))


def path_site_gradients(
    forward_func: Callable[..., Any],
    recorder: SiteRecorder,
    inputs: Tuple[Tensor, ...],
    baselines: Tuple[Tensor, ...],
    extra: Tuple[Any, ...],
    target: Any,
    output_fn: OutputFunction,
    alphas: Sequence[float],
    internal_batch_size: Optional[int],
) -> Iterator[Tuple[range, List[Tensor], List[Tensor]]]:
    """``(points, activations, gradients)`` per chunk of path points (:func:`point_chunks`).

    Each chunk is one :func:`site_gradients` pass over the inputs at ``alphas[k]`` for ``k`` in
    ``points``, rows point-major (row ``i * b + j`` is example ``j`` at the chunk's point ``i``).
    """
    n_examples = inputs[0].shape[0]
    for points in point_chunks(len(alphas), n_examples, internal_batch_size):
        scaled = scaled_path(inputs, baselines, [alphas[k] for k in points])
        scaled = tuple(s.requires_grad_() if s.is_floating_point() else s for s in scaled)
        _, acts, grads = site_gradients(
            forward_func, recorder, scaled, repeat_rows(extra, len(points), n_examples),
            expand_target(target, n_examples, len(points)), output_fn)
        yield points, acts, grads
