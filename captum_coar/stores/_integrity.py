"""Integrity of stored rows: per-row checksums and the report of damaged rows.

Contract
--------
Every complete row ``r`` of a store carries a CRC-32 (:func:`row_checksums`) of its bit-packed
keep mask followed by its outputs, started from the store's *salt* (a CRC-32 of its metadata,
so rows copied in from another store, even one of the same shapes, do not verify), written after the row's data is flushed and before its
progress says it is complete. A row is *damaged* when its progress lies outside
``[0, n_examples]``, when it is complete but its checksum does not match its bytes, or when its
stored mask differs from the mask its sampler regenerates from ``(seed, row)``.
:class:`StoreReport` lists such rows by index; :func:`describe_rows` prints row indices as
compact ``[start, stop)`` runs for error messages.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import List

import numpy as np

__all__ = ["row_checksums", "StoreReport", "describe_rows"]


def row_checksums(masks: np.ndarray, outputs: np.ndarray, salt: int) -> np.ndarray:
    """CRC-32 per row of ``masks`` (uint8 packed) then ``outputs``, started from ``salt``."""
    masks = np.ascontiguousarray(masks)
    outputs = np.ascontiguousarray(outputs)
    result = np.empty(masks.shape[0], dtype=np.uint32)
    for i in range(masks.shape[0]):
        result[i] = zlib.crc32(outputs[i].tobytes(), zlib.crc32(masks[i].tobytes(), salt))
    return result


def describe_rows(rows: np.ndarray, limit: int = 6) -> str:
    """Rows as ``[start, stop)`` runs, e.g. ``"rows [3, 5), [9, 10)"`` (at most ``limit`` runs)."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if rows.size == 0:
        return "no rows"
    breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
    starts, ends = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, rows.size - 1]] + 1
    runs = [f"[{a}, {b})" for a, b in zip(starts.tolist(), ends.tolist())]
    shown = ", ".join(runs[:limit]) + (f" and {len(runs) - limit} more runs" if len(runs) > limit
                                       else "")
    return f"{rows.size} row(s): {shown}"


@dataclass
class StoreReport:
    """What :meth:`MaskOutputStore.verify` found; every list holds row indices."""

    n_masks: int
    n_complete: int
    progress_out_of_range: List[int] = field(default_factory=list)
    checksum_mismatch: List[int] = field(default_factory=list)
    mask_mismatch: List[int] = field(default_factory=list)
    masks_checked: bool = False

    @property
    def damaged_rows(self) -> List[int]:
        """Every damaged row (sorted, unique)."""
        return sorted(set(self.progress_out_of_range) | set(self.checksum_mismatch)
                      | set(self.mask_mismatch))

    @property
    def ok(self) -> bool:
        return not self.damaged_rows

    def __str__(self) -> str:
        if self.ok:
            checked = "checksums and masks" if self.masks_checked else "checksums"
            return (f"store OK: {self.n_complete} of {self.n_masks} rows complete, {checked}"
                    " verified")
        parts = []
        for label, rows in (("progress out of range", self.progress_out_of_range),
                            ("checksum mismatch (damaged masks or outputs)",
                             self.checksum_mismatch),
                            ("mask differs from the sampler's", self.mask_mismatch)):
            if rows:
                parts.append(f"{label}: {describe_rows(np.asarray(rows))}")
        return "store damaged: " + "; ".join(parts)
