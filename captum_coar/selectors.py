"""Selectors: build component groups for the common kinds of component.

Contract
--------
- :func:`conv_filters`: every output channel of ``nn.Conv1d/2d/3d`` (unit axis 1, output site).
- :func:`linear_neurons`: every output feature of ``nn.Linear`` (weight row ``[j, :]``) or of
  Hugging Face's ``Conv1D`` (weight stored ``[in, out]``: column ``[:, j]``); output site.
- :func:`attention_heads`: head ``h`` is the slice ``[h*d, (h+1)*d)`` of the input of the
  Linear map that consumes the concatenated heads. Attention modules, their output projection,
  head count and head dimension are found from the model's structure and config
  (:mod:`captum_coar._transformers`), whatever the projection is called; grouped-query and
  multi-query attention give one component per query head; cross-attention heads are labelled
  ``cross_head``. Projections may also be named directly with their head counts.
- :func:`mlp_neurons`: MLP hidden unit ``j`` is input feature ``j`` of the MLP's down
  projection: after the activation (and after the gate product of gated MLPs), so ablating it
  removes exactly that unit's contribution. Under ``ablation="weights"`` this equals zeroing
  column ``j`` of the down projection's weight (its bias stays). It is *not* the same as zeroing
  row ``j`` of the up projection: with a bias ``b_j`` and GELU the unit then outputs
  ``gelu(b_j) != 0``; only for a bias-free up projection with ``act(0) = 0`` (ReLU, GELU, SiLU
  gates of Llama-style MLPs) do the two agree.
- ``moe_experts`` (kind of :func:`select_groups`; :func:`captum_coar.experts.moe_experts`):
  every routed expert of every mixture-of-experts block, one component each (its weighted
  contribution to the tokens routed to it; site ``"routing"``).
- ``residual_stream`` (kind of :func:`select_groups`; :func:`captum_coar.positions.residual_stream`):
  one component per transformer block, its whole output hidden vector.
- ``positions=`` of :func:`attention_heads` and :func:`mlp_neurons` takes each unit at each
  token position (:func:`captum_coar.positions.at_positions`).
- :func:`select_groups`: the kinds above filtered by glob patterns or predicates; used by
  :meth:`ComponentSet.from_model`, which this module registers with
  :func:`captum_coar.components.register_group_selector` when it is imported. With ``kinds=None`` a model with a Hugging Face style
  ``config`` and attention modules gets heads + MLP neurons (no embeddings, ``lm_head``,
  classifier heads or q/k/v maps), plus the routed experts of a mixture-of-experts model; any
  other model gets conv filters, Linear neurons and heads.

Tied weights: a Linear map whose weight is shared (GPT-2's ``lm_head`` and the token embedding)
is gated at *that* use only; zeroing the shared matrix by hand would also change the other use.
Selecting such a map warns.

Errors name the module and what was expected: unknown names (with close matches), modules of
the wrong type, head counts that do not divide the projection's width, empty selections.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Union

from torch import nn

from ._modules import NamePatterns, name_filter, require_module
from ._transformers import (
    AttentionSite,
    find_attention,
    find_expert_blocks,
    find_mlp_down_projections,
    has_transformer_config,
    is_linear_like,
    linear_widths,
)
from .components import KINDS, ComponentGroup, ComponentSet, register_group_selector
from .experts import expert_group, find_experts, no_experts_message
from .positions import at_positions, residual_group, transformer_blocks

__all__ = ["conv_filters", "linear_neurons", "attention_heads", "mlp_neurons", "select_groups",
           "default_kinds"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSFORMER_KINDS = ("attention_heads", "mlp_neurons")
LARGE_SELECTION = 50_000


def default_kinds(model: nn.Module) -> tuple:
    """Heads + MLP neurons (+ routed experts) for a transformer with a config, else every kind
    but MLP neurons."""
    if has_transformer_config(model) and find_attention(model):
        return TRANSFORMER_KINDS + (("moe_experts",) if find_experts(model) else ())
    return ("conv_filters", "linear_neurons", "attention_heads")


def _without_experts(model: nn.Module, down: set, experts_selected: bool) -> set:
    """Down projections outside mixture-of-experts blocks; unless the experts themselves are
    selected, refuse or warn where such blocks exist."""
    gateable = [s.module_name for s in find_experts(model)]
    experts = find_expert_blocks(model) + gateable
    if not experts:
        return down
    dense = {d for d in down if not d.startswith(tuple(e + "." for e in experts))}
    if experts_selected:
        return dense
    what = (f"{len(set(experts))} mixture-of-experts block(s) in {type(model).__name__} (e.g."
            f" {experts[0]!r}): expert hidden units are not MLP neurons here (each expert runs"
            " only on the tokens routed to it, and fused expert weights have no Linear to"
            " gate)")
    fix = ("each routed expert is one component of kind 'moe_experts': select kinds="
           "['attention_heads', 'mlp_neurons', 'moe_experts']" if gateable
           else no_experts_message(model))
    if not dense:
        raise ValueError(f"found {what}; {fix}, or gate a named Linear with"
                         " linear_neurons(model, names=[...])")
    warnings.warn(f"found {what}; mlp_neurons covers only the {len(dense)} dense MLP(s)"
                  f" (e.g. {sorted(dense)[0]!r}), not the experts; {fix}",
                  UserWarning, stacklevel=4)
    return dense


def select_groups(
    model: nn.Module,
    kinds: Optional[Sequence[str]] = None,
    include: NamePatterns = None,
    exclude: NamePatterns = None,
) -> List[ComponentGroup]:
    """The groups of ``kinds`` whose module names pass ``include`` / ``exclude``, in module order."""
    if kinds is None:
        kinds = default_kinds(model)
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds={list(kinds)!r} is not allowed; choose from {KINDS}")
    keep = name_filter(include, exclude)
    sites = (find_attention(model) if {"attention_heads", "mlp_neurons", "residual_stream"}
             & set(kinds) else [])
    blocks = set(transformer_blocks(model)) if "residual_stream" in kinds else set()
    by_projection = {s.projection_name: s for s in sites} if "attention_heads" in kinds else {}
    down = set(find_mlp_down_projections(model, sites)) if "mlp_neurons" in kinds else set()
    experts = {s.module_name: s for s in find_experts(model)} if "moe_experts" in kinds else {}
    if "moe_experts" in kinds and not experts:
        raise ValueError(no_experts_message(model))
    if "mlp_neurons" in kinds:
        down = _without_experts(model, down, bool(experts))
    if "mlp_neurons" in kinds and sites and not down and not experts:
        raise ValueError(
            f"found {len(sites)} attention modules in {type(model).__name__} but no MLP down"
            " projection (a Linear map I -> D, I != D, fed by an up projection D -> I or a"
            " fused gate/up D -> 2I right before it or beside it in its parent module); name"
            " the Linear maps whose inputs hold the hidden units with mlp_neurons(model,"
            " names=[...]), or select kinds=['attention_heads']")
    mha_out_projs = {f"{n}.out_proj" for n, m in model.named_modules()
                     if isinstance(m, nn.MultiheadAttention)}
    groups: List[ComponentGroup] = []
    linear_chosen: List[str] = []
    for name, module in model.named_modules():
        if not keep(name):
            continue
        if name in blocks:
            groups.append(residual_group(model, name))
        if "conv_filters" in kinds and isinstance(module, _CONV_TYPES):
            groups.append(_conv_group(name, module))
        if name in by_projection:
            groups.append(_site_group(by_projection[name], module))
        if name in down:
            groups.append(_mlp_group(name, module, model))
        if name in experts:
            groups.append(expert_group(experts[name]))
        if ("linear_neurons" in kinds and is_linear_like(module)
                and name not in by_projection and name not in mha_out_projs):
            groups.append(_linear_group(name, module, model))
            linear_chosen.append(name)
    if not groups:
        raise ValueError(
            f"no components of kinds {list(kinds)} matched include={include!r},"
            f" exclude={exclude!r} in model {type(model).__name__}"
        )
    _warn_tied(model, linear_chosen)
    total = sum(g.n_units for g in groups)
    if total >= LARGE_SELECTION:
        warnings.warn(
            f"selected {total:,} components in {len(groups)} groups ({LARGE_SELECTION:,} or"
            " more: the float64 Gram matrix of 50,000 components alone takes 20 GB); COAR needs"
            " several ablations per component, so narrow the selection with kinds=, include= or"
            " exclude= (see ComponentSet.summary())", stacklevel=3)
    return groups


def conv_filters(model: nn.Module, names: Optional[Sequence[str]] = None) -> ComponentSet:
    """Every output channel of the named ``nn.Conv1d/2d/3d`` modules (all when ``names`` is None).

    Example:
        >>> from torch import nn
        >>> from captum_coar import conv_filters
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3))
        >>> conv_filters(model).n_components, conv_filters(model, names=["2"]).labels[0]
        (12, '2/filter[0]')
    """
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
    """Every output feature of the named ``nn.Linear`` or Hugging Face ``Conv1D`` modules.

    Example:
        >>> from torch import nn
        >>> from captum_coar import linear_neurons
        >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
        >>> linear_neurons(model, names=["0"])
        ComponentSet(6 components: 0:6 neurons)
    """
    modules = dict(model.named_modules())
    if names is None:
        return ComponentSet.from_model(model, kinds=("linear_neurons",))
    groups = []
    for name in _as_list(names):
        _require_linear(modules, name, "linear_neurons")
        groups.append(_linear_group(name, modules[name], model))
    _warn_tied(model, [g.module_name for g in groups])
    return ComponentSet(model, groups)


def mlp_neurons(model: nn.Module, names: Optional[Sequence[str]] = None,
                positions: Optional[Sequence[Any]] = None) -> ComponentSet:
    """MLP hidden units: the input features of each MLP's down projection (found or named).

    ``positions``: token positions (see :mod:`captum_coar.positions`); each neuron at each.

    Example:
        >>> from torch import nn
        >>> from captum_coar import mlp_neurons
        >>> layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
        >>> mlp_neurons(layer, names=["linear2"])          # the down projection's 16 input features
        ComponentSet(16 components: linear2:16 mlp_neurons)
    """
    modules = dict(model.named_modules())
    if names is None:
        return _positioned(ComponentSet.from_model(model, kinds=("mlp_neurons",)), positions)
    groups = []
    for name in _as_list(names):
        _require_linear(modules, name, "mlp_neurons (the MLP's down projection)")
        groups.append(_mlp_group(name, modules[name], model))
    return _positioned(ComponentSet(model, groups), positions)


def _positioned(components: ComponentSet, positions: Optional[Sequence[Any]]) -> ComponentSet:
    return components if positions is None else at_positions(components, positions)


def attention_heads(
    model: nn.Module,
    names: Union[None, Sequence[str], Mapping[str, int]] = None,
    n_heads: Optional[int] = None,
    positions: Optional[Sequence[Any]] = None,
) -> ComponentSet:
    """Attention heads as slices of the input of each attention output projection.

    Args:
        names: attention modules (``"h.0.attn"``, ``"encoder.layer.0.attention.self"``, an
            ``nn.MultiheadAttention``) or output projections (``"h.0.attn.c_proj"``); a mapping
            ``{projection name: n_heads}`` gives head counts explicitly. None: every attention
            module found.
        n_heads: head count for projections that are not part of a found attention module.
        positions: token positions (see :mod:`captum_coar.positions`); each head at each.

    Example:
        >>> from torch import nn
        >>> from captum_coar import attention_heads
        >>> layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
        >>> attention_heads(layer).labels                  # slices of the output projection's input
        ['self_attn.out_proj/head[0]', 'self_attn.out_proj/head[1]']
    """
    return _positioned(_attention_heads(model, names, n_heads), positions)


def _attention_heads(model: nn.Module, names: Union[None, Sequence[str], Mapping[str, int]],
                     n_heads: Optional[int]) -> ComponentSet:
    modules = dict(model.named_modules())
    sites = find_attention(model, strict=names is None)
    if names is None:
        if not sites:
            raise ValueError(
                f"found no attention module in {type(model).__name__}: no module states a head"
                " count or head dimension (num_heads, num_attention_heads, n_head, head_dim, ...)"
                " and holds its projections; pass the output projections and n_heads explicitly:"
                " attention_heads(model, names={'<projection>': n_heads})"
            )
        return ComponentSet(model, [_site_group(s, modules[s.projection_name]) for s in sites])
    by_module = {s.module_name: s for s in sites}
    by_projection = {s.projection_name: s for s in sites}
    counts = dict(names) if isinstance(names, Mapping) else {n: n_heads for n in _as_list(names)}
    groups = []
    for name, count in counts.items():
        module = require_module(modules, name)
        site = by_module.get(name) or by_projection.get(name)
        if site is not None and count is None:
            groups.append(_site_group(site, modules[site.projection_name]))
            continue
        if not is_linear_like(module):
            raise TypeError(
                f"module {name!r} is {type(module).__name__}; attention_heads expects an attention"
                " module found in the model (one that states its heads and holds its"
                " projections) or the Linear / Conv1D output projection that consumes the"
                " concatenated heads, with n_heads")
        if count is None:
            raise ValueError(
                f"module {name!r} does not state its number of heads (it is not the output"
                f" projection of an attention module found in the model); pass n_heads=... or"
                f" names={{{name!r}: n_heads}}")
        kind = site.unit_kind if site is not None else "head"
        groups.append(_head_group(name, module, int(count), kind))
    return ComponentSet(model, groups)


# --------------------------------------------------------------------------- internals
def _as_list(names: Union[str, Sequence[str]]) -> List[str]:
    return [names] if isinstance(names, str) else list(names)


def _require_linear(modules: Dict[str, nn.Module], name: str, what: str) -> None:
    module = require_module(modules, name)
    if not is_linear_like(module):
        raise TypeError(f"module {name!r} is {type(module).__name__}; {what} expects nn.Linear"
                        " or transformers' Conv1D")


def _conv_group(name: str, module: nn.Module) -> ComponentGroup:
    return ComponentGroup(name, "filter", int(getattr(module, "out_channels")), "output", unit_axis=1)


def _linear_group(name: str, module: nn.Module, model: nn.Module) -> ComponentGroup:
    return ComponentGroup(name, "neuron", linear_widths(module)[1], "output", unit_axis=-1,
                          batch_axis=batch_axis_of(model, name))


def _mlp_group(name: str, module: nn.Module, model: nn.Module) -> ComponentGroup:
    return ComponentGroup(name, "mlp_neuron", linear_widths(module)[0], "input", unit_axis=-1,
                          batch_axis=batch_axis_of(model, name))


_SEQUENCE_FIRST_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def batch_axis_of(model: nn.Module, name: str) -> int:
    """1 inside a PyTorch transformer layer built with ``batch_first=False`` (its maps see
    ``(seq, batch, features)``), else 0: the batch axis comes from the declared layout, never
    from a coincidence of sizes."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = model.get_submodule(".".join(parts[:end]))
        if isinstance(parent, _SEQUENCE_FIRST_LAYERS):
            return 0 if parent.self_attn.batch_first else 1
    return 0


def _site_group(site: AttentionSite, projection: nn.Module) -> ComponentGroup:
    return _head_group(site.projection_name, projection, site.n_heads, site.unit_kind)


def _head_group(name: str, projection: nn.Module, n_heads: int, kind: str = "head") -> ComponentGroup:
    if not is_linear_like(projection):
        raise TypeError(
            f"module {name!r} is {type(projection).__name__}; an attention output projection must"
            " be nn.Linear or transformers' Conv1D")
    width = linear_widths(projection)[0]
    if n_heads < 1 or width % n_heads:
        raise ValueError(
            f"module {name!r} has input width {width}, which {n_heads} heads do not divide;"
            " the head count must be a positive divisor of the projection's input width"
        )
    return ComponentGroup(name, kind, n_heads, "input", unit_axis=-1, unit_size=width // n_heads)


def _warn_tied(model: nn.Module, names: List[str]) -> None:
    """Warn when a selected Linear map's weight is also used by another module (tied weights)."""
    if not names:
        return
    owners: Dict[int, Set[str]] = {}
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            owners.setdefault(id(weight), set()).add(module_name)
    modules = dict(model.named_modules())
    for name in names:
        weight = getattr(modules[name], "weight", None)
        others = sorted(owners.get(id(weight), set()) - {name}) if weight is not None else []
        if others:
            warnings.warn(
                f"module {name!r} shares its weight with {others} (tied weights); its neurons are"
                f" gated at {name!r} only, which is not what zeroing rows of the shared matrix"
                " would do (that also changes the other use)", stacklevel=3)


register_group_selector(select_groups)
