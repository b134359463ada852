"""On-disk store: memory-mapped ``.npy`` files and a JSON metadata file in one directory.

Contract
--------
:class:`MemmapStore` (``path`` is a directory) holds::

    metadata.json   the collection's identity, array shapes and dtypes, extras, and a CRC-32
                    of its own content; written atomically (unique temp file + rename) after
                    the arrays exist
    masks.npy       uint8 (m, ceil(N / 8)): keep masks, bit-packed along components
    outputs.npy     float32 (m, n): the output of every example under every mask
    progress.npy    int64 (m,): examples written per row; row r is complete when it equals n
    checksums.npy   uint32 (m,): CRC-32 of each complete row's packed mask and outputs
    .lock           advisory lock held while a process writes (the store's own temporary
                    files ``.<name>.<pid>[.<hex>].tmp`` that a killed writer left are removed
                    by the next one)
    .captum_coar_store  the marker that claims the directory for a store

Every array file is a standard ``.npy`` that ``numpy.load(..., mmap_mode="r")`` opens without
pickle. Opening checks every file before mapping it (a regular file, not a link; header, dtype,
shape and exact size as the metadata says: :func:`captum_coar.stores._files.open_checked_npy`),
and never pads a short file. Writes go to the memory maps; :meth:`commit` flushes masks,
outputs and checksums to disk *before* it advances and flushes ``progress``, so a killed
process leaves rows that are either recorded as done (their data is on disk) or redone on
resume. A marked directory without ``metadata.json`` holds no valid data and is re-initialised
(under the lock). Writing requires :meth:`writing` (one writer at a time); a second writer is
refused with ``RuntimeError``. Errors about damaged files name the file.

A store touches only what is its own (:mod:`captum_coar.stores._ownership`): a non-empty
directory that is not a store is refused before anything is written there; files are created
with ``O_NOFOLLOW`` and their bytes reserved on disk (:func:`~captum_coar.stores._files.
allocate_npy`), so a full disk is an ``OSError`` naming the store, the file and the bytes
missing before any row is collected; every ``OSError`` names its file. While a writer holds the
lock, the directory and files are checked at every commit and before :meth:`writing` returns:
a store deleted or replaced during a collection raises ``RuntimeError``, never a "complete"
store that exists nowhere.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import numpy as np

from ._files import (
    DirectoryLock,
    allocate_npy,
    named,
    open_checked_npy,
    read_json,
    write_json_atomic,
)
from ._growth import GROWING, grow_files
from ._ownership import Place, claim, inspect, remove_own_temps
from .base import FORMAT_VERSION, MaskOutputStore
from .memory import _output_dtype

__all__ = ["MemmapStore", "METADATA_FILE"]

_FILES = {"masks": "masks.npy", "outputs": "outputs.npy", "progress": "progress.npy",
          "checksums": "checksums.npy"}
METADATA_FILE = "metadata.json"


class MemmapStore(MaskOutputStore):
    """Masks and outputs in memory-mapped files under ``path`` (a directory).

    Args:
        path: directory of the store (created when needed).
        dtype: dtype of new output files (``"float32"`` default, or ``"float64"``); an existing
            store keeps the dtype it was made with.
        read_only: open existing files read-only (for fitting and analysis).

    Example:
        >>> import tempfile
        >>> import torch
        >>> from captum_coar import ComponentAblationRegression, MemmapStore, linear_neurons
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet(n_in=5, n_hidden=7).eval()     # exactly additive in its neurons
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> coar = ComponentAblationRegression(model, linear_neurons(model, names=["hidden"]))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     store = coar.collect([(x, y)], MemmapStore(folder), n_masks=60,
        ...                          ablation_fraction=0.3, output="logit")   # resumable
        ...     print(store.verify())
        ...     result = coar.fit(MemmapStore(folder, read_only=True), solver="least_squares")
        store OK: 60 of 60 rows complete, checksums and masks verified
        >>> torch.allclose(result.attributions, model.effects(x, y), atol=1e-4)
        True
    """

    def __init__(self, path: Union[str, os.PathLike], dtype: Union[str, np.dtype] = "float32",
                 read_only: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.dtype = dtype
        self.read_only = read_only
        self._lock = DirectoryLock(self.path)
        self._place: Optional[Place] = None

    def _describe_location(self) -> str:
        return f"the store at {str(self.path)!r}"

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA_FILE

    @contextmanager
    def writing(self) -> Iterator["MemmapStore"]:
        """Hold the directory's exclusive lock; re-read the files under it."""
        if self.read_only:
            raise ValueError(f"{self._describe_location()} was opened read-only; open it with"
                             " read_only=False to write")
        where = self._describe_location()
        claim(self.path)  # refuses a directory of someone else's files before writing there
        self._lock.acquire()
        try:
            with named(self.path, "removing temporary files in", where):
                remove_own_temps(self.path)  # left by a writer killed mid-write
            self._place = Place(self.path, where)
            self._metadata = None  # another writer may have changed the files before the lock
            yield self
            self._check_place()  # never report rows complete that exist nowhere
        finally:
            self._place = None
            self._lock.release()

    def check_writable(self) -> None:
        """Refuse now (read-only check, ``ValueError``) a directory this store could not write:
        one holding other files, or a ``.lock`` that is a link (see :meth:`writing`)."""
        if self.read_only:
            raise ValueError(f"{self._describe_location()} was opened read-only; open it with"
                             " read_only=False to write")
        inspect(self.path)

    def _check_place(self) -> None:
        if self._place is not None:
            self._place.check()

    def _before_write(self) -> None:
        if not self.read_only and not self._lock.held:
            raise RuntimeError(f"{self._describe_location()}: writing needs the store's lock;"
                               " write inside `with store.writing():` (collect does this)")

    def _existing_metadata(self) -> Optional[Dict[str, Any]]:
        if self._metadata is not None:
            return self._metadata
        if not self.metadata_path.exists() and not self.metadata_path.is_symlink():
            return None
        what = self._describe_location()
        metadata = read_json(self.metadata_path, what)
        if GROWING in metadata:  # an interrupted extension: completed by the next writer
            if self.read_only or not self._lock.held:
                raise ValueError(f"{what}: an extension to {metadata[GROWING]} rows was"
                                 " interrupted; re-run the collection that asked for them (it"
                                 " completes the extension and collects the new rows)")
            metadata = grow_files(self.path, METADATA_FILE, metadata, int(metadata[GROWING]),
                                  _FILES, what)
        version = metadata.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{what}: {str(self.metadata_path)!r} has format_version {version!r}, this"
                f" version of captum_coar reads {FORMAT_VERSION} (stores of format 1 carry no"
                " checksums); collect again into a new directory")
        try:
            m, N, n = (int(metadata[k]) for k in ("n_masks", "n_components", "n_examples"))
            dtype = np.dtype(metadata["files"]["outputs"]["dtype"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{what}: {str(self.metadata_path)!r} lacks the sizes or dtypes of"
                             f" the arrays ({error!r}); the store is damaged") from error
        _output_dtype(dtype)
        expected = {"masks": ((m, (N + 7) // 8), np.uint8), "outputs": ((m, n), dtype),
                    "progress": ((m,), np.int64), "checksums": ((m,), np.uint32)}
        mode = "r" if self.read_only else "r+"
        arrays = {key: open_checked_npy(self.path / _FILES[key], shape, np.dtype(dt), mode, what)
                  for key, (shape, dt) in expected.items()}
        self._masks, self._outputs = arrays["masks"], arrays["outputs"]
        self._progress, self._checksums = arrays["progress"], arrays["checksums"]
        if not isinstance(metadata.get("checksum"), int):
            raise ValueError(f"{what}: {str(self.metadata_path)!r} carries no checksum; the store"
                             " is damaged (collect into a new directory)")
        self._salt = int(metadata.get("row_salt", metadata["checksum"]))  # kept when grown
        self._metadata = metadata
        if self._place is not None:
            self._place.remember()
        return metadata

    def _allocate(self, metadata: Dict[str, Any]) -> None:
        if self.read_only:
            raise ValueError(f"the store at {str(self.path)!r} is empty and was opened read-only")
        self._before_write()
        dtype = _output_dtype(self.dtype)
        m, N, n = (int(metadata[k]) for k in ("n_masks", "n_components", "n_examples"))
        specs: Dict[str, Any] = {"masks": ((m, (N + 7) // 8), np.uint8), "outputs": ((m, n), dtype),
                 "progress": ((m,), np.int64), "checksums": ((m,), np.uint32)}
        where = self._describe_location()
        created = []
        try:
            for key, (shape, dt) in specs.items():
                file = self.path / _FILES[key]
                if file.is_symlink():
                    file.unlink()  # an own name: remove the link, never write through it
                created.append(file)
                allocate_npy(file, shape, np.dtype(dt), where)
        except OSError as error:
            for file in created:  # give the space back: a store without metadata holds nothing
                if file.exists() and not file.is_symlink():
                    file.unlink()
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._disk_full(error, created[-1], specs) from error
            raise
        arrays = {key: open_checked_npy(self.path / _FILES[key], shape, np.dtype(dt), "r+", where)
                  for key, (shape, dt) in specs.items()}
        self._masks, self._outputs = arrays["masks"], arrays["outputs"]
        self._progress, self._checksums = arrays["progress"], arrays["checksums"]
        record = dict(metadata)
        record["files"] = {key: {"file": _FILES[key], "shape": list(arrays[key].shape),
                                 "dtype": str(arrays[key].dtype)} for key in _FILES}
        record["progress_semantics"] = ("progress[r] = examples written for mask row r; row r is"
                                        " complete when progress[r] == n_examples")
        self._salt = write_json_atomic(self.metadata_path, record)
        if self._place is not None:
            self._place.remember()

    def _grow(self, rows: int) -> None:
        """Grow the files to ``rows`` rows (:mod:`captum_coar.stores._growth`), then reopen."""
        self._before_write()
        assert self._metadata is not None
        record = {**self._metadata, "row_salt": self._salt}
        self._masks = self._outputs = self._progress = self._checksums = None
        grow_files(self.path, METADATA_FILE, record, rows, _FILES, self._describe_location())
        self._metadata = None
        self._existing_metadata()

    def _disk_full(self, error: OSError, file: Path, specs: Dict[str, Any]) -> OSError:
        """The ``OSError`` of a full disk: the store, the file, and the bytes missing."""
        needed = sum(128 + int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
                     for shape, dt in specs.values())
        free = shutil.disk_usage(self.path).free
        return OSError(error.errno, f"{self._describe_location()}: reserving {str(file)!r} on"
                       f" disk failed: {error.strerror}. The store needs {needed} bytes, the disk"
                       f" has {free} free ({max(needed - free, 0)} bytes missing; the files"
                       " made were removed and nothing was collected). Free disk space, collect"
                       " into a directory on another disk, or lower n_masks", str(file))

    def _flush_data(self) -> None:
        self._before_write()
        self._check_place()
        for key in ("masks", "outputs", "checksums"):
            with named(self.path / _FILES[key], "flushing", self._describe_location()):
                getattr(self, f"_{key}").flush()

    def _flush_progress(self) -> None:
        self._before_write()
        self._check_place()
        with named(self.path / _FILES["progress"], "flushing", self._describe_location()):
            self._progress.flush()
