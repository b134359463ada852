"""Rows of a store: selections of mask rows, bit-packed masks, and JSON-normal metadata.

Contract
--------
:func:`select_rows` turns a selection (None = all, ``(start, stop)``, a slice, integer
indices; fractional values are refused, never truncated) into sorted unique int64 row indices
within ``[0, n_masks)``. :func:`pack_masks` / :func:`unpack_masks` convert bool keep masks
``(rows, N)`` to and from uint8 ``(rows, ceil(N / 8))`` (big-endian bit order).
:func:`normalise_metadata` gives a dict as it reads back from JSON. ``as_index`` (for the
stores of this package) turns a contiguous run of rows into a slice.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._checks import check_integer_values, fail

__all__ = ["RowSelection", "select_rows", "pack_masks", "unpack_masks", "normalise_metadata",
           "as_index"]

RowSelection = Union[None, slice, Tuple[int, int], Sequence[int], np.ndarray, Tensor]


def select_rows(rows: RowSelection, n_masks: int) -> np.ndarray:
    """Sorted unique row indices from None (all), ``(start, stop)``, a slice or indices."""
    if rows is None:
        return np.arange(n_masks, dtype=np.int64)
    if isinstance(rows, slice):
        return np.arange(n_masks, dtype=np.int64)[rows]
    if isinstance(rows, tuple) and len(rows) == 2 and all(isinstance(v, (int, np.integer))
                                                          for v in rows):
        start, stop = int(rows[0]), int(rows[1])
        if not 0 <= start <= stop <= n_masks:
            raise fail("rows", f"(start, stop) with 0 <= start <= stop <= n_masks={n_masks}",
                       rows)
        return np.arange(start, stop, dtype=np.int64)
    index = np.unique(check_integer_values("rows", rows).cpu().numpy().reshape(-1))
    if index.size and (index[0] < 0 or index[-1] >= n_masks):
        raise fail("rows", f"row indices in [0, {n_masks})", rows,
                   f"found {index[0]} .. {index[-1]}")
    return index


def pack_masks(masks: Tensor) -> np.ndarray:
    """Bool ``(rows, N)`` keep masks -> uint8 ``(rows, ceil(N / 8))`` (big-endian bit order)."""
    array = torch.as_tensor(masks).detach().to("cpu", torch.bool).numpy()
    return np.packbits(array, axis=1)


def unpack_masks(packed: np.ndarray, n_components: int) -> Tensor:
    """Inverse of :func:`pack_masks`: a bool tensor ``(rows, n_components)``."""
    bits = np.unpackbits(np.asarray(packed), axis=1, count=n_components)
    return torch.from_numpy(bits.astype(bool, copy=False))


def normalise_metadata(metadata: Dict[str, Any]) -> Dict[str, Any]:
    """The metadata as it reads back from JSON (tuples become lists, keys become strings)."""
    return json.loads(json.dumps(metadata, sort_keys=True))


def as_index(rows: np.ndarray) -> Union[slice, np.ndarray]:
    """A contiguous run of rows as a slice (fast, view-friendly), else the index array."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and rows[-1] - rows[0] == rows.size - 1 and np.all(np.diff(rows) == 1):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows
