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

It returns a :class:`WeightEdit` whose ``undo()`` restores the original values exactly (also a
context manager). The result equals the gate hooks with the same strategy and gate 0. Edits
may overlap and be undone in any order: every parameter touched by a live edit has one record
of its original values and a per-entry count of the live edits that zeroed it; an entry gets
its original value back when its count returns to 0 (so undoing all edits, in any order,
restores the weights bit for bit, and undoing some leaves exactly the others' zeros).

:func:`ablate_persistently` covers every strategy (mean, resample, ...): it enters a
:class:`~captum_coar.gates.ComponentGates` with the fixed keep mask and returns it; call
``.remove()`` to take the hooks off.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

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


class _Record:
    """Original values of one parameter and how many live edits zero each entry."""

    def __init__(self, parameter: Tensor) -> None:
        self.parameter = weakref.ref(parameter)
        self.original = parameter.detach().clone()
        self.count = torch.zeros(parameter.shape, dtype=torch.int32, device=parameter.device)


# Live records by parameter identity (tensors compare elementwise, so not a WeakKeyDictionary);
# a record leaves when its last live edit is undone.
_LIVE: Dict[int, _Record] = {}


def _record(parameter: Tensor) -> Optional[_Record]:
    record = _LIVE.get(id(parameter))
    return record if record is not None and record.parameter() is parameter else None


class WeightEdit:
    """Record of a weight edit; ``undo()`` puts the original values back (in any order)."""

    def __init__(self) -> None:
        self._saved: List[Tuple[Tensor, Any]] = []

    def save_and_zero(self, parameter: Tensor, index: Any) -> None:
        with torch.no_grad():
            record = _record(parameter)
            if record is None:
                record = _LIVE[id(parameter)] = _Record(parameter)
            else:  # entries no live edit holds may have changed since: take them as original
                free = record.count == 0
                record.original[free] = parameter.detach()[free]
            record.count[index] += 1
            self._saved.append((parameter, index))
            parameter[index] = 0

    def undo(self) -> None:
        with torch.no_grad():
            for parameter, index in reversed(self._saved):
                record = _record(parameter)
                if record is None:  # pragma: no cover - records live as long as their edits
                    raise RuntimeError("weight edit record lost; cannot undo")
                record.count[index] -= 1
                released = record.count[index] == 0
                parameter[index] = torch.where(released, record.original[index], parameter[index])
                if not bool(record.count.any()):
                    del _LIVE[id(parameter)]
        self._saved.clear()

    @property
    def active(self) -> bool:
        """True until ``undo()`` has been called."""
        return bool(self._saved)

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
        raise ValueError(f"`keep_mask` must have one entry per component ({components.n_components}); got {keep.numel()}")
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
        raise ValueError(f"`keep_mask` must have one entry per component ({components.n_components}); got {keep.shape[1]}")
    strategy = fitted_ablation(ablation, forward_func or components.model, components)
    hooks = ComponentGates(components, strategy)
    gates = keep.float().to(model_device(components.model))
    hooks.__enter__()  # removes whatever it registered if it fails part-way
    hooks.values = gates
    return hooks
