"""Mixture-of-experts experts as components: expert ``e`` is its routed, weighted contribution.

Contract
--------
A mixture-of-experts block routes every token ``t`` to a few experts and adds
``sum_e w[t, e] * E_e(x_t)``, with ``w[t, e]`` the routing weight (0 for an expert the token
was not routed to). Component *expert e* of a block is the term ``w[t, e] * E_e(x_t)``:
ablating it (gate 0) removes that expert's weighted contribution from every token routed to
it, a gate ``g`` scales it by ``g``, and the router is left unchanged (the same experts are
chosen, the other experts keep their weights, the router's outputs are untouched).

*Where the gate acts.* Every mixture-of-experts block of transformers 5 calls an *experts
container* as ``experts(hidden_states, indices, weights)``: ``indices`` the chosen experts per
token ``(tokens, k)`` and ``weights`` their routing weights ``(tokens, k)`` (fused 3-d expert
weights: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, PhiMoE, GraniteMoE, DeepSeek, ...), or a one-hot
selection ``(tokens, k, experts)`` with ``(tokens, k)`` weights (Switch Transformers, whose
experts are modules). The container multiplies each expert's output by its weight, so scaling
the weight scales exactly that expert's contribution. A group of experts has
``site="routing"``: a forward pre-hook on the container spreads the weights into a dense
``(batch, seq, experts)`` tensor ``R`` (``R[b, s, e]`` the weight of expert ``e`` for that token,
0 where it was not chosen), the gate acts on ``R`` as on any activation (:func:`routing_hooks`,
called by :class:`~captum_coar._site_hooks.SiteHooks`), and the container receives the gated
weights read back at the chosen experts. The token -> example map comes from the leading
``(batch, seq)`` shape of the hidden states the container's parent block received (a second
pre-hook), so gates per row, token positions (``positions=``) and every gate method work as
for heads. The container runs on every pass, so an expert that no token of a batch was routed
to is gated too, with no effect, and is never reported as a module that did not run.

Ablation: ``"weights"`` and ``"zero"`` (r = 0: what zeroing the expert's weights does). Mean,
resample, constant and patched (``baselines=``) ablations would replace a routing weight, not
the expert's contribution, so :func:`captum_coar.ablation.check_expert_ablation` refuses them.
Weight edits refuse expert groups (the container is no Linear map); ``ablate_persistently``
uses the hooks.

Not covered, refused with the reason: a container called with the hidden states alone (Llama
4 scales the *inputs* by the routing scores), routing arguments of another layout, and the
hidden units inside each expert (fused expert weights are used functionally, where no hook
sees them; an expert module sees only the tokens routed to it, not which example they are).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._deprecation import moved_names
from ._modules import require_module
from ._transformers import find_expert_blocks
from .components import ComponentGroup, ComponentSet

__all__ = ["ExpertsSite", "find_experts", "moe_experts", "expert_group", "routing_hooks",
           "unsupported_experts"]

ROUTING_SITE = "routing"


@dataclass(frozen=True)
class ExpertsSite:
    """One experts container: its name and its number of routed experts."""

    module_name: str
    n_experts: int


def _n_experts(module: nn.Module) -> Optional[int]:
    count = getattr(module, "num_experts", None)
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return count
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)) and len(module) > 1:
        return len(module)
    leading = {p.shape[0] for p in module.parameters(recurse=False) if p.dim() >= 3}
    return leading.pop() if len(leading) == 1 else None


def _routing_arguments(module: nn.Module) -> Optional[Tuple[str, str, str]]:
    """The names of ``forward``'s first three parameters (hidden states, indices, weights)."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    positional = [p.name for p in parameters
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (positional[0], positional[1], positional[2]) if len(positional) >= 3 else None


def _containers(model: nn.Module) -> List[str]:
    """Outermost expert containers: found by structure, or a class named ``*Experts``."""
    named = set(find_expert_blocks(model))
    found: List[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in found):
            continue
        if name in named or type(module).__name__.endswith("Experts"):
            found.append(name)
    return found


def find_experts(model: nn.Module) -> List[ExpertsSite]:
    """Every experts container that takes ``(hidden_states, indices, weights)``, in module order."""
    modules = dict(model.named_modules())
    sites = []
    for name in _containers(model):
        count = _n_experts(modules[name])
        if _routing_arguments(modules[name]) is not None and count is not None:
            sites.append(ExpertsSite(name, count))
    return sites


def unsupported_experts(model: nn.Module) -> List[str]:
    """Expert containers that :func:`find_experts` cannot gate (named in errors)."""
    supported = {s.module_name for s in find_experts(model)}
    return [n for n in _containers(model) if n not in supported]


def expert_group(site: ExpertsSite) -> ComponentGroup:
    """The group of one container's routed experts (kind ``"expert"``, site ``"routing"``)."""
    return ComponentGroup(site.module_name, "expert", site.n_experts, ROUTING_SITE, unit_axis=-1)


def moe_experts(model: nn.Module, names: Optional[Sequence[str]] = None,
                positions: Optional[Sequence[Any]] = None) -> ComponentSet:
    """Every routed expert of every mixture-of-experts block (or of the named containers).

    Args:
        model: the model.
        names: experts containers (``"model.layers.0.mlp.experts"``); None: every one found.
        positions: token positions (see :mod:`captum_coar.positions`); each expert at each.

    Example:
        >>> from torch import nn
        >>> from captum_coar import moe_experts
        >>> class ToyExperts(nn.Module):  # what a block calls as experts(hidden, indices, weights)
        ...     num_experts = 3
        ...     def forward(self, hidden_states, indices, weights):
        ...         return hidden_states
        >>> moe_experts(nn.Sequential(nn.Linear(4, 4), ToyExperts())).labels
        ['1/expert[0]', '1/expert[1]', '1/expert[2]']

        Mixtral, Qwen2-MoE and the other families of the README are found the same way.
    """
    sites = {s.module_name: s for s in find_experts(model)}
    if names is None:
        chosen = list(sites.values())
    else:
        modules = dict(model.named_modules())
        chosen = []
        for name in [names] if isinstance(names, str) else list(names):
            require_module(modules, name)
            if name not in sites:
                raise ValueError(f"module {name!r} ({type(modules[name]).__name__}) is not an"
                                 f" experts container this library can gate; {_REQUIREMENT}")
            chosen.append(sites[name])
    if not chosen:
        raise ValueError(no_experts_message(model))
    groups = [expert_group(s) for s in chosen]
    if positions is not None:
        groups = [replace(g, positions=tuple(positions)) for g in groups]
    return ComponentSet(model, groups)


_REQUIREMENT = (
    "an experts container is the module a mixture-of-experts block calls as"
    " experts(hidden_states, indices, weights), with the chosen experts per token (tokens, k)"
    " or one-hot (tokens, k, experts) and their routing weights (tokens, k), and that states"
    " num_experts or holds 3-d expert weights or a list of expert modules")


def no_experts_message(model: nn.Module) -> str:
    """Why no experts were found: the containers that do not fit, or none at all."""
    odd = unsupported_experts(model)
    if odd:
        return (f"the expert containers {odd[:3]} of {type(model).__name__} cannot be gated:"
                f" {_REQUIREMENT}; a container called with the hidden states alone (Llama 4"
                " scales its inputs by the routing scores) has no per-expert weight to gate."
                " Gate the whole block's output instead, e.g. linear_neurons or a"
                " ComponentGroup on the block")
    return (f"found no mixture-of-experts experts container in {type(model).__name__};"
            f" {_REQUIREMENT}")


# --------------------------------------------------------------------------- hooks
def routing_hooks(model: nn.Module, group: ComponentGroup,
                  visit: Callable[[Tensor], Tensor]) -> List[Any]:
    """Register the hooks that gate ``group``'s experts; ``visit`` gates the dense weights.

    Returns the handles (the caller removes them). ``visit`` gets ``R`` of shape
    ``(batch, seq, n_experts)`` (or ``(batch, n_experts)`` for 2-d hidden states) and returns
    the gated ``R``.
    """
    modules = dict(model.named_modules())
    module = modules[group.module_name]
    arguments = _routing_arguments(module)
    if arguments is None:
        raise ValueError(f"module {group.module_name!r} ({type(module).__name__}) at site"
                         f" {ROUTING_SITE!r}: {_REQUIREMENT}")
    parent = modules.get(group.module_name.rpartition(".")[0], model)
    state: Dict[str, Tuple[int, ...]] = {}

    def remember(_: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, Tensor) and hidden.dim() >= 2:
            state["lead"] = tuple(hidden.shape[:-1])

    def gate(_: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        values = _arguments(group, module, arguments, args, kwargs)
        gated = _gated_weights(group, values, state.get("lead"), visit)
        return _replaced(arguments, args, kwargs, gated)

    return [parent.register_forward_pre_hook(remember, with_kwargs=True),
            module.register_forward_pre_hook(gate, with_kwargs=True)]


def _arguments(group: ComponentGroup, module: nn.Module, names: Tuple[str, str, str],
               args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> List[Any]:
    values = [args[i] if i < len(args) else kwargs.get(name) for i, name in enumerate(names)]
    hidden, indices, weights = values
    ok = (isinstance(hidden, Tensor) and isinstance(indices, Tensor)
          and isinstance(weights, Tensor) and weights.is_floating_point()
          and weights.dim() == 2 and tuple(indices.shape[:2]) == tuple(weights.shape)
          and (indices.dim() == 2 and not indices.is_floating_point()
               or indices.dim() == 3 and indices.shape[2] == group.n_units))
    if not ok:
        shown = [tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for v in values]
        raise ValueError(
            f"experts container {group.module_name!r} ({type(module).__name__}) was called"
            f" with {dict(zip(names, shown))}; gating its {group.n_units} experts needs integer"
            f" indices (tokens, k) or a one-hot selection (tokens, k, {group.n_units}) and"
            " floating routing weights (tokens, k)")
    return values


def _gated_weights(group: ComponentGroup, values: List[Any], lead: Optional[Tuple[int, ...]],
                   visit: Callable[[Tensor], Tensor]) -> Tensor:
    hidden, indices, weights = values
    tokens, n_experts = weights.shape[0], group.n_units
    if hidden.dim() >= 3:
        lead = tuple(hidden.shape[:-1])
    if lead is None or math.prod(lead) != tokens or len(lead) < 1:
        raise ValueError(
            f"experts container {group.module_name!r} received {tokens} tokens, but the"
            f" hidden states its parent block received have the leading shape {lead}; it"
            " cannot tell which example each token belongs to, so its gates per row would be"
            " wrong. Gate experts of blocks that receive (batch, seq, hidden) states")
    if indices.dim() == 2:
        routed = indices < n_experts  # an index of n_experts (expert parallelism) is skipped
        _refuse_repeats(group, torch.where(routed, indices, -1 - torch.arange(
            indices.shape[1], device=indices.device)))
        safe = torch.where(routed, indices, torch.zeros_like(indices)).long()
        kept = torch.where(routed, weights, torch.zeros_like(weights))
        dense = weights.new_zeros(tokens, n_experts).scatter_add(1, safe, kept)
        back = visit(dense.reshape(*lead, n_experts)).reshape(tokens, n_experts)
        return torch.where(routed, back.gather(1, safe), weights)
    _refuse_repeats(group, torch.where(indices.sum(-1) > 0, indices.argmax(-1), -1 - torch.arange(
        indices.shape[1], device=indices.device)))
    selection = indices.to(weights.dtype)
    dense = torch.einsum("tke,tk->te", selection, weights)
    back = visit(dense.reshape(*lead, n_experts)).reshape(tokens, n_experts)
    return torch.einsum("tke,te->tk", selection, back)


def _refuse_repeats(group: ComponentGroup, experts: Tensor) -> None:
    """A token sent to one expert in two slots: its slots' weights could not be told apart."""
    ordered = experts.sort(dim=-1).values
    if experts.shape[-1] > 1 and bool((ordered[..., 1:] == ordered[..., :-1]).any()):
        raise ValueError(
            f"experts container {group.module_name!r} was called with a token routed to the"
            " same expert in two of its slots; an expert's gate scales one routing weight per"
            " token, so this layout (not a top-k choice) cannot be gated")


def _replaced(names: Tuple[str, str, str], args: Tuple[Any, ...], kwargs: Dict[str, Any],
              weights: Tensor) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    if len(args) > 2:
        return args[:2] + (weights,) + args[3:], kwargs
    return args, {**kwargs, names[2]: weights}


#: the ablation check lives with the ablations since 0.3.0 (experts sit below them)
__getattr__ = moved_names(__name__, {"check_expert_ablation": "captum_coar.ablation"})
