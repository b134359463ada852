"""Stores and statistics that grow: asking for more masks appends rows, old rows untouched.

Known answer: masks depend only on ``(seed, row)``, so collecting 100 rows and then 200 must
give exactly the store (masks, outputs, progress) and the fit that one collection of 200 gives;
an interrupted extension, resumed, must end the same; every other difference is still refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coar_fixtures import CountingForward, additive_neurons

import captum_coar.stores._growth as growth
from captum_coar.coar import ComponentAblationRegression, tensor_batches
from captum_coar.stores import InMemoryStore, MemmapStore

COMMON = dict(ablation_fraction=0.3, seed=2)


def _setup(forward=None):
    model, components, x, y = additive_neurons(5, 12)
    coar = ComponentAblationRegression(model if forward is None else forward(model), components)
    return coar, tensor_batches(x, y, batch_size=2)


def _same(a, b):
    assert a.n_masks == b.n_masks and a.is_complete and b.is_complete
    assert torch.equal(a.read_masks(), b.read_masks())
    assert torch.equal(a.read_outputs(), b.read_outputs())
    assert np.array_equal(a.progress(), b.progress())
    assert a.verify().ok and b.verify().ok


@pytest.mark.parametrize("kind", ["memory", "memmap"])
def test_collecting_100_then_200_is_collecting_200(kind, tmp_path):
    coar, data = _setup()

    def new(name):
        return InMemoryStore() if kind == "memory" else MemmapStore(tmp_path / name)

    grown = coar.collect(data, new("grown"), n_masks=100, **COMMON)
    first = grown.read_outputs().clone()
    coar.collect(data, grown, n_masks=200, **COMMON)
    once = coar.collect(data, new("once"), n_masks=200, **COMMON)
    if kind == "memmap":
        grown = MemmapStore(tmp_path / "grown", read_only=True)
    _same(grown, once)
    assert torch.equal(grown.read_outputs((0, 100)), first)  # the old rows, untouched
    torch.testing.assert_close(coar.fit(grown, solver="least_squares").attributions,
                               coar.fit(once, solver="least_squares").attributions,
                               rtol=0, atol=0)


def test_every_other_difference_is_still_refused():
    coar, data = _setup()
    store = coar.collect(data, InMemoryStore(), n_masks=100, **COMMON)
    with pytest.raises(ValueError, match=r"cannot be resumed or extended: n_masks: .*; seed:"):
        coar.collect(data, store, n_masks=200, ablation_fraction=0.3, seed=3)
    with pytest.raises(ValueError, match=r"n_masks: given 50, stored 100"):
        coar.collect(data, store, n_masks=50, **COMMON)
    with pytest.raises(ValueError, match=r"sampler:"):
        coar.collect(data, store, n_masks=200, ablation_fraction=0.2, seed=2)
    assert store.n_masks == 100


def test_an_interrupted_extension_resumes_to_the_same_store(tmp_path):
    coar, data = _setup()
    reference = coar.collect(data, MemmapStore(tmp_path / "ref"), n_masks=60, **COMMON)
    coar.collect(data, reference, n_masks=150, **COMMON)
    crashing, data = _setup(lambda model: CountingForward(model, fail_after=8))
    store = coar.collect(data, MemmapStore(tmp_path / "run"), n_masks=60, **COMMON)
    with pytest.raises(KeyboardInterrupt):
        crashing.collect(data, store, n_masks=150, **COMMON)
    partial = MemmapStore(tmp_path / "run", read_only=True)
    assert partial.n_masks == 150 and 60 <= partial.n_completed < 150
    coar.collect(data, MemmapStore(tmp_path / "run"), n_masks=150, **COMMON)
    _same(MemmapStore(tmp_path / "run", read_only=True),
          MemmapStore(tmp_path / "ref", read_only=True))


def test_an_extension_interrupted_while_the_files_grow_is_completed(tmp_path, monkeypatch):
    coar, data = _setup()
    store = coar.collect(data, MemmapStore(tmp_path / "run"), n_masks=60, **COMMON)
    real, calls = growth._grow_file, []

    def crash_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("simulated crash between two files")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(growth, "_grow_file", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        coar.collect(data, store, n_masks=100, **COMMON)
    monkeypatch.setattr(growth, "_grow_file", real)
    with pytest.raises(ValueError, match=r"an extension to 100 rows was interrupted; re-run"):
        MemmapStore(tmp_path / "run", read_only=True).verify()
    coar.collect(data, MemmapStore(tmp_path / "run"), n_masks=100, **COMMON)
    once = coar.collect(data, MemmapStore(tmp_path / "once"), n_masks=100, **COMMON)
    _same(MemmapStore(tmp_path / "run", read_only=True), once)


def test_statistics_grow_by_merging_the_new_rows():
    coar, data = _setup()
    first = coar.collect_statistics(data, n_masks=100, prior=False, **COMMON)
    more = coar.collect_statistics(data, n_masks=200, rows=(100, 200), prior=False, **COMMON)
    once = coar.collect_statistics(data, n_masks=200, prior=False, **COMMON)
    first.merge(more)
    assert first.settings["n_masks"] == 200 and first.settings["rows"] == once.settings["rows"]
    for key, value in once.train.to_dict().items():
        torch.testing.assert_close(first.train.to_dict()[key], value, rtol=1e-12, atol=1e-12)
    held = coar.collect_statistics(data, n_masks=100, validation_fraction=0.2, prior=False,
                                   **COMMON)
    later = coar.collect_statistics(data, n_masks=200, rows=(100, 200),
                                    validation_fraction=0.2, prior=False, **COMMON)
    with pytest.raises(ValueError, match=r"n_masks: these 100, the other 200"):
        held.merge(later)  # held-out rows are the last rows of each: they cannot grow
