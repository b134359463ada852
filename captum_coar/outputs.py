"""Output functions: the scalar per example that component attribution explains.

Contract
--------
An output function maps ``(model_output, target) -> Tensor (batch,)``. ``model_output`` is
whatever the forward function returns; a Hugging Face output object contributes its
``logits`` and a tuple its first element. ``target`` is None, an int, a sequence or a tensor
with one entry per row (class indices), or for :class:`SequenceMargin` the token ids
``(batch, seq_len)``.

Implementations (names accepted by :func:`resolve_output`):

- ``"margin"``: correct-class margin, logit of the target minus the largest other logit
  (the COAR paper's output);
- ``"logit"``: the target's logit (or the output itself when it is one number per row);
- ``"log_prob"``: log-softmax probability of the target;
- ``"loss"``: cross-entropy of the target (higher = worse);
- ``"sequence_margin"``: mean next-token margin over a sequence: at position ``t`` the logit of
  token ``target[t + 1]`` minus the largest other logit, averaged over all positions; pass
  ``SequenceMargin(start=s)`` to average only from position ``s`` (e.g. a repeated half);
  averaged over real tokens only when the model output carries an ``attention_mask``;
- any callable ``f(model_output, target) -> (batch,)``.

Language-model outputs (``"token_log_prob"``, ``"continuation_log_prob"``,
``"logit_difference"``) live in :mod:`captum_coar.language_outputs` and register here. The
one-class-per-row outputs refuse logits ``(batch, seq_len, vocab)`` with a message naming them
(:func:`class_logits`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import Tensor

from ._checks import check_integer_values, fail
from ._registry import Registry

__all__ = ["OutputFunction", "Margin", "Logit", "LogProb", "Loss", "SequenceMargin",
           "CallableOutput", "resolve_output", "logits_of", "class_logits", "OUTPUTS",
           "SEQUENCE_OUTPUTS"]


def logits_of(model_output: Any) -> Tensor:
    """The logits tensor inside a model output (tensor, tuple, or object with ``.logits``)."""
    if isinstance(model_output, Tensor):
        return model_output
    if hasattr(model_output, "logits"):
        return model_output.logits
    if isinstance(model_output, (tuple, list)) and model_output and isinstance(model_output[0], Tensor):
        return model_output[0]
    raise TypeError(
        f"cannot read logits from a model output of type {type(model_output).__name__}; expected a"
        " tensor, a tuple whose first item is a tensor, or an object with .logits"
    )


#: names of the outputs that score sequences (language models); :mod:`language_outputs` adds its own
SEQUENCE_OUTPUTS: List[str] = ["sequence_margin"]


def class_logits(model_output: Any, name: str) -> Tensor:
    """``logits_of(model_output)`` for an output that scores one class per row.

    Logits ``(batch, seq_len, vocab)`` (a language model) raise a ``ValueError`` that names the
    language-model outputs, instead of an indexing error deep in ``gather``.
    """
    logits = logits_of(model_output)
    if logits.dim() == 3:
        raise fail("output", f"a language-model output, one of {SEQUENCE_OUTPUTS}, for logits of"
                   f" shape (batch, seq_len, vocab) = {tuple(logits.shape)}", name,
                   f"{name!r} scores one class per row; e.g. output='token_log_prob' with"
                   " target = the next token id per row (captum_coar.language_outputs)")
    return logits


def target_tensor(target: Any, n_rows: int, device: torch.device, name: str) -> Tensor:
    """Class indices ``(n_rows,)`` from an int, a sequence or a tensor."""
    if target is None:
        alternative = ("a callable output" if name == "logit" else
                       "output='logit' for a model with one output per example, or a callable")
        raise ValueError(
            f"output={name!r} needs a target (the class index per example) for a model with"
            f" several outputs per example; pass target=..., or use {alternative}"
        )
    t = check_integer_values("target", target).to(device)  # 1.7 is refused, never truncated
    if t.dim() == 0:
        t = t.expand(n_rows)
    t = t.reshape(-1)
    if t.numel() != n_rows:
        raise ValueError(f"target has {t.numel()} entries but the batch has {n_rows} rows")
    return t


class OutputFunction:
    """Base class. Subclasses implement ``__call__(model_output, target) -> (batch,)``."""

    name = "output"
    needs_target = True

    def __call__(self, model_output: Any, target: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Margin(OutputFunction):
    """Logit of the target class minus the largest other logit.

    Example:
        >>> import torch
        >>> from captum_coar import Margin
        >>> logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
        >>> Margin()(logits, torch.tensor([0, 2]))                  # 2 - 1 and -1 - 3
        tensor([ 1., -4.])
    """

    name = "margin"

    def __call__(self, model_output, target):
        logits = class_logits(model_output, self.name)
        t = target_tensor(target, logits.shape[0], logits.device, self.name)
        correct = logits.gather(1, t[:, None]).squeeze(1)
        others = logits.scatter(1, t[:, None], float("-inf"))
        return correct - others.max(dim=1).values


class Logit(OutputFunction):
    """The target's logit; the output itself when the model gives one number per row."""

    name = "logit"
    needs_target = False

    def __call__(self, model_output, target):
        logits = class_logits(model_output, self.name)
        if logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1 and target is None):
            return logits.reshape(-1)
        t = target_tensor(target, logits.shape[0], logits.device, self.name)
        return logits.gather(1, t[:, None]).squeeze(1)


class LogProb(OutputFunction):
    """Log-softmax probability of the target class."""

    name = "log_prob"

    def __call__(self, model_output, target):
        logits = class_logits(model_output, self.name)
        t = target_tensor(target, logits.shape[0], logits.device, self.name)
        return torch.log_softmax(logits, dim=1).gather(1, t[:, None]).squeeze(1)


class Loss(OutputFunction):
    """Cross-entropy loss of the target class, per example."""

    name = "loss"

    def __call__(self, model_output, target):
        logits = class_logits(model_output, self.name)
        t = target_tensor(target, logits.shape[0], logits.device, self.name)
        return torch.nn.functional.cross_entropy(logits, t, reduction="none")


class SequenceMargin(OutputFunction):
    """Mean next-token margin of a language model over a sequence.

    ``target`` holds the token ids ``(batch, seq_len)`` (usually the input ids); the logits at
    position ``t`` are scored on token ``target[:, t + 1]``.

    Args:
        start: first predicting position to include (e.g. the start of a repeated half);
            positions ``start .. seq_len - 2`` are averaged.

    Example:
        >>> import torch
        >>> from captum_coar import SequenceMargin
        >>> logits = torch.zeros(1, 3, 4)
        >>> logits[0, 0, 2] = logits[0, 1, 3] = 1.0       # position t predicts token t + 1 by 1
        >>> SequenceMargin()(logits, torch.tensor([[0, 2, 3]]))
        tensor([1.])
    """

    name = "sequence_margin"

    def __init__(self, start: int = 0) -> None:
        self.start = start

    def __call__(self, model_output, target):
        logits = logits_of(model_output)
        if target is None or torch.as_tensor(target).dim() != 2:
            raise ValueError(
                "output='sequence_margin' needs target = token ids of shape (batch, seq_len);"
                f" got {None if target is None else tuple(torch.as_tensor(target).shape)}"
            )
        if logits.dim() != 3:
            raise ValueError(f"sequence_margin expects logits (batch, seq_len, vocab), got {tuple(logits.shape)}")
        tokens = torch.as_tensor(target, device=logits.device).long()
        predicting = logits[:, self.start:-1]
        nxt = tokens[:, self.start + 1:]
        correct = predicting.gather(2, nxt[..., None]).squeeze(2)
        others = predicting.scatter(2, nxt[..., None], float("-inf")).max(dim=2).values
        mask = getattr(model_output, "attention_mask", None)
        if mask is None:
            return (correct - others).mean(dim=1)
        # padding-aware: only pairs (t, t + 1) of real tokens count
        real = mask.to(logits.device).bool()
        pairs = (real[:, self.start:-1] & real[:, self.start + 1:]).to(logits.dtype)
        counts = pairs.sum(dim=1)
        if bool((counts == 0).any()):
            raise ValueError("output='sequence_margin' found a row with no pair of consecutive"
                             " real tokens after `start`; every row needs at least two")
        return ((correct - others) * pairs).sum(dim=1) / counts

    def describe(self):
        return {"name": self.name, "start": self.start}


class CallableOutput(OutputFunction):
    """Wraps a user callable ``f(model_output, target) -> (batch,)``."""

    needs_target = False

    def __init__(self, function: Callable[[Any, Any], Tensor]) -> None:
        self.function = function
        self.name = getattr(function, "__name__", type(function).__name__)

    def __call__(self, model_output, target):
        values = self.function(model_output, target)
        if not isinstance(values, Tensor) or values.dim() != 1:
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"output function {self.name!r} must return a 1-d tensor (batch,), got {shape}")
        return values

    def describe(self):
        return {"name": f"callable:{self.name}"}


OUTPUTS: Registry[OutputFunction] = Registry("output", OutputFunction, "Margin(), SequenceMargin(start=...)")
OUTPUTS.register("margin", Margin)
OUTPUTS.register("logit", Logit)
OUTPUTS.register("log_prob", LogProb, "logprob")
OUTPUTS.register("loss", Loss)
OUTPUTS.register("sequence_margin", SequenceMargin)


def resolve_output(output: Union[str, OutputFunction, Callable[[Any, Any], Tensor], None],
                   target: Optional[Any] = None) -> OutputFunction:
    """An :class:`OutputFunction` from a name, an instance or a callable.

    ``None`` means ``"margin"`` when a target is given, else ``"logit"``. A plain callable
    ``f(model_output, target) -> (rows,)`` is wrapped in a :class:`CallableOutput`.
    """
    if output is None:
        output = "margin" if target is not None else "logit"
    if callable(output) and not isinstance(output, (str, OutputFunction)):
        return CallableOutput(output)
    return OUTPUTS.resolve(output)
