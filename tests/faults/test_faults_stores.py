"""Faults of the store's surroundings: a store touches only its own files, never follows a
link, notices its directory vanishing, and names the file and the bytes when the disk refuses.

Every test sets up what a user (or a full disk) does to a store directory and checks that the
collection either refuses with a message naming the problem, before anything is written, or
leaves every file that is not the store's own bit for bit as it was.
"""

import errno
import os
import resource
import shutil

import numpy as np
import pytest
from coar_fixtures import CountingForward
from fault_fixtures import SETTINGS, copy_store, make_reference, make_setup

from captum_coar.coar import collect
from captum_coar.stores import MemmapStore


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return make_reference(tmp_path_factory.mktemp("stores"))


def snapshot(directory):
    """Every entry of ``directory``: name -> bytes (or the link's target)."""
    return {p.name: (os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(directory.iterdir())}


# --------------------------------------------------------------------------- not ours
def test_a_directory_of_someone_elses_files_is_refused_untouched(tmp_path):
    model, components, data = make_setup()
    counter = CountingForward(model)
    path = tmp_path / "results"
    path.mkdir()
    (path / "outputs.npy").write_bytes(b"the user's own array")
    (path / ".draft.tmp").write_text("a draft")
    before = snapshot(path)
    with pytest.raises(ValueError) as error:
        collect(counter, components, data, str(path), **SETTINGS)
    message = str(error.value)
    for word in (str(path), "'outputs.npy'", "'.draft.tmp'", "not a captum_coar store",
                 "empty directory or a new path"):
        assert word in message, (word, message)
    assert snapshot(path) == before  # nothing written, created or deleted
    assert counter.calls == 0


def test_a_store_never_deletes_or_overwrites_files_not_its_own(reference, tmp_path):
    path = copy_store(reference[0], tmp_path / "store")
    (path / ".draft.tmp").write_text("a draft")  # a temporary name, but not the store's
    (path / "notes.txt").write_text("notes")
    (path / ".metadata.json.77.0123456789ab.tmp").write_text("{half")  # the store's own
    model, components, data = make_setup()
    collect(model, components, data, str(path), **SETTINGS)
    assert (path / ".draft.tmp").read_text() == "a draft"
    assert (path / "notes.txt").read_text() == "notes"
    assert not (path / ".metadata.json.77.0123456789ab.tmp").exists()


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_linked_lock_is_refused_and_its_target_never_written(reference, tmp_path, kind):
    path = copy_store(reference[0], tmp_path / "store")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (path / ".lock").unlink(missing_ok=True)
    if kind == "symlink":
        (path / ".lock").symlink_to(victim)
    else:
        os.link(victim, path / ".lock")
    model, components, data = make_setup()
    counter = CountingForward(model)
    with pytest.raises(ValueError) as error:
        collect(counter, components, data, str(path), **SETTINGS)
    message = str(error.value)
    assert ".lock" in message and ("symbolic link" if kind == "symlink" else "hard links") \
        in message, message
    assert victim.read_text() == "precious"
    assert counter.calls == 0


# --------------------------------------------------------------------------- vanishing stores
def _delete(path):
    shutil.rmtree(path)


def _replace_directory(path):
    os.rename(path, path.with_name("moved-away"))
    path.mkdir()


def _replace_file(path):
    shutil.copy(path / "outputs.npy", path / "copy")
    os.replace(path / "copy", path / "outputs.npy")


@pytest.mark.parametrize("act", [_delete, _replace_directory, _replace_file])
def test_a_store_deleted_or_replaced_during_collection_is_never_reported_complete(tmp_path, act):
    model, components, data = make_setup()
    path = tmp_path / "store"
    calls = []

    def forward(x):  # call 1 is the identity probe; the collection makes 12 more
        calls.append(1)
        if len(calls) == 5:
            act(path)
        return model(x)

    with pytest.raises(RuntimeError) as error:
        collect(forward, components, data, str(path), **SETTINGS)
    message = str(error.value)
    assert str(path) in message and "NOT complete" in message, message
    assert len(calls) < 13  # stopped at the next commit


def test_a_store_deleted_after_its_last_commit_is_caught_before_returning(reference, tmp_path):
    path = copy_store(reference[0], tmp_path / "store")
    store = MemmapStore(path)
    with pytest.raises(RuntimeError, match="deleted or moved away"):
        with store.writing():
            assert store.n_completed == SETTINGS["n_masks"]
            shutil.rmtree(path)


# --------------------------------------------------------------------------- full disks
def test_store_files_are_allocated_for_real_not_sparse(tmp_path):
    model, components, data = make_setup()
    path = tmp_path / "store"
    collect(model, components, data, str(path), **dict(SETTINGS, n_masks=30_000), rows=(0, 0))
    for name in ("masks.npy", "outputs.npy", "progress.npy", "checksums.npy"):
        info = os.stat(path / name)
        assert info.st_blocks * 512 >= info.st_size, (name, info.st_blocks * 512, info.st_size)


def test_a_full_disk_names_the_store_the_file_and_the_bytes_missing(tmp_path, monkeypatch):
    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    model, components, data = make_setup()
    path = tmp_path / "store"
    with pytest.raises(OSError) as error:
        collect(model, components, data, str(path), **SETTINGS)
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(path / "masks.npy")
    message = str(error.value)
    for word in (str(path), "masks.npy", "bytes missing", "another disk"):
        assert word in message, (word, message)
    # the space is given back, and no row was collected (nothing holds it)
    assert not list(path.glob("*.npy")) and not (path / "metadata.json").exists()
    monkeypatch.undo()  # space again: the same call collects the store
    store = collect(model, components, data, str(path), **SETTINGS)
    assert store.n_completed == SETTINGS["n_masks"]


def test_a_file_size_limit_names_the_file(tmp_path):
    model, components, data = make_setup()
    path = tmp_path / "store"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # `ulimit -f 64`
    try:
        with pytest.raises(OSError) as error:
            collect(model, components, data, str(path), **dict(SETTINGS, n_masks=4096))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert error.value.errno == errno.EFBIG
    assert error.value.filename == str(path / "outputs.npy")
    assert "ulimit -f" in str(error.value) and str(path) in str(error.value)


def test_damaged_memory_maps_are_never_reached_after_a_refusal(tmp_path):
    """A refused collection (here: a directory of someone else's files) leaves no store files
    that a later fit could mistake for data."""
    model, components, data = make_setup()
    path = tmp_path / "mixed"
    path.mkdir()
    np.save(path / "masks.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not a captum_coar store"):
        collect(model, components, data, str(path), **SETTINGS)
    assert sorted(p.name for p in path.iterdir()) == ["masks.npy"]
    with pytest.raises(ValueError, match="empty"):
        _ = MemmapStore(path, read_only=True).metadata
