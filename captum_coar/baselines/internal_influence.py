"""Internal influence per component, for every layer of a ComponentSet in one pass.

Contract
--------
:class:`ComponentInternalInfluence` is Captum's ``InternalInfluence`` (Leino et al. 2018)
summed within each component, for all groups at once: the gradient of the output ``F`` with
respect to the activation at the component's site, integrated along the straight path from
``baselines`` to ``inputs`` with Captum's ``n_steps`` points and weights of ``method``,

    influence = sum_k w_k * dF/da (alpha_k),

summed over the component's features and positions. Column ``c`` equals Captum's
``InternalInfluence`` on the component's layer summed over the component, to float rounding;
one scaled batch and one backward serve every layer. ``internal_batch_size`` bounds the rows
per pass. The output function (``output=``) is shared with COAR. Internal influence is a
gradient, not an effect: it is not multiplied by an activation change and has no
completeness property. The ablation strategy is stored for a uniform signature, not used.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
from captum.log import log_usage
from torch import Tensor

from .._checks import check_optional_positive_int, check_positive_int
from .._compat import integration_points
from .._preflight import check_finite_inputs
from ._base import (
    Attributions,
    ComponentGradientMethod,
    OutputSpec,
    format_baselines,
    format_inputs,
    format_result,
    require_float_inputs,
)
from ._layer_gradients import SiteRecorder, path_site_gradients, per_component

__all__ = ["ComponentInternalInfluence"]


class ComponentInternalInfluence(ComponentGradientMethod):
    """Internal influence summed per component, all layers in one pass.

    Args:
        forward_func: the model or a function of ``(*inputs, *additional_forward_args)``.
        components: the components (any mix of filters, neurons and heads).
        ablation: kept for a signature shared with every method; not used here.
    """

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

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
        output: OutputSpec = None,
    ) -> Attributions:
        """Internal influence of every component, ``(batch, n_components)``.

        Arguments as in Captum's ``InternalInfluence``; ``output`` picks the output function.
        """
        inputs_t, extra, n_examples = format_inputs(inputs, additional_forward_args)
        require_float_inputs("ComponentInternalInfluence", inputs_t)
        n_steps = check_positive_int("n_steps", n_steps)
        check_optional_positive_int("internal_batch_size", internal_batch_size)
        baselines_t = format_baselines(inputs_t, baselines)
        check_finite_inputs("ComponentInternalInfluence", baselines_t, "baselines")
        step_sizes, alphas = integration_points(method, n_steps)
        output_fn = self._start(output, target, inputs_t, None, extra)  # path baselines: not paired
        groups = self.components.groups
        device = inputs_t[0].device
        totals = [torch.zeros(n_examples, g.n_units, device=device) for g in groups]
        with SiteRecorder(self.components) as recorder:
            for points, _, grads in path_site_gradients(self.forward_func, recorder, inputs_t,
                                                        baselines_t, extra, target, output_fn,
                                                        alphas, internal_batch_size):
                weights = torch.tensor([step_sizes[k] for k in points], device=device)
                for position, (group, grad) in enumerate(zip(groups, grads)):
                    summed = per_component(group, grad).reshape(len(points), n_examples, -1)
                    weighted = (summed.to(device) * weights.to(summed.dtype)[:, None, None]).sum(0)
                    totals[position] = totals[position] + weighted
        return format_result(torch.cat(totals, dim=1), inputs)
