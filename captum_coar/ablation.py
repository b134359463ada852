"""Ablation strategies: what replaces an ablated component's activation.

Contract
--------
An :class:`AblationStrategy` gives, for a group and the activation ``a`` at the group's site,
a replacement ``r`` broadcastable to ``a``. The gate engine (:mod:`captum_coar.gates`) then
computes ``r + g * (a - r)`` per (row, component) for gates ``g`` in ``[0, 1]``, so ``g = 1``
keeps a component, ``g = 0`` ablates it, and values between interpolate along the ablation
path. Only the component's own slice of ``r`` is used.

Implementations
---------------
- :class:`ZeroAblation` (``"zero"``): ``r = 0``.
- :class:`WeightAblation` (``"weights"``): exactly what zeroing the component's weights does
  to that module's output: 0 for bias-free layers and for input-site components (heads, MLP
  neurons at the down projection's input), the bias for layers with a bias. This reproduces the
  reference COAR code (weights zeroed, biases kept). The gate acts on one *use* of a weight:
  where a matrix is shared (GPT-2's ``lm_head`` tied to the token embedding), zeroing its row
  by hand changes every use, the gate only the grouped module's output. For an MLP neuron
  gated at the down projection's input, ablation removes exactly that unit's contribution;
  zeroing the up projection's row instead would leave ``act(bias)`` (nonzero for GELU with a
  bias) flowing on.
- :class:`ConstantAblation`: ``r = value``.
- :class:`MeanAblation`: the mean activation over reference inputs, per feature, or per
  feature and position (``per_position=True``).
- :class:`ResampleAblation`: the activation of a reference input; example ``j`` of a batch is
  paired with reference row ``perm[j % R]`` for a seeded permutation, the same for every mask.
- :class:`PatchAblation` (``baselines=`` of every method): the activation of the *paired*
  baseline example, same row and same positions (activation patching: clean inputs with
  corrupted baselines is noising, the reverse denoising). Fitting records every site's
  activation on the baselines once; the baselines must have exactly the inputs' shape.

Strategies that need data are fitted with ``fit(forward_func, components)``. Fitting is an
explicit step taken when a method starts its work: :func:`fitted_ablation` resolves a name or
an instance and fits it when it is not yet fitted for these components. Entering a gate
context never runs the model; it refuses an unfitted strategy. ``resolve_ablation`` turns a
name or an instance into a strategy without fitting it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._modules import is_hf_conv1d
from ._registry import Registry
from .components import ComponentGroup, ComponentSet
from .experts import ROUTING_SITE
from .recording import record_activations

__all__ = [
    "AblationStrategy",
    "ZeroAblation",
    "WeightAblation",
    "ConstantAblation",
    "MeanAblation",
    "ResampleAblation",
    "PatchAblation",
    "resolve_ablation",
    "fitted_ablation",
    "check_expert_ablation",
    "ABLATIONS",
]


def along_axis(vector: Tensor, ndim: int, axis: int) -> Tensor:
    """View a 1-d ``vector`` so it broadcasts along ``axis`` of an ``ndim``-d tensor."""
    shape = [1] * ndim
    shape[axis % ndim] = vector.numel()
    return vector.reshape(shape)


class AblationStrategy(ABC):
    """Base class: defines the replacement activation of ablated components."""

    name: str = "ablation"

    def fit(self, forward_func: Callable[..., Any], components: ComponentSet) -> "AblationStrategy":
        """Prepare data-dependent state. Default: nothing to prepare."""
        return self

    def is_fitted(self, components: ComponentSet) -> bool:
        return True

    @abstractmethod
    def replacement(
        self,
        group: ComponentGroup,
        module: nn.Module,
        activation: Tensor,
        example_index: Optional[Tensor] = None,
    ) -> Union[Tensor, float]:
        """Replacement for ``activation`` (batch first), broadcastable to it."""

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({params})"


class ZeroAblation(AblationStrategy):
    """Replace ablated activations by zero."""

    name = "zero"

    def replacement(self, group, module, activation, example_index=None):
        return 0.0


class WeightAblation(AblationStrategy):
    """Exactly what zeroing the component's weights gives (the reference COAR ablation)."""

    name = "weights"

    def replacement(self, group, module, activation, example_index=None):
        bias = getattr(module, "bias", None)
        if group.site == "input" or bias is None or group.dictionary is not None:
            return 0.0  # a dictionary latent whose decoder row is zeroed contributes nothing
        if not (isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or is_hf_conv1d(module)):
            raise TypeError(
                f"ablation='weights' on module {group.module_name!r} ({type(module).__name__}):"
                " only Linear, Conv1D and ConvNd outputs have a known weight-zeroing effect;"
                " use 'zero', 'mean' or 'constant'"
            )
        return along_axis(bias.detach().to(activation.dtype), activation.dim(), group.unit_axis)


class ConstantAblation(AblationStrategy):
    """Replace ablated activations by a constant."""

    name = "constant"

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def replacement(self, group, module, activation, example_index=None):
        return float(self.value)

    def describe(self):
        return {"name": self.name, "value": float(self.value)}


class _ReferenceAblation(AblationStrategy):
    """Shared part of strategies fitted on activations of reference inputs."""

    def __init__(
        self,
        reference_inputs: Union[Tensor, Tuple[Tensor, ...]],
        additional_forward_args: Any = None,
        batch_size: int = 256,
    ) -> None:
        self.reference_inputs = reference_inputs
        self.additional_forward_args = additional_forward_args
        self.batch_size = batch_size

    def is_fitted(self, components: ComponentSet) -> bool:
        return getattr(self, "fingerprint_", None) == components.fingerprint

    def fit(self, forward_func, components):
        activations = record_activations(
            forward_func, components, self.reference_inputs,
            additional_forward_args=self.additional_forward_args, batch_size=self.batch_size,
        )
        self.statistics_ = {key: self._summarise(group, activations[key])
                            for key, group in _keyed_groups(components).items()}
        self.fingerprint_ = components.fingerprint
        return self

    def _statistic(self, group: ComponentGroup) -> Tensor:
        stats = getattr(self, "statistics_", None)
        key = (group.module_name, group.site)
        if stats is None or key not in stats:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted for {group.module_name!r}; call"
                " fit(forward_func, components) first (the attribution classes do this)"
            )
        return stats[key]

    @abstractmethod
    def _summarise(self, group: ComponentGroup, activations: Tensor) -> Tensor:
        ...


class MeanAblation(_ReferenceAblation):
    """Replace ablated activations by their mean over reference inputs.

    Args:
        reference_inputs: inputs (or a tuple of inputs) to average over.
        per_position: keep every non-batch position (e.g. token, pixel) separately; otherwise
            average over all positions, one value per feature along the unit axis.
    """

    name = "mean"

    def __init__(self, reference_inputs, additional_forward_args=None, per_position=False,
                 batch_size=256) -> None:
        super().__init__(reference_inputs, additional_forward_args, batch_size)
        self.per_position = per_position

    def _summarise(self, group, activations):
        if self.per_position:
            return activations.mean(dim=0)
        axis = group.unit_axis % activations.dim()
        dims = [d for d in range(activations.dim()) if d != axis]
        return activations.mean(dim=dims)

    def replacement(self, group, module, activation, example_index=None):
        mean = self._statistic(group).to(activation.device, activation.dtype)
        if not self.per_position:
            return along_axis(mean, activation.dim(), group.unit_axis)
        if tuple(mean.shape) != tuple(activation.shape[1:]):
            raise ValueError(
                f"per-position mean for {group.module_name!r} has shape {tuple(mean.shape)} but"
                f" the activation has per-example shape {tuple(activation.shape[1:])}; inputs must"
                " match the reference inputs in every non-batch dimension (or per_position=False)"
            )
        return mean.unsqueeze(0)

    def describe(self):
        return {"name": self.name, "per_position": self.per_position}


class ResampleAblation(_ReferenceAblation):
    """Replace ablated activations by those of reference inputs (resample ablation)."""

    name = "resample"

    def __init__(self, reference_inputs, additional_forward_args=None, seed=0, batch_size=256):
        super().__init__(reference_inputs, additional_forward_args, batch_size)
        self.seed = seed

    def fit(self, forward_func, components):
        super().fit(forward_func, components)
        n_reference = next(iter(self.statistics_.values())).shape[0]
        generator = torch.Generator().manual_seed(int(self.seed))
        self.permutation_ = torch.randperm(n_reference, generator=generator)
        return self

    def _summarise(self, group, activations):
        return activations

    def replacement(self, group, module, activation, example_index=None):
        reference = self._statistic(group)
        if tuple(reference.shape[1:]) != tuple(activation.shape[1:]):
            raise ValueError(
                f"resample ablation at {group.module_name!r}: reference activations have"
                f" per-example shape {tuple(reference.shape[1:])}, the batch has"
                f" {tuple(activation.shape[1:])}; they must match"
            )
        if example_index is None:
            example_index = torch.arange(activation.shape[0])
        rows = self.permutation_[example_index.cpu() % reference.shape[0]]
        return reference[rows].to(activation.device, activation.dtype)

    def describe(self):
        return {"name": self.name, "seed": int(self.seed)}


class PatchAblation(_ReferenceAblation):
    """Replace ablated activations by their value on the paired baseline example (patching).

    Example ``e`` of the attributed batch is paired with row ``e`` of ``baselines``: an ablated
    component takes the activation it has when the model runs on ``baselines[e]``, at the same
    positions. Every method builds one from its ``baselines=`` argument; it records the
    baseline activations once per call, never once per mask.

    Args:
        baselines: a tensor or tuple of tensors, one per input, each shaped exactly like the
            input it pairs with (same batch, same sequence length).
        additional_forward_args: the extra arguments the baselines run with (the inputs').
    """

    name = "patch"

    def __init__(self, baselines, additional_forward_args=None, batch_size=256) -> None:
        super().__init__(baselines, additional_forward_args, batch_size)

    def _summarise(self, group, activations):
        return activations

    def replacement(self, group, module, activation, example_index=None):
        reference = self._statistic(group)
        if example_index is None:
            example_index = torch.arange(activation.shape[0])
        example_index = example_index.to(reference.device)
        if tuple(reference.shape[1:]) != tuple(activation.shape[1:]) or (
                example_index.numel() != activation.shape[0]) or bool(
                (example_index >= reference.shape[0]).any()):
            raise ValueError(
                f"patching at {group.module_name!r}: the baselines gave activations of shape"
                f" {tuple(reference.shape)} but the batch has {tuple(activation.shape)} (examples"
                f" up to {int(example_index.max()) + 1}); the baselines must pair one to one with"
                " the inputs, with the same shape")
        return reference[example_index].to(activation.device, activation.dtype)


ABLATIONS: Registry[AblationStrategy] = Registry(
    "ablation", AblationStrategy,
    "MeanAblation(reference_inputs), ConstantAblation(value), ResampleAblation(reference_inputs)")
ABLATIONS.register("weights", WeightAblation, "weight")
ABLATIONS.register("zero", ZeroAblation)


def resolve_ablation(ablation: Union[str, AblationStrategy]) -> AblationStrategy:
    """Return a strategy for ``"weights"``, ``"zero"`` or an :class:`AblationStrategy`."""
    return ABLATIONS.resolve(ablation)


def fitted_ablation(ablation: Union[str, AblationStrategy], forward_func: Optional[Callable[..., Any]],
                    components: ComponentSet) -> AblationStrategy:
    """The strategy for ``ablation``, fitted on ``components`` (runs ``forward_func`` if needed).

    Methods call this once when they start; gate contexts then use the fitted strategy.
    """
    strategy = resolve_ablation(ablation)
    check_expert_ablation(components, strategy)  # before any reference pass
    if not strategy.is_fitted(components):
        if forward_func is None:
            raise ValueError(
                f"ablation {strategy!r} must be fitted on reference inputs, which needs the"
                " model's forward function; pass forward_func=..."
            )
        strategy.fit(forward_func, components)
    return strategy


def check_expert_ablation(components: ComponentSet, strategy: Any) -> None:
    """Refuse an ablation other than ``"weights"`` / ``"zero"`` for groups of experts."""
    experts = [g.module_name for g in components.groups if g.site == ROUTING_SITE]
    if experts and not isinstance(strategy, (WeightAblation, ZeroAblation)):
        raise ValueError(
            f"ablation {strategy!r} cannot ablate mixture-of-experts experts (e.g."
            f" {experts[0]!r}): their gate acts on the routing weights, so a mean, resampled,"
            " constant or patched (baselines=) replacement would swap a routing weight, not the"
            " expert's contribution; use ablation='weights' or 'zero' (removes the expert's"
            " weighted contribution), or leave the experts out with"
            " components.subset(kinds=[...]) for this method")


def _keyed_groups(components: ComponentSet) -> Dict[Tuple[str, str], ComponentGroup]:
    return {(g.module_name, g.site): g for g in components.groups}
