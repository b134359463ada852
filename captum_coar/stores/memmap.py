"""On-disk store: memory-mapped ``.npy`` files and a JSON metadata file in one directory.

Contract
--------
:class:`MemmapStore` (``path`` is a directory) holds::

    metadata.json   identity fields (see base.IDENTITY_FIELDS), array shapes and dtypes,
                    extras; written atomically (temp file + rename) after the arrays exist
    masks.npy       uint8 (m, ceil(N / 8)): keep masks, bit-packed along components
    outputs.npy     float32 (m, n): the output of every example under every mask
    progress.npy    int64 (m,): examples written per row; row r is complete when it equals n

Every file is a standard ``.npy`` that ``numpy.load(..., mmap_mode="r")`` opens without pickle.
Writes go to the memory maps; :meth:`commit` flushes masks and outputs to disk *before* it
advances and flushes ``progress``, so a killed process leaves rows that are either recorded as
done (their data is on disk) or redone on resume. A directory whose ``metadata.json`` is
missing holds no valid data and is re-initialised. Opening existing data with different
identity fields raises ``ValueError`` naming each field (given vs stored).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
from numpy.lib.format import open_memmap

from .base import MaskOutputStore
from .memory import _output_dtype

__all__ = ["MemmapStore"]

_FILES = {"masks": "masks.npy", "outputs": "outputs.npy", "progress": "progress.npy"}
METADATA_FILE = "metadata.json"


class MemmapStore(MaskOutputStore):
    """Masks and outputs in memory-mapped files under ``path`` (a directory).

    Args:
        path: directory of the store (created when needed).
        dtype: dtype of new output files (``"float32"`` default, or ``"float64"``); an existing
            store keeps the dtype it was made with.
        read_only: open existing files read-only (for fitting and analysis).
    """

    def __init__(self, path: Union[str, os.PathLike], dtype: Union[str, np.dtype] = "float32",
                 read_only: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.dtype = dtype
        self.read_only = read_only

    def _describe_location(self) -> str:
        return f"the store at {str(self.path)!r}"

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA_FILE

    def _existing_metadata(self) -> Optional[Dict[str, Any]]:
        if self._metadata is not None:
            return self._metadata
        if not self.metadata_path.is_file():
            return None
        with open(self.metadata_path, encoding="utf-8") as handle:
            metadata = json.load(handle)
        mode = "r" if self.read_only else "r+"
        arrays = {}
        for key, name in _FILES.items():
            file = self.path / name
            if not file.is_file():
                raise FileNotFoundError(f"the store at {str(self.path)!r} has metadata but no {name}")
            arrays[key] = open_memmap(file, mode=mode)
        m, N, n = (int(metadata[k]) for k in ("n_masks", "n_components", "n_examples"))
        expected = {"masks": (m, (N + 7) // 8), "outputs": (m, n), "progress": (m,)}
        for key, shape in expected.items():
            if arrays[key].shape != shape:
                raise ValueError(f"the store at {str(self.path)!r}: {_FILES[key]} has shape"
                                 f" {arrays[key].shape}, metadata implies {shape}")
        self._masks, self._outputs, self._progress = arrays["masks"], arrays["outputs"], arrays["progress"]
        self._metadata = metadata
        return metadata

    def _allocate(self, metadata: Dict[str, Any]) -> None:
        if self.read_only:
            raise ValueError(f"the store at {str(self.path)!r} is empty and was opened read-only")
        dtype = _output_dtype(self.dtype)
        m, N, n = (int(metadata[k]) for k in ("n_masks", "n_components", "n_examples"))
        self.path.mkdir(parents=True, exist_ok=True)
        self._masks = open_memmap(self.path / _FILES["masks"], mode="w+", dtype=np.uint8,
                                  shape=(m, (N + 7) // 8))
        self._outputs = open_memmap(self.path / _FILES["outputs"], mode="w+", dtype=dtype,
                                    shape=(m, n))
        self._progress = open_memmap(self.path / _FILES["progress"], mode="w+", dtype=np.int64,
                                     shape=(m,))
        for array in (self._masks, self._outputs, self._progress):
            array.flush()
        record = dict(metadata)
        record["files"] = {key: {"file": name, "shape": list(getattr(self, f"_{key}").shape),
                                 "dtype": str(getattr(self, f"_{key}").dtype)}
                           for key, name in _FILES.items()}
        record["progress_semantics"] = ("progress[r] = examples written for mask row r; row r is"
                                        " complete when progress[r] == n_examples")
        tmp = self.metadata_path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.metadata_path)

    def _flush_data(self) -> None:
        self._masks.flush()
        self._outputs.flush()

    def _flush_progress(self) -> None:
        self._progress.flush()
