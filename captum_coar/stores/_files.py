"""Files of an on-disk store: checked ``.npy`` opening, checked JSON, atomic writes, a lock.

Contract
--------
- :func:`open_checked_npy` opens a ``.npy`` file as a memory map only after checking that it is
  a regular file (not a symbolic link), that its header parses, and that its dtype, shape,
  memory order and exact size match what the metadata implies. It never extends or zero-fills
  a short file (``numpy``'s ``r+`` mode would). Every error names the file.
- :func:`read_json` / :func:`write_json_atomic`: JSON with a CRC-32 of its content under the
  key ``"checksum"``; reading names the file when it is missing, empty, not JSON or damaged.
  Writes go to a uniquely named temporary file in the same directory, are flushed and
  ``fsync``-ed, then renamed over the target.
- :class:`DirectoryLock`: an advisory, exclusive, non-blocking ``fcntl.flock`` on
  ``<directory>/.lock`` held while one process writes; a second writer (another process, or
  another store object in this one) gets ``RuntimeError`` naming the directory and the holder's
  process id. The lock goes away with the process, so a killed writer never blocks a resume.
"""

from __future__ import annotations

import json
import os
import uuid
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
from numpy.lib import format as npy_format

__all__ = ["open_checked_npy", "read_json", "write_json_atomic", "DirectoryLock",
           "unique_temp_path", "LOCK_FILE"]

LOCK_FILE = ".lock"


def unique_temp_path(target: Path) -> Path:
    """A temporary name beside ``target`` that no other process or call will use."""
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _regular_file(path: Path, what: str) -> None:
    if path.is_symlink():
        raise ValueError(
            f"{what}: {str(path)!r} is a symbolic link (to {os.readlink(path)!r}); a store holds"
            " its own files, and writing through a link would change another store. Copy the"
            " file instead of linking it, or collect into a new directory")
    if not path.exists():
        raise FileNotFoundError(f"{what}: {str(path)!r} is missing; the store is incomplete"
                                " (restore the file, or collect into a new directory)")
    if not path.is_file():
        raise ValueError(f"{what}: {str(path)!r} is not a regular file")


def _read_header(path: Path) -> Tuple[Tuple[int, ...], bool, np.dtype, int]:
    try:
        with open(path, "rb") as handle:
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = handle.tell()
    except Exception as error:  # noqa: BLE001 - numpy raises many kinds for a damaged header
        raise ValueError(f"{str(path)!r} is damaged: its .npy header cannot be read ({error});"
                         " the store cannot be used (collect into a new directory)") from error
    return tuple(shape), bool(fortran), np.dtype(dtype), offset


def open_checked_npy(path: Path, shape: Tuple[int, ...], dtype: np.dtype, mode: str,
                     what: str) -> np.memmap:
    """Memory-map ``path`` after checking type, dtype, shape, order and exact size."""
    _regular_file(path, what)
    found_shape, fortran, found_dtype, offset = _read_header(path)
    problems = []
    if found_dtype != np.dtype(dtype):
        problems.append(f"dtype {found_dtype}, expected {np.dtype(dtype)}")
    if found_shape != tuple(shape):
        problems.append(f"shape {found_shape}, expected {tuple(shape)}")
    if fortran:
        problems.append("Fortran order, expected C order")
    if not problems:
        expected_size = offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        size = path.stat().st_size
        if size != expected_size:
            problems.append(f"{size} bytes, expected {expected_size}"
                            + (" (truncated: data is missing)" if size < expected_size else
                               " (extra bytes)"))
    if problems:
        raise ValueError(f"{what}: {str(path)!r} does not match the store's metadata: "
                         + "; ".join(problems) + ". The file is damaged or belongs to another"
                         " store; it is never padded or reinterpreted (collect into a new"
                         " directory, or restore the file)")
    return np.load(path, mmap_mode=mode, allow_pickle=False)  # type: ignore[arg-type]


def _content_checksum(record: Dict[str, Any]) -> int:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def read_json(path: Path, what: str) -> Dict[str, Any]:
    """A JSON object written by :func:`write_json_atomic`, its checksum verified."""
    _regular_file(path, what)
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{what}: {str(path)!r} is empty or not valid JSON ({error}); the store"
                         " is damaged (collect into a new directory)") from error
    if not isinstance(record, dict):
        raise ValueError(f"{what}: {str(path)!r} holds a {type(record).__name__}, not a JSON"
                         " object; the store is damaged")
    if "checksum" in record and record["checksum"] != _content_checksum(record):
        raise ValueError(f"{what}: {str(path)!r} is damaged (its content does not match its"
                         " checksum); the store cannot be trusted (collect into a new directory)")
    return record


def write_json_atomic(path: Path, record: Dict[str, Any]) -> int:
    """Write ``record`` plus its checksum to ``path`` atomically (unique temp file + rename);
    returns the checksum."""
    record = json.loads(json.dumps(record, sort_keys=True))
    record["checksum"] = _content_checksum(record)
    tmp = unique_temp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return int(record["checksum"])


class DirectoryLock:
    """Exclusive advisory lock on ``directory/.lock`` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._handle: Optional[Any] = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> None:
        if self._handle is not None:
            return
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.directory / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RuntimeError(
                f"the store at {str(self.directory)!r} is being written by another process or"
                f" store object (lock held by pid {holder}); only one writer at a time. Wait for"
                " it to finish (then re-running resumes), or collect into another directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        import fcntl

        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        finally:
            self._handle.close()
            self._handle = None
