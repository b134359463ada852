"""Preflight: what every public entry point checks before the first forward pass of the gated
model, so that every method refuses the same things with the same messages.

Contract
--------
:func:`preflight` takes the forward function, the components, one batch (``inputs``,
``target``, ``additional_forward_args``), the resolved output function and the method's
name, and raises ``ValueError`` naming the problem (``TypeError`` for inputs that are not
tensors) when:

1. the batch is empty (no rows on dim 0);
2. a floating input holds NaN or infinite values: the message names the input, the counts
   and the first rows (:func:`check_finite_inputs`); paired baselines are checked (shape,
   dtype, finite values) as :func:`~captum_coar._pairing.paired_baselines` does;
3. a module is in training mode where training mode is random or mixes the rows of a batch
   (dropout of any kind, batch norm, ``RReLU``, attention with dropout > 0, a float
   ``*dropout*`` / ``drop_prob`` attribute > 0): :func:`random_in_training` names them. A
   model in training mode without such modules is accepted;
4. a target lies outside the model's classes (``margin``, ``logit``, ``log_prob``,
   ``loss``: ``[0, n_classes)``) or vocabulary (the language-model outputs: ``[0,
   vocab_size)``, ``-100`` padding allowed); every row's target is checked, the number of
   classes read off the probe's output;
5. the probe disagrees: the first :data:`PROBE_ROWS` rows run TWICE through the ungated model
   (``torch.no_grad()``, a fresh copy of the rows each time) and the model outputs (the
   logits; the output function's values when the output holds no tensor) must agree to
   ``1e-5`` of the largest of them; otherwise the message names every module in training
   mode, or says that none is and the forward function itself is random. A random output
   function (e.g. noise added on purpose) is the caller's choice and is not probed;
6. the probe's output values are not finite, or their magnitude exceeds :data:`OVERFLOW`
   (``sqrt`` of float32's largest value, so squares and sums of outputs, the statistics and
   the attributions stay finite in float32).

Cost: at most two forward passes of :data:`PROBE_ROWS` rows without gradients, plus one pass
over the inputs and targets on their device; nothing is written (the rows are copied). It
returns a :class:`Preflight` whose :meth:`~Preflight.check_target` checks the targets of
later batches (collection over several batches) against the same class count.

The probe compares values, so noise below ``1e-5`` relative goes unnoticed, and randomness
that happens to repeat (a generator reseeded inside ``forward``) passes; the rows after the
first :data:`PROBE_ROWS` are checked for finite outputs by each method when it computes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._checks import check_integer_values
from ._inputs import input_tuple, slice_rows, slice_target
from ._pairing import paired_baselines
from .components import ComponentSet
from .language_outputs import (
    IGNORE,
    ContinuationLogProb,
    LogitDifference,
    TokenLogProb,
)
from .outputs import Logit, LogProb, Loss, Margin, OutputFunction, SequenceMargin, logits_of

__all__ = ["PROBE_ROWS", "OVERFLOW", "Preflight", "preflight", "check_batch",
           "check_finite_inputs", "random_in_training", "check_finite_result"]

#: Rows run twice by the determinism probe.
PROBE_ROWS = 2
#: Largest output magnitude accepted: sqrt(float32 max) ~ 1.8e19.
OVERFLOW = math.sqrt(torch.finfo(torch.float32).max)
_AGREEMENT = 1e-5

_CLASS_OUTPUTS = (Margin, Logit, LogProb, Loss)
_TOKEN_OUTPUTS = (TokenLogProb, LogitDifference, ContinuationLogProb, SequenceMargin)


def _rows(mask: Tensor) -> List[int]:
    flat = mask.reshape(mask.shape[0], -1).any(dim=1) if mask.dim() > 1 else mask
    return torch.nonzero(flat).reshape(-1)[:5].tolist()


def check_batch(method: str, inputs: Any, name: str = "inputs") -> Tuple[Tensor, ...]:
    """``inputs`` as a tuple of tensors with at least one row (``ValueError`` when empty)."""
    inputs_t = input_tuple(inputs)
    if inputs_t[0].shape[0] == 0:
        raise ValueError(f"{method}: `{name}` must hold at least one example on dim 0; got an"
                         f" empty batch, shapes {[tuple(x.shape) for x in inputs_t]}")
    return inputs_t


def check_finite_inputs(method: str, inputs: Sequence[Any], name: str = "inputs") -> None:
    """Refuse floating tensors with NaN or infinite values, naming the tensor and the count."""
    for position, x in enumerate(inputs):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            continue
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
            label = name if len(inputs) == 1 else f"{name}[{position}]"
            raise ValueError(
                f"{method}: `{label}` must be finite; got {n_nan} NaN and {n_inf} infinite"
                f" value(s) in {label} (shape {tuple(x.shape)}), in rows {_rows(bad)}"
                f"{' ...' if int(bad.reshape(x.shape[0], -1).any(1).sum()) > 5 else ''}: every"
                " output and attribution of such a row would be NaN or infinite. Remove or"
                " repair these rows")


def _random_kind(module: nn.Module) -> Optional[str]:
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return "dropout" if module.p > 0 else None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batch norm: normalises with the statistics of the batch"
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return "instance norm tracking running statistics" if module.track_running_stats else None
    if isinstance(module, nn.RReLU):
        return "random leaky slope"
    for attribute in ("dropout", "attention_dropout", "attn_dropout", "drop_prob", "p_dropout"):
        value = getattr(module, attribute, None)
        if isinstance(value, float) and value > 0:
            return f"{attribute}={value}"
    return None


def random_in_training(model: nn.Module) -> List[str]:
    """``"name (Type: why)"`` of every module in training mode whose output is then random or
    depends on the other rows of the batch."""
    found = []
    for name, module in model.named_modules():
        kind = _random_kind(module) if module.training else None
        if kind is not None:
            found.append(f"{name or '<model>'!r} ({type(module).__name__}: {kind})")
    return found


def _in_training(model: nn.Module) -> List[str]:
    return [repr(name or "<model>") for name, module in model.named_modules() if module.training]


def _shown(names: List[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _class_count(output_fn: Optional[OutputFunction], raw: Any, target: Any
                 ) -> Optional[Tuple[int, str]]:
    if not isinstance(output_fn, _CLASS_OUTPUTS + _TOKEN_OUTPUTS) or target is None:
        return None
    try:
        logits = logits_of(raw)
    except TypeError:
        return None
    if isinstance(output_fn, _CLASS_OUTPUTS) and logits.dim() == 2:
        if isinstance(output_fn, Logit) and logits.shape[1] == 1:
            return None
        return int(logits.shape[1]), "n_classes"
    if isinstance(output_fn, _TOKEN_OUTPUTS) and logits.dim() == 3:
        return int(logits.shape[-1]), "vocab_size"
    return None


@dataclass
class Preflight:
    """What the preflight learnt: the batch size and the class count targets must respect."""

    method: str
    n_examples: int
    output_name: Optional[str] = None
    classes: Optional[Tuple[int, str]] = None

    def check_target(self, target: Any, first_row: int = 0) -> None:
        """Refuse targets outside ``[0, n_classes)`` (or the vocabulary), naming rows and values."""
        if self.classes is None or target is None:
            return
        count, kind = self.classes
        values = check_integer_values("target", target)
        bad = (values < 0) | (values >= count)
        if kind == "vocab_size":
            bad &= values != IGNORE
        if not bool(bad.any()):
            return
        what = "class indices" if kind == "n_classes" else "token ids (or -100 padding)"
        shown = values[bad].unique()[:5].tolist()
        rows = [first_row + r for r in _rows(bad)] if values.dim() > 0 else "all"
        raise ValueError(
            f"{self.method}: `target` must hold {what} in [0, {kind}) = [0, {count}) for"
            f" output={self.output_name!r}, {kind} read off the model's output; got {shown} at"
            f" rows {rows}. No ablated forward pass was run")


def _copy_rows(inputs: Tuple[Tensor, ...], extra: Any, rows: slice, n_rows: int
               ) -> Tuple[Tuple[Tensor, ...], Tuple[Any, ...]]:
    batch, batch_extra = slice_rows(inputs, extra, rows, n_rows)
    return (tuple(x.clone() for x in batch),
            tuple(a.clone() if isinstance(a, Tensor) else a for a in batch_extra))


def _model_values(raw: Any) -> Optional[Tensor]:
    try:
        return logits_of(raw).detach()
    except TypeError:
        return None


def _check_values(method: str, values: Tensor, name: str) -> None:
    values = values.double()
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise ValueError(
            f"{method}: the output {name!r} of the model WITHOUT ablation is not finite for"
            f" example(s) {_rows(bad)} (values {values[bad][:5].tolist()}); no attribution of"
            " these examples can be finite. Check the model, the inputs and the output function"
            " (e.g. log of a zero probability)")
    largest = float(values.abs().max()) if values.numel() else 0.0
    if largest > OVERFLOW:
        raise ValueError(
            f"{method}: the output {name!r} of the model reaches {largest:.3g} in magnitude,"
            f" beyond {OVERFLOW:.3g} (the square root of float32's largest value), where"
            " squares and sums of outputs in the statistics, and attributions in float32,"
            " overflow to infinity. Rescale the output (e.g. a callable output divided by a"
            " constant)")


def _check_agreement(method: str, model: nn.Module, first: Tensor, second: Tensor,
                     n_rows: int) -> None:
    if first.shape == second.shape:
        a, b = first.double(), second.double()
        same_nan = bool((a.isnan() == b.isnan()).all())
        finite = torch.isfinite(a) & torch.isfinite(b)
        scale = float(a[finite].abs().max()) if bool(finite.any()) else 0.0
        gap = float((a - b)[finite].abs().max()) if bool(finite.any()) else 0.0
        if same_nan and gap <= _AGREEMENT * scale:
            return
        differ = f"outputs differing by up to {gap:.3g} (largest output {scale:.3g})"
    else:
        differ = f"outputs of shapes {tuple(first.shape)} and {tuple(second.shape)}"
    training = _in_training(model)
    why = (f"modules in training mode: {_shown(training)}; call model.eval() (eval mode)"
           if training else "no module is in training mode, so the forward function itself is"
           " random (torch.rand, F.dropout(training=True), random augmentation): make it"
           " deterministic")
    raise ValueError(
        f"{method}: the forward function is not deterministic: the same {n_rows} example(s)"
        f" run twice without ablation gave {differ}. Every ablated output would carry this"
        f" noise; {why}")


def preflight(method: str, forward_func: Callable[..., Any], components: ComponentSet,
              inputs: Any, target: Any = None, additional_forward_args: Any = None,
              output_fn: Optional[OutputFunction] = None, baselines: Any = None,
              probe: bool = True, input_name: str = "inputs") -> Preflight:
    """Check one batch before the first gated forward pass (see the module docs).

    Args:
        method: the entry point's name, which every message starts with.
        output_fn: the resolved output function; None compares the model outputs (logits).
        baselines: paired reference inputs, checked as :func:`~captum_coar._pairing.
            paired_baselines` does (shape, dtype, finite values).
        probe: False runs the checks without a forward pass (1-3 only).
        input_name: how messages call ``inputs``.

    Returns:
        a :class:`Preflight` (batch size and class count).
    """
    inputs_t = check_batch(method, inputs, input_name)
    check_finite_inputs(method, inputs_t, input_name)
    if baselines is not None:  # shapes, dtypes, finite values (no forward pass)
        paired_baselines(inputs_t, baselines, forward_func)
    model = components.model
    noisy = random_in_training(model)
    if noisy:
        raise ValueError(
            f"{method}: {len(noisy)} module(s) are in training mode, where they are random or"
            f" mix the examples of a batch: {_shown(noisy)}. Every ablated output would carry"
            " that noise (or depend on the other rows); put the model in eval mode"
            " (model.eval()) before attributing")
    n_rows = int(inputs_t[0].shape[0])
    report = Preflight(method, n_rows, getattr(output_fn, "name", None))
    if not probe:
        return report
    rows = slice(0, min(n_rows, PROBE_ROWS))
    probe_target = slice_target(target, rows, n_rows)
    with torch.no_grad():
        first_raw = forward_func(*sum(_copy_rows(inputs_t, additional_forward_args, rows,
                                                 n_rows), ()))
        report.classes = _class_count(output_fn, first_raw, target)
        report.check_target(target)
        second_raw = forward_func(*sum(_copy_rows(inputs_t, additional_forward_args, rows,
                                                  n_rows), ()))
        first, second = _model_values(first_raw), _model_values(second_raw)
        if (first is None or second is None) and output_fn is not None:
            first, second = (output_fn(first_raw, probe_target).detach(),
                             output_fn(second_raw, probe_target).detach())
        if first is not None and second is not None:
            _check_agreement(method, model, first, second, rows.stop)
        if output_fn is not None:  # raw logits may hold -inf on purpose (masked tokens)
            _check_values(method, output_fn(first_raw, probe_target).detach(), output_fn.name)
    return report


def check_finite_result(method: str, attributions: Tensor) -> Tensor:
    """``attributions`` when finite; ``ValueError`` naming the examples otherwise."""
    bad = ~torch.isfinite(attributions)
    if bool(bad.any()):
        raise ValueError(
            f"{method}: the attributions are not finite for example(s) {_rows(bad)}"
            f" ({int(bad.sum())} entries): the model's output (ablated or not) overflows or is"
            " NaN there. The preflight checks the first"
            f" {PROBE_ROWS} examples only; check these examples and the output function")
    return attributions
