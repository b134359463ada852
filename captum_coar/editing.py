"""COAR-Edit: choose components to ablate from attributions, trace the edit curve, apply it.

Contract
--------
Given component attributions ``(n_target, N)`` for *target* examples (whose behaviour should
change) and ``(n_reference, N)`` for *reference* examples (whose behaviour should not), from
any method (COAR, leave-one-out, attribution patching, random numbers):

- :func:`component_scores` scores every component. ``"welch_t"`` (default):
  ``(mean_t - mean_r) / sqrt(var_t / n_t + var_r / n_r)`` with sample variances
  (``ddof=1``). A group of ONE example contributes variance 0 (the score is then the
  one-sample t of that example against the other group); both groups of one example raise.
  Zero-variance guard: the squared standard error is floored at ``variance_floor`` times its
  mean over components (or at 1 when it is 0 for every component), so a constant component
  never gets a NaN or an infinite score; one with equal means scores exactly 0. Components
  whose standard error is above the floor get scipy's Welch statistic exactly.
  ``"mean_difference"``: ``mean_t - mean_r``.
- :func:`select_components` orders components for an edit. ``direction="lower"`` (lower the
  target output) takes the most positive scores first, ``"raise"`` the most negative first;
  ties keep the lower component index first.
- :func:`edit_curve` evaluates, for every ``k`` of a grid, the target and reference metrics
  with the first ``k`` selected components ablated. The grid is a stack of keep masks (row
  ``k``: the first ``k`` components False) evaluated on the target and reference examples
  together in ONE call of :func:`~captum_coar.evaluate_masks`; the model is never copied or
  written. Metrics: ``"accuracy"`` (share of examples whose correct-class margin is > 0, i.e.
  the label is the strict argmax), ``"margin"`` (mean margin), or any output function
  accepted by :func:`~captum_coar.resolve_output` (its mean). The target and reference
  examples first pass the shared preflight (:mod:`captum_coar._preflight`), so does
  :func:`coar_edit`, which traces the curve.
- :func:`choose_k` reads ``k`` off a (validation) curve by a stated rule, and
  :func:`coar_edit` runs scores -> selection -> curve -> choice and returns an
  :class:`~captum_coar.editing_results.EditResult`.
- :func:`apply_edit` applies a chosen edit: a :class:`~captum_coar.WeightEdit` for the
  ``"weights"`` / ``"zero"`` ablations (``undo()`` restores the weights bit for bit), the
  persistent hooks of :func:`~captum_coar.ablate_persistently` for other strategies.
  :func:`edited_state_dict` returns a plain ``state_dict`` with the edit written in, which
  loads into a fresh instance of the unmodified model class (no ``captum_coar`` needed); the
  model itself is never written. A tied weight is edited under the ablated module's key only,
  with a warning naming the other keys (see :func:`edited_state_dict`).

Beyond one-at-a-time rankings, each in its own module: joint selection
(:mod:`captum_coar.editing_selection`), re-estimation (:mod:`captum_coar.editing_reestimate`),
optimised gates (:mod:`captum_coar.editing_gates`), curves over non-nested sets
(:mod:`captum_coar.editing_sets`) and the choice of ablation, score and method on validation
(:mod:`captum_coar.editing_choice`); their edits are sets of components, applied and exported
by :func:`apply_edit` and :func:`edited_state_dict` here.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_float, check_int, check_integer_values
from .ablation import AblationStrategy, WeightAblation, ZeroAblation, resolve_ablation
from .components import ComponentSet
from .editing_results import EditCurve, EditResult
from .editing_sets import MetricLike, check_ks, sets_curve
from .edits import WeightEdit, ablate_persistently, shared_names, weight_slices, zero_components
from .gates import ComponentGates

__all__ = ["component_scores", "select_components", "edit_masks", "edit_curve", "choose_k",
           "coar_edit", "apply_edit", "edited_state_dict", "SCORES", "DIRECTIONS"]

SCORES = ("welch_t", "mean_difference")
DIRECTIONS = ("lower", "raise")


# ----------------------------------------------------------------------------- scores
def _attribution_matrix(name: str, values: Any) -> Tensor:
    if not isinstance(values, Tensor):
        raise TypeError(f"`{name}` must be a tensor (n_examples, n_components); got"
                        f" {type(values).__name__}")
    if values.dim() != 2:
        raise ValueError(f"`{name}` must have shape (n_examples, n_components); got"
                         f" {tuple(values.shape)}")
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"`{name}` must hold at least one example and one component; got"
                         f" shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"`{name}` must be finite; got NaN or infinite entries")
    return values.detach().to(torch.float64)


def component_scores(target_attributions: Tensor, reference_attributions: Tensor,
                     method: str = "welch_t", variance_floor: float = 1e-6) -> Tensor:
    """One score per component, ``(n_components,)`` float64: positive = higher on target."""
    t = _attribution_matrix("target_attributions", target_attributions)
    r = _attribution_matrix("reference_attributions", reference_attributions)
    if t.shape[1] != r.shape[1]:
        raise ValueError(
            "`reference_attributions` must cover the same components as `target_attributions`;"
            f" got {r.shape[1]} components against {t.shape[1]}")
    check_choice("method", method, SCORES)
    difference = t.mean(dim=0) - r.mean(dim=0)
    if method == "mean_difference":
        return difference
    check_float("variance_floor", variance_floor, low=0.0, low_open=True)
    n_t, n_r = t.shape[0], r.shape[0]
    if n_t == 1 and n_r == 1:
        raise ValueError("`target_attributions` and `reference_attributions` must not both hold"
                         " a single example for method='welch_t' (no variance to estimate);"
                         " got 1 and 1; use method='mean_difference'")
    var_t = t.var(dim=0, unbiased=True) if n_t > 1 else torch.zeros_like(difference)
    var_r = r.var(dim=0, unbiased=True) if n_r > 1 else torch.zeros_like(difference)
    se2 = var_t / n_t + var_r / n_r
    mean_se2 = se2.mean()
    floor = float(variance_floor) * mean_se2 if mean_se2 > 0 else torch.ones((), dtype=se2.dtype)
    return difference / se2.clamp(min=floor).sqrt()


def _check_direction(direction: Any) -> str:
    return check_choice("direction", direction, DIRECTIONS)


def _check_k(name: str, k: Any, n_components: int) -> int:
    return check_int(name, k, minimum=0, maximum=n_components)


def select_components(scores: Tensor, k: Optional[int] = None, direction: str = "lower") -> Tensor:
    """Component indices in edit order (all of them, or the first ``k``), int64."""
    _check_direction(direction)
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.numel() == 0:
        raise ValueError("`scores` must be a non-empty 1-d tensor (n_components,); got"
                         f" {tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}")
    if torch.isnan(scores).any():
        raise ValueError("`scores` must not contain NaN; got NaN entries")
    key = -scores if direction == "lower" else scores
    order = torch.sort(key.detach().cpu(), stable=True).indices
    if k is None:
        return order
    return order[:_check_k("k", k, scores.numel())]


# ----------------------------------------------------------------------------- curve
_check_ks = check_ks


def edit_masks(order: Tensor, ks: Sequence[int], n_components: int) -> Tensor:
    """Keep masks ``(len(ks), n_components)``: row i ablates ``order[:ks[i]]`` (True = kept)."""
    order = check_integer_values("order", order).reshape(-1)
    ks = _check_ks(ks, n_components)
    if order.numel() < ks[-1]:
        raise ValueError(f"`order` must list at least max(ks) = {ks[-1]} components; got"
                         f" {order.numel()}")
    if order.numel() and (order.min() < 0 or order.max() >= n_components
                          or order.unique().numel() != order.numel()):
        raise ValueError(f"`order` must hold distinct component indices in [0, {n_components});"
                         " got repeated or out-of-range indices")
    masks = torch.ones(len(ks), n_components, dtype=torch.bool)
    for row, k in enumerate(ks):
        masks[row, order[:k]] = False
    return masks


def edit_curve(forward_func: Callable[..., Any], components: ComponentSet, order: Tensor,
               ks: Sequence[int], target_inputs: Tensor, target_labels: Any,
               reference_inputs: Tensor, reference_labels: Any, metric: MetricLike = "accuracy",
               reference_metric: Optional[MetricLike] = None,
               ablation: Union[str, AblationStrategy] = "weights",
               max_rows: Optional[int] = None) -> EditCurve:
    """Target and reference metrics with ``order[:k]`` ablated, for every ``k`` in ``ks``.

    One :func:`~captum_coar.evaluate_masks` call on the target and reference examples
    concatenated (``forward_func`` takes one input tensor; labels are class indices).
    """
    if not isinstance(components, ComponentSet):
        raise TypeError(f"`components` must be a ComponentSet; got {type(components).__name__}")
    ks_t = _check_ks(ks, components.n_components)
    edit_masks(order, ks_t, components.n_components)  # checks the order against the grid
    order_t = check_integer_values("order", order).reshape(-1)
    curve = sets_curve(forward_func, components, [order_t[:k] for k in ks_t], ks_t,
                       target_inputs, target_labels, reference_inputs, reference_labels,
                       metric=metric, reference_metric=reference_metric, ablation=ablation,
                       max_rows=max_rows)
    curve.sets = None  # nested: the order says it all
    return curve


def choose_k(curve: EditCurve, direction: str, goal: Optional[float] = None,
             tolerance: float = 0.01) -> Tuple[int, str]:
    """``(k, rule)`` from a validation curve.

    Rule ``"goal"``: the smallest ``k`` whose target metric reaches ``goal`` (>= for
    ``"raise"``, <= for ``"lower"``) while the reference metric stays within ``tolerance`` of
    its value at the curve's first ``k`` (a drop of at most ``tolerance``). When no ``k`` does
    (or ``goal`` is None), rule ``"best_within_tolerance"``: the ``k`` with the best target
    metric among those within the tolerance, the smallest on ties (the first ``k`` qualifies).
    """
    _check_direction(direction)
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or tolerance < 0:
        raise ValueError(f"`tolerance` must be a non-negative number; got {tolerance!r}")
    target, reference = curve.target.tolist(), curve.reference.tolist()
    within = [i for i in range(len(curve.ks)) if reference[0] - reference[i] <= tolerance + 1e-12]
    if goal is not None:
        for i in within:
            if (target[i] >= goal) if direction == "raise" else (target[i] <= goal):
                return curve.ks[i], "goal"
    sign = 1.0 if direction == "raise" else -1.0
    best = max(within, key=lambda i: (sign * target[i], -i))
    return curve.ks[best], "best_within_tolerance"


# ----------------------------------------------------------------------------- one call
def coar_edit(forward_func: Callable[..., Any], components: ComponentSet,
              target_attributions: Tensor, reference_attributions: Tensor, direction: str,
              ks: Sequence[int], validation: Tuple[Tensor, Any, Tensor, Any],
              score: str = "welch_t", metric: MetricLike = "accuracy",
              goal: Optional[float] = None, tolerance: float = 0.01,
              ablation: Union[str, AblationStrategy] = "weights",
              max_rows: Optional[int] = None) -> EditResult:
    """Scores -> selection -> validation curve -> chosen ``k``, as an :class:`EditResult`.

    ``validation`` = ``(target_inputs, target_labels, reference_inputs, reference_labels)``:
    held-out examples of the same two kinds, on which the curve is traced and ``k`` chosen
    by :func:`choose_k`. The result's ``before`` / ``after`` are the curve at ``k = 0`` and at
    the chosen ``k`` (``0`` is always added to the grid).
    """
    if not isinstance(components, ComponentSet):
        raise TypeError(f"`components` must be a ComponentSet; got {type(components).__name__}")
    scores = component_scores(target_attributions, reference_attributions, method=score)
    if scores.numel() != components.n_components:
        raise ValueError(f"`target_attributions` must have one column per component"
                         f" ({components.n_components}); got {scores.numel()}")
    if not isinstance(validation, (tuple, list)) or len(validation) != 4:
        raise ValueError("`validation` must be (target_inputs, target_labels, reference_inputs,"
                         f" reference_labels); got {type(validation).__name__}")
    grid = (0,) + tuple(_check_ks(ks, components.n_components))
    order = select_components(scores, max(grid), direction)
    curve = edit_curve(forward_func, components, order, grid, *validation, metric=metric,
                       ablation=ablation, max_rows=max_rows)
    k, rule = choose_k(curve, direction, goal=goal, tolerance=tolerance)
    chosen = order[:k].clone()
    return EditResult(scores=scores, direction=direction, k=k, rule=rule, components=chosen,
                      labels=[components.label(int(i)) for i in chosen], curve=curve,
                      before=curve.at(0), after=curve.at(k), score_method=score,
                      ablation=ablation if isinstance(ablation, str) else repr(ablation))


# ----------------------------------------------------------------------------- applying
def _keep_mask(components: ComponentSet, indices: Any) -> Tensor:
    if not isinstance(components, ComponentSet):
        raise TypeError(f"`components` must be a ComponentSet; got {type(components).__name__}")
    idx = check_integer_values(
        "indices", indices if not isinstance(indices, EditResult) else indices.components).reshape(-1)
    n = components.n_components
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"`indices` must be component indices in [0, {n}); got"
                         f" {idx.min().item()}..{idx.max().item()}")
    keep = torch.ones(n, dtype=torch.bool)
    keep[idx] = False
    return keep


def apply_edit(components: ComponentSet, indices: Any,
               ablation: Union[str, AblationStrategy] = "weights",
               forward_func: Optional[Callable[..., Any]] = None
               ) -> Union[WeightEdit, ComponentGates]:
    """Ablate ``indices`` (or an EditResult's components) in ``components.model``.

    Weight / zero ablation: the weights are edited in place and a :class:`WeightEdit` comes
    back (``undo()`` restores them bit for bit). Other strategies: persistent hooks (call
    ``.remove()``).
    """
    keep = _keep_mask(components, indices)
    if isinstance(resolve_ablation(ablation), (WeightAblation, ZeroAblation)):
        return zero_components(components, keep, ablation=ablation)
    return ablate_persistently(components, keep, ablation=ablation, forward_func=forward_func)


def edited_state_dict(components: ComponentSet, indices: Any,
                      ablation: Union[str, AblationStrategy] = "weights") -> Dict[str, Tensor]:
    """A plain ``state_dict`` (cloned tensors) of ``components.model`` with the edit written in.

    Only ``"weights"`` and ``"zero"`` ablations can be written into weights. The model itself
    is never written: the slices are zeroed in the cloned tensors, under the key of the module
    whose components are ablated only. So for tied weights (GPT-2's ``lm_head.weight`` is
    ``transformer.wte.weight``) the export warns and names the other key(s): it equals the
    gated model exactly when loaded into a model whose copies are untied (for transformers,
    ``tie_word_embeddings=False``); a model that ties them holds one tensor for all the keys,
    and ``load_state_dict`` leaves it with the values of whichever key it writes last.
    """
    keep = _keep_mask(components, indices)
    if not isinstance(resolve_ablation(ablation), (WeightAblation, ZeroAblation)):
        raise ValueError("`ablation` must be 'weights' or 'zero' to export a state_dict (other"
                         f" strategies need hooks: use apply_edit); got {ablation!r}")
    model: nn.Module = components.model
    slices = weight_slices(components, keep, ablation=ablation)
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    for key, index in slices:
        if key not in state:
            raise ValueError(f"edited_state_dict: the model's state_dict has no key {key!r} for"
                             " the edited weight (a custom state_dict hook renames it); use"
                             " apply_edit and save the edited model yourself")
        state[key][index] = 0
    for key in dict.fromkeys(key for key, _ in slices):
        _warn_tied_export(model, key, list(state))
    return state


def _warn_tied_export(model: nn.Module, key: str, order: Sequence[str]) -> None:
    others = shared_names(model, key)[1:]
    if not others:
        return
    last = max([key] + others, key=lambda name: order.index(name) if name in order else -1)
    effect = ("the edit then also zeroes the same entries of " + ", ".join(map(repr, others))
              if last == key else "the edit is then lost")
    warnings.warn(
        f"edited_state_dict: {key!r} shares its tensor with {others} (tied weights). The export"
        f" writes the edit under {key!r} only and keeps {others} unedited, so it computes what"
        " the gated model computes only when loaded into a model whose copies are untied (for"
        " transformers: config.tie_word_embeddings=False). A model that ties them holds one"
        " tensor for all these keys and torch's load_state_dict leaves it with the key written"
        f" last ({last!r} in this state_dict's order): {effect}, which gating does not do",
        stacklevel=2)
