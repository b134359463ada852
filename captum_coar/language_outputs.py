"""Language-model outputs: scores of next tokens at the last real position, padding-aware.

Contract
--------
A language model maps token ids ``(batch, seq_len)`` to logits ``(batch, seq_len, vocab)``;
the logits at position ``t`` predict the token at ``t + 1``. With padding, the last *real*
position of a row is the last position where ``attention_mask`` is 1, with left or right
padding alike. :class:`LanguageModelForward` wraps a model so that Captum-style inputs
``(input_ids, attention_mask)`` (as a tokenizer produces them, passed as a tuple of inputs or
with the mask in ``additional_forward_args``) run it, with ``position_ids`` computed from the
mask when the model takes them (so a left-padded row scores as it does unpadded), and return
a :class:`LanguageModelOutput` that carries the logits, the mask and the ids to the output
function. Every output here also takes a bare logits tensor or a Hugging Face output (no
mask: the last position is the last real one).

Implementations (names registered in :data:`captum_coar.outputs.OUTPUTS`):

- ``"token_log_prob"`` (:class:`TokenLogProb`): ``log p(target | prefix)`` at the last real
  position; ``target`` = one token id per row.
- ``"continuation_log_prob"`` (:class:`ContinuationLogProb`): summed log-probability of a
  multi-token continuation that ends the real part of each row; ``target`` =
  ``(batch, max_len)`` continuation ids, each row left-aligned and padded with ``-100``.
- ``"logit_difference"`` (:class:`LogitDifference`): logit of an answer token minus that of a
  distractor at the last real position (the usual patching metric); ``target`` =
  ``(batch, 2)`` as ``[answer, distractor]``.
- ``"answer_probability"`` (:class:`AnswerProbability`): ``p(target | prefix)`` at the last
  real position, the bounded patching metric; ``target`` = one token id per row.
- ``"sequence_margin"``: :class:`captum_coar.outputs.SequenceMargin`, averaged over real
  positions when the output carries a mask.

Outputs that expect one class per row (``margin``, ``logit``, ``log_prob``, ``loss``) refuse
``(batch, seq_len, vocab)`` logits with a message naming these outputs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ._checks import check_integer_values, fail
from .outputs import OUTPUTS, SEQUENCE_OUTPUTS, OutputFunction, logits_of

__all__ = ["LanguageModelOutput", "LanguageModelForward", "TokenLogProb",
           "ContinuationLogProb", "LogitDifference", "AnswerProbability", "last_positions"]

IGNORE = -100


@dataclass
class LanguageModelOutput:
    """Logits ``(batch, seq_len, vocab)`` with the attention mask and ids that produced them."""

    logits: Tensor
    attention_mask: Optional[Tensor] = None
    input_ids: Optional[Tensor] = None


class LanguageModelForward:
    """``forward(input_ids, attention_mask=None) -> LanguageModelOutput`` for a causal LM.

    Args:
        model: a model called as ``model(input_ids=..., attention_mask=...)`` that returns
            logits or an object with ``.logits``.
        position_ids: ``"auto"`` passes ``cumsum(attention_mask) - 1`` when the model's forward
            takes ``position_ids`` (left padding then scores like no padding); ``False`` never.
    """

    def __init__(self, model: nn.Module, position_ids: Any = "auto") -> None:
        if position_ids not in ("auto", False):
            raise fail("position_ids", "'auto' or False", position_ids)
        self.model = model
        self.position_ids = position_ids
        try:
            names = set(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            names = set()
        self._takes_positions = "position_ids" in names

    def __call__(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None
                 ) -> LanguageModelOutput:
        kwargs = {}
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise fail("attention_mask", f"a tensor shaped like input_ids {tuple(input_ids.shape)}",
                           attention_mask)
            kwargs["attention_mask"] = attention_mask
            if self.position_ids == "auto" and self._takes_positions:
                kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = logits_of(self.model(input_ids=input_ids, **kwargs))
        return LanguageModelOutput(logits, attention_mask, input_ids)


def _sequence_logits(model_output: Any, name: str) -> Tensor:
    logits = logits_of(model_output)
    if logits.dim() != 3:
        raise fail("logits", f"(batch, seq_len, vocab) for output={name!r}", logits,
                   "use 'margin', 'logit' or 'log_prob' for one class score per row")
    return logits


def last_positions(model_output: Any, logits: Tensor) -> Tensor:
    """The last real position of every row (``attention_mask`` 1), or ``seq_len - 1``."""
    mask = getattr(model_output, "attention_mask", None)
    n_rows, seq_len = logits.shape[:2]
    if mask is None:
        return torch.full((n_rows,), seq_len - 1, dtype=torch.long, device=logits.device)
    mask = mask.to(logits.device)
    positions = torch.arange(seq_len, device=logits.device).expand(n_rows, -1)
    last = torch.where(mask > 0, positions, -1).max(dim=1).values
    if bool((last < 0).any()):
        empty = torch.nonzero(last < 0).flatten().tolist()
        raise fail("attention_mask", "at least one real (1) position per row", mask,
                   f"rows {empty[:5]} are all padding")
    return last


def _row_targets(target: Any, n_rows: int, name: str, width: Optional[int] = None) -> Tensor:
    if target is None:
        shape = "one token id per row" if width is None else f"(batch, {width}) token ids"
        raise fail("target", f"{shape} for output={name!r}", target)
    t = check_integer_values("target", target)
    if width is None:
        t = t.expand(n_rows) if t.dim() == 0 else t.reshape(-1)
        if t.numel() != n_rows:
            raise fail("target", f"one token id per row ({n_rows}) for output={name!r}", target)
    elif t.dim() != 2 or t.shape[0] != n_rows or (width > 0 and t.shape[1] != width):
        raise fail("target", f"a (batch={n_rows}, {width if width > 0 else 'length'}) tensor"
                   f" of token ids for output={name!r}", target)
    return t


class TokenLogProb(OutputFunction):
    """``log p(target | prefix)`` of the next token at the last real position."""

    name = "token_log_prob"

    def __call__(self, model_output: Any, target: Any) -> Tensor:
        logits = _sequence_logits(model_output, self.name)
        t = _row_targets(target, logits.shape[0], self.name).to(logits.device)
        rows = torch.arange(logits.shape[0], device=logits.device)
        final = logits[rows, last_positions(model_output, logits)]
        return torch.log_softmax(final, dim=-1).gather(1, t[:, None]).squeeze(1)


class LogitDifference(OutputFunction):
    """Logit of the answer minus that of the distractor, at the last real position."""

    name = "logit_difference"

    def __call__(self, model_output: Any, target: Any) -> Tensor:
        logits = _sequence_logits(model_output, self.name)
        t = _row_targets(target, logits.shape[0], self.name, width=2).to(logits.device)
        rows = torch.arange(logits.shape[0], device=logits.device)
        final = logits[rows, last_positions(model_output, logits)]
        pair = final.gather(1, t)
        return pair[:, 0] - pair[:, 1]


class AnswerProbability(TokenLogProb):
    """``p(target | prefix)``: the probability of the answer token at the last real position.

    The probability metric of activation patching (bounded in [0, 1], unlike the logit
    difference); ``target`` = one answer token id per row.
    """

    name = "answer_probability"

    def __call__(self, model_output: Any, target: Any) -> Tensor:
        return super().__call__(model_output, target).exp()


class ContinuationLogProb(OutputFunction):
    """Summed log-probability of the continuation that ends each row's real tokens.

    ``target[i]`` holds row ``i``'s continuation ids left-aligned, padded with ``-100``; the
    continuation's ``n`` tokens are the last ``n`` real tokens of the row, each scored by the
    logits of the position before it. When the output carries the input ids they must equal
    the continuation (otherwise ``ValueError``).

    Args:
        mean: average over the continuation's tokens instead of summing.
    """

    name = "continuation_log_prob"

    def __init__(self, mean: bool = False) -> None:
        self.mean = mean

    def __call__(self, model_output: Any, target: Any) -> Tensor:
        logits = _sequence_logits(model_output, self.name)
        n_rows, seq_len = logits.shape[:2]
        t = _row_targets(target, n_rows, self.name, width=0).to(logits.device)
        valid = t != IGNORE
        counts = valid.sum(dim=1)
        if bool((counts < 1).any()) or bool((valid[:, 1:] & ~valid[:, :-1]).any()):
            raise fail("target", "continuation ids left-aligned in each row, padded on the right"
                       f" with {IGNORE}, at least one per row", target)
        last = last_positions(model_output, logits)
        offsets = torch.arange(t.shape[1], device=logits.device)
        # token j of the continuation sits at position last - count + 1 + j
        token_pos = last[:, None] - counts[:, None] + 1 + offsets
        mask = getattr(model_output, "attention_mask", None)
        first_real = (torch.zeros_like(last) if mask is None else
                      torch.where(mask.to(logits.device) > 0,
                                  torch.arange(seq_len, device=logits.device), seq_len)
                      .min(dim=1).values)
        if bool(((token_pos <= first_real[:, None]) & valid).any()):
            raise fail("target", "continuations shorter than each row's real tokens (the first"
                       " real token has no prediction)", target)
        ids = getattr(model_output, "input_ids", None)
        safe_pos = token_pos.clamp(0, seq_len - 1)
        safe_tok = t.clamp(min=0)
        if ids is not None:
            actual = ids.to(logits.device).gather(1, safe_pos)
            if bool(((actual != safe_tok) & valid).any()):
                raise fail("target", "the continuation that ends each row's real tokens", target,
                           "target row i must equal the last tokens of input row i")
        scores = torch.log_softmax(logits.gather(1, (safe_pos - 1).clamp(min=0)[..., None]
                                                 .expand(-1, -1, logits.shape[-1])), dim=-1)
        token_scores = scores.gather(2, safe_tok[..., None]).squeeze(2) * valid
        total = token_scores.sum(dim=1)
        return total / counts if self.mean else total

    def describe(self):
        return {"name": self.name, "mean": self.mean}


for _name, _factory in (("token_log_prob", TokenLogProb),
                        ("continuation_log_prob", ContinuationLogProb),
                        ("logit_difference", LogitDifference),
                        ("answer_probability", AnswerProbability)):
    if _name not in OUTPUTS:
        OUTPUTS.register(_name, _factory)
    if _name not in SEQUENCE_OUTPUTS:
        SEQUENCE_OUTPUTS.append(_name)
