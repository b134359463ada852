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

``nn.MultiheadAttention`` computes its output projection functionally, so hooks on its
``out_proj`` never fire. While gates are active, each such module whose ``out_proj`` is grouped
runs an instance-level forward that asks ``F.multi_head_attention_forward`` for the
concatenated heads (identity output weight, no bias) and then calls ``out_proj`` as a module,
so head gates at ``out_proj``'s input, and neuron gates at its output, apply as everywhere else.

Also here: :func:`ablated` (a one-shot context with fixed gates) and
:func:`record_activations` (the activations at every group's site, for fitted strategies).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ablation import AblationStrategy, resolve_ablation
from .components import ComponentGroup, ComponentSet, is_hf_conv1d

__all__ = ["ComponentGates", "ablated", "record_activations", "expand_gate"]

# Modules whose forward returns a newly allocated tensor (never a view of an input or state).
_FRESH_OUTPUT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def expand_gate(gate: Tensor, group: ComponentGroup, activation: Tensor) -> Tensor:
    """View ``gate`` (batch, n_units) so it broadcasts over ``activation`` at the group's axis."""
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
    if group.unit_size > 1:
        gate = gate.repeat_interleave(group.unit_size, dim=1)
    shape = [1] * activation.dim()
    shape[0] = gate.shape[0]
    shape[axis] = group.width
    return gate.reshape(shape)


class ComponentGates:
    """Context manager that gates every component of a :class:`ComponentSet`.

    Args:
        components: the components to gate.
        ablation: strategy name or instance (see :mod:`captum_coar.ablation`).
        forward_func: needed only to fit data-dependent strategies (mean, resample).

    Attributes (set between forwards):
        values: gate tensor ``(batch or 1, n_components)`` or None (pass-through).
        example_index: for each row of the batch, the index of its example (for resample
            ablation); None means ``arange(batch)``.
        recorded: when ``record=True``, the last activation seen at each group's site, by
            ``(module_name, site)``, before gating.
    """

    def __init__(
        self,
        components: ComponentSet,
        ablation: Union[str, AblationStrategy] = "weights",
        forward_func: Optional[Callable[..., Any]] = None,
        record: bool = False,
    ) -> None:
        self.components = components
        self.strategy = resolve_ablation(ablation)
        self.forward_func = forward_func
        self.record = record
        self.values: Optional[Tensor] = None
        self.example_index: Optional[Tensor] = None
        self.recorded: Dict[Tuple[str, str], Tensor] = {}
        self._handles: List[Any] = []
        self._patched: List[nn.MultiheadAttention] = []

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "ComponentGates":
        if not self.strategy.is_fitted(self.components):
            if self.forward_func is None:
                raise ValueError(
                    f"ablation {self.strategy!r} must be fitted on reference inputs; pass"
                    " forward_func=... so it can run them"
                )
            self.strategy.fit(self.forward_func, self.components)
        try:
            self._patch_multihead_attention()
            for position, group in enumerate(self.components.groups):
                module = self.components.module(group)
                hook = self._make_hook(position, group, module)
                if group.site == "output":
                    self._handles.append(module.register_forward_hook(hook))
                else:
                    self._handles.append(module.register_forward_pre_hook(hook))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook and patch (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for mha in self._patched:
            mha.__dict__.pop("forward", None)
        self._patched.clear()

    # ------------------------------------------------------------------ hooks
    def gate_activation(self, position: int, group: ComponentGroup, module: nn.Module,
                        activation: Tensor) -> Tensor:
        if self.record:
            self.recorded[(group.module_name, group.site)] = activation
        if self.values is None:
            return activation
        columns = self.values[:, self.components.group_slice(position)]
        # Gates may be given on the CPU (ablated(), GatedForward) for a model on an accelerator.
        gate = expand_gate(columns.to(device=activation.device, dtype=activation.dtype), group,
                           activation)
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

    def _may_overwrite(self, group: ComponentGroup, module: nn.Module, activation: Tensor,
                       gate: Tensor) -> bool:
        """True when gating may write into ``activation``: nothing needs its original value.

        That holds for the freshly allocated output of a Linear / ConvNd / Conv1D module whose
        only forward hook is ours, outside autograd (neither the activation nor the gates
        require grad) and when activations are not being recorded.
        """
        if self.record or group.site != "output" or activation.requires_grad or gate.requires_grad:
            return False
        if not (type(module) in _FRESH_OUTPUT_TYPES or is_hf_conv1d(module)):
            return False
        global_hooks = getattr(nn.modules.module, "_global_forward_hooks", None)
        return len(module._forward_hooks) == 1 and not global_hooks

    def _make_hook(self, position: int, group: ComponentGroup, module: nn.Module) -> Callable:
        if group.site == "output":
            def output_hook(mod: nn.Module, args: Any, output: Tensor) -> Tensor:
                return self.gate_activation(position, group, mod, output)
            return output_hook

        def input_hook(mod: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
            return (self.gate_activation(position, group, mod, args[0]),) + tuple(args[1:])
        return input_hook

    def _patch_multihead_attention(self) -> None:
        grouped = {g.module_name for g in self.components.groups}
        for name, module in self.components.model.named_modules():
            if isinstance(module, nn.MultiheadAttention) and f"{name}.out_proj" in grouped:
                module.forward = _module_out_proj_forward(module)  # type: ignore[method-assign]
                self._patched.append(module)


def _module_out_proj_forward(mha: nn.MultiheadAttention) -> Callable[..., Tuple[Tensor, Any]]:
    """A forward for ``mha`` that runs ``mha.out_proj`` as a module on the concatenated heads."""

    def forward(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None,
                average_attn_weights: bool = True, is_causal: bool = False) -> Tuple[Tensor, Any]:
        if query.dim() != 3:
            raise ValueError(
                "gating heads of nn.MultiheadAttention needs batched 3-d inputs, got a query of"
                f" shape {tuple(query.shape)}"
            )
        if mha.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        embed_dim = mha.embed_dim
        identity = torch.eye(embed_dim, dtype=query.dtype, device=query.device)
        extra: Dict[str, Any] = {}
        if not mha._qkv_same_embed_dim:
            extra = dict(use_separate_proj_weight=True, q_proj_weight=mha.q_proj_weight,
                         k_proj_weight=mha.k_proj_weight, v_proj_weight=mha.v_proj_weight)
        heads, weights = F.multi_head_attention_forward(
            query, key, value, embed_dim, mha.num_heads, mha.in_proj_weight, mha.in_proj_bias,
            mha.bias_k, mha.bias_v, mha.add_zero_attn, mha.dropout, identity, None,
            training=mha.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
            **extra,
        )
        output = mha.out_proj(heads.transpose(0, 1))  # batch first, so gates see batch on axis 0
        return (output if mha.batch_first else output.transpose(0, 1)), weights

    return forward


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
    """
    gates = torch.as_tensor(gates)
    if gates.dim() == 1:
        gates = gates.unsqueeze(0)
    if gates.dim() != 2 or gates.shape[1] != components.n_components:
        raise ValueError(
            f"gates must have shape (batch, {components.n_components}) or"
            f" ({components.n_components},), got {tuple(gates.shape)}"
        )
    with ComponentGates(components, ablation, forward_func=forward_func) as hooks:
        hooks.values = gates if gates.is_floating_point() else gates.float()
        yield hooks


def record_activations(
    forward_func: Callable[..., Any],
    components: ComponentSet,
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    additional_forward_args: Any = None,
    batch_size: int = 256,
) -> Dict[Tuple[str, str], Tensor]:
    """Activations at every group's site for ``inputs``, by ``(module_name, site)``, detached."""
    from .engine import as_tuple, slice_rows  # local: engine imports this module

    inputs = as_tuple(inputs)
    n_rows = inputs[0].shape[0]
    chunks: Dict[Tuple[str, str], List[Tensor]] = {}
    with torch.no_grad(), ComponentGates(components, "zero", record=True) as hooks:
        for start in range(0, n_rows, batch_size):
            rows = slice(start, min(start + batch_size, n_rows))
            batch, extra = slice_rows(inputs, additional_forward_args, rows, n_rows)
            forward_func(*batch, *extra)
            for key, value in hooks.recorded.items():
                chunks.setdefault(key, []).append(value.detach())
            missing = [g.module_name for g in components.groups
                       if (g.module_name, g.site) not in hooks.recorded]
            if missing:
                raise RuntimeError(f"the forward pass never reached modules {missing}")
            hooks.recorded.clear()
    return {key: torch.cat(parts) for key, parts in chunks.items()}
