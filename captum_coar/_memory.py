"""Out-of-memory recovery for batched forward passes: halve the rows per pass, remember it.

Contract
--------
:func:`is_out_of_memory` recognises an accelerator's out-of-memory error
(``torch.OutOfMemoryError`` / ``torch.cuda.OutOfMemoryError``, or a ``RuntimeError`` whose
message says "out of memory", as MPS and some CPU allocators raise). :func:`release_cached`
returns cached blocks to the allocator after one. :class:`RowBudgets` remembers, per model (held
weakly, so a model that is deleted is forgotten), the largest number of input rows per forward
pass that is known to fit after an out-of-memory error; the batched engine
(:mod:`captum_coar._engine`) caps its row budget with it, so later calls do not run out of
memory again before halving. :data:`ROW_BUDGETS` is the process-wide instance.
"""

from __future__ import annotations

import gc
import weakref
from typing import Optional

import torch
from torch import nn

__all__ = ["is_out_of_memory", "release_cached", "RowBudgets", "ROW_BUDGETS"]

_OOM_TYPES = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                               getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)


def is_out_of_memory(error: BaseException) -> bool:
    """True for an out-of-memory error of any device."""
    if _OOM_TYPES and isinstance(error, _OOM_TYPES):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_cached() -> None:
    """Collect garbage and empty the accelerator's cache after an out-of-memory error."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class RowBudgets:
    """Largest rows per forward pass known to fit, per model (weak references)."""

    def __init__(self) -> None:
        self._rows: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module) -> Optional[int]:
        """The remembered budget for ``model``, or None."""
        return self._rows.get(model)

    def cap(self, model: nn.Module, max_rows: int) -> int:
        """``max_rows`` lowered to the remembered budget of ``model`` (if any)."""
        known = self._rows.get(model)
        return max_rows if known is None else min(max_rows, known)

    def remember(self, model: nn.Module, rows: int) -> None:
        """Record that ``rows`` rows per pass fit after an out-of-memory error."""
        known = self._rows.get(model)
        self._rows[model] = rows if known is None else min(known, rows)

    def forget(self, model: nn.Module) -> None:
        self._rows.pop(model, None)


ROW_BUDGETS = RowBudgets()
