"""Finding attention heads and MLP hidden units in transformers from their structure.

Contract
--------
:func:`find_attention` returns one :class:`AttentionSite` per multi-head attention module of
a model: the module, the Linear (or Hugging Face ``Conv1D``) that consumes the concatenated
heads (its *output projection*), the number of query heads, the head dimension and whether it
is self- or cross-attention, from the structure (names only break ties, see below):

- an *attention core* is an innermost module that states a head dimension (``v_head_dim``,
  ``head_dim``, ``attention_head_size``, ``key_value_proj_dim``, ``head_size``) or a head count
  (``num_heads``, ``num_attention_heads``, ``n_heads``, ``n_head``); a missing count comes from
  its ``config`` (``num_attention_heads``), a missing dimension from the count;
- gating needs only its *output projection* (the Linear map that consumes the concatenated
  heads: input width ``q = heads * head_dim``, output the width its other maps read), the head
  count and the head size; the query/key/value layout is used only to tell the output
  projection from a query projection of the same shape, in this order:

  1. the one map inside the core that maps ``q`` back to that width while the core's other
     maps hold a query/key/value layout, in any module order (fused ``q + 2 kv`` as in GPT-2,
     Phi-3 or CodeGen's multi-partition ``qkv_proj``; ``q, kv, kv``; ``q, 2 kv``; ``kv``
     ranging over ``kv_heads * head_dim`` for a ``kv_heads`` that divides ``heads``, so
     grouped-query and multi-query attention give one unit per *query* head);
  2. otherwise, in module order, the first map after a leading query/key/value layout that
     maps ``q`` back to the width its projections read: inside the core or, when the core
     holds only q/k/v (BERT's ``attention.self``), the next one after the core in its parent
     (``attention.output.dense``).

  3. otherwise the core's last map, when it is the only one whose input width is ``q`` and
     maps back to the width the others read (latent attention, DeepSeek-V2: ``q_proj``,
     ``kv_a_proj_with_mqa``, ``kv_b_proj`` fit no q/k/v layout; ``head_dim`` is then
     ``v_head_dim``).

  Names only break ties: where several maps fit rule 1 (separate projections all ``D -> D``)
  and exactly one is not named like an input (``q_proj``, ``value``, ``Wqkv``, ...), that one
  is taken; a map named like an input is never taken by rule 2.

The one genuine oddity, ``nn.MultiheadAttention`` (projections as parameters, ``out_proj``
called functionally), is a table entry. Cross-attention is recognised by an
``is_cross_attention`` flag, a ``CrossAttention`` class name on the module or its parent, or
the conventional names ``encoder_attn`` / ``EncDecAttention`` / ``crossattention``; it is
labelled ``cross_head``, self-attention ``head``.

:func:`find_mlp_down_projections` returns, for every MLP, the Linear map that brings the hidden
units back to the model width (``down_proj``, ``c_proj``, ``fc2``, ``wo``, ``output.dense``):
a map ``I -> D`` (``D`` = the width of the attention outputs, ``I != D``) fed by an up
projection ``D -> I`` (gated MLPs have two) or a fused gate/up projection ``D -> 2 I``
(Phi-3's ``gate_up_proj``), found directly before it in module order or beside it in the same
parent module. Its *input* holds each hidden unit once, after the activation and after the
gate product.

:func:`find_expert_blocks` names the mixture-of-experts blocks (a module whose name or class
says ``expert`` and that holds its experts' weights as 3-d tensors or a list of expert
modules). Their hidden units are not MLP neurons here: each expert runs only on the tokens
routed to it, and fused expert weights have no Linear map to gate. Each routed expert is a
component of its own (:mod:`captum_coar.experts`); selecting MLP neurons without the experts
warns or refuses (see :mod:`captum_coar.selectors`) rather than report the dense MLPs alone
as "the MLP neurons".

An attention core whose output projection cannot be told apart raises ``ValueError`` naming
the core, what is missing (the head shape, or a map ``q -> width``) and how to declare its
heads by hand, so a head count is never silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from torch import nn

from ._modules import is_hf_conv1d

__all__ = ["AttentionSite", "find_attention", "find_mlp_down_projections", "find_expert_blocks",
           "linear_widths", "is_linear_like", "has_transformer_config"]

_HEAD_DIM_ATTRS = ("v_head_dim", "head_dim", "attention_head_size", "key_value_proj_dim", "head_size")
_HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_QKV_WORDS = {"q", "k", "v", "qk", "kv", "qkv", "query", "key", "value", "wq", "wk", "wv",
              "wqkv", "in"}
_KV_COUNT_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_n_heads")
_CROSS_NAMES = ("encoder_attn", "encdecattention", "crossattention", "cross_attn",
                "cross_attention")


@dataclass(frozen=True)
class AttentionSite:
    """One multi-head attention module and the Linear map that consumes its heads."""

    module_name: str
    projection_name: str
    n_heads: int
    head_dim: int
    cross: bool = False

    @property
    def unit_kind(self) -> str:
        return "cross_head" if self.cross else "head"


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def linear_widths(module: nn.Module) -> Tuple[int, int]:
    """``(input width, output width)`` of an ``nn.Linear`` or a ``Conv1D``."""
    if is_hf_conv1d(module):
        return int(getattr(module, "nx")), int(getattr(module, "nf"))
    return int(getattr(module, "in_features")), int(getattr(module, "out_features"))


def has_transformer_config(model: nn.Module) -> bool:
    """True for a model that carries a Hugging Face style ``config`` with attention heads."""
    config = getattr(model, "config", None)
    return config is not None and any(
        isinstance(getattr(config, attr, None), int)
        for attr in ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"))


def _int_attr(module: object, names: Tuple[str, ...]) -> Optional[int]:
    for attr in names:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _is_core_candidate(module: nn.Module) -> bool:
    """States a head shape and holds Linear maps (a rotary cache with ``head_dim`` does not)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    if _int_attr(module, _HEAD_DIM_ATTRS) is None and _int_attr(module, _HEAD_COUNT_ATTRS) is None:
        return False
    return any(is_linear_like(m) for m in module.modules())


def _head_shape(name: str, module: nn.Module) -> Tuple[Optional[int], Optional[int]]:
    heads = _int_attr(module, _HEAD_COUNT_ATTRS)
    if heads is None:
        heads = _int_attr(getattr(module, "config", None), ("num_attention_heads",))
    return heads, _int_attr(module, _HEAD_DIM_ATTRS)


def _kv_widths(heads: int, head_dim: int) -> List[int]:
    return [k * head_dim for k in range(1, heads + 1) if heads % k == 0]


def _declared_kv_widths(module: nn.Module, heads: int, head_dim: int) -> Optional[List[int]]:
    """``[kv_heads * head_dim]`` when the core (or its config) states its key/value heads."""
    kv = _int_attr(module, _KV_COUNT_ATTRS)
    groups = _int_attr(module, ("num_key_value_groups",))
    if kv is None and groups is not None and heads % groups == 0:
        kv = heads // groups
    if kv is None:
        kv = _int_attr(getattr(module, "config", None), ("num_key_value_heads",))
    return [kv * head_dim] if kv is not None and heads % kv == 0 else None


def _qkv_prefix(widths: List[int], heads: int, head_dim: int,
                kv_widths: Optional[List[int]] = None) -> int:
    """How many leading maps are the q/k/v projections (0 when the widths fit no layout)."""
    q = heads * head_dim
    kv_widths = kv_widths or _kv_widths(heads, head_dim)
    if len(widths) >= 3 and any(sorted(widths[:3]) == sorted([q, kv, kv]) for kv in kv_widths):
        return 3
    if widths and any(widths[0] == q + 2 * kv for kv in kv_widths):
        return 1
    if len(widths) >= 2 and any(sorted(widths[:2]) == sorted([q, 2 * kv]) for kv in kv_widths):
        return 2
    return 0


def _is_qkv_layout(widths: List[int], heads: int, head_dim: int,
                   kv_widths: Optional[List[int]]) -> bool:
    """Whether ``widths`` (any order) are exactly the output widths of q/k/v projections."""
    return _qkv_prefix(list(widths), heads, head_dim, kv_widths) == len(widths)


def _is_cross(name: str, module: nn.Module, parent: Optional[nn.Module]) -> bool:
    if getattr(module, "is_cross_attention", False) is True:
        return True
    if parent is not None and getattr(parent, "is_cross_attention", False) is True:
        return True
    classes = [type(module).__name__] + ([type(parent).__name__] if parent is not None else [])
    if any("crossattention" in c.lower() for c in classes):
        return True
    parts = name.lower().split(".")[-2:]
    return any(part in _CROSS_NAMES for part in parts)


def find_attention(model: nn.Module, strict: bool = True) -> List[AttentionSite]:
    """Every multi-head attention module of ``model``, in module order (see module docs).

    ``strict=False`` leaves out the cores whose output projection cannot be told apart
    instead of raising (for selections that name their projections by hand).
    """
    named = list(model.named_modules())
    modules = dict(named)
    order = {name: position for position, (name, _) in enumerate(named)}
    candidates = [n for n, m in named if n and _is_core_candidate(m)]
    # innermost only: FalconDecoderLayer states num_heads but holds the real core
    cores = [n for n in candidates
             if not any(o.startswith(n + ".") for o in candidates if o != n)]
    sites: List[AttentionSite] = []
    for name in cores:
        module = modules[name]
        parent_name = name.rpartition(".")[0]
        parent = modules.get(parent_name) if parent_name else model
        if isinstance(module, nn.MultiheadAttention):
            sites.append(AttentionSite(name, f"{name}.out_proj", int(module.num_heads),
                                       int(module.head_dim), _is_cross(name, module, parent)))
            continue
        try:
            sites.append(_core_site(name, module, parent, named, order))
        except ValueError:
            if strict:
                raise
    return sites


def _linear_after(named: List[Tuple[str, nn.Module]], order: Dict[str, int], scope: str,
                  after: int) -> List[Tuple[str, nn.Module]]:
    prefix = scope + "." if scope else ""
    return [(n, m) for n, m in named
            if order[n] > after and n.startswith(prefix) and is_linear_like(m)]


def _core_site(name: str, module: nn.Module, parent: Optional[nn.Module],
               named: List[Tuple[str, nn.Module]], order: Dict[str, int]) -> AttentionSite:
    inside = _linear_after(named, order, name, order[name])
    heads, head_dim = _head_shape(name, module)
    in_width = linear_widths(inside[0][1])[0]
    if heads is None:
        heads = in_width // head_dim if head_dim and in_width % head_dim == 0 else None
    if head_dim is None and heads:
        head_dim = in_width // heads if in_width % heads == 0 else None
    if not heads or not head_dim:
        raise _unresolved(name, module, "its head count and head size could not be read (no"
                          f" attribute {_HEAD_COUNT_ATTRS + _HEAD_DIM_ATTRS} and no config"
                          " num_attention_heads)")
    cross = _is_cross(name, module, parent)
    found = _output_projection(name, module, inside, named, order, heads, head_dim)
    return AttentionSite(name, found, heads, head_dim, cross)


def _maps_back(module: nn.Module, q: int, width: int) -> bool:
    return linear_widths(module) == (q, width)


def _output_projection(name: str, module: nn.Module, inside: List[Tuple[str, nn.Module]],
                       named: List[Tuple[str, nn.Module]], order: Dict[str, int],
                       heads: int, head_dim: int) -> str:
    """The name of the map that consumes the core's concatenated heads (rules 1 and 2)."""
    q = heads * head_dim
    kv_widths = _declared_kv_widths(module, heads, head_dim)
    candidates = []
    for n, m in inside:
        others = [o for o_name, o in inside if o_name != n]
        reads = {linear_widths(o)[0] for o in others}
        if linear_widths(m)[0] == q and linear_widths(m)[1] in reads and _is_qkv_layout(
                [linear_widths(o)[1] for o in others], heads, head_dim, kv_widths):
            candidates.append(n)
    unnamed = [c for c in candidates if not _named_like_qkv(c)]
    if len(candidates) == 1 or len(unnamed) == 1:  # rule 1, whatever the module order
        return candidates[0] if len(candidates) == 1 else unnamed[0]
    widths = [linear_widths(m)[1] for _, m in inside]
    n_inputs = _qkv_prefix(widths, heads, head_dim)
    if n_inputs:  # rule 2: q/k/v first in module order, then the output projection
        width = linear_widths(inside[0][1])[0]
        scope = name.rpartition(".")[0]
        last_inside = max(order[n] for n, _ in named if n == name or n.startswith(name + "."))
        later = inside[n_inputs:] + _linear_after(named, order, scope, last_inside)
        if later and _maps_back(later[0][1], q, width) and not _named_like_qkv(later[0][0]):
            return later[0][0]
    last, module_last = inside[-1]
    reads = {linear_widths(m)[0] for n, m in inside if n != last}
    if (len([m for _, m in inside if linear_widths(m)[0] == q]) == 1 and not _named_like_qkv(last)
            and linear_widths(module_last)[0] == q and linear_widths(module_last)[1] in reads):
        return last  # rule 3: compressed or low-rank q/k/v (DeepSeek's latent attention)
    shape = f"{q} = {heads} heads x {head_dim}"
    if len(candidates) > 1:
        why = (f"{len(candidates)} of its Linear maps ({candidates}) could each consume its"
               f" {shape} features and no module order tells which does")
    else:
        maps = ", ".join(f"{n.rpartition('.')[2]}: {' -> '.join(map(str, linear_widths(m)))}"
                         for n, m in inside)
        why = (f"none of its Linear maps ({maps}), nor the one right after it, takes its"
               f" {shape} concatenated head features back to the width its projections read"
               " after query/key/value projections")
    raise _unresolved(name, module, why)


def _named_like_qkv(name: str) -> bool:
    """``q_proj``, ``value``, ``query_key_value``, ``Wqkv``, ``k_lin``, ...: named as an input."""
    words = set(name.rpartition(".")[2].lower().split("_"))
    return bool(words & _QKV_WORDS)


def _unresolved(name: str, module: nn.Module, why: str) -> ValueError:
    return ValueError(
        f"attention module {name!r} ({type(module).__name__}) was found but {why}; declare its"
        " heads by hand with attention_heads(model, names={'<output projection>': n_heads}),"
        " naming the Linear map whose input holds the concatenated heads, or leave it out with"
        " exclude=...")


def find_mlp_down_projections(model: nn.Module, sites: List[AttentionSite]) -> List[str]:
    """Names of the MLP down projections (``I -> D`` maps fed by ``D -> I`` or ``D -> 2I``)."""
    modules = dict(model.named_modules())
    widths = {linear_widths(modules[s.projection_name])[1] for s in sites}
    attention_scopes = tuple(s.module_name + "." for s in sites)
    projections = {s.projection_name for s in sites}
    linears = [(n, m) for n, m in model.named_modules()
               if n and is_linear_like(m) and not n.startswith(attention_scopes)
               and n not in projections]
    found = []
    for position, (name, module) in enumerate(linears):
        width_in, width_out = linear_widths(module)
        if width_out not in widths or width_in == width_out:
            continue
        parent = name.rpartition(".")[0]
        feeding = linears[position - 1:position] + [
            (n, m) for n, m in linears if n != name and n.rpartition(".")[0] == parent]
        if any(_feeds(m, width_in, width_out) for _, m in feeding):
            found.append(name)
    return found


def _feeds(up: nn.Module, hidden: int, width: int) -> bool:
    """An up projection ``width -> hidden``, or a fused gate/up ``width -> 2 hidden``."""
    up_in, up_out = linear_widths(up)
    return up_in == width and up_out in (hidden, 2 * hidden)


def _holds_experts(name: str, module: nn.Module) -> bool:
    """A module named or typed ``*expert*`` with 3-d weights or a list of expert modules."""
    label = (name.rsplit(".", 1)[-1] + " " + type(module).__name__).lower()
    if "expert" not in label or "shared" in label:
        return False
    fused = any(p.dim() >= 3 for p in module.parameters(recurse=False))
    containers = (nn.ModuleList, nn.ModuleDict)
    listed = isinstance(module, containers) or any(
        isinstance(child, containers) and len(child) > 1 for child in module.children())
    return fused or listed


def find_expert_blocks(model: nn.Module) -> List[str]:
    """Names of the outermost mixture-of-experts expert containers (see the module contract)."""
    found: List[str] = []
    for name, module in model.named_modules():
        if name and not any(name.startswith(f + ".") for f in found) and _holds_experts(name, module):
            found.append(name)
    return found
