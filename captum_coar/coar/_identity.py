"""The identity of a collection: the ONE definition of what makes collected data what it is.

Contract
--------
Two pieces of collected data (a store, collected statistics, a shard, a rank's part) may be
resumed into each other, merged or fitted together exactly when their identities agree.
:data:`IDENTITY_FIELDS` lists the fields; :func:`collection_identity` builds them from resolved
settings, the scan of the data and the fitted ablation strategy; :func:`identity_differences`
compares two identities and returns one ``"field: A has ..., B has ..."`` line per field that
differs. A field present on one side and missing on the other is a difference: nothing is
skipped.

The fields: ``format_version``; the sizes ``n_masks``, ``n_components``, ``n_examples``;
``components_fingerprint`` (the component layout), ``model_fingerprint`` (every parameter and
buffer), ``data_fingerprint`` (every batch, in order); ``sampler`` (name and ablation
fraction); ``ablation`` (name, parameters and, for strategies fitted on reference inputs, a
fingerprint of those inputs as ``fitted_on``); ``output`` (name); ``seed``; and ``probe``.

Names and reprs cannot tell two lambdas apart, so functions are identified by behaviour: the
``probe`` holds the outputs of the first examples of the data (at most :data:`PROBE_EXAMPLES`)
under three fixed gate rows -- all components kept, the first ablated, the last ablated --
computed with the collection's forward function, output function and fitted ablation. A
changed forward function (``lambda x: model(x) * 3``), a different output callable with the
same name or an ablation fitted on other inputs changes the probe. Probes are compared with a
tolerance of :data:`PROBE_RTOL` times the largest probe magnitude (at least 1), so the same
computation on another device or with another batch layout still agrees; non-finite probe
values are recorded as they are (the collection itself reports non-finite outputs by mask and
example).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .._engine import evaluate_masks
from ..ablation import AblationStrategy
from ..components import ComponentSet
from ..outputs import OutputFunction
from ..stores.base import FORMAT_VERSION
from ._batches import Batch
from ._fingerprint import model_fingerprint, tensor_fingerprint

__all__ = ["IDENTITY_FIELDS", "FORMAT_VERSION", "PROBE_EXAMPLES", "PROBE_RTOL",
           "collection_identity", "identity_of", "identity_differences", "describe_ablation",
           "describe_callable", "probe_outputs", "check_same_identity"]

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

PROBE_EXAMPLES = 2
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
    """Outputs ``(3, b)`` of the first ``b <= PROBE_EXAMPLES`` examples under the probe rows."""
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


def identity_of(record: Dict[str, Any], fields: Sequence[str] = IDENTITY_FIELDS) -> Dict[str, Any]:
    """The identity fields of a metadata or settings dict (missing ones are left out)."""
    return {key: record[key] for key in fields if key in record}


def _normalise(value: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(value, sort_keys=True))


def _probes_agree(a: Any, b: Any) -> bool:
    if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)):
        return False
    if not all(isinstance(r, list) and isinstance(s, list) and len(r) == len(s)
               for r, s in zip(a, b)):
        return False
    flat_a = [float(v) for row in a for v in row]
    flat_b = [float(v) for row in b for v in row]
    scale = max([1.0] + [abs(v) for v in flat_a + flat_b if math.isfinite(v)])
    for x, y in zip(flat_a, flat_b):
        if math.isnan(x) and math.isnan(y):
            continue
        if not abs(x - y) <= PROBE_RTOL * scale:
            return False
    return True


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
        same = _probes_agree(a[key], b[key]) if key == "probe" else a[key] == b[key]
        if not same:
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


_HINTS = {
    "probe": (" (the outputs of the first examples under fixed probe masks differ: the forward"
              " function, the output function or the fitted ablation computes something else)"),
    "model_fingerprint": " (the model's parameters or buffers differ)",
    "data_fingerprint": " (other examples, another order or other batches)",
    "ablation": " (another strategy, or one fitted on other reference inputs: see fitted_on)",
}
