"""Gate hooks: one affine gate per (row, component), applied by scoped forward hooks.

Contract
--------
Inside ``with ComponentGates(components, ablation) as gates:``, every group's module is
hooked at its site. When ``gates.values`` is a tensor of shape ``(batch, n_components)`` (or
``(1, n_components)``, broadcast to any batch), each activation ``a`` becomes
``r + g * (a - r)`` (``torch.lerp``) where ``r`` is the ablation strategy's replacement; when
it is None the hooks leave activations untouched. Gradients flow through the gates. Outside
autograd, the fresh output of a Linear / ConvNd / Conv1D module hooked only by us is gated in
place (no second activation is allocated); everywhere else a new tensor is returned. Hooks (and the
``nn.MultiheadAttention`` patch below) are removed in ``finally``, after success or an
exception; model parameters are never written.

A module whose output (or, at an input site, first input) is not a tensor (``nn.LSTM``'s
``(output, state)`` tuple) raises a ``TypeError`` naming it and pointing to ``site="input"``
on the module that consumes the tensor.

``nn.MultiheadAttention`` computes its output projection functionally, so hooks on its
``out_proj`` never fire; while gates are active such modules are patched by
:mod:`captum_coar._attention_patch` so that ``out_proj`` runs as a module.

Every gated module must run: the hooks record which groups fired while gates were set, and
:meth:`ComponentGates.check_all_ran`, called after the first gated forward pass (by
:func:`captum_coar._engine.gates_applied`, ``GatedForward`` and :func:`ablated`), raises a
``ValueError`` naming the modules that did not run and the likely causes (components declared
on another model, a module never called, weights used functionally through ``F.linear``),
instead of returning ablations that changed nothing.

Entering gates never runs the model: a strategy that needs fitting (mean, resample) must
already be fitted (:func:`captum_coar.ablation.fitted_ablation`, which every method calls when
it starts); otherwise ``__enter__`` raises. Recording activations is
:class:`captum_coar.recording.ActivationRecorder`'s job. Also here: :func:`ablated` (a
one-shot context with fixed gates; it fits the strategy when given ``forward_func``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Union

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from ._modules import is_hf_conv1d
from ._site_hooks import SiteHooks
from .ablation import AblationStrategy, check_expert_ablation, fitted_ablation, resolve_ablation
from .components import ComponentGroup, ComponentSet
from .positions import position_gate

__all__ = ["ComponentGates", "ablated", "expand_gate"]

# Modules whose forward returns a newly allocated tensor (never a view of an input or state).
_FRESH_OUTPUT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def expand_gate(gate: Tensor, group: ComponentGroup, activation: Tensor,
                example_index: Optional[Tensor] = None) -> Tensor:
    """View ``gate`` (batch, n_components of the group) so it broadcasts over ``activation``.

    For a group at token positions the result is activation-shaped along the position axis
    too (:func:`captum_coar.positions.position_gate`); ``example_index`` resolves per-example
    positions.
    """
    axis = group.unit_axis % activation.dim()
    if activation.shape[axis] != group.width:
        raise ValueError(
            f"module {group.module_name!r}: the {group.site} has {activation.shape[axis]} features"
            f" on axis {group.unit_axis}, but the group declares {group.n_units} {group.kind}s x"
            f" {group.unit_size} = {group.width}"
        )
    if gate.shape[0] not in (1, activation.shape[0]):
        raise ValueError(
            f"gates have {gate.shape[0]} rows but the activation at {group.module_name!r} has batch"
            f" size {activation.shape[0]}; give one gate row per row of the batch (or a single row)"
        )
    if group.positions:
        return position_gate(gate, group, activation, example_index)
    if group.unit_size > 1:
        gate = gate.repeat_interleave(group.unit_size, dim=1)
    shape = [1] * activation.dim()
    shape[0] = gate.shape[0]
    shape[axis] = group.width
    return gate.reshape(shape)


class ComponentGates(SiteHooks):
    """Context manager that gates every component of a :class:`ComponentSet`.

    Args:
        components: the components to gate.
        ablation: strategy name or instance (see :mod:`captum_coar.ablation`); a
            data-dependent strategy (mean, resample) must already be fitted on ``components``.

    Attributes:
        values: gate tensor ``(batch or 1, n_components)`` or None (pass-through); set
            between forward passes.
        example_index: for each row of the batch, the index of its example (for resample
            ablation); None means ``arange(batch)``.
    """

    def __init__(
        self,
        components: ComponentSet,
        ablation: Union[str, AblationStrategy] = "weights",
    ) -> None:
        super().__init__(components)
        self.strategy = resolve_ablation(ablation)
        self.values: Optional[Tensor] = None
        self.example_index: Optional[Tensor] = None
        self._ran: set = set()  # groups whose hook fired while gates were set
        self._all_ran = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "ComponentGates":
        if not self.strategy.is_fitted(self.components):
            raise ValueError(
                f"ablation {self.strategy!r} is not fitted for these components; fit it first"
                " with captum_coar.ablation.fitted_ablation(ablation, forward_func, components)"
            )
        check_expert_ablation(self.components, self.strategy)
        return super().__enter__()

    # ------------------------------------------------------------------ hooks
    def on_activation(self, position: int, group: ComponentGroup, module: nn.Module,
                      activation: Tensor) -> Tensor:
        if self.values is None:
            return activation
        if not self._all_ran:
            self._ran.add(position)
        columns = self.values[:, self.components.group_slice(position)]
        # Gates may be given on the CPU (ablated(), GatedForward) for a model on an accelerator.
        gate = expand_gate(columns.to(device=activation.device, dtype=activation.dtype), group,
                           activation, self.example_index)
        replacement = self.strategy.replacement(group, module, activation, self.example_index)
        # Overwriting a fresh output saves allocating (and page-faulting) a second activation.
        out = activation if self._may_overwrite(group, module, activation, gate) else None
        if isinstance(replacement, float) and replacement == 0.0:
            return activation * gate if out is None else activation.mul_(gate)
        if not isinstance(replacement, Tensor):
            replacement = torch.tensor(float(replacement), dtype=activation.dtype,
                                       device=activation.device)
        # lerp(r, a, g) = r + g * (a - r), exactly a at g = 1 and exactly r at g = 0.
        return torch.lerp(replacement, activation, gate, out=out)

    @property
    def ran_any(self) -> bool:
        """Whether any group's module ran while gates were set."""
        return bool(self._ran) or self._all_ran

    def check_all_ran(self) -> None:
        """After a gated forward pass: ``ValueError`` unless every group's module ran.

        Checked until it first passes (the first gated pass); later passes cost nothing.
        """
        if self._all_ran:
            return
        groups = self.components.groups
        missing = [g.module_name for i, g in enumerate(groups) if i not in self._ran]
        if not missing:
            self._all_ran = True
            return
        self._ran.clear()
        raise ValueError(
            f"the gated forward pass did not run {len(missing)} of the {len(groups)} component"
            f" modules: {missing[:10]}{' ...' if len(missing) > 10 else ''}; their gates had no"
            " effect, so every ablation of them would silently change nothing. Likely causes:"
            " the components were declared on another model (or a copy of it) than the one"
            f" forward_func runs (components.model is a {type(self.components.model).__name__});"
            " the module is never called in forward (an unused or skipped branch); or its"
            " weights are used functionally (F.linear(x, module.weight)) instead of calling the"
            " module. Declare the components on the modules forward_func actually calls")

    def _may_overwrite(self, group: ComponentGroup, module: nn.Module, activation: Tensor,
                       gate: Tensor) -> bool:
        """True when gating may write into ``activation``: nothing needs its original value.

        That holds for the freshly allocated output of a Linear / ConvNd / Conv1D module whose
        only forward hook is ours (so no recorder sees it), outside autograd (neither the
        activation nor the gates require grad, and neither carries a forward-mode tangent).
        """
        if group.site != "output" or activation.requires_grad or gate.requires_grad:
            return False
        if group.dictionary is not None:  # the latents: the dictionary still decodes them
            return False
        if _has_tangent(activation) or _has_tangent(gate):
            return False
        if not (type(module) in _FRESH_OUTPUT_TYPES or is_hf_conv1d(module)):
            return False
        global_hooks = getattr(nn.modules.module, "_global_forward_hooks", None)
        return len(module._forward_hooks) == 1 and not global_hooks


def _has_tangent(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a forward-mode dual tensor (in-place ``out=`` ops reject those)."""
    return fwAD.unpack_dual(tensor).tangent is not None


@contextmanager
def ablated(
    components: ComponentSet,
    gates: Tensor,
    ablation: Union[str, AblationStrategy] = "weights",
    forward_func: Optional[Callable[..., Any]] = None,
) -> Iterator[ComponentGates]:
    """Run the model with fixed gates: ``with ablated(components, keep_mask[None]): model(x)``.

    ``gates`` is ``(batch or 1, n_components)`` or a 1-d ``(n_components,)`` keep mask applied to
    every row; booleans are accepted (True = kept).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from captum_coar import ablated, linear_neurons
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> keep = torch.tensor([True, False, True])            # ablate neuron 1 of layer 0
        >>> x = torch.randn(5, 4)
        >>> with ablated(linear_neurons(model, names=["0"]), keep):
        ...     out = model(x)
        >>> by_hand = model[2](torch.relu(model[0](x) * keep + model[0].bias * ~keep))
        >>> torch.allclose(out, by_hand)                          # weights zeroed, bias kept
        True
    """
    gates = torch.as_tensor(gates)
    if gates.dim() == 1:
        gates = gates.unsqueeze(0)
    if gates.dim() != 2 or gates.shape[1] != components.n_components:
        raise ValueError(
            f"gates must have shape (batch, {components.n_components}) or"
            f" ({components.n_components},), got {tuple(gates.shape)}"
        )
    strategy = fitted_ablation(ablation, forward_func, components)
    with ComponentGates(components, strategy) as hooks:
        hooks.values = gates if gates.is_floating_point() else gates.float()
        yield hooks
        if hooks.ran_any:  # the model ran under the gates: every component must have run
            hooks.check_all_ran()
