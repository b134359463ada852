"""Sets of mask rows as ``[start, stop)`` runs: the rows a piece of statistics covers.

Contract
--------
:func:`row_ranges` turns sorted unique row indices into runs and :func:`rows_of` back;
:func:`count_rows` counts the rows of runs; :func:`add_ranges` is the union of two disjoint
sets of runs and raises ``ValueError`` naming the first row found in both (a row counted
twice). Runs are JSON friendly (lists of two ints).
"""

from __future__ import annotations

from typing import List

import numpy as np

__all__ = ["RowRanges", "row_ranges", "rows_of", "count_rows", "add_ranges"]

RowRanges = List[List[int]]


def row_ranges(rows: np.ndarray) -> RowRanges:
    """Sorted unique rows as ``[[start, stop), ...]`` runs (JSON friendly)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
    starts, ends = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, rows.size - 1]] + 1
    return [[int(a), int(b)] for a, b in zip(starts, ends)]


def rows_of(ranges: RowRanges) -> np.ndarray:
    """Inverse of :func:`row_ranges`: the rows of ``[start, stop)`` runs."""
    parts = [np.arange(int(a), int(b), dtype=np.int64) for a, b in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def count_rows(ranges: RowRanges) -> int:
    """How many rows ``[start, stop)`` runs cover."""
    return int(sum(int(b) - int(a) for a, b in ranges))


def add_ranges(a: RowRanges, b: RowRanges, a_name: str = "one part",
               b_name: str = "the other") -> RowRanges:
    """The union of two sets of runs; ``ValueError`` naming the first shared row when a row is
    in both (it would be counted twice)."""
    runs = sorted([(int(s), int(e), 0) for s, e in a] + [(int(s), int(e), 1) for s, e in b])
    merged: RowRanges = []
    last_end, last_side = None, None
    for start, end, side in runs:
        if start >= end:
            continue
        if last_end is not None and start < last_end and side != last_side:
            raise ValueError(
                f"row {start} is in both {a_name} and {b_name}: it would be counted twice"
                " (statistics merged or all-reduced twice, or parts that overlap); add each"
                " part once")
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
        if last_end is None or end > last_end:
            last_end, last_side = end, side
    return merged
