"""The store contract: raw COAR data, (keep masks, outputs), resumable row by row.

Contract
--------
A :class:`MaskOutputStore` holds, for ``m`` mask rows, ``N`` components and ``n`` examples:

- ``masks``: ``(m, N)`` booleans (True = kept), bit-packed along the component axis;
- ``outputs``: ``(m, n)`` floats (float32 by default), the output of every example under
  every mask;
- ``progress``: ``(m,)`` int64, how many leading examples (in data order) of each row are
  written. Row ``r`` is *complete* when ``progress[r] == n``. Progress is committed only after
  the data it covers has been written and flushed, so after a crash every row's progress
  understates, never overstates, what is on disk;
- ``metadata``: a JSON-serialisable dict describing how the data was made: the identity fields
  :data:`IDENTITY_FIELDS` (components' and model's fingerprints, data fingerprint, sampler,
  ablation, output function, seed, sizes) plus free-form extras.

Lifecycle: a store is created empty; :meth:`MaskOutputStore.open` binds it to a metadata dict,
allocating the arrays the first time and, when data already exists, checking that every
identity field matches (a ``ValueError`` names each field that differs, given vs stored).
:mod:`captum_coar.coar.collection` fills a store; the solvers read it through
:meth:`MaskOutputStore.iter_chunks` or :meth:`MaskOutputStore.statistics`.

Implementations: :class:`~captum_coar.stores.memory.InMemoryStore` (numpy arrays in RAM) and
:class:`~captum_coar.stores.memmap.MemmapStore` (``.npy`` memory-mapped files plus
``metadata.json`` in a directory; survives the process, so collection can resume).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..solvers.statistics import SufficientStatistics

__all__ = ["MaskOutputStore", "IDENTITY_FIELDS", "FORMAT_VERSION", "pack_masks", "unpack_masks",
           "RowSelection", "normalise_metadata", "select_rows"]

FORMAT_VERSION = 1

#: Metadata fields that must agree for new data to join an existing store.
IDENTITY_FIELDS = (
    "format_version",
    "n_masks",
    "n_components",
    "n_examples",
    "components_fingerprint",
    "model_fingerprint",
    "data_fingerprint",
    "sampler",
    "ablation",
    "output",
    "seed",
)

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
            raise ValueError(f"rows=({start}, {stop}) must satisfy 0 <= start <= stop <="
                             f" n_masks={n_masks}")
        return np.arange(start, stop, dtype=np.int64)
    index = np.unique(np.asarray(torch.as_tensor(rows).cpu().numpy(), dtype=np.int64).reshape(-1))
    if index.size and (index[0] < 0 or index[-1] >= n_masks):
        raise ValueError(f"rows must lie in [0, {n_masks}), got {index[0]} .. {index[-1]}")
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


class MaskOutputStore(ABC):
    """Base class of the stores; subclasses provide the three arrays and persistence."""

    def __init__(self) -> None:
        self._metadata: Optional[Dict[str, Any]] = None
        self._masks: Any = None  # uint8 (m, ceil(N/8))
        self._outputs: Any = None  # float (m, n)
        self._progress: Any = None  # int64 (m,)

    # ------------------------------------------------------------------ persistence hooks
    @abstractmethod
    def _existing_metadata(self) -> Optional[Dict[str, Any]]:
        """Metadata of data that already exists (and its arrays opened), else None."""

    @abstractmethod
    def _allocate(self, metadata: Dict[str, Any]) -> None:
        """Create zeroed arrays for ``metadata`` and persist the metadata."""

    def _flush_data(self) -> None:
        """Make written masks and outputs durable (no-op in memory)."""
        return None

    def _flush_progress(self) -> None:
        """Make the progress array durable (no-op in memory)."""
        return None

    def _describe_location(self) -> str:
        return type(self).__name__

    # ------------------------------------------------------------------ lifecycle
    def open(self, metadata: Dict[str, Any]) -> "MaskOutputStore":
        """Bind to ``metadata``: allocate on first use, else check the identity fields.

        Raises:
            ValueError: existing data was made with different identity fields; the message
                lists each one as ``field: given ..., stored ...``.
        """
        given = normalise_metadata(metadata)
        missing = [f for f in IDENTITY_FIELDS if f not in given]
        if missing:
            raise ValueError(f"store metadata is missing the identity fields {missing}")
        stored = self._metadata if self._metadata is not None else self._existing_metadata()
        if stored is None:
            self._allocate(given)
            self._metadata = given
            return self
        differences = [
            f"{field}: given {json.dumps(given.get(field), sort_keys=True)}, stored"
            f" {json.dumps(stored.get(field), sort_keys=True)}"
            for field in IDENTITY_FIELDS if given.get(field) != stored.get(field)
        ]
        if differences:
            raise ValueError(
                f"{self._describe_location()} holds data made with different settings, so it"
                " cannot be resumed or extended: " + "; ".join(differences)
                + ". Use a new store (or path), or the model, components and settings the store"
                " was made with."
            )
        self._metadata = stored
        return self

    @property
    def is_open(self) -> bool:
        return self._metadata is not None or self._existing_metadata() is not None

    @property
    def metadata(self) -> Dict[str, Any]:
        """The metadata dict (a copy). Raises if the store holds nothing yet."""
        return dict(self._require())

    def _require(self) -> Dict[str, Any]:
        if self._metadata is None:
            self._metadata = self._existing_metadata()
        if self._metadata is None:
            raise ValueError(
                f"{self._describe_location()} is empty; collect into it first (see"
                " captum_coar.coar.collection.collect)"
            )
        return self._metadata

    # ------------------------------------------------------------------ sizes
    @property
    def n_masks(self) -> int:
        return int(self._require()["n_masks"])

    @property
    def n_components(self) -> int:
        return int(self._require()["n_components"])

    @property
    def n_examples(self) -> int:
        return int(self._require()["n_examples"])

    # ------------------------------------------------------------------ row bookkeeping
    def rows(self, rows: RowSelection = None) -> np.ndarray:
        """Row indices (sorted int64 array) of a selection (see :func:`select_rows`)."""
        return select_rows(rows, self.n_masks)

    def progress(self, rows: RowSelection = None) -> np.ndarray:
        """Examples written per row (int64 copy)."""
        self._require()
        return np.array(self._progress[self.rows(rows)], dtype=np.int64)

    def completed(self, rows: RowSelection = None) -> np.ndarray:
        """Bool array: which of the selected rows hold outputs for every example."""
        return self.progress(rows) == self.n_examples

    @property
    def n_completed(self) -> int:
        return int(self.completed().sum())

    @property
    def is_complete(self) -> bool:
        return bool(self.completed().all())

    # ------------------------------------------------------------------ writing
    def write_masks(self, rows: np.ndarray, masks: Tensor) -> None:
        """Store keep masks ``(len(rows), N)`` for ``rows``."""
        self._require()
        masks = torch.as_tensor(masks)
        if masks.shape != (len(rows), self.n_components):
            raise ValueError(f"masks must have shape {(len(rows), self.n_components)}, got"
                             f" {tuple(masks.shape)}")
        self._masks[_as_index(rows)] = pack_masks(masks)

    def write_outputs(self, rows: np.ndarray, examples: slice, values: Tensor) -> None:
        """Store outputs ``(len(rows), examples)`` for ``rows`` and a slice of examples."""
        self._require()
        array = torch.as_tensor(values).detach().to("cpu").numpy().astype(self._outputs.dtype,
                                                                          copy=False)
        index = _as_index(rows)
        if isinstance(index, slice):
            self._outputs[index, examples] = array
        else:
            self._outputs[np.ix_(index, np.arange(self.n_examples)[examples])] = array

    def commit(self, rows: np.ndarray, examples_done: int) -> None:
        """Flush the data, then record that ``rows`` hold their first ``examples_done`` examples."""
        self._require()
        self._flush_data()
        self._progress[_as_index(rows)] = int(examples_done)
        self._flush_progress()

    # ------------------------------------------------------------------ reading
    def read_masks(self, rows: RowSelection = None) -> Tensor:
        """Keep masks (bool ``(rows, N)``) of the selected rows."""
        self._require()
        return unpack_masks(self._masks[_as_index(self.rows(rows))], self.n_components)

    def read_outputs(self, rows: RowSelection = None) -> Tensor:
        """Outputs (``(rows, n)``, the store's dtype) of the selected rows."""
        self._require()
        return torch.from_numpy(np.array(self._outputs[_as_index(self.rows(rows))]))

    def _require_complete(self, index: np.ndarray) -> None:
        done = self.completed(index)
        if not done.all():
            raise ValueError(
                f"{int((~done).sum())} of the {len(index)} requested rows are not complete"
                f" ({self.n_completed} of {self.n_masks} rows in the store are); finish the"
                " collection (re-run it: it resumes) or select complete rows"
            )

    def iter_chunks(self, rows: RowSelection = None,
                    chunk_rows: int = 4096) -> Iterator[Tuple[Tensor, Tensor]]:
        """``(masks bool (r, N), outputs (r, n))`` chunks over complete selected rows."""
        index = self.rows(rows)
        self._require_complete(index)
        for start in range(0, len(index), chunk_rows):
            part = index[start:start + chunk_rows]
            yield self.read_masks(part), self.read_outputs(part)

    def statistics(self, rows: RowSelection = None, dtype: torch.dtype = torch.float64,
                   device: Optional[Union[str, torch.device]] = None,
                   chunk_rows: int = 4096) -> SufficientStatistics:
        """Sufficient statistics of the selected (complete) rows."""
        stats = SufficientStatistics(self.n_components, self.n_examples, dtype=dtype, device=device)
        for masks, outputs in self.iter_chunks(rows, chunk_rows):
            stats.update(masks, outputs)
        return stats

    def __repr__(self) -> str:
        if not self.is_open:
            return f"{type(self).__name__}(empty)"
        return (f"{type(self).__name__}({self.n_completed}/{self.n_masks} rows complete,"
                f" {self.n_components} components, {self.n_examples} examples)")


def _as_index(rows: np.ndarray) -> Union[slice, np.ndarray]:
    """A contiguous run of rows as a slice (fast, view-friendly), else the index array."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and rows[-1] - rows[0] == rows.size - 1 and np.all(np.diff(rows) == 1):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows
