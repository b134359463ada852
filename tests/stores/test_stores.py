"""Stores and collection: layout, resume after a crash, sharding, refusal, statistics, errors."""

import json

import numpy as np
import pytest
import torch
from coar_fixtures import CountingForward
from torch.utils.data import DataLoader, TensorDataset
from toy_models import ConvNet, randomise_batchnorm

from captum_coar.coar import ComponentAblationRegression, collect, collect_statistics
from captum_coar.coar._identity import IDENTITY_FIELDS
from captum_coar.engine import evaluate_masks
from captum_coar.sampling import BernoulliSampler
from captum_coar.selectors import conv_filters
from captum_coar.solvers import MinibatchRidge
from captum_coar.stores import InMemoryStore, MemmapStore, pack_masks, unpack_masks

N_MASKS = 120
SETTINGS = dict(n_masks=N_MASKS, ablation_fraction=0.2, seed=0, chunk_rows=32,
                perturbations_per_eval=8)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = randomise_batchnorm(ConvNet())
    components = conv_filters(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 1, 6, 6, generator=g), torch.randint(0, 10, (20,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # batches of 8, 8, 4
    return model, components, x, y, loader


def _files(path):
    return {name: np.load(path / name, allow_pickle=False)
            for name in ("masks.npy", "outputs.npy", "progress.npy")}


def _assert_same_store(a, b):
    fa, fb = _files(a), _files(b)
    for name in fa:
        assert fa[name].dtype == fb[name].dtype
        assert np.array_equal(fa[name], fb[name]), name
    ma, mb = (json.loads((p / "metadata.json").read_text()) for p in (a, b))
    assert {k: ma[k] for k in IDENTITY_FIELDS} == {k: mb[k] for k in IDENTITY_FIELDS}


@pytest.fixture(scope="module")
def reference_store(setup, tmp_path_factory):
    model, components, _, _, loader = setup
    path = tmp_path_factory.mktemp("reference") / "store"
    counter = CountingForward(model)
    collect(counter, components, loader, str(path), **SETTINGS)
    return path, counter.calls


# ----------------------------------------------------------------------------- layout
def test_memmap_layout_and_contents(setup, reference_store):
    model, components, x, y, _ = setup
    path, _ = reference_store
    files = _files(path)
    N = components.n_components
    assert files["masks.npy"].shape == (N_MASKS, (N + 7) // 8) and files["masks.npy"].dtype == np.uint8
    assert files["outputs.npy"].shape == (N_MASKS, 20) and files["outputs.npy"].dtype == np.float32
    assert (files["progress.npy"] == 20).all()
    meta = json.loads((path / "metadata.json").read_text())
    for field in IDENTITY_FIELDS:
        assert field in meta
    assert meta["sampler"] == {"name": "bernoulli", "ablation_fraction": 0.2, "block_rows": 64}
    assert meta["ablation"] == {"name": "weights"} and meta["output"] == {"name": "margin"}
    assert meta["n_examples"] == 20 and meta["batch_sizes"] == [8, 8, 4]

    store = MemmapStore(path, read_only=True)
    masks = BernoulliSampler(0.2).sample(N, 0, N_MASKS, seed=0)
    assert torch.equal(store.read_masks(), masks)
    direct = evaluate_masks(model, components, x, masks, target=y)
    torch.testing.assert_close(store.read_outputs(), direct, atol=1e-5, rtol=1e-5)
    assert store.is_complete and store.n_completed == N_MASKS


def test_pack_unpack_round_trip():
    masks = torch.rand(7, 13) > 0.5
    packed = pack_masks(masks)
    assert packed.shape == (7, 2) and packed.dtype == np.uint8
    assert torch.equal(unpack_masks(packed, 13), masks)


# ----------------------------------------------------------------------------- resume & shards
def test_resume_after_crash_is_bit_identical(setup, reference_store, tmp_path):
    model, components, _, _, loader = setup
    reference, full_calls = reference_store
    path = tmp_path / "store"
    # 32 rows per chunk, 8 per pass, 3 batches: 12 calls per chunk after the preflight's
    # probe (calls 1-2) and the identity probe (call 3); call 22 is chunk 1, batch 1
    crashing = CountingForward(model, fail_after=21)
    with pytest.raises(KeyboardInterrupt):
        collect(crashing, components, loader, path, **SETTINGS)
    partial = MemmapStore(path, read_only=True)
    progress = partial.progress()
    assert 0 < partial.n_completed < N_MASKS
    assert set(np.unique(progress)) == {0, 8, 20}  # rows 32..63 hold their first batch
    resumed = CountingForward(model)
    collect(resumed, components, loader, path, **SETTINGS)
    _assert_same_store(reference, path)
    # nothing committed is recomputed: chunk 0 and chunk 1's first batch (16 calls) are kept;
    # a resume re-checks one stored row on every example (one call per batch: 3)
    assert full_calls == 48 and resumed.calls == full_calls - 16 + 3
    again = CountingForward(model)
    collect(again, components, loader, path, **SETTINGS)
    # complete rows are skipped: only the probes (2 + 1) and the re-check (3) run
    assert again.calls == 2 + 1 + 3


def test_resume_in_memory_store(setup):
    model, components, _, _, loader = setup
    store = InMemoryStore()
    with pytest.raises(KeyboardInterrupt):
        collect(CountingForward(model, fail_after=30), components, loader, store, **SETTINGS)
    assert 0 < store.n_completed < N_MASKS
    collect(model, components, loader, store, **SETTINGS)
    whole = collect(model, components, loader, InMemoryStore(), **SETTINGS)
    assert torch.equal(store.read_outputs(), whole.read_outputs())
    assert torch.equal(store.read_masks(), whole.read_masks())


def test_sharded_collection_equals_one_run(setup, reference_store, tmp_path):
    model, components, _, _, loader = setup
    reference, _ = reference_store
    path = tmp_path / "sharded"
    collect(model, components, loader, path, rows=(60, 120), **SETTINGS)
    assert MemmapStore(path).n_completed == 60
    collect(model, components, loader, path, rows=(0, 60), **SETTINGS)
    _assert_same_store(reference, path)


def test_store_made_differently_is_refused(setup, reference_store, tmp_path):
    model, components, x, y, loader = setup
    reference, _ = reference_store
    before = _files(reference)

    def refused(match, **changes):
        kwargs = {**SETTINGS, **changes}
        forward = kwargs.pop("forward", model)
        comps = kwargs.pop("components", components)
        data = kwargs.pop("data", loader)
        with pytest.raises(ValueError, match=match):
            collect(forward, comps, data, reference, **kwargs)

    refused(r"seed: given 1, stored 0", seed=1)
    refused(r"sampler: given .*\"ablation_fraction\": 0\.1.*stored .*0\.2", ablation_fraction=0.1)
    refused(r"output: given \{\"name\": \"logit\"\}, stored \{\"name\": \"margin\"\}", output="logit")
    refused(r"n_masks: given 60, stored 120", n_masks=60)  # more rows would grow it
    refused(r"components_fingerprint: given", components=conv_filters(model, ["conv1"]))
    other = randomise_batchnorm(ConvNet())
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.conv1.weight[0, 0, 0, 0] += 1e-3
    refused(r"model_fingerprint: given '?\"?[0-9a-f]+", forward=other,
            components=conv_filters(other))
    shifted = DataLoader(TensorDataset(x + 1, y), batch_size=8)
    refused(r"data_fingerprint: given", data=shifted)
    after = _files(reference)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_metadata_of_refused_model_names_both_values(setup, reference_store):
    model, components, _, _, loader = setup
    reference, _ = reference_store
    stored = json.loads((reference / "metadata.json").read_text())["model_fingerprint"]
    other = randomise_batchnorm(ConvNet(), seed=5)
    with pytest.raises(ValueError) as info:
        collect(other, conv_filters(other), loader, reference, **SETTINGS)
    assert f'stored "{stored}"' in str(info.value) and "given" in str(info.value)


# ----------------------------------------------------------------------------- statistics & fits
def test_statistics_collection_matches_store(setup, reference_store):
    model, components, _, _, loader = setup
    reference, _ = reference_store
    store = MemmapStore(reference, read_only=True)
    collected = collect_statistics(model, components, loader, validation_fraction=0.25, **SETTINGS)
    assert collected.train.count == 90 and collected.validation.count == 30
    from_store = store.statistics(np.arange(90))
    for key in ("xtx", "xty", "x_sum", "y_sum", "y_sq_sum"):
        torch.testing.assert_close(getattr(collected.train, key), getattr(from_store, key),
                                   rtol=1e-10, atol=1e-8)
    coar = ComponentAblationRegression(model, components)
    a = coar.fit(collected, solver="ridge").attributions
    b = coar.fit(store, solver="ridge", validation_fraction=0.25)
    torch.testing.assert_close(a, b.attributions, rtol=1e-5, atol=1e-6)
    assert b.n_masks == 90 and b.n_validation == 30
    assert b.fit.validation_mse is not None
    # shards of rows merge into the statistics of the whole
    first = collect_statistics(model, components, loader, rows=(0, 50), **SETTINGS)
    second = collect_statistics(model, components, loader, rows=(50, 120), **SETTINGS)
    whole = store.statistics()
    merged = first.merge(second).train
    assert merged.count == N_MASKS
    torch.testing.assert_close(merged.xty, whole.xty, rtol=1e-10, atol=1e-8)


def test_fit_from_path_streaming_and_incomplete(setup, reference_store, tmp_path):
    model, components, _, _, loader = setup
    reference, _ = reference_store
    coar = ComponentAblationRegression(model, components)
    exact = coar.fit(str(reference), solver="least_squares")
    approx = coar.fit(MemmapStore(reference), solver=MinibatchRidge(epochs=40, batch_size=16))
    assert approx.fit.solver == "minibatch_ridge"
    corr = np.corrcoef(exact.attributions.flatten().numpy(), approx.attributions.flatten().numpy())
    assert corr[0, 1] > 0.95
    partial = tmp_path / "partial"
    collect(model, components, loader, partial, rows=(0, 64), **SETTINGS)
    with pytest.raises(ValueError, match="56 of the 120 requested rows are not complete"):
        coar.fit(str(partial), solver="ridge")
    result = coar.fit(str(partial), solver="ridge", rows=(0, 64))
    assert result.n_masks == 64
    other = ComponentAblationRegression(model, conv_filters(model, ["conv2"]))
    with pytest.raises(ValueError, match="components_fingerprint"):
        other.fit(str(reference), solver="ridge")


def test_collect_via_attribution_class_with_progress_bar(setup):
    model, components, _, _, loader = setup
    coar = ComponentAblationRegression(model, components)
    store = coar.collect(loader, n_masks=40, ablation_fraction=0.2, show_progress=True)
    assert store.is_complete and store.read_outputs().shape == (40, 20)


# ----------------------------------------------------------------------------- data errors
def test_data_errors(setup):
    model, components, x, y, loader = setup
    shuffled = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    with pytest.raises(ValueError, match="shuffle=False"):
        collect(model, components, shuffled, **SETTINGS)
    with pytest.raises(TypeError, match="re-iterable"):
        collect(model, components, iter(list(loader)), **SETTINGS)

    class Augmented:
        def __iter__(self):
            for xb, yb in loader:
                yield xb + 0.01 * torch.randn_like(xb), yb

    with pytest.raises(ValueError, match="different data on this pass"):
        collect(model, components, Augmented(), **SETTINGS)

    def bad_output(out, target):
        values = out.gather(1, target[:, None]).squeeze(1).clone()
        values[target == y[19]] = float("nan")
        return values

    first = int(torch.nonzero(y == y[19])[0])
    # the preflight's probe sees the first two examples without ablation; later ones the loop
    with pytest.raises(ValueError, match=rf"not finite .*(\(mask 0, example {first}\)|"
                                         rf"example\(s\) \[{first}\])"):
        collect(model, components, loader, output=bad_output, **SETTINGS)
