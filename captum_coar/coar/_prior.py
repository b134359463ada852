"""The cheap prior of COAR's default fit: attribution patching on the same examples.

Contract
--------
:func:`attribution_patching_prior` returns, for every example of ``data`` (batches read as in
:mod:`captum_coar.coar._batches`), the attribution-patching estimate
(:class:`~captum_coar.baselines.ComponentAttributionPatching`) of what ablating each component
does, with the collection's ablation strategy and output function; a paired batch's baselines
are used as its :class:`~captum_coar.baselines.ComponentAttributionPatching` ``baselines=``
(activation patching, as the collection does). It is a :class:`PriorReport`: the prior
``(n_examples, N)`` in float64 on the CPU and its cost in forward equivalents (one forward pass
counts 1 per example, one backward pass 2; the method's own checks count too), counted on the
model by :class:`~captum_coar.forward_cost.ForwardCounter`. An ablation or model the gradient
method cannot handle raises; :func:`prior_or_none` turns that into a report without a prior and
a warning, so COAR falls back to its default without one instead of failing.
:func:`with_default_prior` gives the default solver (``solver=None`` resolved to
:class:`~captum_coar.solvers.EmpiricalBayesRidge`) that prior, and leaves any other solver alone;
:func:`given_prior` does the same with a prior the caller has (``fit(..., prior=)``).

An example's prior depends only on that example (one gradient of the sum of the batch's
outputs, each output a function of its own example), so the default stays independent of which
examples share a batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch

from ..ablation import AblationStrategy
from ..baselines.attribution_patching import ComponentAttributionPatching
from ..components import ComponentSet
from ..forward_cost import ForwardCounter
from ..solvers import EmpiricalBayesRidge, wants_prior
from ._batches import BatchFn, split_batch

__all__ = ["PriorReport", "attribution_patching_prior", "prior_or_none", "with_default_prior",
           "given_prior"]

#: The method COAR's default computes as its prior.
PRIOR_METHOD = "attribution patching"


@dataclass
class PriorReport:
    """A prior attribution and what it cost.

    Attributes:
        prior: ``(n_examples, N)`` float64 on the CPU, or None when it could not be computed.
        forward_equivalents: example forwards plus twice the example backwards it ran.
        n_examples: examples it covers.
        note: why there is no prior (None when there is one).
    """

    prior: Optional[torch.Tensor]
    forward_equivalents: int
    n_examples: int
    note: Optional[str] = None

    def describe(self) -> Dict[str, Any]:
        """JSON-ready summary for a result's settings."""
        per = self.forward_equivalents / max(1, self.n_examples)
        return {"method": PRIOR_METHOD if self.prior is not None else None,
                "forward_equivalents": self.forward_equivalents,
                "forward_equivalents_per_example": per, "note": self.note}


def attribution_patching_prior(forward_func: Callable[..., Any], components: ComponentSet,
                               ablation: Union[str, AblationStrategy], data: Iterable[Any],
                               output: Any = None,
                               batch_fn: Optional[BatchFn] = None) -> PriorReport:
    """Attribution patching for every example of ``data`` (see the module docstring)."""
    method = ComponentAttributionPatching(forward_func, components, ablation=ablation)
    parts: List[torch.Tensor] = []
    with ForwardCounter(components.model) as cost:
        for batch in data:
            paired = split_batch(batch, batch_fn)
            inputs, target, extra = paired
            values = method.attribute(inputs, target=target,
                                      additional_forward_args=extra or None, output=output,
                                      baselines=paired.baselines)
            values = values[0] if isinstance(values, tuple) else values
            parts.append(values.detach().to(device="cpu", dtype=torch.float64))
    prior = torch.cat(parts)
    return PriorReport(prior, int(cost.equivalents), int(prior.shape[0]))


def prior_or_none(forward_func: Callable[..., Any], components: ComponentSet,
                  ablation: Union[str, AblationStrategy], data: Iterable[Any],
                  output: Any = None, batch_fn: Optional[BatchFn] = None) -> PriorReport:
    """:func:`attribution_patching_prior`, or (with a warning) a report without a prior when the
    gradient method refuses the model, ablation or output (e.g. no gradient flows)."""
    try:
        return attribution_patching_prior(forward_func, components, ablation, data, output,
                                          batch_fn)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as error:
        note = f"attribution patching failed ({type(error).__name__}: {error})"
        warnings.warn(f"COAR's default fit departs from 0 instead of a prior: {note}",
                      UserWarning, stacklevel=3)
        return PriorReport(None, 0, 0, note)


def with_default_prior(solver: Any, resolved: Any, forward_func: Callable[..., Any],
                       components: ComponentSet, ablation: Union[str, AblationStrategy],
                       data: Iterable[Any], output: Any = None,
                       batch_fn: Optional[BatchFn] = None) -> Any:
    """``(solver to fit with, PriorReport or None)``: for the default (``solver`` None resolved
    to an :class:`EmpiricalBayesRidge` without a prior) the prior is computed and given to it;
    any other solver comes back unchanged, without a report."""
    if not wants_prior(solver, resolved):
        return resolved, None
    report = prior_or_none(forward_func, components, ablation, data, output, batch_fn)
    if report.prior is not None:
        assert isinstance(resolved, EmpiricalBayesRidge)
        resolved = resolved.with_prior(report.prior)
    return resolved, report


def given_prior(solver: Any, resolved: Any, prior: Optional[torch.Tensor]) -> Any:
    """The default solver with a given ``prior`` (checked against the data by its fit); any
    other solver, or no prior, unchanged."""
    if prior is not None and wants_prior(solver, resolved):
        return resolved.with_prior(prior)
    return resolved
