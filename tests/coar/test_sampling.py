"""Mask samplers: shard invariance, seeds, ablation rates, exact counts, validation."""

from __future__ import annotations

import math

import pytest
import torch

from captum_coar.sampling import (
    BLOCK_ROWS,
    BernoulliSampler,
    FixedFractionSampler,
    MaskSampler,
    resolve_sampler,
)

SAMPLERS = [BernoulliSampler, FixedFractionSampler]


@pytest.mark.parametrize("cls", SAMPLERS)
def test_shape_dtype_and_empty(cls: type) -> None:
    masks = cls(0.1).sample(37, 5, 20, seed=0)
    assert masks.shape == (15, 37) and masks.dtype == torch.bool
    assert cls(0.1).sample(37, 8, 8, seed=0).shape == (0, 37)


@pytest.mark.parametrize("cls", SAMPLERS)
def test_shard_invariance(cls: type) -> None:
    sampler = cls(0.2)
    whole = sampler.sample(50, 0, 100, seed=7)
    parts = torch.cat([sampler.sample(50, 0, 40, seed=7), sampler.sample(50, 40, 100, seed=7)])
    assert torch.equal(whole, parts)
    # splits that cut through generation blocks, and single rows
    whole = sampler.sample(50, 0, 3 * BLOCK_ROWS + 5, seed=7)
    cuts = [0, 1, BLOCK_ROWS - 1, BLOCK_ROWS + 3, 2 * BLOCK_ROWS, 3 * BLOCK_ROWS + 5]
    parts = torch.cat([sampler.sample(50, a, b, seed=7) for a, b in zip(cuts, cuts[1:])])
    assert torch.equal(whole, parts)
    r = 2 * BLOCK_ROWS + 9
    assert torch.equal(sampler.sample(50, r, r + 1, seed=7)[0], whole[r])


@pytest.mark.parametrize("cls", SAMPLERS)
def test_seed_reproducible_and_changes_masks(cls: type) -> None:
    sampler = cls(0.3)
    a = sampler.sample(40, 0, 200, seed=1)
    assert torch.equal(a, cls(0.3).sample(40, 0, 200, seed=1))
    assert not torch.equal(a, sampler.sample(40, 0, 200, seed=2))
    # rows differ from each other (each block has its own stream)
    assert not torch.equal(a[:BLOCK_ROWS], a[BLOCK_ROWS : 2 * BLOCK_ROWS])
    # negative and huge seeds are accepted and distinct
    assert not torch.equal(
        sampler.sample(40, 0, 50, seed=-1), sampler.sample(40, 0, 50, seed=2**70)
    )


def test_device_argument() -> None:
    masks = BernoulliSampler(0.1).sample(8, 0, 4, seed=0, device="cpu")
    assert masks.device.type == "cpu"


def test_bernoulli_rate_and_variable_counts() -> None:
    alpha = 0.1
    masks = BernoulliSampler(alpha).sample(500, 0, 2000, seed=3)
    rate = 1.0 - masks.float().mean().item()
    # 1e6 Bernoulli draws: standard error 3e-4
    assert abs(rate - alpha) < 0.002
    ablated = (~masks).sum(1)
    assert ablated.unique().numel() > 5  # the count varies (Binomial), unlike fixed fraction
    per_column = 1.0 - masks.float().mean(0)
    assert per_column.min() > 0.05 and per_column.max() < 0.15


@pytest.mark.parametrize(
    "alpha, n, expected",
    [(0.05, 2304, 115), (0.25, 10, 3), (0.001, 10, 1), (0.5, 7, 4), (0.99, 5, 4)],
)
def test_fixed_fraction_exact_count(alpha: float, n: int, expected: int) -> None:
    sampler = FixedFractionSampler(alpha)
    assert sampler.n_ablated(n) == expected
    masks = sampler.sample(n, 0, 300, seed=0)
    assert torch.all((~masks).sum(1) == expected)


def test_fixed_fraction_uniform_over_components() -> None:
    masks = FixedFractionSampler(0.2).sample(20, 0, 5000, seed=4)
    per_column = 1.0 - masks.float().mean(0)
    assert torch.allclose(per_column, torch.full((20,), 0.2), atol=0.02)


@pytest.mark.parametrize("cls", SAMPLERS)
@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_bad_fraction_raises_at_sample_time(cls: type, bad: float) -> None:
    sampler = cls(bad)  # constructor only stores
    with pytest.raises(ValueError, match=r"ablation_fraction.*\(0, 1\).*" + str(bad)[:3]):
        sampler.sample(10, 0, 5, seed=0)


@pytest.mark.parametrize("bad", ["0.1", True, None])
def test_bad_fraction_type(bad: object) -> None:
    with pytest.raises(TypeError, match="ablation_fraction"):
        BernoulliSampler(bad).sample(10, 0, 5, seed=0)  # type: ignore[arg-type]


def test_bad_ranges() -> None:
    s = BernoulliSampler(0.1)
    with pytest.raises(ValueError, match=r"`stop` must be an integer >= 5; got 3"):
        s.sample(10, 5, 3, seed=0)
    with pytest.raises(ValueError, match=r"`n_components` must be an integer >= 1; got 0"):
        s.sample(0, 0, 3, seed=0)
    with pytest.raises(ValueError, match=r"`start` must be an integer >= 0; got -1"):
        s.sample(10, -1, 3, seed=0)
    with pytest.raises(TypeError, match=r"`seed` must be an integer; got float 1.5"):
        s.sample(10, 0, 3, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`n_components` must be an integer >= 1; got float 10.0"):
        s.sample(10.0, 0, 3, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_components >= 2.*got n_components=1"):
        FixedFractionSampler(0.5).sample(1, 0, 3, seed=0)


def test_describe_and_resolve() -> None:
    s = FixedFractionSampler(0.05)
    d = s.describe()
    assert d["name"] == "fixed" and d["ablation_fraction"] == 0.05
    assert BernoulliSampler(0.1).describe()["name"] == "bernoulli"
    r = resolve_sampler("bernoulli", 0.05)
    assert isinstance(r, BernoulliSampler) and r.ablation_fraction == 0.05
    assert isinstance(resolve_sampler("FIXED", 0.1), FixedFractionSampler)
    assert resolve_sampler(s) is s
    assert resolve_sampler(s, 0.05) is s
    assert isinstance(s, MaskSampler)
    with pytest.raises(ValueError, match=r"`ablation_fraction` must be None or 0.05"):
        resolve_sampler(s, 0.1)
    with pytest.raises(ValueError, match=r"`sampler` must be one of \['bernoulli', 'fixed'\].*; got 'uniform'"):
        resolve_sampler("uniform", 0.1)
    with pytest.raises(ValueError, match=r"`ablation_fraction` must be a number in \(0, 1\) when the sampler is given by name; got None"):
        resolve_sampler("bernoulli")
    with pytest.raises(TypeError, match="got int 3"):
        resolve_sampler(3, 0.1)  # type: ignore[arg-type]
