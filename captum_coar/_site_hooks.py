"""Hooks at every component site of a :class:`~captum_coar.components.ComponentSet`, scoped.

Contract
--------
:class:`SiteHooks` is the one place where hooks are put on component modules: entering it
patches ``nn.MultiheadAttention`` modules whose output projection is grouped
(:mod:`captum_coar._attention_patch`) and registers, for every group, a forward hook (site
``"output"``) or a forward pre-hook on the first positional input (site ``"input"``; site
``"routing"``: on a mixture-of-experts container's routing weights, see
:func:`captum_coar.experts.routing_hooks`) that passes the activation through
:meth:`SiteHooks.on_activation`, which subclasses define
(gating in :class:`~captum_coar.gates.ComponentGates`, recording in
:class:`~captum_coar.recording.ActivationRecorder`). Hooks and patches are removed on exit,
after success or an exception, and by :meth:`SiteHooks.remove` (idempotent); if registration
fails part-way, whatever was registered is removed before the error propagates. A site that is
not a tensor (the tuple output of ``nn.LSTM``) raises, unless the group declares
``output_index`` (then that element of a tuple output is the site and the rest passes
through untouched); otherwise it raises a ``TypeError`` naming the module and the
``site="input"`` alternative (:func:`site_tensor`). For a group with a ``dictionary`` (:mod:`captum_coar.dictionaries`)
the activation :meth:`SiteHooks.on_activation` sees is the dictionary's latent vector, and
the site becomes ``a + decode(latents returned) - decode(latents)``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple, TypeVar

from torch import Tensor, nn

from ._attention_patch import patch_multihead_attention, unpatch_multihead_attention
from .components import ComponentGroup, ComponentSet
from .experts import routing_hooks

__all__ = ["SiteHooks", "site_tensor"]

HooksT = TypeVar("HooksT", bound="SiteHooks")


class SiteHooks:
    """Base class: one hook per group site while entered; see the module docstring."""

    def __init__(self, components: ComponentSet) -> None:
        self.components = components
        self._handles: List[Any] = []
        self._patched: List[nn.MultiheadAttention] = []

    def on_activation(self, position: int, group: ComponentGroup, module: nn.Module,
                      activation: Tensor) -> Tensor:
        """The activation to pass on for group ``position`` (subclasses define it)."""
        raise NotImplementedError

    def __enter__(self: HooksT) -> HooksT:
        try:
            self._patched = patch_multihead_attention(self.components)
            for position, group in enumerate(self.components.groups):
                module = self.components.module(group)
                if group.site == "output":
                    self._handles.append(
                        module.register_forward_hook(self._output_hook(position, group)))
                elif group.site == "routing":  # mixture-of-experts routing weights
                    self._handles += routing_hooks(
                        self.components.model, group, self._routing_visit(position, group, module))
                else:
                    self._handles.append(
                        module.register_forward_pre_hook(self._input_hook(position, group)))
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
        unpatch_multihead_attention(self._patched)

    def _output_hook(self, position: int, group: ComponentGroup) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            index = group.output_index
            if index is not None and isinstance(output, (tuple, list)):
                element = site_tensor(group, module, output[index] if len(output) > index
                                      else None)
                items = list(output)
                items[index] = self._batch_first(position, group, module, element, args)
                return type(output)(items) if isinstance(output, list) else tuple(items)
            return self._batch_first(position, group, module, site_tensor(group, module, output),
                                     args)
        return hook

    def _batch_first(self, position: int, group: ComponentGroup, module: nn.Module,
                     activation: Tensor, args: Tuple[Any, ...] = ()) -> Tensor:
        """:meth:`on_activation` on the batch-first view of a group's activation (through the
        group's dictionary, which may read the module's first input ``args[0]``)."""
        source = args[0] if group.dictionary is not None and args else None
        if group.batch_axis == 0:
            return self._visit(position, group, module, activation, source)
        if activation.dim() <= group.batch_axis:
            raise ValueError(
                f"module {group.module_name!r}: batch_axis={group.batch_axis} but its"
                f" {group.site} has only {activation.dim()} axes {tuple(activation.shape)}")
        if isinstance(source, Tensor) and source.dim() > group.batch_axis:
            source = source.movedim(group.batch_axis, 0)
        moved = self._visit(position, group, module, activation.movedim(group.batch_axis, 0),
                            source)
        return moved.movedim(0, group.batch_axis)

    def _visit(self, position: int, group: ComponentGroup, module: nn.Module,
               activation: Tensor, source: Any) -> Tensor:
        """:meth:`on_activation` on the activation, or on the latents of a dictionary group."""
        if group.dictionary is None:
            return self.on_activation(position, group, module, activation)
        return group.dictionary.substitute(
            group, activation, source,
            lambda latents: self.on_activation(position, group, module, latents))

    def _routing_visit(self, position: int, group: ComponentGroup,
                       module: nn.Module) -> Callable[[Tensor], Tensor]:
        return lambda weights: self._batch_first(position, group, module, weights)

    def _input_hook(self, position: int, group: ComponentGroup) -> Callable:
        def hook(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
            first = site_tensor(group, module, args[0] if args else None)
            return (self._batch_first(position, group, module, first),) + tuple(args[1:])
        return hook


def site_tensor(group: ComponentGroup, module: nn.Module, value: Any) -> Tensor:
    """``value`` when it is a tensor; a TypeError naming the module and the alternative else.

    Modules such as ``nn.LSTM`` / ``nn.GRU`` return tuples ``(output, state)``; gating "the"
    output of such a module has no single meaning, so it is refused.
    """
    if isinstance(value, Tensor):
        return value
    where = "output" if group.site == "output" else "first positional input"
    shown = (f"a {type(value).__name__} of {len(value)} items" if isinstance(value, (tuple, list))
             else type(value).__name__)
    raise TypeError(
        f"module {group.module_name!r} ({type(module).__name__}) gave {shown} as its {where};"
        " only tensor sites are hooked (gated or recorded), tuple outputs are not. Gate the module that consumes the tensor"
        f" you mean instead: ComponentGroup('<next module>', {group.kind!r}, {group.n_units},"
        " site='input'), e.g. the Linear map after an LSTM")

