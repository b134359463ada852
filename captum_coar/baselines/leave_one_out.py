"""Leave-one-out: the exact effect of ablating each component alone.

Contract
--------
:class:`ComponentAblation` returns ``F(all kept) - F(component c ablated)`` for every
component and example, ``(batch, n_components)``: positive when the component pushes the
output up. Both terms are gated forwards of the batch engine
(:func:`captum_coar._engine.evaluate_masks`), the reference one with every gate at 1 and the
others with the keep masks "all but c" (identity complements, built chunk by chunk, never as
an ``N x N`` matrix). ``perturbations_per_eval`` single-component ablations share one forward
pass of ``perturbations_per_eval * batch`` rows (default: as many as ``max_rows`` allows), as
in Captum's ``FeatureAblation``, which on the gated forward of :mod:`captum_coar.interop`
(baseline gate 0) gives the same numbers. ``show_progress`` shows a bar over components.
The output function (``output=``) and the ablation strategy are COAR's.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor

from .._checks import check_optional_positive_int
from .._engine import evaluate_masks, progress, rows_per_pass
from .._modules import model_device
from ..ablation import AblationStrategy
from ..components import ComponentSet
from ._base import (
    Attributions,
    ComponentMethod,
    OutputSpec,
    format_inputs,
    format_result,
)

__all__ = ["ComponentAblation", "leave_one_out_masks"]


def leave_one_out_masks(n_components: int, columns: range, device: Any = None) -> Tensor:
    """Keep masks ``(len(columns), n_components)``: row ``i`` ablates component ``columns[i]``."""
    masks = torch.ones(len(columns), n_components, dtype=torch.bool, device=device)
    masks[torch.arange(len(columns), device=device),
          torch.as_tensor(list(columns), device=device, dtype=torch.long)] = False
    return masks


class ComponentAblation(ComponentMethod, PerturbationAttribution):
    """Exact single-component ablation effects (leave-one-out).

    Args:
        forward_func: the model or a function of ``(*inputs, *additional_forward_args)``.
        components: the components.
        ablation: strategy name or instance (see :mod:`captum_coar.ablation`).

    Example:
        >>> import torch
        >>> from captum_coar import ComponentAblation, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> effects = ComponentAblation(model, neurons).attribute(x, target=y, output="logit")
        >>> effects.shape, torch.allclose(effects, model.effects(x, y), atol=1e-5)
        (torch.Size([4, 7]), True)
    """

    def __init__(self, forward_func: Callable[..., Any], components: ComponentSet,
                 ablation: Union[str, AblationStrategy] = "weights") -> None:
        PerturbationAttribution.__init__(self, forward_func)
        self._init_components(components, ablation)

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: Any = None,
        additional_forward_args: Any = None,
        baselines: Any = None,
        perturbations_per_eval: Optional[int] = None,
        show_progress: bool = False,
        output: OutputSpec = None,
        max_rows: Optional[int] = None,
    ) -> Attributions:
        """Leave-one-out effects ``(batch, n_components)``.

        Args:
            inputs, target, additional_forward_args, perturbations_per_eval, show_progress:
                as in Captum's ``FeatureAblation`` (a "perturbation" = one component ablated).
            baselines: paired reference inputs shaped like ``inputs``: an ablated component
                takes its activation on the paired baseline example, so the result is exact
                activation patching, ``F(inputs) - F(inputs with c patched)`` (clean inputs
                with corrupted baselines: noising; the reverse: denoising). None: the
                constructor's ablation.
            output: output function name or callable (see :mod:`captum_coar.outputs`).
            max_rows: rows per forward pass when ``perturbations_per_eval`` is None (default:
                :func:`~captum_coar.engine.default_max_rows` of the model's device).
        """
        inputs_t, extra, n_examples = format_inputs(inputs, additional_forward_args)
        output_fn = self._start(output, target, inputs_t, baselines, extra)
        check_optional_positive_int("perturbations_per_eval", perturbations_per_eval)
        check_optional_positive_int("max_rows", max_rows)
        device = model_device(self.components.model)
        per_pass = rows_per_pass(n_examples, perturbations_per_eval, max_rows, device)
        n = self.n_components
        common = dict(target=target, additional_forward_args=extra or None, output=output_fn,
                      perturbations_per_eval=per_pass)
        bar = progress(n, show_progress, "leave-one-out")
        try:
            with self._gates() as hooks:
                reference = evaluate_masks(self.forward_func, self.components, inputs_t,
                                           torch.ones(1, n, dtype=torch.bool), hooks=hooks,
                                           **common)
                effects = torch.empty(n_examples, n, dtype=reference.dtype,
                                      device=reference.device)
                for start in range(0, n, per_pass):
                    columns = range(start, min(start + per_pass, n))
                    ablated = evaluate_masks(self.forward_func, self.components, inputs_t,
                                             leave_one_out_masks(n, columns, device), hooks=hooks,
                                             **common)
                    effects[:, start:columns.stop] = (reference - ablated).T
                    bar.update(len(columns))
        finally:
            bar.close()
        return format_result(effects, inputs)
