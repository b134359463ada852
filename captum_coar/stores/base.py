"""The store contract: raw COAR data, (keep masks, outputs), resumable row by row, self-verifying.

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
- ``checksums``: ``(m,)`` uint32, the CRC-32 of a complete row's packed mask and outputs
  (:mod:`captum_coar.stores._integrity`), written after the row's data and before the progress
  that completes it;
- ``metadata``: a JSON-serialisable dict describing how the data was made: the collection's
  identity (defined once, in :mod:`captum_coar.coar._identity`) plus free-form extras.

Lifecycle: a store is created empty; :meth:`MaskOutputStore.open` binds it to a metadata dict,
allocating the arrays the first time and, when data already exists, comparing identities with
the function the caller passes (a ``ValueError`` names each field that differs, given vs
stored). A request for more rows of the same collection (every identity field equal but
``n_masks``, which is larger) grows the store instead: rows are appended, not written yet, and
the old rows stay as they are (:mod:`captum_coar.stores._growth`). Writers hold
:meth:`MaskOutputStore.writing` (one writer at a time for on-disk stores). Reading complete rows (:meth:`iter_chunks`, :meth:`statistics`, hence every fit)
verifies their checksums and raises ``ValueError`` naming damaged rows; :meth:`verify` reports
every damaged row (progress out of range, checksum mismatch, and, given the sampler, masks that
differ from the regenerated ones); :meth:`damaged_rows` and :meth:`reset_rows` let a resumed
collection recollect them.

Implementations: :class:`~captum_coar.stores.memory.InMemoryStore` (numpy arrays in RAM) and
:class:`~captum_coar.stores.memmap.MemmapStore` (``.npy`` memory-mapped files plus
``metadata.json`` in a directory; survives the process, so collection can resume).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..sampling import resolve_sampler
from ..solvers.statistics import SufficientStatistics
from ._growth import growth_allowed
from ._integrity import StoreReport, describe_rows, row_checksums
from ._rows import (
    RowSelection,
    as_index,
    normalise_metadata,
    pack_masks,
    select_rows,
    unpack_masks,
)

__all__ = ["MaskOutputStore", "FORMAT_VERSION", "pack_masks", "unpack_masks", "RowSelection",
           "normalise_metadata", "select_rows", "StoreReport"]

#: Version of the store's file layout (2: per-row checksums).
FORMAT_VERSION = 2

IdentityCompare = Callable[[Dict[str, Any], Dict[str, Any]], List[str]]


class MaskOutputStore(ABC):
    """Base class of the stores; subclasses provide the arrays and persistence."""

    def __init__(self) -> None:
        self._metadata: Optional[Dict[str, Any]] = None
        self._masks: Any = None  # uint8 (m, ceil(N/8))
        self._outputs: Any = None  # float (m, n)
        self._progress: Any = None  # int64 (m,)
        self._checksums: Any = None  # uint32 (m,)
        self._salt = 0  # CRC-32 of the metadata: row checksums start from it

    # ------------------------------------------------------------------ persistence hooks
    @abstractmethod
    def _existing_metadata(self) -> Optional[Dict[str, Any]]:
        """Metadata of data that already exists (and its arrays opened), else None."""

    @abstractmethod
    def _allocate(self, metadata: Dict[str, Any]) -> None:
        """Create zeroed arrays for ``metadata`` and persist the metadata."""

    def _flush_data(self) -> None:
        """Make written masks, outputs and checksums durable (no-op in memory)."""
        return None

    def _grow(self, rows: int) -> None:
        """Append not-yet-written rows up to ``rows`` (the metadata's ``n_masks`` follows)."""
        raise NotImplementedError(f"{type(self).__name__} cannot grow; collect into a new store")

    def _flush_progress(self) -> None:
        """Make the progress array durable (no-op in memory)."""
        return None

    def _describe_location(self) -> str:
        return type(self).__name__

    @property
    def location(self) -> str:
        """Where the store lives, for messages (e.g. ``"the store at '/data/run1'"``)."""
        return self._describe_location()

    def _before_write(self) -> None:
        """Refuse writing without the right to write (on-disk stores: the lock)."""
        return None

    @contextmanager
    def writing(self) -> Iterator["MaskOutputStore"]:
        """Hold the right to write (on-disk stores: an exclusive lock) for the ``with`` block."""
        yield self

    # ------------------------------------------------------------------ lifecycle
    def open(self, metadata: Dict[str, Any], differences: IdentityCompare) -> "MaskOutputStore":
        """Bind to ``metadata``: allocate on first use, else compare identities (and grow the
        store when only ``n_masks`` differs and more rows are asked for).

        ``differences(given, stored)`` returns one line per identity field that differs
        (:func:`captum_coar.coar._identity.identity_differences`).

        Raises:
            ValueError: existing data was made with a different identity (or fewer rows are
                asked for); the message lists each differing field as ``field: given ...,
                stored ...``.
        """
        given = normalise_metadata(metadata)
        stored = self._metadata if self._metadata is not None else self._existing_metadata()
        if stored is None:
            self._allocate(given)
            self._metadata = given
            return self
        lines = differences(given, stored)
        if lines and growth_allowed(given, stored, differences):
            self._metadata = stored
            self._grow(int(given["n_masks"]))
            stored, lines = self._require(), []
        if lines:
            raise ValueError(
                f"{self._describe_location()} holds data made with different settings, so it"
                " cannot be resumed or extended: " + "; ".join(lines)
                + ". Use a new store (or path), or the model, components, data and settings the"
                " store was made with."
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
        """Examples written per row (int64 copy; may be out of range if the file is damaged)."""
        self._require()
        return np.array(self._progress[as_index(self.rows(rows))], dtype=np.int64)

    def completed(self, rows: RowSelection = None) -> np.ndarray:
        """Bool array: which of the selected rows hold outputs for every example."""
        return self.progress(rows) == self.n_examples

    @property
    def n_completed(self) -> int:
        return int(self.completed().sum())

    @property
    def is_complete(self) -> bool:
        return bool(self.completed().all())

    # ------------------------------------------------------------------ integrity
    def _checksum_mismatch(self, index: np.ndarray) -> np.ndarray:
        """Rows of ``index`` (all complete) whose checksum does not match their bytes."""
        bad = []
        for start in range(0, len(index), 4096):
            part = index[start:start + 4096]
            sel = as_index(part)
            computed = row_checksums(self._masks[sel], self._outputs[sel], self._salt)
            bad.append(part[computed != np.asarray(self._checksums[sel])])
        return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)

    def damaged_rows(self, rows: RowSelection = None) -> Tuple[np.ndarray, np.ndarray]:
        """``(progress out of range, checksum mismatch)`` row indices among the selection."""
        index = self.rows(rows)
        progress = self.progress(index)
        out_of_range = index[(progress < 0) | (progress > self.n_examples)]
        complete = index[progress == self.n_examples]
        return out_of_range, self._checksum_mismatch(complete)

    def verify(self, sampler: Any = None, seed: Optional[int] = None,
               chunk_rows: int = 4096) -> StoreReport:
        """Check every row; returns a :class:`StoreReport` listing damaged rows by index.

        The masks of written rows are also compared with those the sampler regenerates from
        ``(seed, row)``: ``sampler`` (a :class:`~captum_coar.sampling.MaskSampler`; ``seed``
        defaults to the stored seed), or by default the built-in sampler the metadata describes
        (a custom sampler that cannot be rebuilt from its description is skipped:
        ``report.masks_checked`` is False).
        """
        out_of_range, mismatch = self.damaged_rows()
        report = StoreReport(self.n_masks, self.n_completed, out_of_range.tolist(),
                             mismatch.tolist())
        if sampler is None:
            sampler = _stored_sampler(self._require().get("sampler"))
        if sampler is not None:
            seed = int(self._require().get("seed", 0)) if seed is None else int(seed)
            written = self.rows()[self.progress() > 0]
            report.mask_mismatch = self.mask_mismatch(written, sampler, seed, chunk_rows).tolist()
            report.masks_checked = True
        return report

    def mask_mismatch(self, rows: np.ndarray, sampler: Any, seed: int,
                      chunk_rows: int = 4096) -> np.ndarray:
        """Rows of ``rows`` whose stored mask differs from ``sampler``'s row ``(seed, r)``."""
        rows = np.asarray(rows, dtype=np.int64)
        bad = []
        for start in range(0, len(rows), chunk_rows):
            part = rows[start:start + chunk_rows]
            lo, hi = int(part[0]), int(part[-1]) + 1
            expected = sampler.sample(self.n_components, lo, hi, seed)[torch.from_numpy(part - lo)]
            stored = unpack_masks(self._masks[as_index(part)], self.n_components)
            bad.append(part[(stored != expected.cpu()).any(dim=1).numpy()])
        return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)

    def reset_rows(self, rows: np.ndarray, progress: int = 0) -> None:
        """Lower the progress of ``rows`` to ``progress`` (default 0: not written) so that a
        collection recollects what lies beyond it."""
        self._require()
        self._before_write()
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size:
            self._progress[as_index(rows)] = int(progress)
            self._flush_progress()

    # ------------------------------------------------------------------ writing
    def write_masks(self, rows: np.ndarray, masks: Tensor) -> None:
        """Store keep masks ``(len(rows), N)`` for ``rows``."""
        self._require()
        self._before_write()
        masks = torch.as_tensor(masks)
        if masks.shape != (len(rows), self.n_components):
            raise ValueError(f"masks must have shape {(len(rows), self.n_components)}, got"
                             f" {tuple(masks.shape)}")
        self._masks[as_index(rows)] = pack_masks(masks)

    def write_outputs(self, rows: np.ndarray, examples: slice, values: Tensor) -> None:
        """Store outputs ``(len(rows), examples)`` for ``rows`` and a slice of examples."""
        self._require()
        self._before_write()
        array = torch.as_tensor(values).detach().to("cpu").numpy().astype(self._outputs.dtype,
                                                                          copy=False)
        index = as_index(rows)
        if isinstance(index, slice):
            self._outputs[index, examples] = array
        else:
            self._outputs[np.ix_(index, np.arange(self.n_examples)[examples])] = array

    def commit(self, rows: np.ndarray, examples_done: int) -> None:
        """Flush the data, then record that ``rows`` hold their first ``examples_done`` examples.

        When the rows become complete their checksums are written (and flushed) first.
        """
        self._require()
        self._before_write()
        index = as_index(rows)
        if int(examples_done) == self.n_examples:
            self._checksums[index] = row_checksums(self._masks[index], self._outputs[index],
                                                   self._salt)
        self._flush_data()
        self._progress[index] = int(examples_done)
        self._flush_progress()

    # ------------------------------------------------------------------ reading
    def read_masks(self, rows: RowSelection = None) -> Tensor:
        """Keep masks (bool ``(rows, N)``) of the selected rows."""
        self._require()
        return unpack_masks(self._masks[as_index(self.rows(rows))], self.n_components)

    def read_outputs(self, rows: RowSelection = None) -> Tensor:
        """Outputs (``(rows, n)``, the store's dtype) of the selected rows."""
        self._require()
        return torch.from_numpy(np.array(self._outputs[as_index(self.rows(rows))]))

    def check_complete(self, index: np.ndarray) -> None:
        """``ValueError`` unless every row of ``index`` is complete (naming damaged progress)."""
        progress = self.progress(index)
        out_of_range = index[(progress < 0) | (progress > self.n_examples)]
        if out_of_range.size:
            raise ValueError(
                f"{self._describe_location()}: the progress of {describe_rows(out_of_range)} lies"
                f" outside [0, {self.n_examples}] (progress.npy is damaged); re-run the same"
                " collection to recollect them (it resets and redoes damaged rows), or select"
                " other rows")
        done = progress == self.n_examples
        if not done.all():
            raise ValueError(
                f"{int((~done).sum())} of the {len(index)} requested rows are not complete"
                f" ({self.n_completed} of {self.n_masks} rows in the store are); finish the"
                " collection (re-run it: it resumes) or select complete rows (rows=...)"
            )

    def _check_rows(self, part: np.ndarray) -> None:
        bad = self._checksum_mismatch(part)
        if bad.size:
            raise ValueError(
                f"{self._describe_location()} is damaged: the masks or outputs of"
                f" {describe_rows(bad)} do not match their checksums. Re-run the same collection"
                " into the store to recollect them (damaged rows are detected and redone), or"
                " fit on other rows (rows=...); store.verify() lists every damaged row")

    def iter_chunks(self, rows: RowSelection = None,
                    chunk_rows: int = 4096) -> Iterator[Tuple[Tensor, Tensor]]:
        """``(masks bool (r, N), outputs (r, n))`` chunks over complete selected rows.

        Every chunk's checksums are verified before it is returned.
        """
        for _, masks, outputs in self._verified_chunks(rows, chunk_rows):
            yield masks, outputs

    def _verified_chunks(self, rows: RowSelection,
                         chunk_rows: int) -> Iterator[Tuple[np.ndarray, Tensor, Tensor]]:
        """``(row indices, masks, outputs)`` of complete, verified selected rows, by chunk."""
        index = self.rows(rows)
        self.check_complete(index)
        for start in range(0, len(index), chunk_rows):
            part = index[start:start + chunk_rows]
            self._check_rows(part)
            yield part, self.read_masks(part), self.read_outputs(part)

    def statistics(self, rows: RowSelection = None, dtype: torch.dtype = torch.float64,
                   device: Optional[Union[str, torch.device]] = None,
                   chunk_rows: int = 4096) -> SufficientStatistics:
        """Sufficient statistics of the selected (complete, verified) rows."""
        stats = SufficientStatistics(self.n_components, self.n_examples, dtype=dtype, device=device)
        for part, masks, outputs in self._verified_chunks(rows, chunk_rows):
            stats.update(masks, outputs, rows=part)
        return stats

    def __repr__(self) -> str:
        if not self.is_open:
            return f"{type(self).__name__}(empty)"
        return (f"{type(self).__name__}({self.n_completed}/{self.n_masks} rows complete,"
                f" {self.n_components} components, {self.n_examples} examples)")


def _stored_sampler(description: Any) -> Any:
    """The built-in sampler a store's metadata describes, or None when it cannot be rebuilt."""
    if not isinstance(description, dict) or not isinstance(description.get("name"), str):
        return None
    try:
        sampler = resolve_sampler(description["name"], description.get("ablation_fraction"))
    except (TypeError, ValueError):
        return None
    return sampler if normalise_metadata(sampler.describe()) == description else None
