"""Evaluation of component attributions by what ablations actually do.

Contract
--------
Every metric takes plain attribution tensors ``(batch, n_components)`` (positive = the
component pushes the output up), so COAR and every baseline are scored the same way. Several
methods are given as a mapping ``{name: attributions}``; a value may also be a pair
``(attributions, intercept)`` or an object with ``.attributions`` and ``.intercept`` (or
``.intercepts``) such as a COAR result.

Implementations
---------------
- :func:`counterfactual_correlation` -- the COAR paper's metric. Fresh masks are drawn at one
  or several test ablation fractions (seeded with :data:`EVALUATION_SEED` by default, a seed
  distinct from the fitting seeds, and a warning if it equals a seed a fit reports); the
  ablated outputs are computed ONCE per fraction and shared by all methods; for every example
  the Pearson (or Spearman) correlation over masks between the actual output and the output
  predicted by the attributions is returned in a :class:`CounterfactualCorrelationResult`.
- :func:`topk_ablation_curve` -- ablate the ``k`` components with the highest (or lowest)
  attribution of each example for ``k`` on a grid; returns a :class:`TopKAblationCurve` with
  the outputs and their area under the curve.

The two result classes live in :mod:`captum_coar._evaluation_results` (re-exported here).

The prediction for a keep mask ``m`` is ``intercept + attributions . m`` when an intercept is
known, else ``unablated output - attributions . (1 - m)``; the two differ by a constant per
example, which correlation ignores. All forwards run through :mod:`captum_coar._engine`,
after the shared preflight (:mod:`captum_coar._preflight`: empty batch, non-finite inputs,
random modules in training mode, targets outside the classes, determinism probe, non-finite or
overflowing outputs are refused before any ablated forward pass).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._checks import check_choice, check_fraction, check_int, check_integer_values, fail
from ._engine import evaluate_masks, gated_outputs, progress, rows_per_pass
from ._evaluation_results import CounterfactualCorrelationResult, TopKAblationCurve
from ._inputs import as_tuple, input_tuple
from ._modules import model_device
from ._pairing import patch_strategy
from ._preflight import check_batch, preflight
from ._state import keeps_model_state
from .ablation import AblationStrategy, fitted_ablation
from .components import ComponentSet
from .gates import ComponentGates
from .outputs import OutputFunction, resolve_output
from .sampling import MaskSampler, resolve_sampler

__all__ = ["EVALUATION_SEED", "counterfactual_correlation", "CounterfactualCorrelationResult",
           "topk_ablation_curve", "TopKAblationCurve", "pearson", "spearman"]

#: Default seed of the evaluation masks; distinct from the fitting seeds used by default.
EVALUATION_SEED = 0x5EED_0E7A

Attributions = Union[Tensor, Mapping[str, Any], Any]
OutputSpec = Union[str, OutputFunction, Callable[..., Tensor], None]


# ---------------------------------------------------------------------- correlations
def pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation along dim 0 of ``(k, b)`` tensors -> ``(b,)`` (NaN if constant)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    denom = (x.square().sum(0) * y.square().sum(0)).sqrt()
    r = (x * y).sum(0) / denom
    return torch.where(denom > 0, r, torch.full_like(r, float("nan")))


def _ranks(x: Tensor) -> Tensor:
    """Average ranks along dim 0 (ties share the mean of their ranks)."""
    x = x.double()
    order = x.argsort(dim=0)
    ranks = torch.empty_like(x)
    ranks.scatter_(0, order, torch.arange(x.shape[0], dtype=x.dtype).unsqueeze(1).expand_as(x).clone())
    for j in range(x.shape[1]):
        values, inverse, counts = torch.unique(x[:, j], return_inverse=True, return_counts=True)
        if counts.max() > 1:
            sums = torch.zeros(values.shape[0], dtype=x.dtype).index_add_(0, inverse, ranks[:, j])
            ranks[:, j] = (sums / counts)[inverse]
    return ranks


def spearman(x: Tensor, y: Tensor) -> Tensor:
    """Spearman rank correlation along dim 0 of ``(k, b)`` tensors -> ``(b,)``."""
    return pearson(_ranks(x.cpu()), _ranks(y.cpu()))


_CORRELATIONS = {"pearson": pearson, "spearman": spearman}


# ---------------------------------------------------------------------- input handling
def _unpack(name: str, value: Any) -> Tuple[Tensor, Optional[Tensor], Optional[int]]:
    """(attributions, intercept or None, fit seed or None) from a tensor, pair or result."""
    intercept, seed = None, None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value, intercept = value
    elif not isinstance(value, Tensor) and hasattr(value, "attributions"):
        for attr in ("intercept", "intercepts", "intercept_", "intercepts_"):
            if getattr(value, attr, None) is not None:
                intercept = getattr(value, attr)
                break
        settings = getattr(value, "settings", None)
        candidates = [getattr(value, "seed", None), getattr(value, "seed_", None),
                      settings.get("seed") if isinstance(settings, Mapping) else None]
        seed = next((s for s in candidates if isinstance(s, int)), None)
        value = value.attributions
    if not isinstance(value, Tensor):
        raise TypeError(
            f"attributions for {name!r} must be a tensor (batch, n_components), a pair"
            f" (attributions, intercept) or an object with .attributions; got {type(value).__name__}"
        )
    if intercept is not None:
        intercept = torch.as_tensor(intercept).detach().reshape(-1).double().cpu()
    return value.detach().double().cpu(), intercept, seed


def _methods(attributions: Attributions, n_examples: int, n_components: int
             ) -> Dict[str, Tuple[Tensor, Optional[Tensor], Optional[int]]]:
    if isinstance(attributions, Mapping):
        items = list(attributions.items())
    else:
        items = [("attributions", attributions)]
    if not items:
        raise ValueError("attributions is an empty mapping; give at least one method")
    out = {}
    for name, value in items:
        attr, intercept, seed = _unpack(str(name), value)
        if attr.shape != (n_examples, n_components):
            raise ValueError(
                f"attributions for {name!r} have shape {tuple(attr.shape)}; expected (batch,"
                f" n_components) = ({n_examples}, {n_components})"
            )
        if intercept is not None and intercept.shape != (n_examples,):
            raise ValueError(
                f"intercept for {name!r} has {intercept.numel()} entries; expected one per example"
                f" ({n_examples})"
            )
        out[str(name)] = (attr, intercept, seed)
    return out


def _n_examples(inputs: Any, method: str) -> int:
    return int(check_batch(method, inputs)[0].shape[0])


def _fractions(ablation_fractions: Union[float, Sequence[float]]) -> Tuple[float, ...]:
    values = (ablation_fractions,) if isinstance(ablation_fractions, (int, float)) else ablation_fractions
    fractions = tuple(check_fraction("ablation_fractions", a) for a in values)
    if not fractions:
        raise fail("ablation_fractions", "one or more numbers in (0, 1)", ablation_fractions)
    return fractions


# ---------------------------------------------------------------------- counterfactual correlation
@keeps_model_state
def counterfactual_correlation(
    forward_func: Optional[Callable[..., Any]],
    components: ComponentSet,
    inputs: Any,
    attributions: Attributions,
    target: Any = None,
    additional_forward_args: Any = None,
    output: OutputSpec = None,
    ablation: Union[str, AblationStrategy] = "weights",
    ablation_fractions: Union[None, float, Sequence[float]] = None,
    n_masks: int = 100,
    seed: int = EVALUATION_SEED,
    sampler: Union[str, MaskSampler] = "bernoulli",
    correlation: str = "pearson",
    fit_seeds: Sequence[int] = (),
    keep_masks: bool = True,
    perturbations_per_eval: Optional[int] = None,
    max_rows: Optional[int] = None,
    show_progress: bool = False,
    baselines: Any = None,
) -> CounterfactualCorrelationResult:
    """Counterfactual correlation of one or many attribution methods (the COAR paper's metric).

    Args:
        forward_func: the model or a function of ``(*inputs, *additional_forward_args)``;
            None means ``components.model``.
        components: the components the attribution columns refer to.
        inputs: the ``batch`` examples the attributions explain.
        attributions: ``(batch, n_components)`` tensor, or ``{method name: attributions}``;
            a value may be ``(attributions, intercept)`` or a result with ``.attributions``.
        target, additional_forward_args, output, ablation: as for the attribution (use the
            same output and ablation the attributions were computed for).
        ablation_fractions: test fraction(s) ``alpha``; masks ablate each component
            independently with that probability (or as ``sampler`` says). Default 0.05, or the
            fraction of a sampler object; a value that contradicts a sampler object's fraction
            is an error.
        n_masks: held-out masks per fraction (the paper's notebooks use 100).
        seed: seed of the held-out masks. Never reuse the seed a COAR fit drew its masks
            with: a warning is raised when ``seed`` is in ``fit_seeds`` or equals the
            ``seed`` a result object given in ``attributions`` reports.
        correlation: ``"pearson"`` (the paper's) or ``"spearman"``.
        baselines: paired reference inputs shaped like ``inputs``: the held-out masks then
            patch components from the paired baseline example (use the baselines the
            attributions were computed with); ``ablation`` must stay ``"weights"``.
        keep_masks: keep the masks in the result (``n_fractions * n_masks * N`` booleans).

    Cost: one ablated forward per (mask, example) and fraction, whatever the number of
    methods, plus one unablated forward.

    Example:
        >>> import torch
        >>> from captum_coar import counterfactual_correlation, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> scores = counterfactual_correlation(
        ...     model, neurons, x, {"exact": model.effects(x, y), "noise": torch.randn(4, 7)},
        ...     target=y, output="logit", ablation_fractions=[0.2], n_masks=30)
        >>> scores.methods, round(float(scores.mean()[0, 0]), 3)    # per fraction and method
        (('exact', 'noise'), 1.0)
    """
    check_choice("correlation", correlation, _CORRELATIONS)
    check_int("n_masks", n_masks, minimum=3)  # a correlation needs three points
    forward_func = components.model if forward_func is None else forward_func
    n_examples, n_comp = _n_examples(inputs, "counterfactual_correlation"), components.n_components
    methods = _methods(attributions, n_examples, n_comp)
    if ablation_fractions is None:  # one rule: a sampler object carries its own fraction
        ablation_fractions = (sampler.ablation_fraction if isinstance(sampler, MaskSampler)
                              else 0.05)
    fractions = _fractions(ablation_fractions)
    for fraction in fractions:  # conflicting values are an error (before any forward pass)
        resolve_sampler(sampler, fraction)
    used = set(int(s) for s in fit_seeds) | {s for _, _, s in methods.values() if s is not None}
    if int(seed) in used:
        warnings.warn(
            f"counterfactual_correlation: seed={seed} is a seed the attributions were fitted with;"
            " with the same seed the test masks repeat (or nest in) the training masks, so the"
            " correlation is an in-sample score. Pass a different seed for a held-out estimate.",
            UserWarning, stacklevel=2)
    score = _CORRELATIONS[correlation]
    preflight("counterfactual_correlation", forward_func, components, inputs, target,
              additional_forward_args, resolve_output(output, target), baselines)
    common = dict(target=target, additional_forward_args=additional_forward_args, output=output,
                  ablation=ablation, perturbations_per_eval=perturbations_per_eval,
                  max_rows=max_rows)
    if baselines is not None:
        ablation = patch_strategy(ablation, input_tuple(inputs), baselines,
                                  additional_forward_args, forward_func)
    ablation = fitted_ablation(ablation, forward_func, components)
    common["ablation"] = ablation
    hooks = ComponentGates(components, ablation)
    actual, predicted, values, all_masks = [], [], [], []
    describe: Dict[str, Any] = {}
    with hooks:
        full = torch.ones(1, n_comp, dtype=torch.bool)
        unablated = evaluate_masks(forward_func, components, inputs, full, hooks=hooks,
                                   **common)[0].detach().double().cpu()
        for fraction in fractions:
            smp = resolve_sampler(sampler, fraction)
            describe = smp.describe()
            masks = smp.sample(n_comp, 0, n_masks, int(seed))
            outs = evaluate_masks(forward_func, components, inputs, masks, hooks=hooks,
                                  show_progress=show_progress, **common).detach().double().cpu()
            keep = masks.double()
            preds = []
            for attr, intercept, _ in methods.values():
                if intercept is not None:
                    preds.append(intercept[None, :] + keep @ attr.T)
                else:
                    preds.append(unablated[None, :] - (1.0 - keep) @ attr.T)
            pred = torch.stack(preds)
            actual.append(outs)
            predicted.append(pred)
            values.append(torch.stack([score(outs, p) for p in pred]))
            all_masks.append(masks)
    describe = {k: v for k, v in describe.items() if k != "ablation_fraction"}
    return CounterfactualCorrelationResult(
        ablation_fractions=fractions, methods=tuple(methods), values=torch.stack(values),
        actual=torch.stack(actual), predicted=torch.stack(predicted), unablated=unablated,
        seed=int(seed), n_masks=n_masks, correlation=correlation, sampler=describe,
        masks=torch.stack(all_masks) if keep_masks else None)


# ---------------------------------------------------------------------- top-k ablation curves
def _default_ks(n_components: int, max_fraction: float, n_steps: int) -> Tensor:
    top = max(1, int(round(max_fraction * n_components)))
    return torch.unique(torch.linspace(0, top, max(2, n_steps)).round().long())


@keeps_model_state
def topk_ablation_curve(
    forward_func: Optional[Callable[..., Any]],
    components: ComponentSet,
    inputs: Any,
    attributions: Attributions,
    target: Any = None,
    additional_forward_args: Any = None,
    output: OutputSpec = None,
    ablation: Union[str, AblationStrategy] = "weights",
    ks: Optional[Sequence[int]] = None,
    largest: bool = True,
    max_fraction: float = 0.25,
    n_steps: int = 11,
    max_rows: Optional[int] = None,
    show_progress: bool = False,
    baselines: Any = None,
) -> TopKAblationCurve:
    """Ablate the ``k`` highest (``largest=True``) or lowest attributed components per example.

    ``ks`` defaults to ``n_steps`` values from 0 to ``max_fraction * n_components``. Each
    example gets its own masks, so the cost is ``n_methods * n_k * batch`` ablated forwards,
    ``max_rows`` rows per pass. Ties in the attributions are broken by component index.
    ``baselines``: paired reference inputs; ablated components are then patched from the
    paired baseline example (``ablation`` must stay ``"weights"``).

    Example:
        >>> import torch
        >>> from captum_coar import topk_ablation_curve, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> neurons = linear_neurons(model, names=["hidden"])
        >>> effects = model.effects(x, y)
        >>> curve = topk_ablation_curve(model, neurons, x, {"exact": effects}, target=y,
        ...                             output="logit", ks=[0, 1, 7])
        >>> curve.outputs.shape                                     # methods x ks x examples
        torch.Size([1, 3, 4])
        >>> first = model(x).gather(1, y[:, None])[:, 0] - effects.max(dim=1).values
        >>> torch.allclose(curve.outputs[0, 1].float(), first, atol=1e-5)
        True
    """
    forward_func = components.model if forward_func is None else forward_func
    n_examples, n_comp = _n_examples(inputs, "topk_ablation_curve"), components.n_components
    methods = _methods(attributions, n_examples, n_comp)
    k_grid = _default_ks(n_comp, max_fraction, n_steps) if ks is None else check_integer_values("ks", ks).cpu()
    if k_grid.dim() != 1 or k_grid.numel() == 0 or k_grid.min() < 0 or k_grid.max() > n_comp:
        raise fail("ks", f"integers in [0, {n_comp}]", ks)
    output_fn = resolve_output(output, target)
    preflight("topk_ablation_curve", forward_func, components, inputs, target,
              additional_forward_args, output_fn, baselines)
    inputs_t = as_tuple(inputs)
    device = model_device(components.model)
    # Rank of every component per example and method; rank r is ablated when r < k.
    ranks = []
    for attr, _, _ in methods.values():
        order = torch.sort(attr, dim=1, descending=largest, stable=True).indices
        ranks.append(torch.empty_like(order).scatter_(
            1, order, torch.arange(n_comp).expand_as(order).clone()).to(device))
    pairs = [(m, k) for m in range(len(ranks)) for k in k_grid.tolist()]
    per_pass = rows_per_pass(n_examples, None, max_rows, device)
    results = []
    bar = progress(len(pairs) * n_examples, show_progress, "top-k ablations")
    try:
        if baselines is not None:
            ablation = patch_strategy(ablation, input_tuple(inputs), baselines,
                                      additional_forward_args, forward_func)
        strategy = fitted_ablation(ablation, forward_func, components)
        with ComponentGates(components, strategy) as hooks, torch.no_grad():
            for start in range(0, len(pairs), per_pass):
                block = pairs[start:start + per_pass]
                gates = torch.stack([(ranks[m] >= k).float() for m, k in block])  # (p, b, N)
                results.append(gated_outputs(forward_func, hooks, inputs_t,
                                             as_tuple(additional_forward_args), gates, target,
                                             output_fn))
                bar.update(len(block) * n_examples)
    finally:
        bar.close()
    outputs = torch.cat(results).detach().double().cpu().reshape(len(methods), k_grid.numel(), n_examples)
    return TopKAblationCurve(ks=k_grid, methods=tuple(methods), outputs=outputs,
                             n_components=n_comp, largest=largest)

