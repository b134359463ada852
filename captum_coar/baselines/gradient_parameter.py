"""Gradient x parameter per component (a baseline of the COAR paper).

Contract
--------
:class:`ComponentGradientXParameter` returns, per example, ``<dF/dW_c, W_c>``: the gradient of
the output with respect to the component's weight slice times the slice, summed. The slices
are those of :mod:`captum_coar.edits`: a conv filter ``weight[c]``, a Linear neuron
``weight[j, :]``, a Hugging Face Conv1D neuron ``weight[:, j]``, a head the projection's
input columns. It is defined for these weight-based components only; any other module raises
``TypeError``.

Per-example parameter gradients are not materialised. Because a component's pre-activation
is linear in its slice, ``<dF/dW_c, W_c> = sum over positions of dF/dy_c * (y_c - b_c)``
for an output unit (``y`` the module's output, ``b`` its bias) and
``sum over the head's inputs and positions of dF/dx * x`` for a head (``x`` the projection's
input), so one forward and one backward give every example's value. This holds when each
module runs once per forward (checked) and its weight is not used elsewhere. It equals
attribution patching with ``ablation="weights"``. Output function (``output=``) and sign
convention are COAR's; the ablation argument is stored for a uniform signature, not used.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
from captum.log import log_usage
from torch import Tensor, nn

from .._checks import check_optional_positive_int
from .._inputs import example_batches
from .._modules import is_hf_conv1d
from ..ablation import along_axis
from ..components import ComponentGroup
from ._base import (
    Attributions,
    ComponentGradientMethod,
    OutputSpec,
    format_inputs,
    format_result,
)
from ._layer_gradients import SiteRecorder, per_component, refuse_latents, site_gradients

__all__ = ["ComponentGradientXParameter"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_weight_component(group: ComponentGroup, module: nn.Module) -> None:
    refuse_latents(group)
    linear = isinstance(module, nn.Linear) or is_hf_conv1d(module)
    ok = (linear or isinstance(module, _CONV)) if group.site == "output" else linear
    if not ok:
        allowed = ("nn.Linear, transformers' Conv1D or nn.Conv1d/2d/3d" if group.site == "output"
                   else "the input of an nn.Linear or Conv1D projection (heads)")
        raise TypeError(
            f"gradient x parameter needs weight-based components; group {group.module_name!r}"
            f" ({type(module).__name__}, site {group.site!r}) is not one: allowed are {allowed}"
        )


class ComponentGradientXParameter(ComponentGradientMethod):
    """Gradient of the output with respect to each component's weights, times the weights.

    Args:
        forward_func: the model or a function of ``(*inputs, *additional_forward_args)``.
        components: filters, neurons or heads (weight-based components).
        ablation: kept for a signature shared with every method; not used here.
    """

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: Any = None,
        additional_forward_args: Any = None,
        internal_batch_size: Optional[int] = None,
        output: OutputSpec = None,
        baselines: Any = None,
    ) -> Attributions:
        """Gradient x parameter of every component, ``(batch, n_components)``.

        ``baselines``: paired reference inputs shaped like ``inputs``. The parameters are the
        same in both runs, so the parameter delta is replaced by the activation delta to the
        paired baseline: the result is then exactly
        :class:`ComponentAttributionPatching` with the same baselines (gradient x parameter
        *is* attribution patching under weight ablation; see the module docs).
        """
        inputs_t, extra, n_examples = format_inputs(inputs, additional_forward_args)
        output_fn = self._start(output, target, inputs_t, baselines, extra)
        if baselines is not None:
            return format_result(self._gate_estimate(inputs_t, extra, target, output_fn,
                                                     internal_batch_size), inputs)
        groups = self.components.groups
        modules = [self.components.module(g) for g in groups]
        for group, module in zip(groups, modules):
            _check_weight_component(group, module)
        per_pass = check_optional_positive_int("internal_batch_size", internal_batch_size)
        per_pass = per_pass or n_examples
        parts = []
        with SiteRecorder(self.components) as recorder:
            for _, batch, batch_extra, batch_target in example_batches(inputs_t, extra, target,
                                                                       per_pass):
                _, acts, grads = site_gradients(self.forward_func, recorder, batch, batch_extra,
                                                batch_target, output_fn)
                columns = []
                for group, module, act, grad in zip(groups, modules, acts, grads):
                    bias = getattr(module, "bias", None)
                    if group.site == "output" and bias is not None:
                        act = act - along_axis(bias.detach().to(act.dtype), act.dim(), group.unit_axis)
                    columns.append(per_component(group, grad * act))
                parts.append(torch.cat(columns, dim=1))
        return format_result(torch.cat(parts), inputs)
