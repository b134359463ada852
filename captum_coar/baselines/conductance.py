"""Conductance per component, for every layer of a ComponentSet in one pass.

Contract
--------
:class:`ComponentConductance` is Captum's ``LayerConductance`` (Dhamdhere et al. 2018) summed
within each component, for all groups at once. Along the straight path from ``baselines`` to
``inputs`` at Captum's ``n_steps + 1`` points ``alpha_0 .. alpha_n`` of ``method``, with
``a_k`` the activation at a group's site and ``g_k = dF/da`` at point ``k``,

    conductance = sum_{k < n} g_k * (a_{k+1} - a_k),

summed over the component's features and positions (a filter: all spatial positions; a
head: its ``head_dim`` input features of the projection, at every position). This is
Captum's formula, so column ``c`` equals ``LayerConductance(forward_func, layer)`` run on
the component's layer (``attribute_to_layer_input=True`` for heads) and summed over the
component, to float rounding. The difference is that one scaled batch of ``(n_steps+1) * b``
rows and one backward give every layer's gradients together, where Captum needs one call
per layer.

``F`` is the output function (``output=``, shared with COAR: margin with a target by
default, ``"logit"`` for Captum's target selection). A group spans its whole layer, so when
the layer is a cut of the network (every path from input to output runs through it: a conv
of a plain CNN, not an attention block bypassed by a residual connection) its components'
conductances sum to ``F(inputs) - F(baselines)`` up to the integration error.
``return_convergence_delta=True`` returns each group's sum minus that change, per example
and group, ``(batch, n_groups)``: Captum's delta for each layer. ``internal_batch_size``
bounds the rows per pass; consecutive passes carry the last point over instead of
recomputing it. The ablation strategy is stored for a
uniform signature and not used: conductance follows the input path, not the ablation path.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
from captum.log import log_usage
from torch import Tensor

from .._checks import check_optional_positive_int, check_positive_int
from .._compat import integration_points
from .._inputs import expand_target, repeat_rows
from .._preflight import check_finite_inputs
from ._base import (
    AttributionsWithDelta,
    ComponentGradientMethod,
    OutputSpec,
    format_baselines,
    format_inputs,
    format_result,
    require_float_inputs,
)
from ._layer_gradients import (
    SiteRecorder,
    forward_values,
    path_site_gradients,
    per_component,
    scaled_path,
)

__all__ = ["ComponentConductance", "scaled_path"]


class ComponentConductance(ComponentGradientMethod):
    """Layer conductance summed per component, all layers in one pass.

    Args:
        forward_func: the model or a function of ``(*inputs, *additional_forward_args)``.
        components: the components (any mix of filters, neurons and heads).
        ablation: kept for a signature shared with every method; not used here.
    """

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

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
    ) -> AttributionsWithDelta:
        """Conductance of every component, ``(batch, n_components)``.

        Args:
            inputs, baselines, target, additional_forward_args: as in Captum's
                ``LayerConductance``.
            n_steps, method: the integration rule, as in Captum's ``LayerConductance``.
            internal_batch_size: rows per forward pass (at least ``batch``), as in Captum.
            return_convergence_delta: also return ``(batch, n_groups)``: each group's summed
                conductance minus ``F(inputs) - F(baselines)``.
            output: output function name or callable (see :mod:`captum_coar.outputs`).
        """
        inputs_t, extra, n_examples = format_inputs(inputs, additional_forward_args)
        require_float_inputs("ComponentConductance", inputs_t)
        n_steps = check_positive_int("n_steps", n_steps)
        check_optional_positive_int("internal_batch_size", internal_batch_size)
        baselines_t = format_baselines(inputs_t, baselines)
        check_finite_inputs("ComponentConductance", baselines_t, "baselines")
        _, alphas = integration_points(method, n_steps + 1)
        output_fn = self._start(output, target, inputs_t, None, extra)  # path baselines: not paired
        groups = self.components.groups
        device = inputs_t[0].device
        totals = [torch.zeros(n_examples, g.n_units, device=device) for g in groups]
        previous: Optional[Tuple[List[Tensor], List[Tensor]]] = None
        with SiteRecorder(self.components) as recorder:
            for _, acts, grads in path_site_gradients(self.forward_func, recorder, inputs_t,
                                                      baselines_t, extra, target, output_fn,
                                                      alphas, internal_batch_size):
                if previous is not None:
                    acts = [torch.cat([p, a]) for p, a in zip(previous[0], acts)]
                    grads = [torch.cat([p, g]) for p, g in zip(previous[1], grads)]
                for position, (group, act, grad) in enumerate(zip(groups, acts, grads)):
                    if act.shape[0] == n_examples:
                        continue
                    step = (act[n_examples:] - act[:-n_examples]) * grad[:-n_examples]
                    contribution = per_component(group, step).reshape(-1, n_examples, group.n_units)
                    totals[position] = totals[position] + contribution.sum(dim=0).to(device)
                previous = ([a[-n_examples:] for a in acts], [g[-n_examples:] for g in grads])
        attributions = torch.cat(totals, dim=1)
        if not return_convergence_delta:
            return format_result(attributions, inputs)
        return format_result(attributions, inputs, self._delta(
            attributions, inputs_t, baselines_t, extra, target, output_fn, n_examples))

    def _delta(self, attributions: Tensor, inputs_t: Tuple[Tensor, ...],
               baselines_t: Tuple[Tensor, ...], extra: Tuple[Any, ...], target: Any,
               output_fn: Any, n_examples: int) -> Tensor:
        ends = tuple(torch.cat([b, x]) for x, b in zip(inputs_t, baselines_t))
        values = forward_values(self.forward_func, None, ends, repeat_rows(extra, 2, n_examples),
                                None, None, expand_target(target, n_examples, 2), output_fn)
        change = (values[n_examples:] - values[:n_examples]).to(attributions)
        sums = torch.stack([attributions[:, self.components.group_slice(p)].sum(dim=1)
                            for p in range(len(self.components.groups))], dim=1)
        return sums - change[:, None]
