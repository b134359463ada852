"""``baselines=``: paired reference inputs, checked and turned into a patching strategy.

Contract
--------
Every component method takes ``baselines`` with Captum's meaning, the reference input: a
tensor (or a tuple of tensors, one per input) shaped *exactly* like ``inputs``. Row ``e`` of
the baselines is the counterfactual of example ``e`` (a corrupted prompt, a minimally edited
image). :func:`patch_strategy` checks the pairing before any forward pass and returns a
:class:`~captum_coar.ablation.PatchAblation` with which an ablated component takes its
activation on the paired baseline example (same row, same positions).

Refused, with a message naming what was given and what is allowed (nothing is broadcast):

- a number of baselines other than the number of inputs;
- a baseline whose shape (batch size, sequence length, features) or dtype differs from its
  input's, or a floating baseline holding NaN or infinity;
- padding that differs: when the forward function is a
  :class:`~captum_coar.language_outputs.LanguageModelForward` given ``(input_ids,
  attention_mask)`` as inputs, the baseline mask must equal the input mask (positions must
  line up for "same position" to mean anything);
- an ``ablation=`` other than the default ``"weights"``: ``baselines`` already defines what
  replaces an ablated activation, and two definitions would be silently ambiguous.

At data-set scale (COAR's ``collect``, ``collect_statistics``, shards and the distributed
functions) every batch carries its own baselines (:class:`~captum_coar.coar._batches.
PairedBatch`); :class:`BatchPatchAblation` records the activations of one batch's baselines
when the collection reaches that batch (:func:`use_batch`), once per batch and pass over the
data, never once per mask. Batches with and without baselines in one data set are refused.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from ._inputs import as_tuple
from .ablation import AblationStrategy, PatchAblation, WeightAblation
from .components import ComponentGroup, ComponentSet
from .recording import record_activations

__all__ = ["paired_baselines", "patch_strategy", "check_default_ablation",
           "BatchPatchAblation", "use_batch"]


def paired_baselines(inputs: Tuple[Tensor, ...], baselines: Any,
                     forward_func: Any = None) -> Tuple[Tensor, ...]:
    """``baselines`` as a tuple of tensors pairing one to one with ``inputs`` (see module)."""
    given = as_tuple(baselines)
    if len(given) != len(inputs):
        raise ValueError(
            f"got {len(given)} baselines for {len(inputs)} inputs; baselines= pairs a reference"
            " input with every input (a tensor for a tensor, a tuple of the same length for a"
            " tuple)")
    paired = []
    for position, (x, base) in enumerate(zip(inputs, given)):
        if not isinstance(base, Tensor):
            raise TypeError(
                f"baseline {position} must be a tensor shaped like input {position}"
                f" {tuple(x.shape)}, got {type(base).__name__}; for patching, give the paired"
                " corrupted (or clean) inputs themselves")
        if tuple(base.shape) != tuple(x.shape):
            raise ValueError(
                f"baseline {position} has shape {tuple(base.shape)} but input {position} has"
                f" {tuple(x.shape)}: paired baselines need exactly the inputs' shape (the same"
                " batch size, sequence length and features; nothing is broadcast). Pad or"
                " truncate the corrupted prompts to the clean prompts' length, one per example")
        if base.dtype != x.dtype:
            raise TypeError(
                f"baseline {position} has dtype {base.dtype} but input {position} has {x.dtype};"
                " give them the same dtype")
        if base.is_floating_point() and not bool(torch.isfinite(base).all()):
            bad = int((~torch.isfinite(base)).sum())
            raise ValueError(f"baseline {position} holds {bad} NaN or infinite values")
        paired.append(base.to(x.device))
    _check_same_padding(inputs, tuple(paired), forward_func)
    return tuple(paired)


def _check_same_padding(inputs: Tuple[Tensor, ...], baselines: Tuple[Tensor, ...],
                        forward_func: Any) -> None:
    from .language_outputs import LanguageModelForward

    if not isinstance(forward_func, LanguageModelForward) or len(inputs) < 2:
        return
    mask, base_mask = inputs[1], baselines[1]
    if not torch.equal(mask, base_mask):
        rows = torch.nonzero((mask != base_mask).reshape(mask.shape[0], -1).any(dim=1))
        raise ValueError(
            f"the baselines' attention mask differs from the inputs' in rows"
            f" {rows.flatten().tolist()[:10]}: patching pairs activations at the same positions,"
            " so clean and corrupted prompts need the same padding. Tokenize them to the same"
            " length (symmetric token replacement keeps lengths equal)")


def check_default_ablation(ablation: Union[str, AblationStrategy]) -> None:
    """Refuse an explicit ablation next to ``baselines`` (two definitions of the replacement)."""
    if isinstance(ablation, WeightAblation) or ablation in ("weights", "weight"):
        return
    raise ValueError(
        f"baselines= was given together with ablation={ablation!r}: both define what replaces"
        " an ablated component (baselines: its activation on the paired baseline example)."
        " Keep the default ablation='weights' when patching, or drop baselines=")


def patch_strategy(ablation: Union[str, AblationStrategy], inputs: Tuple[Tensor, ...],
                   baselines: Any, additional_forward_args: Any,
                   forward_func: Callable[..., Any]) -> PatchAblation:
    """A :class:`PatchAblation` for checked ``baselines`` (not yet fitted)."""
    check_default_ablation(ablation)
    paired = paired_baselines(inputs, baselines, forward_func)
    extra = as_tuple(additional_forward_args)
    return PatchAblation(paired if len(paired) > 1 else paired[0], extra or None)


class BatchPatchAblation(AblationStrategy):
    """Patching at data-set scale: the baselines of the batch being evaluated.

    :func:`use_batch` records the current batch's baseline activations (and the global index
    of its first example); :meth:`replacement` returns those of the rows' examples. Its
    identity is the data's: the data fingerprint covers every batch's baselines.
    """

    name = "patch"

    def __init__(self) -> None:
        self._recorded: Optional[Dict[Tuple[str, str], Tensor]] = None
        self._first = 0

    def record(self, forward_func: Callable[..., Any], components: ComponentSet,
               baselines: Tuple[Tensor, ...], extra: Tuple[Any, ...], first_example: int) -> None:
        """Record every site's activation on one batch's ``baselines`` (one forward pass)."""
        self._recorded = record_activations(forward_func, components, baselines,
                                            additional_forward_args=extra or None,
                                            batch_size=int(baselines[0].shape[0]))
        self._first = int(first_example)

    def replacement(self, group: ComponentGroup, module: Any, activation: Tensor,
                    example_index: Optional[Tensor] = None) -> Tensor:
        if self._recorded is None:
            raise RuntimeError("BatchPatchAblation used before a batch's baselines were"
                               " recorded (use_batch)")
        reference = self._recorded[(group.module_name, group.site)]
        local = (torch.arange(activation.shape[0]) if example_index is None
                 else example_index.to(reference.device) - self._first)
        if bool((local < 0).any()) or bool((local >= reference.shape[0]).any()) or (
                tuple(reference.shape[1:]) != tuple(activation.shape[1:])):
            raise ValueError(
                f"patching at {group.module_name!r}: the rows refer to examples outside the"
                f" batch whose baselines were recorded (examples {self._first} .."
                f" {self._first + reference.shape[0] - 1}), or the shapes differ"
                f" ({tuple(reference.shape)} vs {tuple(activation.shape)})")
        return reference[local].to(activation.device, activation.dtype)

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "baselines": "per batch (in the data fingerprint)"}


def use_batch(strategy: AblationStrategy, forward_func: Callable[..., Any],
              components: ComponentSet, batch: Any, first_example: int) -> None:
    """Before evaluating ``batch`` (a :class:`~captum_coar.coar._batches.PairedBatch`): check
    its baselines and record them when ``strategy`` patches per batch; refuse a data set that
    mixes batches with and without baselines."""
    baselines = getattr(batch, "baselines", None)
    if not isinstance(strategy, BatchPatchAblation):
        if baselines is not None:
            raise ValueError(
                f"the batch starting at example {first_example} carries baselines but the"
                " first batch did not; give baselines with every batch or with none")
        return
    if baselines is None:
        raise ValueError(
            f"the batch starting at example {first_example} has no baselines but the first"
            " batch did; give baselines with every batch or with none")
    inputs, _, extra = batch
    paired = paired_baselines(inputs, baselines, forward_func)
    strategy.record(forward_func, components, paired, extra, first_example)
