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
context manager). The result equals the gate hooks with the same strategy and gate 0, except
for a weight shared with another module (tied weights, e.g. GPT-2's ``lm_head`` and token
embedding): zeroing the shared tensor in place changes every module using it, so
:func:`zero_components` warns and names them (use :func:`ablate_persistently` for the exact
gated model). Edits may overlap and be undone in any order: every parameter touched by a live
edit has one record of its original values and a per-entry count of the live edits that zeroed
it; an entry gets its original value back when its count returns to 0 (so undoing all edits,
in any order, restores the weights bit for bit, and undoing some leaves exactly the others'
zeros).

Edits and records hold parameter NAMES (the first name of the tensor in
``model.named_parameters()``), never the parameter objects: ``undo()`` looks each parameter up
by name in the model at undo time, so it restores the values after the parameter object was
replaced (``load_state_dict(..., assign=True)``, a new ``nn.Parameter``, ``model.double()``,
``model.to(device)``). It refuses, changing nothing, when a parameter is gone, has another
shape, or has a dtype in which an original value cannot be held exactly (``model.half()``
after the edit); undo first, or convert back and undo.

:func:`ablate_persistently` covers every strategy (mean, resample, ...): it enters a
:class:`~captum_coar.gates.ComponentGates` with the fixed keep mask and returns it; call
``.remove()`` to take the hooks off.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._modules import is_hf_conv1d, model_device
from .ablation import (
    AblationStrategy,
    WeightAblation,
    ZeroAblation,
    fitted_ablation,
    resolve_ablation,
)
from .components import ComponentGroup, ComponentSet
from .gates import ComponentGates

__all__ = ["WeightEdit", "zero_components", "ablate_persistently", "weight_slices",
           "shared_names"]

# (state-dict key of the parameter, index of the zeroed slice) for one ablated component
Slice = Tuple[str, Any]


def _same_values(a: Tensor, b: Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


class _Record:
    """Original values of one parameter (by name) and how many live edits zero each entry."""

    def __init__(self, parameter: Tensor) -> None:
        self.original = parameter.detach().clone()
        self.count = torch.zeros(parameter.shape, dtype=torch.int32)

    def follow(self, name: str, parameter: Tensor) -> None:
        """Move the record to the parameter's current dtype and device, or refuse."""
        if parameter.shape != self.original.shape:
            raise RuntimeError(
                f"weight edit: parameter {name!r} now has shape {tuple(parameter.shape)}, not"
                f" {tuple(self.original.shape)} as when it was edited, so its original values"
                " cannot be put back; nothing was restored. Restore a model of the edited"
                " shape, then undo")
        if parameter.dtype == self.original.dtype and parameter.device == self.original.device:
            return
        held = self.count > 0
        moved = self.original.to(device=parameter.device, dtype=parameter.dtype)
        if not _same_values(moved.cpu()[held].to(self.original.dtype), self.original.cpu()[held]):
            raise RuntimeError(
                f"weight edit: parameter {name!r} is now {parameter.dtype}, not"
                f" {self.original.dtype} as when it was edited, and its original values cannot be"
                f" held exactly in {parameter.dtype}; nothing was restored. Convert the model back"
                f" to {self.original.dtype} and undo, then convert")
        self.original = moved


# Live records: model -> {parameter name: record}; a record leaves when its last edit is undone.
_LIVE: "weakref.WeakKeyDictionary[nn.Module, Dict[str, _Record]]" = weakref.WeakKeyDictionary()


def _parameter(model: nn.Module, name: str) -> Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        raise RuntimeError(f"weight edit: the model has no parameter {name!r} any more (it was"
                           " removed or renamed since the edit); nothing was restored") from None


class WeightEdit:
    """Record of a weight edit (parameter names and slices); ``undo()`` restores by name.

    Args:
        model: the model whose parameters the edit zeroes (``components.model``).
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._saved: List[Slice] = []

    def save_and_zero(self, name: str, index: Any) -> None:
        """Record the values of ``model.get_parameter(name)[index]`` and zero them."""
        parameter = _parameter(self._model, name)
        records = _LIVE.setdefault(self._model, {})
        with torch.no_grad():
            record = records.get(name)
            if record is None:
                record = records[name] = _Record(parameter)
            else:  # entries no live edit holds may have changed since: take them as original
                record.follow(name, parameter)
                free = (record.count == 0).to(parameter.device)
                record.original[free] = parameter.detach()[free]
            record.count[index] += 1
            self._saved.append((name, index))
            parameter[index] = 0

    def undo(self) -> None:
        """Put back the original values of every entry no other live edit holds.

        Raises:
            RuntimeError: a parameter is gone, changed shape, or changed to a dtype that
                cannot hold its original values exactly; nothing is restored then.
        """
        if not self._saved:
            return
        records = _LIVE.get(self._model, {})
        current = {}
        for name, _ in self._saved:  # check everything before writing anything
            if name not in records:  # pragma: no cover - records live as long as their edits
                raise RuntimeError(f"weight edit record of {name!r} lost; cannot undo")
            current[name] = _parameter(self._model, name)
            records[name].follow(name, current[name])
        with torch.no_grad():
            for name, index in reversed(self._saved):
                parameter, record = current[name], records[name]
                record.count[index] -= 1
                released = (record.count[index] == 0).to(parameter.device)
                parameter[index] = torch.where(released, record.original[index], parameter[index])
            for name in current:
                if not bool(records[name].count.any()):
                    del records[name]
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
    if group.dictionary is not None:
        raise ValueError(
            f"group {group.module_name!r} holds the latents of dictionary"
            f" {group.dictionary.name!r}: a latent is no slice of any weight of the model, so no"
            " weight edit (zero_components, apply_edit or edited_state_dict with 'weights' or"
            " 'zero') removes it. Ablate latents with hooks: ablate_persistently(components,"
            " keep_mask, ablation='zero')")
    if group.positions:
        raise ValueError(
            f"group {group.module_name!r} is at token positions: a weight is shared by every"
            " position, so no weight edit removes a component at one position only. Use"
            " ablate_persistently (hooks) for components at positions")
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


def _key(module_name: str, attribute: str) -> str:
    return f"{module_name}.{attribute}" if module_name else attribute


def _weight_strategy(ablation: Union[str, AblationStrategy]) -> AblationStrategy:
    strategy = resolve_ablation(ablation)
    if not isinstance(strategy, (WeightAblation, ZeroAblation)):
        raise ValueError(
            f"a weight edit can express ablation 'weights' or 'zero', not {strategy!r}; use"
            " ablate_persistently for other strategies"
        )
    return strategy


def weight_slices(components: ComponentSet, keep_mask: Tensor,
                  ablation: Union[str, AblationStrategy] = "weights") -> List[Slice]:
    """``(state-dict key, index)`` of every slice a weight edit zeroes, in component order.

    Keys are the owning module's own names (``"lm_head.weight"``), also for tied weights.
    """
    strategy = _weight_strategy(ablation)
    keep = torch.as_tensor(keep_mask).reshape(-1).bool()
    if keep.numel() != components.n_components:
        raise ValueError(f"`keep_mask` must have one entry per component ({components.n_components}); got {keep.numel()}")
    slices: List[Slice] = []
    for flat in torch.nonzero(~keep).reshape(-1).tolist():
        position, unit = components.locate(flat)
        group = components.groups[position]
        module = components.module(group)
        slices.append((_key(group.module_name, "weight"), _weight_index(group, module, unit)))
        bias = getattr(module, "bias", None)
        if isinstance(strategy, ZeroAblation) and group.site == "output" and bias is not None:
            slices.append((_key(group.module_name, "bias"), unit))
    return slices


def shared_names(model: nn.Module, key: str) -> List[str]:
    """Every name of ``model.named_parameters`` holding the same tensor as ``key`` (``key`` first)."""
    target = model.get_parameter(key)
    names = [name for name, p in model.named_parameters(remove_duplicate=False)
             if p is target and name != key]
    return [key] + names


def _owner(key: str) -> str:
    return key.rpartition(".")[0] or "<model>"


def zero_components(
    components: ComponentSet,
    keep_mask: Tensor,
    ablation: Union[str, AblationStrategy] = "weights",
) -> WeightEdit:
    """Zero the weights of every component with ``keep_mask[i] == False``, in place.

    Warns when a zeroed weight is shared with another module (tied weights): that module
    changes too, so the edit then differs from gating.

    Example:
        >>> import torch
        >>> from captum_coar import linear_neurons, zero_components
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet().eval()                       # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> expected = model.effects(x, y)[:, 2]               # neuron 2's contribution
        >>> before = model(x).detach()
        >>> keep = torch.ones(7, dtype=torch.bool)
        >>> keep[2] = False                                    # ablate neuron 2
        >>> edit = zero_components(linear_neurons(model, ["hidden"]), keep)
        >>> drop = (before - model(x).detach())[torch.arange(4), y]
        >>> torch.allclose(drop, expected, atol=1e-5)
        True
        >>> edit.undo()
        >>> torch.equal(model(x), before)
        True
    """
    model: nn.Module = components.model
    slices = weight_slices(components, keep_mask, ablation)
    first = {id(p): name for name, p in model.named_parameters()}
    edit = WeightEdit(model)
    warned = set()
    for key, index in slices:
        names = shared_names(model, key)
        if len(names) > 1 and key not in warned:
            warned.add(key)
            others = sorted({_owner(n) for n in names[1:]} - {_owner(key)})
            warnings.warn(
                f"zero_components: {key!r} is the same tensor as {names[1:]} (tied weights);"
                f" zeroing it in place also changes module(s) {others}, so the edited model"
                f" differs from gating the components of {_owner(key)!r} wherever {others} are"
                " used. Use ablate_persistently (hooks) for the gated model exactly",
                stacklevel=2)
        edit.save_and_zero(first[id(model.get_parameter(key))], index)
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
