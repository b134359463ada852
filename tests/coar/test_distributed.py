"""Sharded and distributed COAR collection equal one single-process run.

Independent shards (statistics, saved files, memmap stores) merged by ``merge_statistics``, and
two gloo processes (``torch.multiprocessing.spawn``, ``file://`` rendezvous) running
``collect_statistics_distributed`` / ``collect_distributed``, are compared with one
``collect_statistics`` call and its least-squares fit, to float64 summation-order tolerance.
"""

from __future__ import annotations

import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from toy_models import ConvNet, randomise_batchnorm

from captum_coar.coar import (
    CollectedStatistics,
    ComponentAblationRegression,
    collect_statistics,
    tensor_batches,
)
from captum_coar.coar.distributed import (
    all_reduce_statistics,
    collect_distributed,
    collect_statistics_distributed,
)
from captum_coar.coar.shards import (
    collect_shard,
    collect_statistics_shard,
    load_statistics,
    merge_statistics,
    save_statistics,
    shard_rows,
)
from captum_coar.selectors import conv_filters

N_MASKS, SEED, VAL = 150, 3, 0.2
SETTINGS = dict(n_masks=N_MASKS, seed=SEED, ablation_fraction=0.2)


def make_setup():
    """ConvNet with 4 + 8 = 12 conv filters, 10 examples in batches of 4 (same on every call)."""
    torch.manual_seed(0)
    model = randomise_batchnorm(ConvNet(width=4))
    components = conv_filters(model, ["conv1", "conv2"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 1, 6, 6, generator=g)
    y = torch.arange(10) % 10
    return model, components, tensor_batches(x, y, batch_size=4)


@pytest.fixture(scope="module")
def setup():
    return make_setup()


@pytest.fixture(scope="module")
def reference(setup):
    """One single-process run: its statistics and least-squares coefficients."""
    model, components, data = setup
    stats = collect_statistics(model, components, data, validation_fraction=VAL, **SETTINGS)
    coef = ComponentAblationRegression(model, components).fit(stats).fit.coef
    return stats, coef


def assert_same_statistics(a: CollectedStatistics, b: CollectedStatistics) -> None:
    for part_a, part_b in ((a.train, b.train), (a.validation, b.validation)):
        assert part_a is not None and part_b is not None
        assert part_a.count == part_b.count
        da, db = part_a.to_dict(), part_b.to_dict()
        for key, value in da.items():
            other = db[key].to(value.device)
            scale = float(value.abs().max()) or 1.0
            torch.testing.assert_close(value, other, rtol=1e-10, atol=1e-10 * scale, msg=key)


def assert_same_fit(stats: CollectedStatistics, coef: torch.Tensor, setup) -> None:
    model, components, _ = setup
    fitted = ComponentAblationRegression(model, components).fit(stats).fit.coef
    torch.testing.assert_close(fitted, coef, rtol=1e-8, atol=1e-8 * float(coef.abs().max()))


# --------------------------------------------------------------------------- rows
@pytest.mark.parametrize("n_masks", [1, 7, 100])
@pytest.mark.parametrize("n_shards", [1, 2, 3, 8])
def test_shard_rows_are_a_contiguous_partition(n_masks, n_shards):
    shards = [shard_rows(n_masks, s, n_shards) for s in range(n_shards)]
    np.testing.assert_array_equal(np.concatenate(shards), np.arange(n_masks))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert all(len(s) == 0 or s[-1] - s[0] == len(s) - 1 for s in shards)


def test_shard_rows_of_a_selection_and_errors():
    parts = [shard_rows(100, s, 3, rows=(10, 50)) for s in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(10, 50))
    np.testing.assert_array_equal(shard_rows(10, 1, 2, rows=[9, 1, 3, 5]), [5, 9])
    with pytest.raises(ValueError, match="`shard` must be"):
        shard_rows(10, 2, 2)
    with pytest.raises(ValueError, match="n_shards"):
        shard_rows(10, 0, 0)
    with pytest.raises(TypeError, match="n_masks"):
        shard_rows(True, 0, 1)


# --------------------------------------------------------------------------- independent shards
def test_statistics_shards_merge_to_the_single_run(setup, reference, tmp_path):
    model, components, data = setup
    shards = [collect_statistics_shard(model, components, data, shard=s, n_shards=3,
                                       validation_fraction=VAL, chunk_rows=32, **SETTINGS)
              for s in range(3)]
    assert [s.settings["rows"] for s in shards] == [[[0, 50]], [[50, 100]], [[100, 150]]]
    merged = merge_statistics([shards[2], shards[0], shards[1]])
    assert_same_statistics(merged, reference[0])
    assert_same_fit(merged, reference[1], setup)
    assert merged.settings["rows"] == [[0, N_MASKS]]
    assert shards[0].train.count == 50  # inputs unchanged
    # saved files (weights_only load) merge the same way
    paths = []
    for s, stats in enumerate(shards):
        paths.append(tmp_path / f"stats-{s}.pt")
        save_statistics(stats, paths[-1])
    assert_same_statistics(load_statistics(paths[1]), shards[1])
    assert_same_statistics(merge_statistics([str(p) for p in paths]), reference[0])


def test_store_shards_merge_to_the_single_run(setup, reference, tmp_path):
    model, components, data = setup
    coar = ComponentAblationRegression(model, components)
    for s in range(2):
        store = coar.collect_shard(data, directory=tmp_path, shard=s, n_shards=2, **SETTINGS)
        assert store.path.name == f"shard-{s:05d}-of-00002"
        assert store.n_completed == N_MASKS // 2
    merged = merge_statistics(tmp_path, validation_fraction=VAL)
    assert_same_statistics(merged, reference[0])
    assert_same_fit(merged, reference[1], setup)
    assert merged.settings["model_fingerprint"]
    # a store, a statistics object and a file can be mixed
    half = coar.collect_statistics_shard(data, shard=1, n_shards=2, validation_fraction=VAL,
                                         **SETTINGS)
    mixed = merge_statistics([tmp_path / "shard-00000-of-00002", half], validation_fraction=VAL)
    assert_same_statistics(mixed, reference[0])
    with pytest.raises(ValueError, match="world sizes mismatch"):
        coar.collect_shard(data, directory=tmp_path, shard=0, n_shards=3, **SETTINGS)
    (tmp_path / "shard-00000-of-00003").mkdir()
    with pytest.raises(ValueError, match="world sizes mismatch"):
        merge_statistics(tmp_path)


def test_merge_refuses_missing_overlapping_and_different_shards(setup, tmp_path):
    model, components, data = setup
    shards = [collect_statistics_shard(model, components, data, shard=s, n_shards=3, **SETTINGS)
              for s in range(3)]
    with pytest.raises(ValueError, match="rows are missing"):
        merge_statistics(shards[:2])
    partial = merge_statistics(shards[:2], require_complete=False)
    assert partial.train.count == 100 and partial.settings["rows"] == [[0, 100]]
    with pytest.raises(ValueError, match="counted more than once"):
        merge_statistics([shards[0], shards[1], shards[1], shards[2]])
    other = collect_statistics_shard(model, components, data, shard=2, n_shards=3,
                                     **dict(SETTINGS, seed=SEED + 1))
    with pytest.raises(ValueError, match="seed"):
        merge_statistics([shards[0], shards[1], other])
    # statistics record their rows too
    plain = [collect_statistics(model, components, data, rows=shard_rows(N_MASKS, s, 2),
                                **SETTINGS) for s in range(2)]
    assert merge_statistics(plain).train.count == N_MASKS
    with pytest.raises(ValueError, match="counted more than once"):
        merge_statistics(plain + plain[:1])
    with pytest.raises(ValueError, match="missing"):
        merge_statistics(plain[:1])
    # stores: the same store twice
    collect_shard(model, components, data, directory=tmp_path, shard=0, n_shards=1, **SETTINGS)
    with pytest.raises(ValueError, match="counted more than once"):
        merge_statistics([tmp_path, tmp_path])
    with pytest.raises(FileNotFoundError):
        merge_statistics(tmp_path / "nothing-here")


def test_errors_without_a_process_group(setup):
    model, components, data = setup
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        collect_statistics_distributed(model, components, data, **SETTINGS)
    with pytest.raises(RuntimeError, match="init_process_group"):
        collect_distributed(model, components, data, directory="unused", **SETTINGS)
    with pytest.raises(RuntimeError, match="init_process_group"):
        all_reduce_statistics(collect_statistics(model, components, data, **SETTINGS))
    coar = ComponentAblationRegression(model, components)
    # one type for the first argument: an estimator is pointed to its own method
    with pytest.raises(TypeError, match="call its method instead"):
        collect_statistics_shard(coar, components, data, shard=0, n_shards=1, **SETTINGS)
    with pytest.raises(TypeError, match="directory"):  # required, keyword-only
        collect_shard(model, components, data, shard=0, n_shards=1, **SETTINGS)
    with pytest.raises(TypeError, match="data"):
        coar.collect_statistics_shard(shard=0, n_shards=1, **SETTINGS)


# --------------------------------------------------------------------------- two gloo processes
def _nan_on_rank_one(output, target):
    scale = float("nan") if dist.get_rank() == 1 else 1.0
    return output[:, 0] * scale


def _attempt(path: Path, call) -> None:
    """Run ``call``; write the exception (type and message) it raises, if any, to ``path``."""
    try:
        call()
        path.write_text("no error")
    except Exception as error:  # noqa: BLE001 - recorded for the test
        path.write_text(f"{type(error).__name__}: {error}")


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    out_dir = Path(out)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        model, components, data = make_setup()
        coar = ComponentAblationRegression(model, components)
        stats = coar.collect_statistics_distributed(data, validation_fraction=VAL, chunk_rows=32,
                                                    **SETTINGS)
        save_statistics(stats, out_dir / f"stats-{rank}.pt")
        torch.save(coar.fit(stats).fit.coef, out_dir / f"coef-{rank}.pt")
        store = collect_distributed(model, components, data, directory=out_dir / "stores",
                                    **SETTINGS)
        (out_dir / f"store-{rank}.txt").write_text(str(store.n_completed))
        # a rank whose data is a DistributedSampler-like share
        _attempt(out_dir / f"data-{rank}.txt", lambda: collect_statistics_distributed(
            model, components, data[rank::world], **SETTINGS))
        # a failure on rank 1 only, during collection
        _attempt(out_dir / f"nan-{rank}.txt", lambda: collect_statistics_distributed(
            model, components, data, output=_nan_on_rank_one, verify=False, **SETTINGS))
        # other weights on rank 1
        if rank == 1:
            with torch.no_grad():
                model.fc2.bias.add_(1.0)
        _attempt(out_dir / f"weights-{rank}.txt", lambda: collect_statistics_distributed(
            model, components, data, **SETTINGS))
    except Exception:
        (out_dir / f"crash-{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(2, str(out / "rendezvous"), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.slow
def test_two_gloo_ranks_equal_the_single_run(two_ranks, setup, reference):
    per_rank = [load_statistics(two_ranks / f"stats-{r}.pt") for r in range(2)]
    for stats in per_rank:
        assert_same_statistics(stats, reference[0])
        assert stats.settings["distributed"] == {"world_size": 2, "backend": "gloo"}
        assert stats.settings["rows"] == [[0, N_MASKS]]
    for key, value in per_rank[0].train.to_dict().items():
        assert torch.equal(value, per_rank[1].train.to_dict()[key]), key
    for r in range(2):
        coef = torch.load(two_ranks / f"coef-{r}.pt", weights_only=True)
        torch.testing.assert_close(coef, reference[1], rtol=1e-8,
                                   atol=1e-8 * float(reference[1].abs().max()))
    assert_same_fit(per_rank[0], reference[1], setup)


@pytest.mark.slow
def test_two_gloo_ranks_write_shard_stores(two_ranks, setup):
    model, components, data = setup
    assert [(two_ranks / f"store-{r}.txt").read_text() for r in range(2)] == ["75", "75"]
    merged = merge_statistics(two_ranks / "stores")
    single = collect_statistics(model, components, data, **SETTINGS)
    assert single.validation is None and merged.validation is None
    for key, value in single.train.to_dict().items():
        scale = float(value.abs().max()) or 1.0
        torch.testing.assert_close(merged.train.to_dict()[key], value, rtol=1e-10,
                                   atol=1e-10 * scale)


@pytest.mark.slow
def test_two_gloo_ranks_raise_the_same_error_everywhere(two_ranks):
    data = [(two_ranks / f"data-{r}.txt").read_text() for r in range(2)]
    for message in data:
        assert message.startswith("ValueError") and "data_fingerprint" in message
        assert "DistributedSampler" in message
    weights = [(two_ranks / f"weights-{r}.txt").read_text() for r in range(2)]
    assert all("model_fingerprint" in m and "rank 1" in m for m in weights)
    assert "data_fingerprint" not in weights[0]
    nan = [(two_ranks / f"nan-{r}.txt").read_text() for r in range(2)]
    assert nan[1].startswith("ValueError") and "not finite" in nan[1]
    assert nan[0].startswith("RuntimeError") and "failed on rank(s) [1]" in nan[0]
