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
- :func:`allocate_npy` creates a ``.npy`` file (``O_NOFOLLOW``: never through a link) and
  reserves its data bytes on disk (``os.posix_fallocate``; where the system lacks it, zeros are
  written), so a full disk is an ``OSError`` at allocation, never a ``SIGBUS`` in the middle of
  a collection (the memory maps of sparse files fault when the disk fills up).
- :class:`DirectoryLock`: an advisory, exclusive, non-blocking ``fcntl.flock`` on
  ``<directory>/.lock`` held while one process writes; a second writer (another process, or
  another store object in this one) gets ``RuntimeError`` naming the directory and the holder's
  process id. The lock file is opened with ``O_NOFOLLOW``: a ``.lock`` that is a symbolic link,
  not a regular file, or hard-linked elsewhere is refused (``ValueError``) and its target never
  written. The lock goes away with the process, so a killed writer never blocks a resume.
- :func:`named` turns an ``OSError`` raised while working on a file into one that names the
  file, says what was being done, and what to do (``ENOSPC``, ``EFBIG`` under ``ulimit -f``,
  ``EDQUOT``, ``EROFS``, ``EACCES``).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
from numpy.lib import format as npy_format

from ._ownership import NOFOLLOW, not_own_lock

__all__ = ["open_checked_npy", "read_json", "write_json_atomic", "DirectoryLock",
           "unique_temp_path", "LOCK_FILE", "allocate_npy", "named"]

LOCK_FILE = ".lock"

_ADVICE = {
    errno.ENOSPC: "the disk is full: free space, or collect into a directory on another disk",
    errno.EFBIG: ("the file would exceed the largest file this process may write (the shell's"
                  " `ulimit -f`) or the file system allows: raise the limit, or lower n_masks"),
    errno.EDQUOT: "the disk quota is exhausted: free space or ask for a larger quota",
    errno.EROFS: "the file system is read-only: collect into a writable directory",
    errno.EACCES: "permission denied: collect into a directory you may write",
    errno.EPERM: "operation not permitted: collect into a directory you may write",
}


@contextmanager
def named(path: Path, doing: str, where: str) -> Iterator[None]:
    """Re-raise an ``OSError`` from the block as one naming ``path`` (same errno and class)."""
    try:
        yield
    except OSError as error:
        if getattr(error, "_named_by_store", False):
            raise
        advice = _ADVICE.get(error.errno or -1, "")
        reason = error.strerror or str(error)
        named_error = OSError(error.errno, f"{where}: {doing} {str(path)!r} failed: {reason}"
                              + (f"; {advice}" if advice else ""), str(path))
        named_error._named_by_store = True  # type: ignore[attr-defined]
        raise named_error from error


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
        handle = open(path, "rb")
    except OSError as error:
        with named(path, "opening", "the store"):
            raise error
    try:
        with handle:
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
    with named(path, "memory-mapping", what):
        return np.load(path, mmap_mode=mode, allow_pickle=False)  # type: ignore[arg-type]


def allocate_npy(path: Path, shape: Tuple[int, ...], dtype: np.dtype, what: str) -> int:
    """Create ``path`` as a zeroed ``.npy`` of ``shape`` and ``dtype`` with its bytes reserved on
    disk; returns the file's size. Never follows a link; ``OSError`` (named) when the disk is
    full or the file too large."""
    dtype = np.dtype(dtype)
    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(int(v) for v in shape)}
    with named(path, "creating", what):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o644)
    try:
        with named(path, f"allocating {_data_bytes(shape, dtype)} bytes for", what):
            with os.fdopen(os.dup(fd), "wb") as handle:
                npy_format.write_array_header_1_0(handle, header)
            offset = os.lseek(fd, 0, os.SEEK_END)
            _reserve(fd, offset, _data_bytes(shape, dtype))
            os.fsync(fd)
            return offset + _data_bytes(shape, dtype)
    finally:
        os.close(fd)


def _data_bytes(shape: Tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _reserve(fd: int, offset: int, size: int) -> None:
    """Reserve ``size`` zero bytes at ``offset`` for real (not a sparse hole)."""
    if size <= 0:
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, size)
            return
        except OSError as error:  # not supported here: write the zeros instead
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    block = bytes(1 << 20)
    os.lseek(fd, offset, os.SEEK_SET)
    left = size
    while left:
        left -= os.write(fd, block[:min(left, len(block))])


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
        with named(path, "writing", "the store"):
            with open(tmp, "x", encoding="utf-8") as handle:
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
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        import fcntl

        path = self.directory / LOCK_FILE
        with named(self.directory, "creating the directory", "the store"):
            self.directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
        except OSError as error:
            if error.errno == errno.ELOOP or path.is_symlink():
                raise ValueError(not_own_lock(path, "is a symbolic link (to"
                                               f" {os.readlink(path)!r})")) from None
            with named(path, "opening the lock file", "the store"):
                raise error
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            what = ("is not a regular file" if not stat.S_ISREG(info.st_mode) else
                    f"has {info.st_nlink} hard links (it is also another file)")
            raise ValueError(not_own_lock(path, what))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeError(
                f"the store at {str(self.directory)!r} is being written by another process or"
                f" store object (lock held by pid {holder}); only one writer at a time. Wait for"
                " it to finish (then re-running resumes), or collect into another directory"
            ) from None
        with named(path, "writing the lock file", "the store"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

