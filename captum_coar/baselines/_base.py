"""State and argument handling shared by the component attribution baselines.

Contract
--------
Every baseline is built as ``Method(forward_func, components, ablation="weights")``: the
forward function (the model, or any function of ``(*inputs, *additional_forward_args)``),
the :class:`~captum_coar.components.ComponentSet` and the ablation strategy, exactly as
COAR takes them, so that the same three objects serve every method. The constructor only
stores them (scikit-learn lifecycle: :class:`ComponentGradientMethod` is that constructor on
Captum's ``GradientAttribution``); :meth:`ComponentMethod._start` validates them when
an ``attribute`` call starts and resolves the ablation strategy once (``strategy_``), so a
fitted strategy (mean, resample) is fitted on the first call and reused.

Functions here turn Captum-style arguments into what the methods need: ``inputs`` and
``additional_forward_args`` as tuples with the batch on dim 0, ``baselines`` as one tensor
per input, positive integers checked with messages that say what was given (the row and
target slicing itself is :mod:`captum_coar._engine`'s). Results follow
Captum's tuple-in, tuple-out convention (as COAR does): a tensor ``(batch, n_components)``
for a tensor input, the 1-tuple holding it for a tuple of inputs.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from captum.attr import GradientAttribution
from torch import Tensor

from .._checks import check_callable, check_instance, check_optional_positive_int
from .._inputs import as_tuple, example_batches
from .._modules import model_device
from .._pairing import patch_strategy
from .._preflight import check_batch, check_finite_result, preflight
from .._state import keeps_model_state
from ..ablation import AblationStrategy, fitted_ablation, resolve_ablation
from ..components import ComponentSet, check_example_positions
from ..gates import ComponentGates
from ..outputs import OutputFunction, resolve_output
from ._layer_gradients import gate_gradients

__all__ = ["ComponentMethod", "ComponentGradientMethod", "require_float_inputs",
           "format_inputs", "format_baselines", "OutputSpec", "format_result", "Attributions",
           "AttributionsWithDelta"]

OutputSpec = Union[None, str, OutputFunction, Callable[..., Tensor]]
#: ``(batch, n_components)``, or its 1-tuple for tuple inputs.
Attributions = Union[Tensor, Tuple[Tensor, ...]]
#: attributions, or ``(attributions, delta)`` with ``return_convergence_delta=True``.
AttributionsWithDelta = Union[Attributions, Tuple[Attributions, Tensor]]


def format_inputs(inputs: Any, additional_forward_args: Any) -> Tuple[Tuple[Tensor, ...],
                                                                      Tuple[Any, ...], int]:
    """``(inputs tuple, extra args tuple, batch size)`` after checking the batch dims agree."""
    inputs_t = check_batch("attribute", inputs)
    return inputs_t, as_tuple(additional_forward_args), inputs_t[0].shape[0]


def require_float_inputs(method: str, inputs: Tuple[Tensor, ...]) -> None:
    """Path methods interpolate inputs, which integer inputs (token ids) do not allow."""
    for position, x in enumerate(inputs):
        if not x.is_floating_point():
            raise TypeError(
                f"{method} integrates along the path from baselines to inputs, so inputs must be"
                f" floating point; input {position} is {x.dtype}. For token ids, attribute from"
                " the embeddings: forward_func=lambda e: model(inputs_embeds=e).logits with"
                " inputs = the embedded tokens"
            )


def format_baselines(inputs: Tuple[Tensor, ...], baselines: Any) -> Tuple[Tensor, ...]:
    """One baseline tensor per input, shaped like it (Captum's conventions).

    ``None`` means zeros; a number is broadcast; a tensor may have batch 1 or the inputs'
    batch; a tuple gives one of these per input.
    """
    if baselines is None:
        baselines = tuple(0.0 for _ in inputs)
    elif not isinstance(baselines, tuple):
        baselines = (baselines,)
    if len(baselines) != len(inputs):
        raise ValueError(f"got {len(baselines)} baselines for {len(inputs)} inputs; give one per input")
    formatted = []
    for position, (x, base) in enumerate(zip(inputs, baselines)):
        if isinstance(base, (int, float)) and not isinstance(base, bool):
            formatted.append(torch.full_like(x, float(base)) if x.is_floating_point()
                             else torch.full_like(x, int(base)))
            continue
        if not isinstance(base, Tensor):
            raise TypeError(f"baseline {position} must be a number or a tensor, got {type(base).__name__}")
        if base.shape[1:] != x.shape[1:] or base.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"baseline {position} has shape {tuple(base.shape)}; input {position} has shape"
                f" {tuple(x.shape)}: a baseline needs the input's shape, with batch 1 or"
                f" {x.shape[0]}"
            )
        formatted.append(base.to(device=x.device, dtype=x.dtype).expand_as(x))
    return tuple(formatted)


def format_result(attributions: Tensor, inputs: Any, delta: Optional[Tensor] = None) -> Any:
    """Captum's convention: a 1-tuple of attributions when ``inputs`` was a tuple, and
    ``(attributions, delta)`` when a convergence delta is returned."""
    check_finite_result("attribute", attributions)
    result: Any = (attributions,) if isinstance(inputs, tuple) else attributions
    return result if delta is None else (result, delta)


class ComponentMethod:
    """Mixin holding ``components`` and ``ablation`` for every component attribution class."""

    components: ComponentSet
    ablation: Union[str, AblationStrategy]
    forward_func: Callable[..., Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every subclass's ``attribute`` leaves the model's parameters and buffers as they were."""
        super().__init_subclass__(**kwargs)
        if "attribute" in cls.__dict__:
            cls.attribute = keeps_model_state(cls.__dict__["attribute"])  # type: ignore[attr-defined]

    def _init_components(self, components: ComponentSet,
                         ablation: Union[str, AblationStrategy]) -> None:
        self.components = components
        self.ablation = ablation

    def _start(self, output: OutputSpec, target: Any, inputs: Optional[Tuple[Tensor, ...]] = None,
               baselines: Any = None, additional_forward_args: Any = None) -> OutputFunction:
        """Validate the stored arguments and resolve this call's output function and strategy.

        With ``inputs`` it runs the shared preflight (:mod:`captum_coar._preflight`) first:
        an empty batch, non-finite inputs or baselines, random modules in training mode,
        targets outside the classes, a forward function that disagrees with itself on the
        first rows, or non-finite / overflowing outputs are refused before any forward pass
        of the gated model.

        ``strategy_`` is the constructor's ablation (resolved once and reused, so a fitted
        strategy is fitted on the first call), or, when ``baselines`` is given, a
        :class:`~captum_coar.ablation.PatchAblation` fitted on them for this call only.
        """
        check_instance("components", self.components, ComponentSet, "a ComponentSet",
                       "build one with ComponentSet.from_model(model) or a selector"
                       " (conv_filters, linear_neurons, attention_heads, mlp_neurons)")
        check_callable("forward_func", self.forward_func)
        output_fn = resolve_output(output, target)
        if inputs is not None:  # before any forward pass: empty, NaN, train mode, targets, probe
            preflight(type(self).__name__, self.forward_func, self.components, inputs, target,
                      additional_forward_args, output_fn, baselines)
        strategy: AblationStrategy
        if baselines is not None:
            if inputs is None:
                raise TypeError(f"{type(self).__name__}: baselines= needs the inputs")
            strategy = patch_strategy(self.ablation, inputs, baselines,
                                      additional_forward_args, self.forward_func)
        else:
            if getattr(self, "_ablation_key", None) is not self.ablation:
                self._own_strategy = resolve_ablation(self.ablation)
                self._ablation_key = self.ablation
            strategy = self._own_strategy
        self.strategy_ = strategy
        if inputs is not None:
            check_example_positions(self.components, int(inputs[0].shape[0]))
        fitted_ablation(self.strategy_, self.forward_func, self.components)
        return output_fn

    def _gates(self) -> ComponentGates:
        """Gate hooks with this method's strategy (fitted when the call started)."""
        return ComponentGates(self.components, self.strategy_)

    @property
    def n_components(self) -> int:
        return self.components.n_components


class ComponentGradientMethod(ComponentMethod, GradientAttribution):
    """A gradient method built as ``Method(forward_func, components, ablation="weights")``."""

    def __init__(self, forward_func: Callable[..., Any], components: ComponentSet,
                 ablation: Union[str, AblationStrategy] = "weights") -> None:
        GradientAttribution.__init__(self, forward_func)
        self._init_components(components, ablation)

    def _gate_estimate(self, inputs: Tuple[Tensor, ...], extra: Tuple[Any, ...], target: Any,
                       output_fn: OutputFunction, internal_batch_size: Optional[int]) -> Tensor:
        """``dF/dg`` at every gate 1 under this call's strategy, ``(batch, n_components)``:
        attribution patching, one forward and one backward per ``internal_batch_size``
        examples (global example indices, so paired baselines line up)."""
        n_examples = inputs[0].shape[0]
        per_pass = check_optional_positive_int("internal_batch_size", internal_batch_size)
        device = model_device(self.components.model)
        parts = []
        with self._gates() as hooks:
            for rows, batch, batch_extra, batch_target in example_batches(
                    inputs, extra, target, per_pass or n_examples):
                gates = torch.ones(rows.stop - rows.start, self.n_components, device=device)
                _, grad = gate_gradients(self.forward_func, hooks, batch, batch_extra, gates,
                                         torch.arange(rows.start, rows.stop, device=device),
                                         batch_target, output_fn)
                parts.append(grad)
        return torch.cat(parts)
