"""Growing a store: more mask rows of the same collection, the old rows untouched.

Contract
--------
Masks depend only on ``(seed, row)``, so a store of ``m`` rows is the first ``m`` rows of the
same collection with ``M > m`` rows. The metadata records the sizes the store grew from
(``grown_from``; :func:`growth_boundaries`): a collection treats the rows on each side of a
boundary as separate parts of a chunk, so the old rows are never redone. :func:`growth_allowed` says whether a request (the
identity a collection would record) may extend a store: every identity field equal except
``n_masks``, and more rows asked for than stored; any other difference is refused as before.

Growing appends rows that are not written yet (progress 0), so the collection that asked for
them collects exactly those, and the result is the store one collection of ``M`` rows would
have made. Row checksums keep the salt the store was made with (``row_salt`` in the metadata).

On disk (:func:`grow_files`) the steps are, under the store's lock: (1) the metadata is marked
``"growing_to": M`` (written atomically); (2) every array file that does not hold ``M`` rows
yet is copied into an own temporary file of ``M`` rows (old rows byte for byte, new rows zero)
and renamed over the old one; (3) the metadata is rewritten with ``n_masks = M`` and the new
shapes, without the mark. An interruption anywhere leaves the mark; the next writer completes
the same steps from what is on disk (a file already at ``M`` rows is kept), so a resumed
extension ends bit-identical to an uninterrupted one. A reader refuses a marked store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from ._files import _read_header, allocate_npy, named, unique_temp_path, write_json_atomic

__all__ = ["growth_allowed", "grow_arrays", "grow_files", "growth_boundaries", "GROWING"]

#: The metadata key that marks an extension in progress.
GROWING = "growing_to"

Differences = Callable[[Dict[str, Any], Dict[str, Any]], List[str]]


def growth_allowed(given: Dict[str, Any], stored: Dict[str, Any],
                   differences: Differences) -> bool:
    """Whether ``given`` asks for more rows of exactly the collection ``stored`` holds."""
    try:
        more = int(given["n_masks"]) > int(stored["n_masks"])
    except (KeyError, TypeError, ValueError):
        return False
    return more and not differences({**given, "n_masks": stored["n_masks"]}, stored)


def growth_boundaries(metadata: Dict[str, Any]) -> List[int]:
    """The sizes a store had before each extension (``grown_from``), ascending."""
    return sorted(int(v) for v in metadata.get("grown_from", []))


def grow_arrays(arrays: Dict[str, np.ndarray], rows: int) -> Dict[str, np.ndarray]:
    """In-memory arrays with zero rows appended up to ``rows``."""
    out = {}
    for key, array in arrays.items():
        extra = np.zeros((rows - array.shape[0],) + array.shape[1:], dtype=array.dtype)
        out[key] = np.concatenate([np.asarray(array), extra])
    return out


def _grow_file(path: Path, rows: int, where: str, chunk_rows: int = 1 << 16) -> Tuple[int, ...]:
    """Make the ``.npy`` at ``path`` hold ``rows`` rows (a no-op when it does); its shape."""
    shape, fortran, dtype, _ = _read_header(path)
    if shape[0] == rows:
        return shape
    if fortran or shape[0] > rows:
        raise ValueError(f"{where}: {str(path)!r} holds {shape[0]} rows, more than the {rows}"
                         " the store is growing to; the store is damaged")
    new_shape = (rows,) + tuple(shape[1:])
    tmp = unique_temp_path(path)
    try:
        allocate_npy(tmp, new_shape, dtype, where)  # zeros: rows not written yet
        old = np.load(path, mmap_mode="r", allow_pickle=False)
        new = np.load(tmp, mmap_mode="r+", allow_pickle=False)
        with named(tmp, "copying the old rows into", where):
            for start in range(0, shape[0], chunk_rows):
                stop = min(start + chunk_rows, shape[0])
                new[start:stop] = old[start:stop]
            new.flush()
        del old, new
        with named(path, "replacing", where):
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return new_shape


def grow_files(directory: Path, metadata_file: str, record: Dict[str, Any], rows: int,
               files: Dict[str, str], where: str) -> Dict[str, Any]:
    """Steps (1) to (3) of the module docstring for the store in ``directory`` whose metadata
    is ``record`` (marked already, or not); returns the final metadata record."""
    record = {k: v for k, v in record.items() if k != "checksum"}
    if record.get(GROWING) != rows:
        record[GROWING] = rows
        write_json_atomic(directory / metadata_file, record)
    shapes = {key: _grow_file(directory / name, rows, where) for key, name in files.items()}
    final = {k: v for k, v in record.items() if k != GROWING}
    final["n_masks"] = rows
    final["files"] = {key: {**dict(final.get("files", {}).get(key, {})), "file": name,
                            "shape": list(shapes[key])} for key, name in files.items()}
    final["grown_from"] = sorted(set(final.get("grown_from", [])) | {int(record["n_masks"])})
    final["checksum"] = write_json_atomic(directory / metadata_file, final)
    return final
