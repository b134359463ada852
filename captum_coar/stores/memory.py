"""In-memory store: the arrays of :mod:`captum_coar.stores.base` held in RAM.

Contract
--------
:class:`InMemoryStore` keeps bit-packed masks, outputs and per-row progress as numpy arrays.
It lives as long as the Python object: re-running a collection into the same object resumes
where an interrupted one stopped (e.g. after an exception), and a different model, component
set or setting is refused exactly as by the on-disk store. Memory: ``m * ceil(N / 8)`` bytes
for masks plus ``m * n * 4`` for float32 outputs.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Dict, Optional, Union

import numpy as np

from ._growth import grow_arrays
from .base import MaskOutputStore

__all__ = ["InMemoryStore"]


class InMemoryStore(MaskOutputStore):
    """Masks and outputs in RAM.

    Args:
        dtype: dtype of the stored outputs (``"float32"`` default, or ``"float64"``).
    """

    def __init__(self, dtype: Union[str, np.dtype] = "float32") -> None:
        super().__init__()
        self.dtype = dtype

    def _existing_metadata(self) -> Optional[Dict[str, Any]]:
        return self._metadata

    def _allocate(self, metadata: Dict[str, Any]) -> None:
        dtype = _output_dtype(self.dtype)
        m, N, n = int(metadata["n_masks"]), int(metadata["n_components"]), int(metadata["n_examples"])
        self._masks = np.zeros((m, (N + 7) // 8), dtype=np.uint8)
        self._outputs = np.zeros((m, n), dtype=dtype)
        self._progress = np.zeros((m,), dtype=np.int64)
        self._checksums = np.zeros((m,), dtype=np.uint32)
        self._salt = zlib.crc32(json.dumps(metadata, sort_keys=True).encode())

    def _grow(self, rows: int) -> None:
        grown = grow_arrays({"masks": self._masks, "outputs": self._outputs,
                             "progress": self._progress, "checksums": self._checksums}, rows)
        self._masks, self._outputs = grown["masks"], grown["outputs"]
        self._progress, self._checksums = grown["progress"], grown["checksums"]
        assert self._metadata is not None
        before = int(self._metadata["n_masks"])
        self._metadata = {**self._metadata, "n_masks": int(rows),  # the salt stays
                          "grown_from": sorted(set(self._metadata.get("grown_from", []))
                                               | {before})}


def _output_dtype(dtype: Union[str, np.dtype]) -> np.dtype:
    resolved = np.dtype(dtype)
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"store dtype must be float32 or float64, got {dtype!r}")
    return resolved
