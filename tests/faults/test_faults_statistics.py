"""Faults of identity, statistics and scale: functions told apart on every example, rows never
counted twice, float32 sums that keep their precision, rules and sizes refused up front.

Each test builds the situation the fault probe found (a same-named output function that
differs on one example, statistics all-reduced twice, offset outputs in float32, a stopping
rule the solver cannot evaluate, 50,000 components) and checks the refusal names the problem,
or the result equals the one computed another way (float64, by hand).
"""

import traceback
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from coar_fixtures import CountingForward
from fault_fixtures import SETTINGS, make_setup
from torch import nn

from captum_coar.coar import (
    CollectedStatistics,
    ComponentAblationRegression,
    collect,
    collect_statistics,
    collect_statistics_shard,
    merge_statistics,
    tensor_batches,
)
from captum_coar.coar.adaptive import StopWhen, collect_until
from captum_coar.components import ComponentSet
from captum_coar.solvers import Lasso, LeastSquares, SufficientStatistics


def _data():
    """make_setup's model and inputs, with target = example index (one class per example)."""
    model, components, data = make_setup()
    x = torch.cat([batch[0][0] for batch in data])
    return model, components, tensor_batches(x, torch.arange(10), batch_size=4)


def _margin(out, target):
    return out.gather(1, torch.as_tensor(target)[:, None]).squeeze(1)


def _differs_on(example):
    """An output function named like ``_margin`` that differs on one example only."""
    def other(out, target):
        values = out.gather(1, torch.as_tensor(target)[:, None]).squeeze(1)
        return torch.where(torch.as_tensor(target) == example, 3 * values + 1, values)

    other.__name__ = other.__qualname__ = "_margin"
    return other


# --------------------------------------------------------------------------- identity
@pytest.mark.parametrize("example, words", [(3, ["probe", "example 3 of the first batch"]),
                                            (7, ["re-evaluating stored mask row", "example 7"])])
def test_resume_refuses_an_output_function_that_differs_on_one_example(tmp_path, example,
                                                                       words):
    model, components, data = _data()
    path = str(tmp_path / "store")
    collect(model, components, data, path, output=_margin, **SETTINGS)
    collect(model, components, data, path, output=_margin, **SETTINGS)  # the same: resumes
    with pytest.raises(ValueError) as error:
        collect(model, components, data, path, output=_differs_on(example), **SETTINGS)
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_shards_of_an_output_function_that_differs_in_the_first_batch_are_not_merged():
    model, components, data = _data()
    shards = [collect_statistics_shard(model, components, data, shard=s, n_shards=2,
                                       output=_margin if s == 0 else _differs_on(2), **SETTINGS)
              for s in range(2)]
    with pytest.raises(ValueError, match="probe: 3 of 12 values differ, most at example 2"):
        merge_statistics(shards)


# --------------------------------------------------------------------------- rows counted twice
def _part(rows):
    g = torch.Generator().manual_seed(rows[0])
    X = torch.rand(len(rows), 6, generator=g) > 0.5
    return X, torch.randn(len(rows), 2, generator=g, dtype=torch.float64)


def test_statistics_carry_their_rows_and_refuse_a_row_twice():
    a = SufficientStatistics(6, 2).update(*_part(range(0, 20)), rows=range(0, 20))
    b = SufficientStatistics(6, 2).update(*_part(range(20, 40)), rows=range(20, 40))
    assert a.rows == [[0, 20]]
    total = SufficientStatistics(6, 2).merge(a).merge(b)
    assert total.rows == [[0, 40]] and total.count == 40
    with pytest.raises(ValueError, match="row 0 is in both .* counted twice"):
        total.merge(a)
    with pytest.raises(ValueError, match="row 5 is in both"):
        SufficientStatistics(6, 2).merge(a).update(*_part(range(5, 8)), rows=range(5, 8))
    doubled = SufficientStatistics(6, 2).merge(a)
    for key in ("xtx", "xty", "x_sum", "y_sum", "y_sq_sum"):  # what a second all-reduce did
        getattr(doubled, key).mul_(2)
    doubled.count *= 2
    with pytest.raises(ValueError, match="count 40 rows but cover 20"):
        LeastSquares().fit(doubled)
    with pytest.raises(ValueError, match="count 40 rows"):
        merge_statistics(CollectedStatistics(doubled, None, {"rows": [[0, 20]]}),
                         allow_unidentified=True)


def test_ranks_holding_the_same_rows_are_refused():
    from captum_coar.coar.distributed import _union

    assert _union([[[0, 32]], [[32, 64]]]) == [[0, 64]]
    with pytest.raises(ValueError, match="row 0 is in both ranks 0..0 and rank 1"):
        _union([[[0, 64]], [[0, 64]]])  # every rank after a first all-reduce
    assert _union([[[0, 32]], None]) is None  # unknown rows cannot be checked


def _reduce_twice(rank, world, init_file, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    from captum_coar.coar.distributed import all_reduce_statistics

    try:
        model, components, data = make_setup()
        stats = collect_statistics(model, components, data, rows=(32 * rank, 32 * rank + 32),
                                   **SETTINGS)
        all_reduce_statistics(stats)
        counts = f"{stats.train.count} {stats.settings['rows']}"
        try:
            all_reduce_statistics(stats)
            second = f"no error, count {stats.train.count}"
        except ValueError as error:
            second = f"ValueError: {error}"
        Path(out, f"rank-{rank}.txt").write_text(f"{counts}\n{second}")
    except Exception:
        Path(out, f"crash-{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_applied_twice_is_refused_on_every_rank(tmp_path):
    mp.spawn(_reduce_twice, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2,
             join=True)
    for rank in range(2):
        first, second = (tmp_path / f"rank-{rank}.txt").read_text().split("\n", 1)
        assert first == "64 [[0, 64]]"
        assert second.startswith("ValueError") and "counted twice" in second, second


# --------------------------------------------------------------------------- float32 statistics
def _offset_problem(offset=10_000.0, m=20_000, N=40, n=4):
    g = torch.Generator().manual_seed(0)
    X = torch.rand(m, N, generator=g) > 0.2
    W = torch.randn(N, n, generator=g, dtype=torch.float64) * 0.05
    noise = 0.01 * torch.randn(m, n, generator=g, dtype=torch.float64)
    return X, (offset + X.double() @ W + noise).float()


def _fit(X, Y, dtype, parts=1):
    pieces = []
    for rows in torch.arange(len(X)).chunk(parts):
        stats = SufficientStatistics(X.shape[1], Y.shape[1], dtype=dtype)
        for chunk in rows.split(256):
            stats.update(X[chunk], Y[chunk])
        pieces.append(stats)
    total = SufficientStatistics(X.shape[1], Y.shape[1], dtype=dtype)
    for piece in pieces:
        total.merge(piece)
    return LeastSquares().fit(total), total


def test_float32_statistics_of_offset_outputs_keep_their_accuracy():
    X, Y = _offset_problem()
    exact, stats64 = _fit(X, Y, torch.float64)
    for parts in (1, 3):  # merged parts with different shifts agree too
        approx, stats32 = _fit(X, Y, torch.float32, parts)
        a, b = exact.coef.flatten(), approx.coef.double().flatten()
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.99999  # 0.9545 before
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * float(a.abs().max()))
        torch.testing.assert_close(approx.intercept.double(), exact.intercept, rtol=1e-6,
                                   atol=0)
        torch.testing.assert_close(stats32.means()[1].double(), stats64.means()[1], rtol=1e-6,
                                   atol=0)


# --------------------------------------------------------------------------- rules up front
@pytest.mark.parametrize("solver", ["difference_of_means", Lasso(alpha=0.01)])
def test_relative_width_without_standard_errors_is_refused_before_collection(solver):
    model, components, data = make_setup()
    counter = CountingForward(model)
    coar = ComponentAblationRegression(counter, components)
    rule = StopWhen(criterion="relative_width", first_masks=20, max_masks=40, n_validation=10)
    with pytest.raises(ValueError, match="standard errors"):
        collect_until(coar, data, rule, solver, ablation_fraction=0.2)
    assert counter.calls == 0


# --------------------------------------------------------------------------- scale
def _fifty_thousand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 49_999), nn.ReLU(), nn.Linear(49_999, 1)).eval()
    with pytest.warns(UserWarning, match="selected 50,000 components"):
        components = ComponentSet.from_model(model)  # exactly 50,000: warned
    return model, components


def test_fifty_thousand_components_are_refused_with_the_bytes_needed(monkeypatch):
    import captum_coar.solvers._footprint as footprint  # before anything allocates 20 GB

    monkeypatch.setattr(footprint, "available_memory", lambda device: 8 << 30)
    with pytest.raises(ValueError, match=r"50,000 components x 10 outputs in torch.float64 need"
                       r" 18.6 GiB .* more than the 8.0 GiB .* available on cpu"):
        SufficientStatistics(50_000, 10)
    model, components = _fifty_thousand()
    assert components.n_components == 50_000
    gated = []

    def forward(x):  # records whether the component gates (forward hooks) were in place
        gated.append(any(module._forward_hooks for module in model))
        return model(x)

    data = tensor_batches(torch.randn(6, 4), None, batch_size=3)
    with pytest.raises(ValueError) as error:
        collect_statistics(forward, components, data, n_masks=64)
    for word in ("50,000 components", "fewer components", "solver='streaming'", "float32"):
        assert word in str(error.value), (word, str(error.value))
    assert not any(gated)  # refused before the first gated forward pass (the identity probe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 49,999 components: no warning
        ComponentSet.from_model(nn.Sequential(nn.Linear(4, 49_998), nn.ReLU(),
                                              nn.Linear(49_998, 1)))
