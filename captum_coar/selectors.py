"""Selectors: build component groups for the common kinds of component.

Contract
--------
- :func:`conv_filters`: every output channel of ``nn.Conv1d/2d/3d`` (unit axis 1, output site).
- :func:`linear_neurons`: every output feature of ``nn.Linear`` (weight row ``[j, :]``) or of
  Hugging Face's ``Conv1D`` (weight stored ``[in, out]``: column ``[:, j]``); output site.
- :func:`attention_heads`: head ``h`` is the slice ``[h*d, (h+1)*d)`` of the input of an
  attention output projection (``out_proj``, ``o_proj``, ``c_proj`` or ``proj``), found from
  the attention module or named directly; head counts come from the module (``num_heads``,
  ``n_heads``, ``n_head``, ``config.num_attention_heads``) or from the caller.
- :func:`select_groups`: the kinds above filtered by glob patterns or predicates; used by
  :meth:`ComponentSet.from_model`.

Errors name the module and what was expected: unknown names (with close matches), modules of
the wrong type, head counts that do not divide the projection's width, empty selections.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from .components import (
    KINDS,
    ComponentGroup,
    ComponentSet,
    NamePatterns,
    is_hf_conv1d,
    require_module,
)

__all__ = ["conv_filters", "linear_neurons", "attention_heads", "select_groups"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PROJECTION_NAMES = ("out_proj", "o_proj", "c_proj", "proj")
_HEAD_COUNT_ATTRS = ("num_heads", "n_heads", "n_head", "num_attention_heads")


def select_groups(
    model: nn.Module,
    kinds: Sequence[str] = KINDS,
    include: NamePatterns = None,
    exclude: NamePatterns = None,
) -> List[ComponentGroup]:
    """The groups of ``kinds`` whose module names pass ``include`` / ``exclude``, in module order."""
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds={list(kinds)!r} is not allowed; choose from {KINDS}")
    keep = name_filter(include, exclude)
    groups: List[ComponentGroup] = []
    head_projections = _find_head_projections(model) if "attention_heads" in kinds else {}
    mha_out_projs = {f"{n}.out_proj" for n, m in model.named_modules()
                     if isinstance(m, nn.MultiheadAttention)}
    for name, module in model.named_modules():
        if "conv_filters" in kinds and isinstance(module, _CONV_TYPES) and keep(name):
            groups.append(_conv_group(name, module))
        if name in head_projections and keep(name):
            groups.append(_head_group(name, module, head_projections[name]))
        is_linear = isinstance(module, nn.Linear) or is_hf_conv1d(module)
        if ("linear_neurons" in kinds and is_linear and keep(name)
                and name not in head_projections and name not in mha_out_projs):
            groups.append(_linear_group(name, module))
    if not groups:
        raise ValueError(
            f"no components of kinds {list(kinds)} matched include={include!r},"
            f" exclude={exclude!r} in model {type(model).__name__}"
        )
    return groups


def conv_filters(model: nn.Module, names: Optional[Sequence[str]] = None) -> ComponentSet:
    """Every output channel of the named ``nn.Conv1d/2d/3d`` modules (all when ``names`` is None)."""
    modules = dict(model.named_modules())
    if names is None:
        return ComponentSet.from_model(model, kinds=("conv_filters",))
    groups = []
    for name in _as_list(names):
        module = require_module(modules, name)
        if not isinstance(module, _CONV_TYPES):
            raise TypeError(
                f"module {name!r} is {type(module).__name__}; conv_filters expects"
                " nn.Conv1d, nn.Conv2d or nn.Conv3d"
            )
        groups.append(_conv_group(name, module))
    return ComponentSet(model, groups)


def linear_neurons(model: nn.Module, names: Optional[Sequence[str]] = None) -> ComponentSet:
    """Every output feature of the named ``nn.Linear`` or Hugging Face ``Conv1D`` modules."""
    modules = dict(model.named_modules())
    if names is None:
        return ComponentSet.from_model(model, kinds=("linear_neurons",))
    groups = []
    for name in _as_list(names):
        module = require_module(modules, name)
        if not (isinstance(module, nn.Linear) or is_hf_conv1d(module)):
            raise TypeError(
                f"module {name!r} is {type(module).__name__}; linear_neurons expects nn.Linear"
                " or transformers' Conv1D"
            )
        groups.append(_linear_group(name, module))
    return ComponentSet(model, groups)


def attention_heads(
    model: nn.Module,
    names: Union[None, Sequence[str], Mapping[str, int]] = None,
    n_heads: Optional[int] = None,
) -> ComponentSet:
    """Attention heads as slices of the input of each attention output projection.

    Args:
        names: attention modules (``"h.0.attn"``, an ``nn.MultiheadAttention``) or their
            output projections (``"h.0.attn.c_proj"``, ``"blocks.0.attn.proj"``); a mapping
            ``{name: n_heads}`` gives head counts explicitly. None: every attention module
            found (one with a head-count attribute and an output projection child).
        n_heads: head count for names whose module does not say it.
    """
    modules = dict(model.named_modules())
    if names is None:
        found = _find_head_projections(model)
        if not found:
            raise ValueError(
                f"found no attention module in {type(model).__name__}: none has a head-count"
                f" attribute {_HEAD_COUNT_ATTRS} and an output projection named one of"
                f" {_PROJECTION_NAMES}; pass the projection names and n_heads explicitly"
            )
        return ComponentSet(model, [_head_group(n, modules[n], h) for n, h in found.items()])
    counts = dict(names) if isinstance(names, Mapping) else {n: n_heads for n in _as_list(names)}
    groups = []
    for name, count in counts.items():
        module = require_module(modules, name)
        projection_name, projection, count = _resolve_projection(name, module, count)
        parent = modules.get(projection_name.rpartition(".")[0])
        if count is None and parent is not None:
            count = _head_count(parent)
        if count is None:
            raise ValueError(
                f"module {name!r} does not state its number of heads; pass n_heads=... or"
                " names={name: n_heads}"
            )
        groups.append(_head_group(projection_name, projection, int(count)))
    return ComponentSet(model, groups)


# --------------------------------------------------------------------------- internals
def _as_list(names: Union[str, Sequence[str]]) -> List[str]:
    return [names] if isinstance(names, str) else list(names)


def name_filter(include: NamePatterns, exclude: NamePatterns) -> Callable[[str], bool]:
    def matcher(patterns: NamePatterns, default: bool) -> Callable[[str], bool]:
        if patterns is None:
            return lambda name: default
        if callable(patterns):
            return patterns
        plist = _as_list(patterns)
        return lambda name: any(fnmatch.fnmatchcase(name, p) for p in plist)

    inc, exc = matcher(include, True), matcher(exclude, False)
    return lambda name: bool(name) and inc(name) and not exc(name)


def _conv_group(name: str, module: nn.Module) -> ComponentGroup:
    return ComponentGroup(name, "filter", int(getattr(module, "out_channels")), "output", unit_axis=1)


def _linear_group(name: str, module: nn.Module) -> ComponentGroup:
    width = int(getattr(module, "nf" if is_hf_conv1d(module) else "out_features"))
    return ComponentGroup(name, "neuron", width, "output", unit_axis=-1)


def _projection_width(name: str, module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    if is_hf_conv1d(module):
        return int(getattr(module, "nx"))
    raise TypeError(
        f"module {name!r} is {type(module).__name__}; an attention output projection must be"
        " nn.Linear or transformers' Conv1D"
    )


def _head_group(name: str, projection: nn.Module, n_heads: int) -> ComponentGroup:
    width = _projection_width(name, projection)
    if n_heads < 1 or width % n_heads:
        raise ValueError(
            f"module {name!r} has input width {width}, which {n_heads} heads do not divide;"
            " the head count must be a positive divisor of the projection's input width"
        )
    return ComponentGroup(name, "head", n_heads, "input", unit_axis=-1, unit_size=width // n_heads)


def _head_count(module: nn.Module) -> Optional[int]:
    for attr in _HEAD_COUNT_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    config = getattr(module, "config", None)
    value = getattr(config, "num_attention_heads", None)
    return value if isinstance(value, int) else None


def _resolve_projection(
    name: str, module: nn.Module, count: Optional[int]
) -> Tuple[str, nn.Module, Optional[int]]:
    """Given an attention module or its projection, return (projection name, module, heads)."""
    if isinstance(module, nn.Linear) or is_hf_conv1d(module):
        return name, module, count
    for child in _PROJECTION_NAMES:
        projection = getattr(module, child, None)
        if isinstance(projection, nn.Linear) or (projection is not None and is_hf_conv1d(projection)):
            return f"{name}.{child}", projection, count or _head_count(module)
    raise TypeError(
        f"module {name!r} is {type(module).__name__}; attention_heads expects an attention"
        f" module with an output projection child named one of {_PROJECTION_NAMES}, or the"
        " projection itself (nn.Linear / Conv1D)"
    )


def _find_head_projections(model: nn.Module) -> Dict[str, int]:
    """Map projection name -> head count for every attention module found in ``model``."""
    found: Dict[str, int] = {}
    for name, module in model.named_modules():
        count = _head_count(module)
        if count is None or not name:
            continue
        for child in _PROJECTION_NAMES:
            projection = getattr(module, child, None)
            if isinstance(projection, nn.Linear) or (projection is not None and is_hf_conv1d(projection)):
                found[f"{name}.{child}"] = count
                break
    return found
