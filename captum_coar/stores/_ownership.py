"""What an on-disk store may touch: its own directory, its own file names, nothing else.

Contract
--------
A :class:`~captum_coar.stores.memmap.MemmapStore` directory is *claimed* by a marker file,
:data:`MARKER` (a fixed text, made before any other file and complete whenever it exists: written
to an own temporary name, then hard-linked to its name, which fails if the name exists;
``O_CREAT | O_EXCL | O_NOFOLLOW`` where hard links are not available). :func:`claim` is called
before a writer takes the lock:

- a missing or empty directory is created or used, and marked;
- a marked directory, or one holding a valid ``metadata.json`` of a store (made before markers
  existed), is a store and is used;
- any other non-empty directory is refused with ``ValueError`` naming the directory and the
  files found there, before anything is written, created or deleted in it.

:func:`inspect` makes the same checks read-only (and refuses a ``.lock`` that is a link, not a
regular file, or hard-linked), so a collection can refuse a directory before any forward pass.

Inside a claimed directory a store writes, replaces or deletes only :data:`OWN_NAMES` and its
own temporary files (:func:`is_own_temp`: ``.<own name>.<pid>[.<hex>].tmp``); every other file
is left alone.

:class:`Place` remembers the device and inode of the directory and of the store's files while a
writer holds the lock; :meth:`Place.check` raises ``RuntimeError`` when the directory or a file
was deleted, moved away or replaced (the memory maps of deleted files keep accepting writes,
so without it a collection would report rows "complete" that exist nowhere).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Dict, List, Optional, Tuple

__all__ = ["MARKER", "OWN_NAMES", "claim", "inspect", "is_own_temp", "remove_own_temps", "Place",
           "NOFOLLOW", "not_own_lock"]

MARKER = ".captum_coar_store"
_MARKER_TEXT = ("captum_coar MemmapStore: the files metadata.json, masks.npy, outputs.npy,"
                " progress.npy, checksums.npy and .lock in this directory are written by"
                " captum_coar; other files are never touched.\n")
DATA_NAMES = ("metadata.json", "masks.npy", "outputs.npy", "progress.npy", "checksums.npy")
OWN_NAMES = frozenset(DATA_NAMES + (".lock", MARKER))
_TEMP = re.compile(r"^\.(?P<name>[A-Za-z_.]+?)\.\d+(\.[0-9a-f]{12})?\.tmp$")
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def is_own_temp(name: str) -> bool:
    """Whether ``name`` is a temporary file a store writer makes (and may remove)."""
    match = _TEMP.match(name)
    return match is not None and match.group("name") in OWN_NAMES


def _is_marker(path: Path) -> bool:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, encoding="utf-8") as handle:
            return handle.read(len(_MARKER_TEXT) + 1) == _MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def _has_store_metadata(path: Path) -> bool:
    """A ``metadata.json`` a store wrote (made before markers): a regular file, JSON, with a
    format version and the array sizes."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and all(key in record for key in (
        "format_version", "n_masks", "n_components", "n_examples", "checksum"))


def _foreign_message(directory: Path, names: List[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:8]) + (f" and {len(names) - 8} more"
                                                      if len(names) > 8 else "")
    return (f"{str(directory)!r} is not empty and is not a captum_coar store: it holds {shown}."
            " A store writes only its own files and never overwrites or deletes anyone"
            " else's, so nothing was written there. Collect into an empty directory or a new"
            " path (or move those files away)")


def not_own_lock(path: Path, what: str) -> str:
    """The message refusing a ``.lock`` that is not the store's own regular file."""
    return (f"the store's lock file {str(path)!r} {what}; a store writes only its own regular"
            " files and never writes through a link (the target would be overwritten), so"
            " nothing was written. Remove that entry (it is not this store's lock) or collect"
            " into a new directory")


def inspect(directory: Path) -> bool:
    """Read-only check that a store writer may use ``directory`` (``ValueError`` naming what
    is not its own: other files, a linked ``.lock``); returns whether the directory exists."""
    try:
        entries = sorted(n for n in os.listdir(directory) if not is_own_temp(n))
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise ValueError(f"{str(directory)!r} is a file, not a directory; a store is a"
                         " directory: give a new path") from None
    if entries and not _is_marker(directory / MARKER) and not _has_store_metadata(
            directory / "metadata.json"):
        raise ValueError(_foreign_message(directory, entries))
    lock = directory / ".lock"
    try:
        info = os.lstat(lock)
    except FileNotFoundError:
        return True
    if stat.S_ISLNK(info.st_mode):
        raise ValueError(not_own_lock(lock, f"is a symbolic link (to {os.readlink(lock)!r})"))
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(not_own_lock(lock, "is not a regular file"))
    if info.st_nlink != 1:
        raise ValueError(not_own_lock(lock, f"has {info.st_nlink} hard links (it is also"
                                      " another file)"))
    return True


def claim(directory: Path) -> None:
    """Create or check ``directory`` for a store writer, then mark it (module docstring)."""
    if not inspect(directory):
        directory.mkdir(parents=True, exist_ok=True)
    marker = directory / MARKER
    if _is_marker(marker):
        return
    # write the text to an own temporary name, then link it in place: a marker is complete
    # whenever it exists, and O_EXCL semantics (link fails if the name exists) keep a link or
    # another file at that name untouched
    temp = directory / f".{MARKER}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
    try:
        os.write(fd, _MARKER_TEXT.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, marker, follow_symlinks=False)
    except OSError as error:  # exists already, or no hard links here (or the temp was removed
        if not _is_marker(marker):  # by a writer cleaning up: it holds the marked directory)
            if isinstance(error, FileExistsError):  # a link or someone else's file
                raise ValueError(_foreign_message(directory, [MARKER])) from None
            _create_marker(directory, marker)
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


def _create_marker(directory: Path, marker: Path) -> None:
    """Exclusive create (file systems without hard links)."""
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
    except FileExistsError:
        if _is_marker(marker):
            return
        raise ValueError(_foreign_message(directory, [MARKER])) from None
    try:
        os.write(fd, _MARKER_TEXT.encode())
    finally:
        os.close(fd)


def remove_own_temps(directory: Path) -> None:
    """Remove temporary files a killed writer left (own names only; links are not followed)."""
    for name in os.listdir(directory):
        if is_own_temp(name):
            try:
                os.unlink(directory / name)
            except FileNotFoundError:
                pass


def _identity(path: Path) -> Optional[Tuple[int, int]]:
    try:
        info = os.stat(path)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    return info.st_dev, info.st_ino


class Place:
    """The directory and files a writer works on, by device and inode (module docstring)."""

    def __init__(self, directory: Path, where: str) -> None:
        self.directory = directory
        self.where = where
        found = _identity(directory)
        if found is None:
            raise RuntimeError(f"{where}: the directory {str(directory)!r} vanished while the"
                               " lock was taken; collect again")
        self._directory = found
        self._files: Dict[str, Tuple[int, int]] = {}

    def remember(self, names: Tuple[str, ...] = DATA_NAMES) -> None:
        """Record the current identity of the store's files (after opening or creating them)."""
        for name in names:
            found = _identity(self.directory / name)
            if found is not None:
                self._files[name] = found

    def check(self) -> None:
        """``RuntimeError`` when the directory or a remembered file is gone or was replaced."""
        problems = []
        now = _identity(self.directory)
        if now is None:
            problems.append("the directory was deleted or moved away")
        elif now != self._directory:
            problems.append("the directory was replaced by another one")
        else:
            for name, identity in self._files.items():
                found = _identity(self.directory / name)
                if found != identity:
                    problems.append(f"{name!r} was {'deleted' if found is None else 'replaced'}")
        if problems:
            raise RuntimeError(
                f"{self.where}: " + "; ".join(problems) + " while this process was writing it;"
                " the rows written since exist nowhere else, so the collection is NOT complete."
                " Re-run the collection into a new directory (or into this path once the store"
                " is restored: it resumes from what is on disk)")
