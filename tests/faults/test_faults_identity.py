"""Faults of identity and set-up: every changed identity field refused on resume, merge and fit
(functions by behaviour, not name), components that never run, and validation before any
forward pass."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coar_fixtures import CountingForward
from fault_fixtures import SETTINGS, copy_store, make_reference, make_setup
from torch import nn

from captum_coar.ablation import MeanAblation, ResampleAblation
from captum_coar.coar import (
    ComponentAblationRegression,
    collect,
    collect_statistics,
    collect_statistics_shard,
    load_statistics,
    merge_statistics,
    save_statistics,
    tensor_batches,
)
from captum_coar.coar._identity import IDENTITY_FIELDS, identity_differences
from captum_coar.components import ComponentSet
from captum_coar.evaluation import counterfactual_correlation
from captum_coar.sampling import BernoulliSampler, FixedFractionSampler
from captum_coar.selectors import conv_filters, linear_neurons
from captum_coar.solvers import Lasso


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return make_reference(tmp_path_factory.mktemp("identity"))


def _margin(out, target):
    return out.gather(1, torch.as_tensor(target)[:, None]).squeeze(1)


def _margin_times_two(out, target):
    return 2 * out.gather(1, torch.as_tensor(target)[:, None]).squeeze(1)


_margin_times_two.__name__ = "_margin"  # same name, other behaviour


def _changes():
    """(field named in the error, function of (model, components, data) -> collect kwargs)."""
    g = torch.Generator().manual_seed(7)
    other_inputs = torch.randn(6, 1, 6, 6, generator=g)
    first_inputs = torch.randn(6, 1, 6, 6, generator=torch.Generator().manual_seed(8))

    def weights(model, components, data):
        with torch.no_grad():
            model.conv1.weight[0, 0, 0, 0] += 1.0
        return {}

    def data_changed(model, components, data):
        inputs, target, extra = data[0]
        return {"data": [((inputs[0] + 1.0,), target, extra)] + data[1:]}

    def fewer_examples(model, components, data):
        return {"data": data[:2]}

    def other_components(model, components, data):
        return {"components": ComponentSet(model, components.groups[:1])}

    return [
        ("n_masks", lambda m, c, d: {"n_masks": SETTINGS["n_masks"] - 1}),  # more: grows
        ("seed", lambda m, c, d: {"seed": 1}),
        ("sampler", lambda m, c, d: {"ablation_fraction": 0.3}),
        ("sampler", lambda m, c, d: {"sampler": "fixed"}),
        ("ablation", lambda m, c, d: {"ablation": "zero"}),
        ("output", lambda m, c, d: {"output": "logit"}),
        ("model_fingerprint", weights),
        ("data_fingerprint", data_changed),
        ("n_examples", fewer_examples),
        ("components_fingerprint", other_components),
        ("probe", lambda m, c, d: {"forward_func": lambda x: m(x) * 3}),
        ("ablation", lambda m, c, d: {"ablation": MeanAblation(other_inputs)}),
    ], (first_inputs, other_inputs)


@pytest.mark.parametrize("index", range(12))
def test_resume_with_a_changed_identity_field_is_refused(reference, tmp_path, index):
    field, change = _changes()[0][index]
    path = copy_store(reference[0], tmp_path / "store")
    model, components, data = make_setup()
    kwargs = dict(SETTINGS, forward_func=model, components=components, data=data)
    kwargs.update(change(model, components, data))
    forward_func, components, data = (kwargs.pop(k) for k in ("forward_func", "components", "data"))
    with pytest.raises(ValueError, match=field) as error:
        collect(forward_func, components, data, str(path), **kwargs)
    assert "different settings" in str(error.value)


def test_same_named_output_and_refitted_ablation_are_told_apart_by_behaviour(tmp_path):
    model, components, data = make_setup()
    collect(model, components, data, str(tmp_path / "a"), output=_margin, **SETTINGS)
    with pytest.raises(ValueError, match="probe"):
        collect(model, components, data, str(tmp_path / "a"), output=_margin_times_two,
                **SETTINGS)
    _, (first, other) = _changes()
    for strategy in (MeanAblation, ResampleAblation):
        path = str(tmp_path / strategy.__name__)
        collect(model, components, data, path, ablation=strategy(first), **SETTINGS)
        collect(model, components, data, path, ablation=strategy(first.clone()), **SETTINGS)
        with pytest.raises(ValueError, match="fitted_on"):
            collect(model, components, data, path, ablation=strategy(other), **SETTINGS)


def test_identity_differences_count_a_missing_field():
    model, components, data = make_setup()
    stats = collect_statistics(model, components, data, **SETTINGS)
    identity = {k: stats.settings[k] for k in IDENTITY_FIELDS}
    assert identity_differences(identity, identity) == []
    partial = dict(identity)
    del partial["data_fingerprint"]
    assert identity_differences(identity, partial) == ["data_fingerprint: given has it, stored"
                                                       " lacks it"]
    probe = [[v * (1 + 1e-6) for v in row] for row in identity["probe"]]
    assert identity_differences(identity, dict(identity, probe=probe)) == []  # tolerance


# --------------------------------------------------------------------------- merges and fits
def test_merges_of_shards_from_other_models_and_data_are_refused(tmp_path):
    model, components, data = make_setup()
    kwargs = dict(SETTINGS, n_shards=2)
    first = collect_statistics_shard(model, components, data, shard=0, **kwargs)
    second = collect_statistics_shard(model, components, data, shard=1, **kwargs)
    assert merge_statistics([first, second]).train.count == SETTINGS["n_masks"]
    other_model, other_components, _ = make_setup(seed=5)
    foreign = collect_statistics_shard(other_model, other_components, data, shard=1, **kwargs)
    with pytest.raises(ValueError, match="model_fingerprint"):
        merge_statistics([first, foreign])
    inputs, target, extra = data[0]
    other_data = [((inputs[0] * 2,), target, extra)] + data[1:]
    foreign = collect_statistics_shard(model, components, other_data, shard=1, **kwargs)
    with pytest.raises(ValueError, match="data_fingerprint"):
        merge_statistics([first, foreign])
    renamed = collect_statistics_shard(lambda x: model(x) * 3, components, data, shard=1,
                                       **kwargs)
    with pytest.raises(ValueError, match="probe"):
        merge_statistics([first, renamed])
    stripped = collect_statistics_shard(model, components, data, shard=1, **kwargs)
    del stripped.settings["data_fingerprint"]
    with pytest.raises(ValueError, match="data_fingerprint: source 0 .* has it"):
        merge_statistics([first, stripped])
    with pytest.raises(ValueError, match="allow_unidentified=True"):
        merge_statistics([first, second.train])
    with pytest.raises(ValueError, match="carry no collection identity"):
        merge_statistics([first.train, second.train])
    bare = merge_statistics([first.train, second.train], allow_unidentified=True)
    assert bare.train.count == SETTINGS["n_masks"]
    # the in-place merge of two parts checks the same identity and the rows
    other = collect_statistics_shard(other_model, other_components, data, shard=1, **kwargs)
    with pytest.raises(ValueError, match="model_fingerprint"):
        collect_statistics_shard(model, components, data, shard=0, **kwargs).merge(other)
    with pytest.raises(ValueError, match="in both parts"):
        collect_statistics_shard(model, components, data, shard=0, **kwargs).merge(first)
    whole = collect_statistics_shard(model, components, data, shard=0, **kwargs).merge(second)
    assert whole.settings["rows"] == [[0, SETTINGS["n_masks"]]]


def test_damaged_statistics_files_are_named(tmp_path):
    model, components, data = make_setup()
    stats = collect_statistics(model, components, data, **SETTINGS)
    path = tmp_path / "stats.pt"
    save_statistics(stats, path)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.pt"]  # the temporary file is gone
    merged = merge_statistics(path)
    assert torch.equal(merged.train.xtx, stats.train.xtx)
    data_bytes = path.read_bytes()
    path.write_bytes(data_bytes[: len(data_bytes) // 2])
    with pytest.raises(ValueError, match="stats.pt"):
        load_statistics(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="stats.pt"):
        merge_statistics(path)


def test_fit_refuses_data_of_another_model_components_or_ablation(reference):
    model, components, data = make_setup()
    other_model, other_components, _ = make_setup(seed=5)
    with pytest.raises(ValueError, match="model_fingerprint"):
        ComponentAblationRegression(other_model, other_components).fit(str(reference[0]))
    with pytest.raises(ValueError, match="ablation"):
        ComponentAblationRegression(model, components, ablation="zero").fit(str(reference[0]))
    stats = collect_statistics(model, components, data, **SETTINGS)
    with pytest.raises(ValueError, match="components_fingerprint"):
        ComponentAblationRegression(model, ComponentSet(model, components.groups[:1])).fit(stats)
    ComponentAblationRegression(model, components).fit(stats.train)  # bare: the caller's call


# --------------------------------------------------------------------------- components never run
class _FunctionalHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.readout = nn.Linear(8, 3)

    def forward(self, x):
        return self.readout(F.linear(x, self.hidden.weight, self.hidden.bias))


class _DeadBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.unused = nn.Linear(6, 8)
        self.readout = nn.Linear(8, 3)

    def forward(self, x):
        return self.readout(self.hidden(x))


@pytest.mark.parametrize("case", ["other_model", "functional", "never_called"])
def test_components_that_never_run_are_refused(case):
    torch.manual_seed(0)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    if case == "other_model":
        model = _DeadBranch().eval()
        components = linear_neurons(_DeadBranch().eval(), ["hidden"])  # a twin, not the model
        expected = "another model"
    elif case == "functional":
        model = _FunctionalHead().eval()
        components = linear_neurons(model, ["hidden", "readout"])
        expected = "F.linear"
    else:
        model = _DeadBranch().eval()
        components = linear_neurons(model, ["hidden", "unused"])
        expected = "never called"
    counter = CountingForward(model)
    coar = ComponentAblationRegression(counter, components)
    with pytest.raises(ValueError, match=expected) as error:
        coar.attribute(x, target=y, n_masks=50)
    assert "hidden" in str(error.value) if case != "never_called" else "unused" in str(error.value)
    # the preflight's two ungated passes, then refused on the first gated pass (the probe)
    assert counter.calls == 3


# --------------------------------------------------------------------------- validation up front
def test_validation_happens_before_any_forward_pass(tmp_path):
    model, components, data = make_setup()
    counter = CountingForward(model)
    coar = ComponentAblationRegression(counter, components)
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match="refuses its arguments"):
        coar.attribute(x, target=y, n_masks=100, solver=Lasso(alphas=[-1.0]))
    with pytest.raises(ValueError, match="ablation_fraction"):
        coar.attribute(x, target=y, n_masks=100, ablation_fraction=0.3,
                       sampler=BernoulliSampler(0.1))
    with pytest.raises(ValueError, match="whole numbers"):
        coar.attribute(x, target=torch.tensor([1.7, 2.0, 3.0, 4.0]), n_masks=100)
    with pytest.raises(ValueError, match="`rows` must be whole numbers"):
        collect(counter, components, data, n_masks=64, rows=[1.5, 2.7])
    with pytest.raises(ValueError, match=r"n_masks=1000000000000 needs .* TiB"):
        collect(counter, components, data, str(tmp_path / "huge"), n_masks=10**12)
    assert not (tmp_path / "huge").exists() or not any((tmp_path / "huge").iterdir())
    with pytest.raises(ValueError, match="max_store_bytes=1000"):
        collect(counter, components, data, n_masks=64, max_store_bytes=1000)
    with pytest.raises(ValueError, match="ablation_fraction"):
        counterfactual_correlation(counter, components, x, torch.zeros(4, components.n_components),
                                   target=y, sampler=FixedFractionSampler(0.1),
                                   ablation_fractions=(0.2,))
    assert counter.calls == 0
    # the same sampler without a contradicting fraction is fine
    collect(counter, components, data, n_masks=64, sampler=BernoulliSampler(0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attributions = coar.attribute(x, target=torch.tensor([1.0, 2.0, 3.0, 4.0]), n_masks=100)
    assert attributions.shape == (4, components.n_components)


def test_chunk_set_up_is_the_naive_split():
    from captum_coar.coar.collection import chunk_work

    rng = np.random.default_rng(0)
    for n_masks, chunk in ((1000, 64), (257, 256), (10, 3)):
        rows = np.unique(rng.integers(0, n_masks, size=n_masks // 2))
        naive = [rows[(rows >= c) & (rows < c + chunk)] for c in range(0, n_masks, chunk)]
        naive = [r for r in naive if r.size]
        fast = chunk_work(rows, n_masks, chunk)
        assert len(fast) == len(naive)
        assert all(np.array_equal(a, b) for a, b in zip(fast, naive))


def test_data_of_another_model_components_cannot_be_collected_silently():
    model, _, _ = make_setup()
    twin, _, _ = make_setup()
    data = tensor_batches(torch.randn(4, 1, 6, 6), torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="did not run"):
        collect(model, conv_filters(twin), data, **SETTINGS)
