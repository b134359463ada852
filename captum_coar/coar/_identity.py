"""The identity of a collection: the ONE definition of what makes collected data what it is.

Contract
--------
Two pieces of collected data (a store, collected statistics, a shard, a rank's part) may be
resumed into each other, merged or fitted together exactly when their identities agree.
:data:`IDENTITY_FIELDS` lists the fields; :func:`collection_identity` builds them from resolved
settings, the scan of the data and the fitted ablation strategy; :func:`identity_differences`
compares two identities and returns one ``"field: A has ..., B has ..."`` line per field that
differs. A field present on one side and missing on the other is a difference: nothing is
skipped. :func:`check_estimator_identity` compares an estimator's side
(:data:`ESTIMATOR_FIELDS`: components, model weights, ablation), computed once per call, with
the record of data it is asked to fit.

The fields: ``format_version``; the sizes ``n_masks``, ``n_components``, ``n_examples``;
``components_fingerprint`` (the component layout), ``model_fingerprint`` (every parameter and
buffer), ``data_fingerprint`` (every batch, in order); ``sampler`` (name and ablation
fraction); ``ablation`` (name, parameters and, for strategies fitted on reference inputs, a
fingerprint of those inputs as ``fitted_on``); ``output`` (name); ``seed``; and ``probe``.

Names and reprs cannot tell two lambdas apart, so functions are identified by behaviour: the
``probe`` holds the outputs of every example of the first batch (at most
:data:`PROBE_EXAMPLES`) under three fixed gate rows -- all components kept, the first ablated,
the last ablated -- computed with the collection's forward function, output function and
fitted ablation. A changed forward function (``lambda x: model(x) * 3``), a different output
callable with the same name or an ablation fitted on other inputs changes the probe. Probes are
compared with a tolerance of :data:`PROBE_RTOL` times the largest probe magnitude (at least 1),
so the same computation on another device or with another batch layout still agrees;
non-finite probe values are recorded as they are (the collection itself reports non-finite
outputs by mask and example). A difference names the example and probe row that differ most.

A resume into a store goes further: :func:`recheck_stored_outputs` re-evaluates one stored
mask row (the first with the most examples written) on every example it holds and compares
with the stored outputs (same tolerance), so a function that differs from the store's on any
example under that mask is refused, whatever batch the example is in.

What stays undetectable: for statistics (no raw outputs kept) and merges, a function that
agrees with the original on every example of the first batch (or on the first
:data:`PROBE_EXAMPLES`) under the three probe rows but differs elsewhere; for stores, a
function that agrees on every example under the re-checked row but differs under other masks
(e.g. only when some other component is ablated); and any difference below the tolerance.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._engine import evaluate_masks
from .._pairing import check_default_ablation, use_batch
from ..ablation import AblationStrategy, PatchAblation, resolve_ablation
from ..components import ComponentSet
from ..outputs import OutputFunction
from ..stores.base import FORMAT_VERSION
from ._batches import Batch, BatchFn, split_batch
from ._fingerprint import model_fingerprint, tensor_fingerprint

__all__ = ["IDENTITY_FIELDS", "FORMAT_VERSION", "PROBE_EXAMPLES", "PROBE_RTOL",
           "collection_identity", "identity_of", "identity_differences", "describe_ablation",
           "describe_callable", "probe_outputs", "check_same_identity", "recheck_stored_outputs",
           "ESTIMATOR_FIELDS", "check_estimator_identity"]

#: Fields that must agree for data to be resumed, merged or fitted together.
IDENTITY_FIELDS = (
    "format_version",
    "n_masks",
    "n_components",
    "n_examples",
    "components_fingerprint",
    "model_fingerprint",
    "data_fingerprint",
    "sampler",
    "ablation",
    "output",
    "seed",
    "probe",
)

#: The fields an estimator can check by itself when it fits data (no data or sampler needed).
ESTIMATOR_FIELDS = ("n_components", "components_fingerprint", "model_fingerprint", "ablation")

PROBE_EXAMPLES = 256
PROBE_RTOL = 1e-3


def describe_callable(function: Callable[..., Any]) -> str:
    """A stable, human-readable name of a function or module (descriptive only, never identity)."""
    owner = function if hasattr(function, "__qualname__") else type(function)
    return f"{getattr(owner, '__module__', '?')}.{getattr(owner, '__qualname__', '?')}"


def describe_ablation(strategy: AblationStrategy) -> Dict[str, Any]:
    """The strategy's description plus, when it is fitted on reference inputs, their fingerprint."""
    description = dict(strategy.describe())
    reference = getattr(strategy, "reference_inputs", None)
    if reference is not None:
        description["fitted_on"] = tensor_fingerprint(
            [reference, getattr(strategy, "additional_forward_args", None)])
    return description


def probe_outputs(forward_func: Callable[..., Any], components: ComponentSet,
                  strategy: AblationStrategy, output: OutputFunction,
                  first_batch: Batch) -> List[List[float]]:
    """Outputs ``(3, b)`` of the first batch's ``b <= PROBE_EXAMPLES`` examples under the probe
    rows."""
    use_batch(strategy, forward_func, components, first_batch, 0)
    inputs, target, extra = first_batch
    n_rows = int(inputs[0].shape[0])
    b = min(PROBE_EXAMPLES, n_rows)
    inputs = tuple(x[:b] for x in inputs)
    extra = tuple(a[:b] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n_rows
                  else a for a in extra)
    if isinstance(target, torch.Tensor) and target.dim() > 0 and target.shape[0] == n_rows:
        target = target[:b]
    elif isinstance(target, (list, tuple)) and len(target) == n_rows:
        target = target[:b]
    N = components.n_components
    gates = torch.ones(3, N, dtype=torch.bool)
    gates[1, 0] = False
    gates[2, N - 1] = False
    values = evaluate_masks(forward_func, components, inputs, gates, target=target,
                            additional_forward_args=extra or None, output=output,
                            ablation=strategy, perturbations_per_eval=3)
    values = values.detach().double().cpu()
    return [[float(v) for v in row] for row in values.tolist()]


def collection_identity(*, components: ComponentSet, forward_func: Callable[..., Any],
                        strategy: AblationStrategy, output: OutputFunction, sampler: Any,
                        seed: int, n_masks: int, n_examples: int, data_fingerprint: Optional[str],
                        first_batch: Batch) -> Dict[str, Any]:
    """Every identity field of a collection (JSON-ready; see the module docstring)."""
    return _normalise({
        "format_version": FORMAT_VERSION,
        "n_masks": int(n_masks),
        "n_components": components.n_components,
        "n_examples": int(n_examples),
        "components_fingerprint": components.fingerprint,
        "model_fingerprint": model_fingerprint(components.model),
        "data_fingerprint": data_fingerprint,
        "sampler": sampler.describe(),
        "ablation": describe_ablation(strategy),
        "output": output.describe(),
        "seed": int(seed),
        "probe": probe_outputs(forward_func, components, strategy, output, first_batch),
    })


def recheck_stored_outputs(forward_func: Callable[..., Any], components: ComponentSet,
                           strategy: AblationStrategy, output: OutputFunction,
                           data: Iterable[Any], batch_fn: Optional[BatchFn], store: Any,
                           perturbations_per_eval: Optional[int] = None) -> None:
    """Re-evaluate the first stored row with the most examples written on every one of those
    examples; ``ValueError`` naming the example that differs most when the outputs disagree
    with the stored ones (see the module docstring)."""
    progress = store.progress()
    if progress.size == 0 or int(progress.max()) <= 0 or int(progress.max()) > store.n_examples:
        return
    row, written = int(np.argmax(progress)), int(progress.max())
    mask = store.read_masks(np.array([row]))
    stored = store.read_outputs(np.array([row]))[0, :written].double().numpy()
    parts, start = [], 0
    for batch in data:
        if start >= written:
            break
        paired = split_batch(batch, batch_fn)
        use_batch(strategy, forward_func, components, paired, start)
        inputs, target, extra = paired
        values = evaluate_masks(forward_func, components, inputs, mask, target=target,
                                additional_forward_args=extra or None, output=output,
                                ablation=strategy, perturbations_per_eval=perturbations_per_eval,
                                example_offset=start)
        parts.append(values[0].detach().double().cpu().numpy())
        start += int(inputs[0].shape[0])
    now = np.concatenate(parts)[:written]
    found = worst_difference(now, stored) if now.size == written else (written, now.size)
    if found is not None:
        count, worst = found
        raise ValueError(
            f"{store.location} holds outputs that this forward function, output function and"
            f" ablation do not reproduce: re-evaluating stored mask row {row}, {count} of its"
            f" {written} examples differ (most at example {worst}: now"
            f" {now[worst] if worst < now.size else 'missing'!r}, stored {stored[worst]!r}). The"
            " store was made with another function (one of the same name that differs on some"
            " examples), or the forward pass is not deterministic (a module in train mode,"
            " dropout). Use a new store, or the functions the store was made with")


def identity_of(record: Dict[str, Any], fields: Sequence[str] = IDENTITY_FIELDS) -> Dict[str, Any]:
    """The identity fields of a metadata or settings dict (missing ones are left out)."""
    return {key: record[key] for key in fields if key in record}


def _normalise(value: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(value, sort_keys=True))


_PROBE_ROWS = ("all kept", "first component ablated", "last component ablated")


def worst_difference(a: Any, b: Any) -> Optional[Tuple[int, int]]:
    """None when ``a`` and ``b`` agree within the probe tolerance (:data:`PROBE_RTOL` times the
    largest finite magnitude, at least 1; NaN agrees with NaN), else ``(number of values that
    differ, index of the largest difference)``."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    finite = np.concatenate([np.abs(x[np.isfinite(x)]), np.abs(y[np.isfinite(y)])])
    scale = max(1.0, float(finite.max()) if finite.size else 1.0)
    with np.errstate(invalid="ignore"):
        gap = np.where(np.isnan(x) & np.isnan(y), 0.0, np.abs(x - y))
    bad = ~(gap <= PROBE_RTOL * scale)
    if not bad.any():
        return None
    return int(bad.sum()), int(np.argmax(np.where(bad, np.nan_to_num(gap, nan=np.inf), -1.0)))


def _probe_difference(a: Any, b: Any, a_name: str, b_name: str) -> Optional[str]:
    """None when two probes agree, else a one-line description of where they differ."""
    def shape(p: Any) -> Optional[List[int]]:
        if isinstance(p, list) and all(isinstance(r, list) for r in p):
            return [len(r) for r in p]
        return None

    if shape(a) is None or shape(a) != shape(b):
        return (f"{a_name} probes {shape(a)} values per probe row, {b_name} {shape(b)} (probes"
                " of other data, or made by an older version of captum_coar that probed fewer"
                " examples: collect into a new directory)")
    flat_a = [float(v) for row in a for v in row]
    flat_b = [float(v) for row in b for v in row]
    found = worst_difference(flat_a, flat_b)
    if found is None:
        return None
    count, index = found
    width = max(1, len(a[0]))
    return (f"{count} of {len(flat_a)} values differ, most at example {index % width} of the"
            f" first batch under probe row '{_PROBE_ROWS[min(index // width, 2)]}' ({a_name}"
            f" {flat_a[index]!r}, {b_name} {flat_b[index]!r})")


def identity_differences(a: Dict[str, Any], b: Dict[str, Any], a_name: str = "given",
                         b_name: str = "stored",
                         fields: Sequence[str] = IDENTITY_FIELDS) -> List[str]:
    """One line per identity field that differs (missing on one side counts as differing)."""
    a, b = _normalise(identity_of(a, fields)), _normalise(identity_of(b, fields))
    lines = []
    for key in fields:
        if key not in a and key not in b:
            if fields is IDENTITY_FIELDS:
                lines.append(f"{key}: missing in both {a_name} and {b_name}")
            continue
        if key not in a or key not in b:
            lines.append(f"{key}: {a_name} {'has' if key in a else 'lacks'} it, {b_name}"
                         f" {'has' if key in b else 'lacks'} it")
            continue
        if key == "probe":
            found = _probe_difference(a[key], b[key], a_name, b_name)
            if found is not None:
                lines.append(f"probe: {found}{_HINTS['probe']}")
            continue
        if a[key] != b[key]:
            hint = _HINTS.get(key, "")
            lines.append(f"{key}: {a_name} {json.dumps(a[key], sort_keys=True)}, {b_name}"
                         f" {json.dumps(b[key], sort_keys=True)}{hint}")
    return lines


def check_same_identity(a: Dict[str, Any], b: Dict[str, Any], what: str, a_name: str = "given",
                        b_name: str = "stored", fields: Sequence[str] = IDENTITY_FIELDS,
                        advice: str = "") -> None:
    """Raise ``ValueError`` (``what``: one line per differing field) unless identities agree."""
    lines = identity_differences(a, b, a_name, b_name, fields)
    if lines:
        raise ValueError(f"{what}: " + "; ".join(lines) + (f". {advice}" if advice else ""))


def check_estimator_identity(components: ComponentSet, ablation: Any, record: Dict[str, Any],
                             where: str) -> None:
    """Refuse data (a store's metadata, collected statistics' settings) recorded for other
    components, model weights or ablation than an estimator's (:data:`ESTIMATOR_FIELDS`)."""
    described = describe_ablation(resolve_ablation(ablation))
    recorded = record.get("ablation")
    if isinstance(recorded, dict) and recorded.get("name") == PatchAblation.name:
        # collected with baselines=: the patch (and its baselines' fingerprint) is the data's;
        # an estimator with the default ablation fits it
        check_default_ablation(ablation)
        described = recorded
    mine = {"n_components": components.n_components,
            "components_fingerprint": components.fingerprint,
            "model_fingerprint": model_fingerprint(components.model), "ablation": described}
    check_same_identity(mine, record, f"{where} was collected differently from this estimator",
                        "estimator", "data", fields=ESTIMATOR_FIELDS,
                        advice="Fit with the model, components and ablation the data was"
                        " collected with")


_HINTS = {
    "probe": ("; the outputs of the first batch under fixed probe masks differ: the forward"
              " function, the output function or the fitted ablation computes something else,"
              " or the forward pass is not deterministic (a module in train mode, dropout)"),
    "model_fingerprint": " (the model's parameters or buffers differ)",
    "data_fingerprint": " (other examples, another order or other batches)",
    "ablation": " (another strategy, or one fitted on other reference inputs: see fitted_on)",
}
