"""baselines= at data-set scale: batches that carry their own paired baselines, through
collect, collect_statistics, stores, resume and shards."""

import pytest
import torch

from captum_coar import (
    ComponentAblation,
    ComponentAblationRegression,
    linear_neurons,
    tensor_batches,
)
from captum_coar.coar import (
    collect_shard,
    collect_statistics,
    collect_statistics_shard,
    merge_statistics,
)
from captum_coar.testing import AdditiveNet


@pytest.fixture
def paired():
    model = AdditiveNet(n_in=5, n_hidden=6, n_classes=3).eval()
    components = linear_neurons(model, ["hidden"])
    generator = torch.Generator().manual_seed(5)
    x, base = torch.randn(9, 5, generator=generator), torch.randn(9, 5, generator=generator)
    target = torch.arange(9) % 3
    return model, components, x, base, target


def test_paired_batches_give_the_in_memory_answer_and_exact_patching(paired, tmp_path):
    model, components, x, base, target = paired
    data = tensor_batches(x, target, baselines=base, batch_size=4)  # 3 batches: 4, 4, 1
    coar = ComponentAblationRegression(model, components)
    settings = dict(n_masks=60, ablation_fraction=0.3, output="logit", seed=1)
    store = coar.collect(data, str(tmp_path / "store"), **settings)
    from_store = coar.fit(store).attributions
    in_memory = coar.attribute(x, target=target, baselines=base, solver="least_squares",
                               **settings)
    torch.testing.assert_close(from_store, in_memory)
    exact = ComponentAblation(model, components).attribute(x, target=target, baselines=base,
                                                           output="logit")
    torch.testing.assert_close(from_store, exact, atol=1e-4, rtol=1e-4)  # additive: exact
    stats = collect_statistics(model, components, data, **settings)
    torch.testing.assert_close(coar.fit(stats).attributions, from_store)


def test_resume_with_other_baselines_is_refused(paired, tmp_path):
    model, components, x, base, target = paired
    coar = ComponentAblationRegression(model, components)
    settings = dict(n_masks=40, ablation_fraction=0.3, output="logit")
    where = str(tmp_path / "store")
    coar.collect(tensor_batches(x, target, baselines=base, batch_size=4), where,
                 rows=(0, 20), **settings)
    other = base.clone()
    other[7] += 1.0  # one baseline row of the second batch differs
    with pytest.raises(ValueError, match="data_fingerprint"):
        coar.collect(tensor_batches(x, target, baselines=other, batch_size=4), where, **settings)


def test_mixed_or_mismatched_paired_batches_are_refused(paired):
    model, components, x, base, target = paired
    coar = ComponentAblationRegression(model, components)
    mixed = tensor_batches(x, target, baselines=base, batch_size=4)[:2] + [(x[8:], target[8:])]
    with pytest.raises(ValueError, match="with every batch or with none"):
        coar.collect(mixed, n_masks=20, ablation_fraction=0.3, output="logit")
    bad = [{"inputs": x[:4], "baselines": base[:3], "target": target[:4]}]
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="exactly the inputs' shape"):
            coar.collect(bad, n_masks=20, ablation_fraction=0.3, output="logit")
    finally:
        handle.remove()
    assert not calls
    with pytest.raises(ValueError, match="both define what replaces"):
        ComponentAblationRegression(model, components, ablation="zero").collect(
            tensor_batches(x, target, baselines=base), n_masks=20, ablation_fraction=0.3)


def test_shards_of_paired_batches_merge_to_the_whole(paired, tmp_path):
    model, components, x, base, target = paired
    data = tensor_batches(x, target, baselines=base, batch_size=5)
    settings = dict(n_masks=48, ablation_fraction=0.3, output="logit", seed=3)
    parts = [collect_statistics_shard(model, components, data, shard=i, n_shards=2, **settings)
             for i in range(2)]
    stores = [collect_shard(model, components, data, directory=str(tmp_path), shard=i,
                            n_shards=2, **settings) for i in range(2)]
    whole = collect_statistics(model, components, data, **settings)
    coar = ComponentAblationRegression(model, components)
    expected = coar.fit(whole).attributions
    torch.testing.assert_close(coar.fit(merge_statistics(parts)).attributions, expected)
    torch.testing.assert_close(coar.fit(merge_statistics(stores)).attributions, expected)
