"""Fault injection into on-disk stores: every fault ends in an error that names the problem, or
in a result bit-identical to the undamaged run.

Each fault is injected into a copy of a complete reference store. Then (a) ``fit`` from the
store must raise an error naming the problem or return the reference attributions exactly, and
(b) re-running the same collection into the store (a resume) must raise an error naming the
problem or leave the store's arrays bit-identical to the reference (damaged rows recollected).
"""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from fault_fixtures import (
    ARRAYS,
    SETTINGS,
    assert_same_arrays,
    copy_store,
    data_offset,
    flip_byte,
    make_reference,
    make_setup,
)

from captum_coar.coar import ComponentAblationRegression, collect
from captum_coar.sampling import BernoulliSampler
from captum_coar.stores import MemmapStore

STORE_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return make_reference(tmp_path_factory.mktemp("faults"))


def fit_outcome(path):
    model, components, _ = make_setup()
    try:
        return None, ComponentAblationRegression(model, components).fit(str(path)).attributions
    except STORE_ERRORS as error:
        return str(error), None


def resume_outcome(path):
    model, components, data = make_setup()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            collect(model, components, data, str(path), **SETTINGS)
        return None, [str(w.message) for w in caught]
    except STORE_ERRORS as error:
        return str(error), None


def check(reference, path, fit_words, resume_words):
    """``*_words``: words the error must contain, or None: the result must be the reference's."""
    ref_path, ref_coef = reference
    error, coef = fit_outcome(path)
    if fit_words is None:
        assert error is None, error
        assert torch.equal(coef, ref_coef)
    else:
        assert error is not None, "fit accepted a damaged store"
        for word in fit_words:
            assert word in error, (word, error)
    error, caught = resume_outcome(path)
    if resume_words is None:
        assert error is None, error
        assert_same_arrays(path, ref_path)
        error, coef = fit_outcome(path)
        assert error is None and torch.equal(coef, ref_coef)
    else:
        assert error is not None, "resume accepted a damaged store"
        for word in resume_words:
            assert word in error, (word, error)
    return caught


# --------------------------------------------------------------------------- file-level faults
@pytest.mark.parametrize("name", ARRAYS)
def test_truncated_or_extended_array_is_named_never_padded(reference, tmp_path, name):
    path = copy_store(reference[0], tmp_path / "store")
    size = (path / name).stat().st_size
    os.truncate(path / name, size - 3)
    check(reference, path, [name, "truncated"], [name, "truncated"])
    assert (path / name).stat().st_size == size - 3  # never zero-filled
    with open(path / name, "ab") as handle:
        handle.write(b"\0" * 11)
    check(reference, path, [name, "extra bytes"], [name, "extra bytes"])


def test_wrong_dtype_and_shape_are_named(reference, tmp_path):
    path = copy_store(reference[0], tmp_path / "store")
    outputs = np.load(path / "outputs.npy")
    np.save(path / "outputs.npy", outputs.astype(np.float64))
    check(reference, path, ["outputs.npy", "dtype float64"], ["outputs.npy", "dtype float64"])
    np.save(path / "outputs.npy", outputs)
    check(reference, path, None, None)
    masks = np.load(path / "masks.npy")
    np.save(path / "masks.npy", masks[:-1])
    check(reference, path, ["masks.npy", "shape"], ["masks.npy", "shape"])


@pytest.mark.parametrize("name", ARRAYS)
def test_missing_array_is_named(reference, tmp_path, name):
    path = copy_store(reference[0], tmp_path / "store")
    (path / name).unlink()
    check(reference, path, [name, "missing"], [name, "missing"])


def test_missing_metadata_means_empty_and_extra_files_are_ignored(reference, tmp_path):
    path = copy_store(reference[0], tmp_path / "store")
    (path / "stray.txt").write_text("not ours")
    (path / ".metadata.json.123.tmp").write_text("{half")  # a writer killed mid-rename
    check(reference, path, None, None)
    assert not (path / ".metadata.json.123.tmp").exists()  # removed by the next writer
    assert (path / "stray.txt").exists()  # other files are left alone
    (path / "metadata.json").unlink()  # metadata is written last: the store holds nothing
    check(reference, path, ["empty"], None)


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_unreadable_metadata_names_the_file(reference, tmp_path, content):
    path = copy_store(reference[0], tmp_path / "store")
    (path / "metadata.json").write_text(content)
    check(reference, path, ["metadata.json"], ["metadata.json"])


def test_edited_metadata_fails_its_checksum(reference, tmp_path):
    path = copy_store(reference[0], tmp_path / "store")
    record = json.loads((path / "metadata.json").read_text())
    record["seed"] = 1
    (path / "metadata.json").write_text(json.dumps(record))
    check(reference, path, ["metadata.json", "checksum"], ["metadata.json", "checksum"])


@pytest.mark.parametrize("name", ARRAYS + ("metadata.json",))
def test_symlinked_file_is_refused(reference, tmp_path, name):
    other = copy_store(reference[0], tmp_path / "other")
    path = copy_store(reference[0], tmp_path / "store")
    (path / name).unlink()
    (path / name).symlink_to(other / name)
    check(reference, path, [name, "symbolic link"], [name, "symbolic link"])


@pytest.mark.parametrize("name", ARRAYS)
@pytest.mark.parametrize("where", [0, 9, -2])  # magic string, inside the header dict, padding
def test_flipped_header_byte_names_the_file(reference, tmp_path, name, where):
    path = copy_store(reference[0], tmp_path / "store")
    offset = where if where >= 0 else data_offset(path / name) + where
    flip_byte(path / name, offset, 0x01)
    check(reference, path, [name], [name])


# --------------------------------------------------------------------------- row-level faults
@pytest.mark.parametrize("name", ["masks.npy", "outputs.npy", "checksums.npy"])
@pytest.mark.parametrize("row", [0, 37, 63])
def test_flipped_data_byte_is_detected_and_recollected(reference, tmp_path, name, row):
    path = copy_store(reference[0], tmp_path / "store")
    width = np.load(path / name, mmap_mode="r")[0].nbytes
    flip_byte(path / name, data_offset(path / name) + row * width + width // 2)
    caught = check(reference, path, ["checksum", f"[{row}, {row + 1})"], None)
    assert any("recollecting 1 row(s)" in message for message in caught)


@pytest.mark.parametrize("mask", [0x01, 0x02, 0x10, 0x80])
def test_flipped_progress_byte_is_repaired(reference, tmp_path, mask):
    path = copy_store(reference[0], tmp_path / "store")
    flip_byte(path / "progress.npy", data_offset(path / "progress.npy") + 8 * 5, mask)
    progress = np.load(path / "progress.npy")[5]  # was 10 = n_examples
    words = ["outside [0, 10]", "[5, 6)"] if not 0 <= progress <= 10 else ["not complete"]
    if progress == 10:
        words = None
    check(reference, path, words, None)


def test_progress_out_of_range_is_reported_and_repaired(reference, tmp_path):
    path = copy_store(reference[0], tmp_path / "store")
    progress = np.load(path / "progress.npy", mmap_mode="r+")
    progress[3], progress[40] = -5, 10**9
    progress.flush()
    del progress
    report = MemmapStore(path, read_only=True).verify()
    assert report.progress_out_of_range == [3, 40] and not report.ok
    caught = check(reference, path, ["outside [0, 10]", "[3, 4)", "[40, 41)"], None)
    assert any("progress lies outside" in message for message in caught)


def test_outputs_zeroed_where_progress_says_done(reference, tmp_path):
    path = copy_store(reference[0], tmp_path / "store")
    outputs = np.load(path / "outputs.npy", mmap_mode="r+")
    outputs[10:14] = 0.0
    outputs.flush()
    del outputs
    report = MemmapStore(path, read_only=True).verify()
    assert report.checksum_mismatch == [10, 11, 12, 13]
    assert "[10, 14)" in str(report)
    check(reference, path, ["checksum", "[10, 14)"], None)


def test_arrays_swapped_in_from_another_store_do_not_verify(reference, tmp_path):
    """Rows copied from a store of the same shapes (another seed) fail this store's checksums."""
    model, components, data = make_setup()
    other = tmp_path / "other"
    collect(model, components, data, str(other), **dict(SETTINGS, seed=1))
    path = copy_store(reference[0], tmp_path / "store")
    for name in ("masks.npy", "outputs.npy", "checksums.npy"):
        shutil.copy(other / name, path / name)
    check(reference, path, ["checksum", "64 row(s)"], None)


def test_verify_checks_masks_against_the_sampler(reference, tmp_path):
    path = copy_store(reference[0], tmp_path / "store")
    store = MemmapStore(path, read_only=True)
    assert store.verify(BernoulliSampler(0.2)).ok
    assert store.verify().masks_checked  # the built-in sampler is rebuilt from the metadata
    assert store.verify(BernoulliSampler(0.2), seed=5).mask_mismatch  # other seed: other masks
    masks = np.load(path / "masks.npy", mmap_mode="r+")
    masks[7, 0] ^= 0x80
    masks.flush()
    del masks
    report = MemmapStore(path, read_only=True).verify()
    assert report.mask_mismatch == [7] and report.checksum_mismatch == [7]
    assert "[7, 8)" in str(report)


def test_partial_row_with_a_wrong_mask_is_recollected(reference, tmp_path):
    """A row in progress (no checksum yet) whose stored mask differs from the sampler's."""
    path = copy_store(reference[0], tmp_path / "store")
    progress = np.load(path / "progress.npy", mmap_mode="r+")
    progress[40] = 4  # first batch written, the rest pending
    progress.flush()
    masks = np.load(path / "masks.npy", mmap_mode="r+")
    masks[40, 1] ^= 0x01
    masks.flush()
    del progress, masks
    error, caught = resume_outcome(path)
    assert error is None
    assert any("stored masks differ" in message for message in caught)
    assert_same_arrays(path, reference[0])


# --------------------------------------------------------------------------- one writer at a time
def test_second_writer_is_refused_and_temp_names_are_unique(reference, tmp_path):
    path = copy_store(reference[0], tmp_path / "store")
    first, second = MemmapStore(path), MemmapStore(path)
    with first.writing():
        with pytest.raises(RuntimeError, match="being written by another process"):
            with second.writing():
                pass
        model, components, data = make_setup()
        with pytest.raises(RuntimeError, match="only one writer"):
            collect(model, components, data, str(path), **SETTINGS)
    with second.writing():  # released after the first writer
        pass
    with pytest.raises(RuntimeError, match="needs the store's lock"):
        MemmapStore(path).reset_rows(np.array([0]))
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]
