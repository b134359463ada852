"""Edit curves over explicit sets: one set of ablated components per ``k``.

Contract
--------
A ranking gives nested sets (the first ``k`` of an order); a joint selection or a re-estimated
edit gives one set per ``k`` that need not be nested. :func:`sets_curve` evaluates, for every
``k`` of a sorted grid and its set ``sets[i]`` (at most ``k`` distinct component indices), the
target and reference metrics with that set ablated: the sets become a stack of keep masks
(:func:`set_masks`) evaluated on the target and reference examples together in ONE call of
:func:`~captum_coar.evaluate_masks` (two calls when the two metrics differ); the model is
never copied or written. Metrics are those of :func:`captum_coar.editing.edit_curve`
(``"accuracy"``, ``"margin"`` or an output function; the mean over examples), which is
:func:`sets_curve` with ``sets[i] = order[:ks[i]]``. Both groups of examples pass the shared
preflight first. The :class:`~captum_coar.editing_results.EditCurve` returned records the
sets (``curve.sets``) and, as ``order``, the set of the largest ``k``.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._checks import check_int, check_integer_values
from ._engine import evaluate_masks
from ._preflight import preflight
from .ablation import AblationStrategy
from .components import ComponentSet
from .editing_results import EditCurve
from .outputs import OutputFunction, resolve_output

__all__ = ["set_masks", "sets_curve", "check_ks", "MetricLike"]

MetricLike = Union[str, OutputFunction, Callable[..., Tensor]]


def check_ks(ks: Any, n_components: int) -> Tuple[int, ...]:
    """``ks`` as a sorted tuple of distinct ints in ``[0, n_components]``."""
    values = [ks] if isinstance(ks, numbers.Integral) else list(ks)
    if not values:
        raise ValueError("`ks` must hold at least one k; got an empty sequence")
    return tuple(sorted({check_int("ks", k, minimum=0, maximum=n_components) for k in values}))


def set_masks(sets: Sequence[Any], n_components: int) -> Tensor:
    """Keep masks ``(len(sets), n_components)``: row ``i`` ablates ``sets[i]`` (True = kept)."""
    masks = torch.ones(len(sets), n_components, dtype=torch.bool)
    for row, chosen in enumerate(sets):
        idx = check_integer_values(f"sets[{row}]", chosen).reshape(-1)
        if idx.numel() and (idx.min() < 0 or idx.max() >= n_components
                            or idx.unique().numel() != idx.numel()):
            raise ValueError(f"`sets[{row}]` must hold distinct component indices in"
                             f" [0, {n_components}); got repeated or out-of-range indices")
        masks[row, idx] = False
    return masks


def _reduce(metric: MetricLike, values: Tensor) -> Tensor:
    return (values > 0).double().mean(dim=1) if metric == "accuracy" else values.double().mean(dim=1)


def _metric_output(metric: MetricLike, labels: Any) -> OutputFunction:
    if metric in ("accuracy", "margin"):
        return resolve_output("margin")
    if isinstance(metric, str) and metric not in ("logit", "log_prob", "loss", "sequence_margin"):
        raise ValueError("`metric` must be 'accuracy', 'margin', an output name or a callable"
                         f" (model_output, target) -> (batch,); got {metric!r}")
    return resolve_output(metric, labels)


def _metric_name(metric: MetricLike) -> str:
    return metric if isinstance(metric, str) else resolve_output(metric).name


def _examples(target_inputs: Tensor, target_labels: Any, reference_inputs: Tensor,
              reference_labels: Any) -> Tuple[Tensor, Tensor]:
    for name, x in (("target_inputs", target_inputs), ("reference_inputs", reference_inputs)):
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"`{name}` must be a tensor with at least one example on dim 0;"
                             f" got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    n_t, n_r = target_inputs.shape[0], reference_inputs.shape[0]
    labels_t = check_integer_values("target_labels", target_labels).reshape(-1)
    labels_r = check_integer_values("reference_labels", reference_labels).reshape(-1)
    if labels_t.numel() != n_t or labels_r.numel() != n_r:
        raise ValueError("`target_labels` / `reference_labels` must have one entry per example;"
                         f" got {labels_t.numel()} / {labels_r.numel()} for {n_t} / {n_r} examples")
    return labels_t, labels_r


def sets_curve(forward_func: Callable[..., Any], components: ComponentSet, sets: Sequence[Any],
               ks: Sequence[int], target_inputs: Tensor, target_labels: Any,
               reference_inputs: Tensor, reference_labels: Any, metric: MetricLike = "accuracy",
               reference_metric: Optional[MetricLike] = None,
               ablation: Union[str, AblationStrategy] = "weights",
               max_rows: Optional[int] = None) -> EditCurve:
    """Target and reference metrics with ``sets[i]`` ablated, for every ``ks[i]``.

    Args:
        sets: one index set per ``k`` of ``ks`` (``ks`` sorted and distinct), each holding at
            most ``k`` components.
        Other arguments: as :func:`captum_coar.editing.edit_curve`.
    """
    if not isinstance(components, ComponentSet):
        raise TypeError(f"`components` must be a ComponentSet; got {type(components).__name__}")
    reference_metric = metric if reference_metric is None else reference_metric
    labels_t, labels_r = _examples(target_inputs, target_labels, reference_inputs,
                                   reference_labels)
    ks_t = check_ks(ks, components.n_components)
    if list(ks_t) != [int(k) for k in ks] or len(sets) != len(ks_t):
        raise ValueError(f"`ks` must be sorted and distinct with one set each; got ks={list(ks)}"
                         f" and {len(sets)} sets")
    masks = set_masks(sets, components.n_components)
    sizes = (~masks).sum(dim=1).tolist()
    if any(size > k for size, k in zip(sizes, ks_t)):
        raise ValueError(f"every set must hold at most its k components; got sizes {sizes} for"
                         f" ks {list(ks_t)}")
    n_t = target_inputs.shape[0]
    out_t, out_r = _metric_output(metric, labels_t), _metric_output(reference_metric, labels_r)
    for name, x, y, out in (("target_inputs", target_inputs, labels_t, out_t),
                            ("reference_inputs", reference_inputs, labels_r, out_r)):
        preflight("edit_curve", forward_func, components, x, y, None, out, input_name=name)
    if type(out_t) is type(out_r) and out_t.describe() == out_r.describe():
        inputs = torch.cat([target_inputs, reference_inputs.to(target_inputs)])
        outputs = evaluate_masks(forward_func, components, inputs, masks,
                                 target=torch.cat([labels_t, labels_r]), output=out_t,
                                 ablation=ablation, max_rows=max_rows)
        values_t, values_r = outputs[:, :n_t], outputs[:, n_t:]
    else:
        values_t = evaluate_masks(forward_func, components, target_inputs, masks, target=labels_t,
                                  output=out_t, ablation=ablation, max_rows=max_rows)
        values_r = evaluate_masks(forward_func, components, reference_inputs, masks,
                                  target=labels_r, output=out_r, ablation=ablation,
                                  max_rows=max_rows)
    kept: List[Tensor] = [check_integer_values("sets", s).reshape(-1).clone() for s in sets]
    return EditCurve(ks=ks_t, target=_reduce(metric, values_t).cpu(),
                     reference=_reduce(reference_metric, values_r).cpu(), order=kept[-1],
                     target_metric=_metric_name(metric),
                     reference_metric=_metric_name(reference_metric), sets=kept)
