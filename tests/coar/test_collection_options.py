"""One options object for collection: the same results as the keywords, carried by the
estimator, passed down unchanged, each default written once."""

from __future__ import annotations

import pytest
import torch
from coar_fixtures import CountingForward, additive_neurons

import captum_coar.coar.collection as collection
from captum_coar.coar import (
    CollectionOptions,
    ComponentAblationRegression,
    collect,
    collect_statistics,
    collect_statistics_shard,
    tensor_batches,
)
from captum_coar.coar._settings import default_n_masks
from captum_coar.stores import InMemoryStore

N = 12


def _setup(n=6):
    return additive_neurons(n, N)


def _as_pairs(batch):  # a batch function: the data are dicts
    return batch["x"], batch["y"]


KEYWORDS = dict(perturbations_per_eval=5, max_rows=40, chunk_rows=64, batch_fn=_as_pairs,
                show_progress=False)


def _dict_data(x, y):
    return [{"x": x[:4], "y": y[:4]}, {"x": x[4:], "y": y[4:]}]


def _tensors(stats):
    parts = [stats.train] + ([stats.validation] if stats.validation is not None else [])
    return [t for p in parts for t in p.to_dict().values() if isinstance(t, torch.Tensor)]


def test_options_and_keywords_give_identical_collections():
    model, components, x, y = _setup()
    data = _dict_data(x, y)
    calls = []
    results = []
    for how in ({**KEYWORDS, "dtype": torch.float32},
                {"options": CollectionOptions(dtype=torch.float32, **KEYWORDS)}):
        counter = CountingForward(model)
        results.append(collect_statistics(counter, components, data, n_masks=128, seed=3,
                                          ablation_fraction=0.3, validation_fraction=0.1, **how))
        calls.append(counter.calls)
    for a, b in zip(_tensors(results[0]), _tensors(results[1])):
        assert torch.equal(a, b)
    assert results[0].train.dtype == torch.float32 and results[0].settings == results[1].settings
    # the options act: 2 chunks of 64 rows x 2 batches x ceil(64 / 5) passes, against one
    # chunk with the default 128 // 4 = 32 and 128 // 2 = 64 masks per pass (4 + 2 passes);
    # the preflight and probe passes are the same
    counter = CountingForward(model)
    collect_statistics(counter, components, data, n_masks=128, seed=3, ablation_fraction=0.3,
                       batch_fn=_as_pairs)
    assert calls[0] == calls[1] and calls[0] - 2 * 2 * 13 == counter.calls - (4 + 2)
    stores = [collect(model, components, data, InMemoryStore(), n_masks=128, seed=3,
                      ablation_fraction=0.3, **how)
              for how in (KEYWORDS, {"options": CollectionOptions(**KEYWORDS)})]
    assert torch.equal(stores[0].read_outputs(stores[0].rows()),
                       stores[1].read_outputs(stores[1].rows()))


def test_the_estimator_carries_its_options_to_every_method():
    model, components, x, y = _setup()
    options = CollectionOptions(**KEYWORDS)
    carried = ComponentAblationRegression(model, components, options=options)
    plain = ComponentAblationRegression(model, components)
    data = _dict_data(x, y)
    a = carried.collect_statistics(data, n_masks=128, ablation_fraction=0.3)
    b = plain.collect_statistics(data, n_masks=128, ablation_fraction=0.3, **KEYWORDS)
    c = plain.collect_statistics(data, n_masks=128, ablation_fraction=0.3, options=options)
    for t in zip(_tensors(a), _tensors(b), _tensors(c)):
        assert torch.equal(t[0], t[1]) and torch.equal(t[0], t[2])
    # attribute makes its own batches: the carried batch_fn is not applied to them
    one = carried.attribute(x, target=y, n_masks=60, ablation_fraction=0.3)
    two = plain.attribute(x, target=y, n_masks=60, ablation_fraction=0.3,
                          perturbations_per_eval=5, max_rows=40)
    assert torch.equal(one, two)


def test_one_object_is_passed_down_unchanged(monkeypatch):
    model, components, x, y = _setup()
    seen = []
    real = collection.collect_statistics

    def spy(*args, **kwargs):
        seen.append(kwargs["options"])
        return real(*args, **kwargs)

    monkeypatch.setattr(collection, "collect_statistics", spy)
    import captum_coar.coar.shards as shards
    monkeypatch.setattr(shards, "collect_statistics", spy)
    options = CollectionOptions(**KEYWORDS)
    data = _dict_data(x, y)
    collect_statistics_shard(model, components, data, n_masks=64, shard=0, n_shards=2,
                             options=options)
    coar = ComponentAblationRegression(model, components, options=options)
    coar.collect_statistics_shard(data, shard=1, n_shards=2, n_masks=64)
    coar.collect_statistics(data, n_masks=64)
    assert len(seen) == 3 and all(o is options for o in seen)


def test_keywords_beside_options_must_agree_and_fields_are_checked():
    model, components, x, y = _setup()
    data = tensor_batches(x, y)
    options = CollectionOptions(chunk_rows=64)
    stats = collect_statistics(model, components, data, n_masks=64, chunk_rows=64,
                               options=options)  # the same value: fine
    assert stats.train.count == 64
    with pytest.raises(ValueError, match=r"`chunk_rows` must be 64 \(the value in options=\) or"
                       r" left out; got 128. give chunk_rows either as a keyword or in options="):
        collect_statistics(model, components, data, n_masks=64, chunk_rows=128, options=options)
    with pytest.raises(ValueError, match=r"`chunk_rows` must be an integer >= 1 or None; got 0"):
        CollectionOptions(chunk_rows=0)
    with pytest.raises(TypeError, match=r"`options` must be a CollectionOptions or None"):
        ComponentAblationRegression(model, components, options={"chunk_rows": 64})
    with pytest.raises(TypeError, match="unexpected keyword argument 'chunks'"):
        ComponentAblationRegression(model, components).collect(data, chunks=64)


def test_the_default_number_of_masks_is_written_once():
    model, components, x, y = _setup()
    coar = ComponentAblationRegression(model, components)
    assert default_n_masks(None, N) == 10 * N and default_n_masks(7, N) == 7
    data = tensor_batches(x, y)
    assert coar.collect_statistics(data, ablation_fraction=0.3).settings["n_masks"] == 10 * N
    shard = coar.collect_statistics_shard(data, shard=0, n_shards=3, ablation_fraction=0.3)
    assert shard.settings["n_masks"] == 10 * N and shard.train.count == 10 * N // 3
    coar.attribute(x, target=y, ablation_fraction=0.3)
    assert coar.last_result_.n_masks == 10 * N
