"""Recording activations at component sites, without changing them.

Contract
--------
``with ActivationRecorder(components) as recorder:`` hooks every group's module at its site
(through :class:`~captum_coar._site_hooks.SiteHooks`) and keeps, by ``(module_name, site)``,
the activation each hook saw last (the object itself, graph-connected; with ``leaf=True`` a
floating activation that does not require grad is made a leaf that does, so gradients with
respect to it can be taken). It counts calls per site; :meth:`ActivationRecorder.activations`
returns the activations in group order and raises when a module never ran or ran more than
once (the method was called ``collect`` until 0.2.0; that name warns). Recording hooks never
modify an activation. Entered before a :class:`~captum_coar.gates.ComponentGates`, the
recorder sees activations before they are gated. Hooks are removed in ``finally``.

:func:`record_activations` runs ``forward_func`` on inputs in batches under ``no_grad`` and
returns every site's activations, detached and concatenated (what fitted ablation strategies
summarise).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Tuple, Union

import torch
from torch import Tensor, nn

from ._inputs import as_tuple, slice_rows
from ._site_hooks import SiteHooks
from .components import ComponentGroup, ComponentSet

__all__ = ["ActivationRecorder", "record_activations"]

SiteKey = Tuple[str, str]


class ActivationRecorder(SiteHooks):
    """Context manager that records each group's site activation.

    Args:
        components: the components whose sites are recorded.
        leaf: make recorded floating activations gradient leaves when autograd is on.
    """

    def __init__(self, components: ComponentSet, leaf: bool = False) -> None:
        super().__init__(components)
        self.leaf = leaf
        self.recorded: Dict[SiteKey, Tensor] = {}
        self.calls: Dict[SiteKey, int] = {}

    def reset(self) -> None:
        """Forget what was recorded (between forward passes)."""
        self.recorded.clear()
        self.calls.clear()

    def on_activation(self, position: int, group: ComponentGroup, module: nn.Module,
                      activation: Tensor) -> Tensor:
        if (self.leaf and torch.is_grad_enabled() and activation.is_floating_point()
                and not activation.requires_grad):
            activation = activation.detach().requires_grad_()
        key = (group.module_name, group.site)
        self.calls[key] = self.calls.get(key, 0) + 1
        self.recorded[key] = activation
        return activation

    def missing(self) -> List[str]:
        """Names of the grouped modules that did not run since the last :meth:`reset`."""
        return [g.module_name for g in self.components.groups
                if (g.module_name, g.site) not in self.recorded]

    def activations(self) -> List[Tensor]:
        """The recorded activations in group order, after one forward pass."""
        missing = self.missing()
        if missing:
            raise RuntimeError(f"the forward pass never reached the component modules {missing}")
        repeated = {k[0]: n for k, n in self.calls.items() if n > 1}
        if repeated:
            raise RuntimeError(
                f"modules {repeated} ran more than once in one forward pass (shared weights);"
                " per-site activations are defined only for modules that run once per forward"
            )
        return [self.recorded[(g.module_name, g.site)] for g in self.components.groups]

    def collect(self) -> List[Tensor]:
        """Deprecated name of :meth:`activations` ("collect" is COAR's collection of masks and
        outputs); removed in 0.4.0."""
        warnings.warn("ActivationRecorder.collect() is deprecated and will be removed in 0.4.0;"
                      " call ActivationRecorder.activations() instead", DeprecationWarning,
                      stacklevel=2)
        return self.activations()


def record_activations(
    forward_func: Callable[..., Any],
    components: ComponentSet,
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    additional_forward_args: Any = None,
    batch_size: int = 256,
) -> Dict[SiteKey, Tensor]:
    """Activations at every group's site for ``inputs``, by ``(module_name, site)``, detached.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from captum_coar import linear_neurons, record_activations
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> x = torch.randn(5, 4)
        >>> recorded = record_activations(model, linear_neurons(model, names=["0"]), x)
        >>> list(recorded), torch.equal(recorded[("0", "output")], model[0](x).detach())
        ([('0', 'output')], True)
    """
    inputs = as_tuple(inputs)
    n_rows = inputs[0].shape[0]
    chunks: Dict[SiteKey, List[Tensor]] = {}
    with torch.no_grad(), ActivationRecorder(components) as recorder:
        for start in range(0, n_rows, batch_size):
            rows = slice(start, min(start + batch_size, n_rows))
            batch, extra = slice_rows(inputs, additional_forward_args, rows, n_rows)
            forward_func(*batch, *extra)
            missing = recorder.missing()
            if missing:
                raise RuntimeError(f"the forward pass never reached modules {missing}")
            for key, value in recorder.recorded.items():
                chunks.setdefault(key, []).append(value.detach())
            recorder.reset()
    return {key: torch.cat(parts) for key, parts in chunks.items()}
