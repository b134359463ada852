"""Captum's input conventions: tuples of inputs, rows, targets and consecutive batches.

Contract
--------
A leaf module (imports only torch). :func:`input_tuple` checks ``inputs`` (a tensor or a tuple
of tensors with the same number of rows on dim 0); :func:`as_tuple` applies Captum's tuple
convention to ``inputs`` and ``additional_forward_args``; :func:`slice_rows`,
:func:`slice_target` and :func:`example_batches` cut consecutive row blocks of inputs, extra
arguments with the same number of rows, and per-example targets; :func:`repeat_rows` and
:func:`expand_target` repeat rows in block layout (block ``i`` = copy ``i`` of every row).
:func:`slice_rows` (so :func:`example_batches`) and :func:`repeat_rows` return NEW tensors
for the row-carrying arguments, never views of the caller's: a forward function that writes
its input in place changes neither the caller's tensors nor the next forward pass's input
(cost: one copy of the rows per batch and per forward pass).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["TensorOrTuple", "as_tuple", "input_tuple", "slice_rows", "slice_target",
           "example_batches", "repeat_rows", "expand_target", "row_chunks"]

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


def as_tuple(inputs: Any) -> Tuple[Any, ...]:
    """Captum's convention: a tensor becomes a 1-tuple, None an empty tuple."""
    if inputs is None:
        return ()
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def slice_rows(inputs: Tuple[Tensor, ...], additional_forward_args: Any, rows: Any,
               n_rows: int) -> Tuple[Tuple[Tensor, ...], Tuple[Any, ...]]:
    """Copies of ``rows`` of every input and of every extra argument with ``n_rows`` rows."""
    sliced = tuple(x[rows].clone() for x in inputs)
    extra = tuple(a[rows].clone() if _has_rows(a, n_rows) else a
                  for a in as_tuple(additional_forward_args))
    return sliced, extra


def repeat_rows(values: Tuple[Any, ...], repeats: int, n_rows: int) -> Tuple[Any, ...]:
    """Every tensor with ``n_rows`` rows repeated ``repeats`` times along dim 0 (block layout),
    as a new tensor also when ``repeats`` is 1 (a copy each forward pass may write)."""
    return tuple(v.repeat(repeats, *([1] * (v.dim() - 1))) if _has_rows(v, n_rows) else v
                 for v in values)


def input_tuple(inputs: Any) -> Tuple[Tensor, ...]:
    """``inputs`` as a tuple of tensors with the same number of rows on dim 0.

    ``TypeError`` for anything but a tensor or a tuple of tensors, ``ValueError`` when the
    tensors disagree on the number of rows.
    """
    inputs_t = as_tuple(inputs)
    if not inputs_t or not all(isinstance(x, Tensor) and x.dim() > 0 for x in inputs_t):
        raise TypeError(
            "inputs must be a tensor or a tuple of tensors with the batch on dim 0, got"
            f" {type(inputs).__name__}"
        )
    if any(x.shape[0] != inputs_t[0].shape[0] for x in inputs_t):
        raise ValueError(f"all inputs must have the same number of rows; got"
                         f" {[tuple(x.shape) for x in inputs_t]}")
    return inputs_t


def _per_row_target(target: Any, n_rows: int) -> Optional[Tensor]:
    """``target`` as a tensor with one entry per row, or None when all rows share it."""
    if target is None or isinstance(target, int):
        return None
    t = torch.as_tensor(target)
    if t.dim() == 0:
        return None
    if t.shape[0] != n_rows:
        raise ValueError(f"target has {t.shape[0]} entries but inputs have {n_rows} rows")
    return t


def slice_target(target: Any, rows: slice, n_rows: int) -> Any:
    """The rows of a per-example target (an int or scalar target is shared by all rows)."""
    t = _per_row_target(target, n_rows)
    return target if t is None else t[rows]


def expand_target(target: Any, n_rows: int, repeats: int) -> Any:
    """Repeat a per-example target for ``repeats`` blocks of ``n_rows`` rows."""
    if repeats == 1:
        return target
    t = _per_row_target(target, n_rows)
    return target if t is None else t.repeat(repeats, *([1] * (t.dim() - 1)))


def row_chunks(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` rows covering ``range(total)``."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def example_batches(inputs: Tuple[Tensor, ...], additional_forward_args: Any, target: Any,
                    batch_size: int) -> Iterator[Tuple[slice, Tuple[Tensor, ...], Tuple[Any, ...], Any]]:
    """``(rows, inputs, additional_forward_args, target)`` for consecutive ``batch_size`` rows."""
    n_rows = inputs[0].shape[0]
    for rows in row_chunks(n_rows, batch_size):
        batch, extra = slice_rows(inputs, additional_forward_args, rows, n_rows)
        yield rows, batch, extra, slice_target(target, rows, n_rows)


def _has_rows(value: Any, n_rows: int) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n_rows
