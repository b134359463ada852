"""Integrated gradients along the ablation path, over all component gates jointly.

Contract
--------
:class:`ComponentIntegratedGradients` integrates ``dF/dg`` along the straight path of gates
from a starting gate value ``g0`` (``gate_baselines``; 0 = every component ablated) to 1
(every component kept), with Captum's ``n_steps`` points and weights of ``method``:

    IG_c = (1 - g0_c) * sum_k w_k * dF/dg_c (g0 + alpha_k (1 - g0)).

All gates move together, so completeness holds: ``sum_c IG_c = F(g = 1) - F(g = g0)`` up to
the integration error, which ``return_convergence_delta=True`` returns per example. This is
Captum's ``IntegratedGradients`` applied to the gated forward of
:mod:`captum_coar.interop` (and equal to it to float rounding), computed with one scaled batch
of ``n_steps * b`` rows. ``gate_baselines`` is a number, a ``(n_components,)`` vector or a
``(batch, n_components)`` tensor. Output function (``output=``) and sign convention are shared
with COAR.

``baselines`` has Captum's meaning, the reference input: paired inputs shaped like
``inputs``, whose activations are the ablated end of the path (gate 0 = the activation on the
paired baseline, gate 1 = on the input), so the attributions sum to ``F(inputs) - F(inputs
with every component patched)``. Until 0.2 ``baselines`` meant the starting gate value; a
number, or a tensor of a gate shape that is not the inputs' shape, is still read that way
with a ``DeprecationWarning`` (use ``gate_baselines``).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Tuple, Union

import torch
from captum.log import log_usage
from torch import Tensor

from .._checks import check_optional_positive_int, check_positive_int
from .._compat import integration_points
from .._inputs import expand_target, repeat_rows
from .._modules import model_device
from ._base import (
    AttributionsWithDelta,
    ComponentGradientMethod,
    OutputSpec,
    format_inputs,
    format_result,
)
from ._layer_gradients import forward_values, gate_gradients, point_chunks

__all__ = ["ComponentIntegratedGradients"]


class ComponentIntegratedGradients(ComponentGradientMethod):
    """Integrated gradients over the component gates, from ``baselines`` (ablated) to 1 (kept).

    Args:
        forward_func: the model or a function of ``(*inputs, *additional_forward_args)``.
        components: the components.
        ablation: the ablation strategy that defines gate 0.

    Example:
        >>> import torch
        >>> from captum_coar import ComponentIntegratedGradients, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> ig = ComponentIntegratedGradients(model, neurons).attribute(x, target=y, output="logit")
        >>> torch.allclose(ig, model.effects(x, y), atol=1e-5)
        True
    """

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def _gate_baseline(self, baselines: Any, n_examples: int, device: torch.device) -> Tensor:
        n = self.n_components
        base = torch.as_tensor(0.0 if baselines is None else baselines, dtype=torch.float32)
        if base.dim() == 1 and base.shape[0] == n:
            base = base[None]
        if base.dim() == 0:
            base = base.expand(1, n)
        if base.dim() != 2 or base.shape[1] != n or base.shape[0] not in (1, n_examples):
            raise ValueError(
                f"gate_baselines (the starting gate values) must be a number, a ({n},) vector or a"
                f" ({n_examples}, {n}) tensor; got shape {tuple(base.shape)}"
            )
        return base.to(device).expand(n_examples, n)

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        output: OutputSpec = None,
        gate_baselines: Any = 0.0,
    ) -> AttributionsWithDelta:
        """Gate integrated gradients, ``(batch, n_components)`` (and delta ``(batch,)``).

        Args:
            inputs, target, additional_forward_args: the examples, as in Captum.
            baselines: paired reference inputs shaped like ``inputs`` (Captum's meaning):
                the ablated end of the path is the activation on the paired baseline.
            gate_baselines: gate value(s) at the start of the path (0 = ablated).
            n_steps, method, internal_batch_size, return_convergence_delta: as in Captum's
                ``IntegratedGradients`` (``internal_batch_size`` = rows per pass).
            output: output function name or callable (see :mod:`captum_coar.outputs`).
        """
        inputs_t, extra, n_examples = format_inputs(inputs, additional_forward_args)
        if _is_gate_value(baselines, inputs_t, self.n_components):
            warnings.warn(
                "ComponentIntegratedGradients: baselines= now means the reference input"
                " (Captum's meaning, paired with inputs); a gate value was given, read as"
                " gate_baselines=. Pass gate_baselines= instead", DeprecationWarning,
                stacklevel=3)
            gate_baselines, baselines = baselines, None
        output_fn = self._start(output, target, inputs_t, baselines, extra)
        n_steps = check_positive_int("n_steps", n_steps)
        check_optional_positive_int("internal_batch_size", internal_batch_size)
        step_sizes, alphas = integration_points(method, n_steps)
        device = model_device(self.components.model)
        start = self._gate_baseline(gate_baselines, n_examples, device)
        span = 1.0 - start
        total = torch.zeros(n_examples, self.n_components, device=device)
        examples = torch.arange(n_examples, device=device)
        with self._gates() as hooks:
            for points in point_chunks(n_steps, n_examples, internal_batch_size):
                k = len(points)
                gates = torch.cat([start + alphas[p] * span for p in points])
                _, grad = gate_gradients(
                    self.forward_func, hooks, repeat_rows(inputs_t, k, n_examples),
                    repeat_rows(extra, k, n_examples), gates, examples.repeat(k),
                    expand_target(target, n_examples, k), output_fn)
                weights = torch.tensor([step_sizes[p] for p in points], device=grad.device)
                weighted = grad.reshape(k, n_examples, -1) * weights.to(grad.dtype)[:, None, None]
                total = total + weighted.sum(dim=0).to(device)
            attributions = total * span
            if not return_convergence_delta:
                return format_result(attributions, inputs)
            ends = torch.cat([start, torch.ones_like(start)])
            values = forward_values(self.forward_func, hooks, repeat_rows(inputs_t, 2, n_examples),
                                    repeat_rows(extra, 2, n_examples), ends, examples.repeat(2),
                                    expand_target(target, n_examples, 2), output_fn)
        change = (values[n_examples:] - values[:n_examples]).to(attributions)
        return format_result(attributions, inputs, attributions.sum(dim=1) - change)


def _is_gate_value(baselines: Any, inputs: Tuple[Tensor, ...], n_components: int) -> bool:
    """Whether ``baselines`` is a gate value of the old meaning rather than paired inputs."""
    if baselines is None or isinstance(baselines, tuple):
        return False
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return True
    if isinstance(baselines, Tensor) and tuple(baselines.shape) != tuple(inputs[0].shape):
        return baselines.dim() <= 2 and (baselines.dim() == 0
                                         or baselines.shape[-1] == n_components)
    return False
