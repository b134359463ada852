"""Permanent ablations: as weight edits, or as persistent hooks that can be removed.

Contract
--------
:func:`zero_components` writes an ablation into the model's parameters: for every ablated
component (``keep_mask`` False) it zeroes the component's weight slice, and with
``ablation="zero"`` also the bias entry of output-site components. The slices:

==============================  ==================================  ====================
group                           weight slice                        bias (``"zero"``)
==============================  ==================================  ====================
Conv filter ``c`` (output)      ``weight[c]``                       ``bias[c]``
Linear neuron ``j`` (output)    ``weight[j, :]``                    ``bias[j]``
Conv1D neuron ``j`` (output)    ``weight[:, j]`` (stored [in, out])  ``bias[j]``
head ``h`` at Linear input      ``weight[:, h*d:(h+1)*d]``          (kept)
head ``h`` at Conv1D input      ``weight[h*d:(h+1)*d, :]``          (kept)
==============================  ==================================  ====================

It returns a :class:`WeightEdit` whose ``undo()`` restores the saved slices exactly (also a
context manager). The result equals the gate hooks with the same strategy and gate 0.

:func:`ablate_persistently` covers every strategy (mean, resample, ...): it enters a
:class:`~captum_coar.gates.ComponentGates` with the fixed keep mask and returns it; call
``.remove()`` to take the hooks off.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .ablation import (
    AblationStrategy,
    WeightAblation,
    ZeroAblation,
    fitted_ablation,
    resolve_ablation,
)
from .components import ComponentGroup, ComponentSet, is_hf_conv1d, model_device
from .gates import ComponentGates

__all__ = ["WeightEdit", "zero_components", "ablate_persistently"]


class WeightEdit:
    """Record of a weight edit; ``undo()`` puts the original values back."""

    def __init__(self) -> None:
        self._saved: List[Tuple[Tensor, Any, Tensor]] = []

    def save_and_zero(self, parameter: Tensor, index: Any) -> None:
        with torch.no_grad():
            self._saved.append((parameter, index, parameter[index].clone()))
            parameter[index] = 0

    def undo(self) -> None:
        with torch.no_grad():
            for parameter, index, original in reversed(self._saved):
                parameter[index] = original
        self._saved.clear()

    def __enter__(self) -> "WeightEdit":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.undo()


def _weight_index(group: ComponentGroup, module: nn.Module, unit: int) -> Any:
    if group.site == "input":
        cols = slice(unit * group.unit_size, (unit + 1) * group.unit_size)
        if isinstance(module, nn.Linear):
            return (slice(None), cols)
        if is_hf_conv1d(module):
            return (cols, slice(None))
    else:
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return unit
        if is_hf_conv1d(module):
            return (slice(None), unit)
    raise TypeError(
        f"module {group.module_name!r} ({type(module).__name__}) at site {group.site!r} has no known"
        " weight layout; use ablate_persistently (hooks) instead of a weight edit"
    )


def zero_components(
    components: ComponentSet,
    keep_mask: Tensor,
    ablation: Union[str, AblationStrategy] = "weights",
) -> WeightEdit:
    """Zero the weights of every component with ``keep_mask[i] == False``, in place."""
    strategy = resolve_ablation(ablation)
    if not isinstance(strategy, (WeightAblation, ZeroAblation)):
        raise ValueError(
            f"a weight edit can express ablation 'weights' or 'zero', not {strategy!r}; use"
            " ablate_persistently for other strategies"
        )
    keep = torch.as_tensor(keep_mask).reshape(-1).bool()
    if keep.numel() != components.n_components:
        raise ValueError(f"keep_mask has {keep.numel()} entries; the set has {components.n_components} components")
    edit = WeightEdit()
    for flat in torch.nonzero(~keep).reshape(-1).tolist():
        position, unit = components.locate(flat)
        group = components.groups[position]
        module = components.module(group)
        weight = getattr(module, "weight")
        edit.save_and_zero(weight, _weight_index(group, module, unit))
        bias = getattr(module, "bias", None)
        if isinstance(strategy, ZeroAblation) and group.site == "output" and bias is not None:
            edit.save_and_zero(bias, unit)
    return edit


def ablate_persistently(
    components: ComponentSet,
    keep_mask: Tensor,
    ablation: Union[str, AblationStrategy] = "weights",
    forward_func: Optional[Callable[..., Any]] = None,
) -> ComponentGates:
    """Ablate components with hooks that stay until ``.remove()`` is called on the result."""
    keep = torch.as_tensor(keep_mask).reshape(1, -1)
    if keep.shape[1] != components.n_components:
        raise ValueError(f"keep_mask has {keep.shape[1]} entries; the set has {components.n_components} components")
    strategy = fitted_ablation(ablation, forward_func or components.model, components)
    hooks = ComponentGates(components, strategy)
    gates = keep.float().to(model_device(components.model))
    hooks.__enter__()  # removes whatever it registered if it fails part-way
    hooks.values = gates
    return hooks
