"""Component attribution baselines that share COAR's components, ablation and output.

Contract
--------
Every class is built as ``Method(forward_func, components, ablation="weights")`` and its
``attribute(inputs, ..., target=None, additional_forward_args=None, output=None)`` returns
one tensor ``(batch, n_components)`` whose column ``c`` is component ``c`` of the
:class:`~captum_coar.components.ComponentSet` (``components.split`` / ``labels`` name them),
with COAR's sign: positive = the component pushes the output up. ``output`` is the output
function of :mod:`captum_coar.outputs` (margin with a target, logit without, by default), so
every method scores the same number COAR does. Classes subclass Captum's
``GradientAttribution`` / ``PerturbationAttribution``, reuse Captum's argument names and
decorate ``attribute`` with ``captum.log.log_usage``. Model parameters are never written;
all hooks are removed when a call ends, also after an exception.

Implementations
---------------
- :class:`ComponentAblation` (leave-one-out): exact effect of ablating each component alone.
- :class:`ComponentAttributionPatching` (AtP): first-order estimate of that effect.
- :class:`ComponentAtPStar` (AtP*): AtP with the attention softmax recomputed exactly where a
  component changes later queries and keys, and optional GradDrop (Hugging Face models).
- :class:`ComponentIntegratedGradients`: integrated gradients over the gates, from ablated
  to kept (complete).
- :class:`ComponentGradientXParameter`: gradient x weights of each component's weight slice.
- :class:`ComponentConductance`: Captum's layer conductance summed per component, all
  layers in one pass.
- :class:`ComponentInternalInfluence`: Captum's internal influence summed per component.
- :class:`ComponentRelevancePatching` (RelP): AtP with LRP coefficients for the gradient (LN,
  attention, identity and half rules in the backward pass).
"""

from .atp_star import ComponentAtPStar
from .attribution_patching import ComponentAttributionPatching
from .conductance import ComponentConductance
from .gradient_parameter import ComponentGradientXParameter
from .integrated_gradients import ComponentIntegratedGradients
from .internal_influence import ComponentInternalInfluence
from .leave_one_out import ComponentAblation
from .relevance_patching import ComponentRelevancePatching

__all__ = [
    "ComponentAblation",
    "ComponentAttributionPatching",
    "ComponentAtPStar",
    "ComponentIntegratedGradients",
    "ComponentGradientXParameter",
    "ComponentConductance",
    "ComponentInternalInfluence",
    "ComponentRelevancePatching",
]
