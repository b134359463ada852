"""LRP propagation rules in the backward pass, with forward values unchanged (for RelP).

Contract
--------
Inside ``with lrp_rules(model) as rules:`` every forward pass of ``model`` computes the same
values as without the context (``torch.equal``), but its backward pass propagates the LRP
coefficients of relevance patching (RelP, Jafari et al. 2025, with the rules of Ali et al.
2022 and Achtibat et al. 2024) instead of the gradient. Each rule is a forward-pass detach
trick ``y = y.detach() + J (x - x.detach())`` whose Jacobian ``J`` is held constant; the added
term is exactly zero, so only the backward changes:

- *LN rule* (normalisation): the normalising scale ``1 / std`` (``1 / rms``) is a constant;
  LayerNorm's centring stays in the backward. Modules: ``nn.LayerNorm``, ``nn.RMSNorm`` and
  every class whose name ends in ``LayerNorm`` or ``RMSNorm`` (GPT-2, Llama, Qwen2, Mistral,
  T5, Gemma's ``x / rms * (1 + w)``); norms computed functionally (``F.layer_norm`` inside
  another module's forward) keep their gradient. Which formula a module computes (centred or not,
  weight ``w`` or ``1 + w``) is read off its first output in the context; a module whose
  output matches none of them is refused (``ValueError``) rather than given a wrong rule.
- *AH rule* (attention): the attention weights are constants, so relevance flows through the
  values only; queries and keys are detached where the attention function receives them
  (the weights depend on nothing else). Hugging Face models: the attention function registered
  for each config's ``_attn_implementation`` (for ``"eager"``, the model's own
  ``eager_attention_forward``) is wrapped, for the modules of ``model`` only, while the
  context is open. Other models: calls of ``F.scaled_dot_product_attention`` (seen by a
  ``TorchFunctionMode``).
- *Identity rule* (elementwise MLP nonlinearity): ``act(x) = x * (act(x) / x)`` with the
  ratio constant, so an activation passes its relevance on unchanged (conservation; chosen
  over the half rule, which would leave half of ``x * sigmoid(x)``'s relevance in the sigmoid
  with no rule to pass it on). Modules: ``nn.GELU``, ``nn.SiLU``, ``nn.Mish`` and every module
  class of ``transformers.activations``; calls of ``F.gelu``, ``F.silu``, ``F.mish``. ReLU
  needs no rule (its ratio is its gradient). Other functional nonlinearities (``torch.tanh``
  inside a forward) keep their gradient. A pre-activation exactly 0 passes no relevance.
- *Half rule* (the product ``act(gate(x)) * up(x)`` of a gated MLP): each factor receives half
  of the relevance, as in the RelP code (the plain gradient would pass it to both, doubling
  it). Applied at the input of the down projection of modules holding ``gate_proj`` or
  ``gate_up_proj`` and ``down_proj`` (Llama, Qwen2, Mistral, Gemma, Phi-3), or ``wi_0`` and
  ``wo`` (T5). Experts stored as fused 3-d weights are not hooked: their products keep the
  gradient.

Hooks are registered with ``prepend=True``, so on a module that is also a component site the
rule acts first and the gate sees the rule's output: a component's own coefficient
``dF/da`` is unaffected by the rules at its own site.

Refusal: with ``require_attention=True`` (default), a forward pass of ``model`` in which no
attention call was reached raises a ``TypeError`` naming what is recognised, instead of
silently giving attribution patching's numbers for the attention. Hooks, wrappers and the
mode are removed in ``finally``; parameters are never written. The wrapped attention
functions are process-global while a context is open: one context per process at a time,
not thread-safe (as for AtP*).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["lrp_rules", "LRPRules"]

_TORCH_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Mish)
_FUNCTIONAL_ACTIVATIONS = (F.gelu, F.silu, F.mish)
_NORM_SUFFIXES = ("LayerNorm", "RMSNorm")
_GATED_MLPS = (("gate_proj", "down_proj"), ("gate_up_proj", "down_proj"), ("wi_0", "wo"))
_MISSING = object()


class LRPRules:
    """What one :func:`lrp_rules` context installed and saw."""

    def __init__(self, model: nn.Module, require_attention: bool) -> None:
        self.model = model
        self.require_attention = require_attention
        self.attention_calls = 0
        self.ran = False  # a hook of the context fired (a forward pass of the model ran)
        self.names = {id(m): n for n, m in model.named_modules()}
        self.norm_forms: Dict[int, Tuple[bool, float]] = {}

    def check_attention_seen(self) -> None:
        """Raise unless an attention call was reached (when attention is required)."""
        if not self.require_attention or self.attention_calls:
            return
        raise TypeError(
            f"relevance patching holds the attention weights constant (AH rule), but a forward"
            f" pass of {type(self.model).__name__} reached no attention it recognises: a Hugging"
            " Face attention module dispatching through transformers' attention interface"
            " (config._attn_implementation), or a call of F.scaled_dot_product_attention."
            " Hand-written softmax attention and nn.MultiheadAttention (whose softmax runs"
            " inside F.multi_head_attention_forward) cannot be reached. For a model without"
            " attention (an MLP or CNN) pass require_attention=False (the LN, identity and half"
            " rules still apply); otherwise use ComponentAttributionPatching or"
            " ComponentAblation")


# --------------------------------------------------------------------------- the rules
def identity_rule(x: Tensor, y: Tensor) -> Tensor:
    """``y`` with backward ``x -> y`` as multiplication by the constant ratio ``y / x``."""
    with torch.no_grad():
        ratio = torch.where(x == 0, torch.zeros_like(y), y / x)
    return y.detach() + (x - x.detach()) * ratio


def half_rule(h: Tensor) -> Tensor:
    """``h`` with half of the backward signal: each factor of a product gets half."""
    return h.detach() + 0.5 * (h - h.detach())


def _norm_dims(module: nn.Module) -> Tuple[int, ...]:
    shape = getattr(module, "normalized_shape", None)
    if shape is None:
        weight = getattr(module, "weight", None)
        shape = weight.shape if isinstance(weight, Tensor) else (1,)
    return tuple(range(-len(shape), 0))


def _norm_eps(module: nn.Module, x: Tensor) -> float:
    for attribute in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, attribute, None)
        if isinstance(value, (int, float)):
            return float(value)
    return float(torch.finfo(x.dtype).eps)  # nn.RMSNorm(eps=None)


def _normalised(x: Tensor, dims: Tuple[int, ...], centre: bool, eps: float
                ) -> Tuple[Tensor, Tensor]:
    """``(x - mean or x, std or rms)`` in float32 over ``dims``."""
    xf = x.float()
    if centre:
        xf = xf - xf.mean(dim=dims, keepdim=True)
    return xf, (xf.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt()


def _affine(module: nn.Module, offset: float) -> Tuple[Any, Any]:
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    scale = 1.0 if not isinstance(weight, Tensor) else weight.detach().float() + offset
    shift = 0.0 if not isinstance(bias, Tensor) else bias.detach().float()
    return scale, shift


def _norm_form(rules: LRPRules, module: nn.Module, x: Tensor, y: Tensor) -> Tuple[bool, float]:
    """``(centred, weight offset)``: the formula that reproduces ``module``'s output."""
    key = id(module)
    if key in rules.norm_forms:
        return rules.norm_forms[key]
    rms_first = "RMS" in type(module).__name__ or isinstance(module, getattr(nn, "RMSNorm", ()))
    centres = (False, True) if rms_first else (True, False)
    has_weight = isinstance(getattr(module, "weight", None), Tensor)
    dims, eps = _norm_dims(module), _norm_eps(module, x)
    tol = 1e-4 if y.dtype in (torch.float32, torch.float64) else 3e-2
    with torch.no_grad():
        target = y.float()
        for centre in centres:
            centred, sigma = _normalised(x, dims, centre, eps)
            for offset in ((0.0, 1.0) if has_weight else (0.0,)):
                scale, shift = _affine(module, offset)
                if torch.allclose(centred / sigma * scale + shift, target, rtol=tol,
                                  atol=tol * (1.0 + target.abs().max().item())):
                    rules.norm_forms[key] = (centre, offset)
                    return centre, offset
    raise ValueError(
        f"module {rules.names.get(key, '?')!r} ({type(module).__name__}) is taken for a norm (its"
        f" class name ends in {' or '.join(_NORM_SUFFIXES)}), but its output is none of"
        f" (x - mean) / std or x / rms over dims {dims} with eps={eps}, times weight or"
        " (1 + weight), plus bias; the LN rule cannot be applied to it. Relevance patching"
        " supports LayerNorm and RMSNorm; use ComponentAttributionPatching for this model")


def _root_hook(rules: LRPRules) -> Callable[..., None]:
    def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        rules.ran = True
        rules.check_attention_seen()
    return hook


def _norm_hook(rules: LRPRules) -> Callable[..., Tensor]:
    def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> Tensor:
        x = _tensor_arg(rules, module, args, output)
        centre, offset = _norm_form(rules, module, x, output)
        dims = _norm_dims(module)
        _, sigma = _normalised(x.detach(), dims, centre, _norm_eps(module, x))
        delta = (x - x.detach()).float()  # zero, carrying x's gradient
        if centre:
            delta = delta - delta.mean(dim=dims, keepdim=True)
        scale, _ = _affine(module, offset)
        return output.detach() + (delta / sigma * scale).to(output.dtype)
    return hook


def _activation_hook(rules: LRPRules) -> Callable[..., Tensor]:
    def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> Tensor:
        return identity_rule(_tensor_arg(rules, module, args, output), output)
    return hook


def _half_hook(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
    if not args or not isinstance(args[0], Tensor):
        return args
    return (half_rule(args[0]),) + tuple(args[1:])


def _tensor_arg(rules: LRPRules, module: nn.Module, args: Tuple[Any, ...], output: Any) -> Tensor:
    """The module's first input, checked to be a tensor shaped like its (tensor) output."""
    rules.ran = True
    x = args[0] if args else None
    if not (isinstance(x, Tensor) and isinstance(output, Tensor) and x.shape == output.shape):
        raise TypeError(
            f"module {rules.names.get(id(module), '?')!r} ({type(module).__name__}) gets an LRP"
            " rule, which needs one tensor input and an output of the same shape; got"
            f" {type(x).__name__} -> {type(output).__name__}")
    if x is output:
        raise TypeError(
            f"module {rules.names.get(id(module), '?')!r} ({type(module).__name__}) works in"
            " place, so its input is lost; build it with inplace=False for relevance patching")
    return x


# --------------------------------------------------------------------------- attention
class _RuleMode(TorchFunctionMode):
    """AH rule on ``F.scaled_dot_product_attention``; identity rule on functional activations."""

    def __init__(self, rules: LRPRules) -> None:
        super().__init__()
        self.rules = rules

    def __torch_function__(self, func: Any, types: Any, args: Tuple[Any, ...] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            self.rules.attention_calls += 1
            args, kwargs = _detached_query_key(args, kwargs)
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        if (func in _FUNCTIONAL_ACTIVATIONS and args and isinstance(args[0], Tensor)
                and isinstance(result, Tensor) and result is not args[0]):
            return identity_rule(args[0], result)
        return result


def _detached_query_key(args: Tuple[Any, ...], kwargs: Dict[str, Any]
                        ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    positional = list(args)
    for position, name in enumerate(("query", "key")):
        if position < len(positional):
            positional[position] = positional[position].detach()
        elif name in kwargs:
            kwargs[name] = kwargs[name].detach()
    return tuple(positional), kwargs


def _eager_function(module: nn.Module) -> Callable[..., Any]:
    """The model's own eager attention (the default of ``get_interface("eager", ...)``)."""
    function = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if function is None:
        raise TypeError(
            f"{type(module).__name__} uses config._attn_implementation='eager', but its module"
            f" {type(module).__module__} defines no eager_attention_forward for relevance"
            " patching to wrap; load the model with attn_implementation='sdpa'")
    return function


def _rule_attention(original: Optional[Callable[..., Any]], rules: LRPRules) -> Callable[..., Any]:
    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, *args: Any,
                  **kwargs: Any) -> Any:
        function = original if original is not None else _eager_function(module)
        if id(module) not in rules.names:  # another model: untouched
            return function(module, query, key, value, *args, **kwargs)
        rules.attention_calls += 1
        return function(module, query.detach(), key.detach(), value, *args, **kwargs)
    return attention


@contextmanager
def _hf_attention_wrapped(model: nn.Module, rules: LRPRules) -> Iterator[None]:
    """Wrap the attention functions of the implementations ``model``'s configs name."""
    configs = (getattr(m, "config", None) for m in model.modules())
    names = {n for n in (getattr(c, "_attn_implementation", None) for c in configs)
             if isinstance(n, str)}
    if not names:
        yield
        return
    from transformers import AttentionInterface

    mapping: Dict[str, Any] = AttentionInterface._global_mapping
    # "eager" is the model's own function; a name only an instance maps locally is not ours
    names = {name for name in names if name == "eager" or name in mapping}
    saved = {name: mapping.get(name, _MISSING) for name in names}
    try:
        for name in names:
            original = mapping.get(name)  # None for "eager": the model's own function
            AttentionInterface.register(name, _rule_attention(original, rules))
        yield
    finally:
        for name, function in saved.items():
            if function is _MISSING:
                mapping.pop(name, None)
            else:
                mapping[name] = function


def _is_norm(module: nn.Module) -> bool:
    return (isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm)))
            or type(module).__name__.endswith(_NORM_SUFFIXES))


def _is_activation(module: nn.Module) -> bool:
    return (isinstance(module, _TORCH_ACTIVATIONS)
            or type(module).__module__ == "transformers.activations")


def _gated_down_projections(model: nn.Module) -> List[nn.Module]:
    found = []
    for module in model.modules():
        children = dict(module.named_children())
        for gate, down in _GATED_MLPS:
            if gate in children and down in children:
                found.append(children[down])
                break
    return found


@contextmanager
def lrp_rules(model: nn.Module, require_attention: bool = True) -> Iterator[LRPRules]:
    """Install the LRP rules on ``model`` for the context (see the module docstring)."""
    rules = LRPRules(model, require_attention)
    with ExitStack() as stack:
        handles: List[Any] = []
        stack.callback(lambda: [h.remove() for h in handles])
        for module in model.modules():
            if _is_norm(module):
                handles.append(module.register_forward_hook(_norm_hook(rules), prepend=True))
            elif _is_activation(module):
                handles.append(module.register_forward_hook(_activation_hook(rules),
                                                            prepend=True))
        for down in _gated_down_projections(model):
            handles.append(down.register_forward_pre_hook(_half_hook, prepend=True))
        handles.append(model.register_forward_hook(_root_hook(rules)))
        stack.enter_context(_hf_attention_wrapped(model, rules))
        stack.enter_context(_RuleMode(rules))
        yield rules
        if rules.ran:  # also when forward_func ran submodules of model only
            rules.check_attention_seen()
