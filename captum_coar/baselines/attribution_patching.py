"""Attribution patching: the first-order estimate of every single-component ablation.

Contract
--------
:class:`ComponentAttributionPatching` (AtP, Nanda 2023; Syed et al. 2023) returns
``dF/dg_c`` at ``g = 1`` for the gate ``g`` of the ablation strategy (``r + g * (a - r)``),
i.e. ``sum over the component of dF/da * (a - r)``: the linear estimate of
``F(all kept) - F(c ablated)``, the quantity :class:`ComponentAblation` computes exactly. It
costs one forward and one backward per batch, whatever the number of components. On a model
that is linear in its components after the component layer the estimate is exact.

With ``ablation="weights"`` this equals gradient x parameter
(:class:`ComponentGradientXParameter`), since zeroing a weight slice is linear in it. The
output function (``output=``) and the sign (positive = the component pushes the output up)
are shared with COAR. ``internal_batch_size`` bounds the examples per pass.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from captum.log import log_usage
from torch import Tensor

from ._base import (
    Attributions,
    ComponentGradientMethod,
    OutputSpec,
    format_inputs,
    format_result,
)

__all__ = ["ComponentAttributionPatching"]


class ComponentAttributionPatching(ComponentGradientMethod):
    """Gradient of the output with respect to every component's gate, at gate 1.

    Args:
        forward_func: the model or a function of ``(*inputs, *additional_forward_args)``.
        components: the components.
        ablation: the ablation strategy that defines the replacement ``r``.

    Example:
        >>> import torch
        >>> from captum_coar import ComponentAttributionPatching, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> atp = ComponentAttributionPatching(model, neurons).attribute(x, target=y, output="logit")
        >>> torch.allclose(atp, model.effects(x, y), atol=1e-5)   # first order is exact here
        True
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
        """First-order ablation effect of every component, ``(batch, n_components)``.

        ``baselines``: paired reference inputs shaped like ``inputs``; the replacement is then
        the activation on the paired baseline and the result is the AtP paper's estimate
        ``dF/da (inputs) . (a(inputs) - a(baselines))`` of ``F(inputs) - F(c patched)``.
        """
        inputs_t, extra, n_examples = format_inputs(inputs, additional_forward_args)
        output_fn = self._start(output, target, inputs_t, baselines, extra)
        return format_result(self._gate_estimate(inputs_t, extra, target, output_fn,
                                                 internal_batch_size), inputs)
