"""Relevance patching (RelP): attribution patching with LRP coefficients for the gradient.

Contract
--------
:class:`ComponentRelevancePatching` (Jafari, Eberle, Khakzar and Nanda 2025, "RelP: Faithful
and Efficient Circuit Discovery via Relevance Patching", arXiv 2508.21258) returns, like
:class:`ComponentAttributionPatching`, ``sum over the component of C_a * (a - r)`` for every
component, where ``a`` is its activation, ``r`` its replacement (the ablation strategy's, or
with ``baselines=`` its activation on the paired baseline example) and ``C_a`` the LRP
propagation coefficient of the output with respect to ``a``: the gradient computed with the
backward pass through every norm, attention and MLP nonlinearity downstream of ``a`` replaced
by an LRP rule (:mod:`captum_coar.baselines._lrp_rules`: LN rule, AH rule, identity rule, half
rule for gated products). Forward values are those of the model; only the backward changes.
It estimates ``F(all kept) - F(c ablated)`` (``F(inputs) - F(inputs with c patched)`` with
baselines), the quantity :class:`ComponentAblation` computes exactly, with the same sign
(positive = the component pushes the output up). Cost: one forward and one backward per
batch, as AtP (plus the baseline forward when baselines are given). It is a subclass of
:class:`ComponentAttributionPatching` (same ``attribute`` signature) whose gate-gradient pass
runs inside :func:`~captum_coar.baselines._lrp_rules.lrp_rules`.

Where the model is linear after the component layer (no rule applies downstream) the
estimate equals AtP and is exact. Requirements: a model whose attention the rules reach (a
Hugging Face model dispatching through transformers' attention interface, or one calling
``F.scaled_dot_product_attention``); otherwise a ``TypeError`` after the first forward pass,
or ``require_attention=False`` for models without attention.
"""

from __future__ import annotations

from typing import Any, Callable, Union

from torch import Tensor

from ..ablation import AblationStrategy
from ..components import ComponentSet
from ._lrp_rules import lrp_rules
from .attribution_patching import ComponentAttributionPatching

__all__ = ["ComponentRelevancePatching"]


class ComponentRelevancePatching(ComponentAttributionPatching):
    """LRP coefficient times (activation - replacement) for every component (see module docs).

    ``attribute(inputs, target=None, additional_forward_args=None, internal_batch_size=None,
    output=None, baselines=None)`` is attribution patching's, run with the LRP rules on
    ``components.model``: RelP estimates ``(batch, n_components)`` of ``F(inputs) - F(c
    ablated)``, or of ``F(inputs) - F(inputs with c patched from baselines)``.

    Args:
        forward_func: the model or a function of ``(*inputs, *additional_forward_args)``
            running ``components.model``.
        components: the components (of ``components.model``, the model the rules apply to).
        ablation: the ablation strategy that defines the replacement ``r``.
        require_attention: refuse a model whose attention the AH rule does not reach (default);
            False for models without attention (MLPs, CNNs).

    Example:
        >>> import torch
        >>> from captum_coar import ComponentRelevancePatching, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> relp = ComponentRelevancePatching(model, neurons, require_attention=False)
        >>> torch.allclose(relp.attribute(x, target=y, output="logit"), model.effects(x, y), atol=1e-5)
        True
    """

    def __init__(self, forward_func: Callable[..., Any], components: ComponentSet,
                 ablation: Union[str, AblationStrategy] = "weights",
                 require_attention: bool = True) -> None:
        super().__init__(forward_func, components, ablation)
        self.require_attention = bool(require_attention)

    def _gate_estimate(self, *args: Any, **kwargs: Any) -> Tensor:
        """Attribution patching's gate gradients, with the backward pass under the LRP rules."""
        with lrp_rules(self.components.model, self.require_attention):
            return super()._gate_estimate(*args, **kwargs)
