"""Sufficient statistics and solvers: known answers, sklearn agreement, selection, errors."""

from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np
import pytest
import torch

from captum_coar.sampling import BernoulliSampler, FixedFractionSampler
from captum_coar.solvers import (
    AutoLasso,
    AutoRidge,
    FitResult,
    Lasso,
    LeastSquares,
    MinibatchRidge,
    Ridge,
    SingularMatrixWarning,
    Solver,
    StreamingSolver,
    SufficientStatistics,
    resolve_solver,
)

sklearn_linear = pytest.importorskip("sklearn.linear_model")

F64 = torch.float64


def make_problem(
    m: int,
    N: int,
    n: int,
    noise: float = 0.0,
    seed: int = 0,
    alpha: float = 0.2,
    sparse: float = 1.0,
    mask_seed: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bernoulli keep masks X (m, N), outputs Y = b + X w' + noise, and the truth (w, b).

    ``seed`` fixes the truth; ``mask_seed`` (default ``seed``) the masks and the noise, so
    a validation set of the same problem uses the same ``seed`` and another ``mask_seed``.
    """
    mask_seed = seed if mask_seed is None else mask_seed
    g = torch.Generator().manual_seed(seed)
    X = BernoulliSampler(alpha).sample(N, 0, m, seed=mask_seed)
    w = torch.randn(n, N, generator=g, dtype=F64)
    w = w * (torch.rand(n, N, generator=g) < sparse)
    b = torch.randn(n, generator=g, dtype=F64)
    g.manual_seed(mask_seed + 10_000)
    Y = X.to(F64) @ w.T + b + noise * torch.randn(m, n, generator=g, dtype=F64)
    return X, Y, w, b


def raw_mse(X: torch.Tensor, Y: torch.Tensor, res: FitResult) -> torch.Tensor:
    return ((Y - res.predict(X)) ** 2).mean(0)


# -- sufficient statistics -------------------------------------------------------------
def test_statistics_match_definitions_and_chunks() -> None:
    X, Y, _, _ = make_problem(300, 12, 4, noise=0.1)
    whole = SufficientStatistics.from_arrays(X, Y)
    Xf = X.to(F64)
    assert torch.allclose(whole.xtx, Xf.T @ Xf)
    assert torch.allclose(whole.xty, Xf.T @ Y, rtol=1e-12, atol=1e-10)
    assert torch.equal(whole.x_sum, Xf.sum(0))
    assert torch.allclose(whole.y_sum, Y.sum(0), rtol=1e-12)
    assert torch.allclose(whole.y_sq_sum, (Y * Y).sum(0), rtol=1e-12)
    assert whole.count == whole.n_samples == 300
    chunked = SufficientStatistics(12, 4)
    for lo in range(0, 300, 70):
        chunked.update(X[lo : lo + 70], Y[lo : lo + 70])
    assert chunked.count == 300
    assert torch.equal(chunked.xtx, whole.xtx)  # boolean masks: exact
    for key in ("xty", "x_sum", "y_sum", "y_sq_sum"):
        assert torch.allclose(getattr(chunked, key), getattr(whole, key), rtol=1e-12, atol=1e-10)
    # float masks give the same statistics as boolean ones
    as_float = SufficientStatistics.from_arrays(X.float(), Y)
    assert torch.allclose(as_float.xtx, whole.xtx) and torch.allclose(as_float.xty, whole.xty)


def test_merge_and_dict_roundtrip() -> None:
    X, Y, _, _ = make_problem(200, 10, 3, noise=0.5)
    single = SufficientStatistics.from_arrays(X, Y)
    a = SufficientStatistics.from_arrays(X[:120], Y[:120])
    b = SufficientStatistics.from_arrays(X[120:], Y[120:])
    merged = a.merge(b)
    assert merged is a and merged.count == 200
    for key, value in single.to_dict().items():
        assert torch.allclose(merged.to_dict()[key], value, rtol=1e-12, atol=1e-10), key
    # a "reduced" dict (as all_reduce SUM of two to_dict()s would give) round trips
    d1, d2 = (
        SufficientStatistics.from_arrays(X[:50], Y[:50]).to_dict(),
        SufficientStatistics.from_arrays(X[50:], Y[50:]).to_dict(),
    )
    summed = SufficientStatistics.from_dict({k: d1[k] + d2[k] for k in d1})
    assert summed.count == 200
    assert torch.allclose(summed.xty, single.xty, rtol=1e-12, atol=1e-10)
    with pytest.raises(ValueError, match="missing keys \\['count'\\]"):
        SufficientStatistics.from_dict({k: v for k, v in d1.items() if k != "count"})
    bad = dict(d1, xtx=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="xtx.*\\(10, 10\\).*\\(3, 3\\)"):
        SufficientStatistics.from_dict(bad)
    with pytest.raises(ValueError, match="different shapes"):
        single.merge(SufficientStatistics(10, 4))


def test_statistics_mse_matches_raw() -> None:
    X, Y, _, _ = make_problem(250, 8, 5, noise=1.0)
    stats = SufficientStatistics.from_arrays(X, Y)
    g = torch.Generator().manual_seed(1)
    coef, intercept = (
        torch.randn(5, 8, generator=g, dtype=F64),
        torch.randn(5, generator=g, dtype=F64),
    )
    expected = ((Y - X.to(F64) @ coef.T - intercept) ** 2).mean(0)
    assert torch.allclose(stats.mse(coef, intercept), expected, rtol=1e-10)


def test_statistics_input_errors() -> None:
    stats = SufficientStatistics(6, 3)
    X = torch.ones(10, 6, dtype=torch.bool)
    Y = torch.zeros(10, 3)
    stats.update(X, Y)
    Y_bad = torch.zeros(5, 3)
    Y_bad[2, 1] = float("nan")
    Y_bad[4, 0] = float("inf")
    with pytest.raises(
        ValueError, match=r"2 non-finite.*\(row 12, column 1\).*\(row 14, column 0\)"
    ):
        stats.update(X[:5], Y_bad)
    assert stats.count == 10  # a rejected chunk adds nothing
    with pytest.raises(ValueError, match=r"X must have shape \(rows, 6\), got \(10, 5\)"):
        stats.update(torch.ones(10, 5, dtype=torch.bool), Y)
    with pytest.raises(ValueError, match=r"Y must have shape \(10, 3\).*got \(9, 3\)"):
        stats.update(X, Y[:9])
    with pytest.raises(ValueError, match="n_components must be a positive int, got 0"):
        SufficientStatistics(0, 3)
    one = SufficientStatistics(6, 1).update(X, torch.arange(10.0))  # 1-D Y for one output
    assert one.y_sum.item() == 45.0


# -- least squares ---------------------------------------------------------------------
def test_least_squares_recovers_exact_linear_model() -> None:
    X, Y, w, b = make_problem(400, 30, 5)
    res = LeastSquares().fit(SufficientStatistics.from_arrays(X, Y))
    assert res.coef.shape == (5, 30) and res.intercept.shape == (5,)
    assert res.coef.dtype == F64
    assert torch.allclose(res.coef, w, atol=1e-8)
    assert torch.allclose(res.intercept, b, atol=1e-8)
    assert res.train_mse is not None and float(res.train_mse.max()) < 1e-10
    assert res.diagnostics["factorization"] == "cholesky"
    assert torch.allclose(res.predict(X), Y, atol=1e-8)


def test_least_squares_matches_sklearn_with_noise_and_validation() -> None:
    X, Y, _, _ = make_problem(300, 15, 4, noise=0.7)
    Xv, Yv, _, _ = make_problem(200, 15, 4, noise=0.7, mask_seed=5)
    res = LeastSquares().fit(
        SufficientStatistics.from_arrays(X, Y), SufficientStatistics.from_arrays(Xv, Yv)
    )
    sk = sklearn_linear.LinearRegression().fit(X.numpy().astype(float), Y.numpy())
    np.testing.assert_allclose(res.coef.numpy(), sk.coef_, atol=1e-9)
    np.testing.assert_allclose(res.intercept.numpy(), sk.intercept_, atol=1e-9)
    assert res.validation_mse is not None
    assert torch.allclose(res.validation_mse, raw_mse(Xv, Yv, res), rtol=1e-9)


def test_least_squares_too_few_masks() -> None:
    X, Y, _, _ = make_problem(20, 20, 2)
    with pytest.raises(ValueError, match=r"m=20 masks for N=20.*at least 21 masks"):
        LeastSquares().fit(SufficientStatistics.from_arrays(X, Y))


def test_least_squares_singular_warns_and_predicts() -> None:
    # fixed-fraction masks: columns sum to a constant, so X'X (centred) is singular
    X = FixedFractionSampler(0.25).sample(12, 0, 300, seed=0)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 12, generator=g, dtype=F64)
    Y = X.to(F64) @ w.T + 1.0
    with pytest.warns(SingularMatrixWarning, match="rank 11 of 12"):
        res = LeastSquares().fit(SufficientStatistics.from_arrays(X, Y))
    assert res.diagnostics["factorization"] == "eigh_pinv"
    assert torch.allclose(res.predict(X), Y, atol=1e-8)
    # the minimum-norm solution differs from w by a constant shift of all coefficients
    shift = res.coef - w
    assert torch.allclose(shift, shift.mean(1, keepdim=True).expand_as(shift), atol=1e-8)


# -- ridge -----------------------------------------------------------------------------
def test_ridge_matches_sklearn_multioutput() -> None:
    X, Y, _, _ = make_problem(200, 25, 6, noise=0.5)
    stats = SufficientStatistics.from_arrays(X, Y)
    for alpha in (0.1, 3.0, 50.0):
        res = Ridge(alpha=alpha).fit(stats)
        sk = sklearn_linear.Ridge(alpha=alpha).fit(X.numpy().astype(float), Y.numpy())
        np.testing.assert_allclose(res.coef.numpy(), sk.coef_, atol=1e-10)
        np.testing.assert_allclose(res.intercept.numpy(), sk.intercept_, atol=1e-10)
        assert res.alpha == alpha


def test_ridge_path_uses_eigh_and_matches_single_fits() -> None:
    X, Y, _, _ = make_problem(200, 20, 4, noise=2.0)
    Xv, Yv, _, _ = make_problem(200, 20, 4, noise=2.0, mask_seed=9)
    stats, val = SufficientStatistics.from_arrays(X, Y), SufficientStatistics.from_arrays(Xv, Yv)
    alphas = [0.01, 1.0, 10.0, 100.0, 1000.0]
    res = Ridge(alphas=alphas, selection="global").fit(stats, val)
    assert res.diagnostics["factorization"] == "eigh"
    assert res.validation_mse_path is not None and res.validation_mse_path.shape == (5, 4)
    # the path is computed from statistics, and agrees with raw validation data
    for k, a in enumerate(res.alphas.tolist()):
        single = Ridge(alpha=a).fit(stats)
        assert torch.allclose(res.validation_mse_path[k], raw_mse(Xv, Yv, single), rtol=1e-9)
    best = alphas[
        int(np.argmin([raw_mse(Xv, Yv, Ridge(alpha=a).fit(stats)).mean() for a in alphas]))
    ]
    assert res.alpha == best
    assert torch.allclose(res.coef, Ridge(alpha=best).fit(stats).coef, atol=1e-10)


def test_validation_choice_on_constructed_case() -> None:
    # examples 0-2 are exactly linear in the masks; examples 3-5 are pure noise
    m, N = 300, 10
    X, Y, _, _ = make_problem(m, N, 6, noise=0.0)
    Xv, Yv, _, _ = make_problem(m, N, 6, noise=0.0, mask_seed=1)
    g = torch.Generator().manual_seed(2)
    Y[:, 3:] = torch.randn(m, 3, generator=g, dtype=F64)
    Yv[:, 3:] = torch.randn(m, 3, generator=g, dtype=F64)
    stats, val = SufficientStatistics.from_arrays(X, Y), SufficientStatistics.from_arrays(Xv, Yv)
    alphas = [1e-6, 1e6]
    per = Ridge(alphas=alphas, selection="per_example").fit(stats, val)
    assert isinstance(per.alpha, torch.Tensor)
    assert per.alpha.tolist() == [1e-6] * 3 + [1e6] * 3
    assert float(per.coef[3:].abs().max()) < 1e-3  # shrunk to ~0: predicts the mean
    linear_only = Ridge(alphas=alphas, selection="global").fit(
        SufficientStatistics.from_arrays(X, Y[:, :3]),
        SufficientStatistics.from_arrays(Xv, Yv[:, :3]),
    )
    assert linear_only.alpha == 1e-6
    noise_only = Ridge(alphas=alphas, selection="global").fit(
        SufficientStatistics.from_arrays(X, Y[:, 3:]),
        SufficientStatistics.from_arrays(Xv, Yv[:, 3:]),
    )
    assert noise_only.alpha == 1e6
    lasso = Lasso(alphas=[1e-4, 10.0], selection="per_example").fit(stats, val)
    assert lasso.alpha.tolist() == [1e-4] * 3 + [10.0] * 3  # type: ignore[union-attr]


# -- lasso -----------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.002, 0.03])
def test_lasso_matches_sklearn_per_example(alpha: float) -> None:
    X, Y, _, _ = make_problem(500, 60, 20, noise=0.3, alpha=0.1, sparse=0.2)
    res = Lasso(alpha=alpha).fit(SufficientStatistics.from_arrays(X, Y))
    assert res.converged is not None and bool(res.converged.all())
    Xn = X.numpy().astype(float)
    for j in range(20):
        sk = sklearn_linear.Lasso(alpha=alpha, tol=1e-8, max_iter=100_000).fit(Xn, Y[:, j].numpy())
        np.testing.assert_allclose(res.coef[j].numpy(), sk.coef_, atol=1e-5)
        np.testing.assert_allclose(res.intercept[j].item(), sk.intercept_, atol=1e-5)
    assert 0 < float((res.coef == 0).float().mean()) < 1  # genuinely sparse, not all zero


def test_lasso_path_and_alpha_max() -> None:
    X, Y, _, _ = make_problem(300, 20, 5, noise=0.5, sparse=0.3)
    Xv, Yv, _, _ = make_problem(300, 20, 5, noise=0.5, sparse=0.3, mask_seed=1)
    stats, val = SufficientStatistics.from_arrays(X, Y), SufficientStatistics.from_arrays(Xv, Yv)
    res = Lasso(n_alphas=8, selection="global").fit(stats, val)  # one automatic path
    assert res.alphas is not None and res.alphas.numel() == 8
    assert torch.all(res.alphas[:-1] > res.alphas[1:])  # strongest first (warm starts)
    alpha_max = float(res.alphas[0])
    assert float(Lasso(alpha=alpha_max * 1.001).fit(stats).coef.abs().max()) == 0.0
    single = Lasso(alpha=float(res.alpha)).fit(stats)  # type: ignore[arg-type]
    assert torch.allclose(res.coef, single.coef, atol=1e-6)
    assert res.n_iter is not None and res.n_iter > 0
    with pytest.raises(ValueError, match="needs validation_stats|no validation_stats"):
        Lasso().fit(stats)


# -- streaming -------------------------------------------------------------------------
def test_minibatch_ridge_approaches_least_squares() -> None:
    X, Y, _, _ = make_problem(4000, 30, 4, noise=0.5, alpha=0.3)
    exact = LeastSquares().fit(SufficientStatistics.from_arrays(X, Y))

    def chunks():
        return ((X[i : i + 500], Y[i : i + 500]) for i in range(0, 4000, 500))

    res = MinibatchRidge(epochs=20, batch_size=100).fit(chunks)
    rel = float((res.coef - exact.coef).norm() / exact.coef.norm())
    assert rel < 2e-3, rel
    assert float((res.intercept - exact.intercept).abs().max()) < 2e-2
    assert res.n_iter == 20 * 40
    # with a ridge penalty it approaches Ridge instead
    ridge = Ridge(alpha=500.0).fit(SufficientStatistics.from_arrays(X, Y))
    res = MinibatchRidge(alpha=500.0, epochs=20, batch_size=100).fit(
        chunks, validation_stats=SufficientStatistics.from_arrays(X, Y)
    )
    assert float((res.coef - ridge.coef).norm() / ridge.coef.norm()) < 2e-3
    assert res.validation_mse is not None


def test_minibatch_ridge_errors() -> None:
    X, Y, _, _ = make_problem(50, 5, 2)
    with pytest.raises(TypeError, match="zero-argument callable"):
        MinibatchRidge().fit(iter([(X, Y)]))  # type: ignore[arg-type]
    Y = Y.clone()
    Y[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"\(row 3, column 1\)"):
        MinibatchRidge(epochs=1).fit(lambda: [(X, Y)])
    with pytest.raises(ValueError, match=r"`MinibatchRidge epochs` must be an integer >= 1; got 0"):
        MinibatchRidge(epochs=0).fit(lambda: [(X, Y)])


# -- common contract -------------------------------------------------------------------
def test_parameter_errors() -> None:
    X, Y, _, _ = make_problem(100, 5, 2, noise=0.1)
    stats = SufficientStatistics.from_arrays(X, Y)
    with pytest.raises(ValueError, match="either alpha or alphas"):
        Ridge(alpha=1.0, alphas=[1.0, 2.0]).fit(stats)
    with pytest.raises(ValueError, match=r"`Ridge alpha` must be a finite number >= 0 or None;"
                       r" got -1"):
        Ridge(alpha=-1.0).fit(stats)
    with pytest.raises(ValueError, match="2 alphas were given but no validation_stats"):
        Ridge(alphas=[1.0, 2.0]).fit(stats)
    with pytest.raises(ValueError, match="`Ridge selection` must be one of"):
        Ridge(alphas=[1.0, 2.0], selection="each").fit(stats, stats)
    with pytest.raises(TypeError, match="stats must be SufficientStatistics"):
        LeastSquares().fit((X, Y))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not match"):
        LeastSquares().fit(stats, SufficientStatistics(5, 3).update(X, torch.zeros(100, 3)))


def test_resolve_solver_and_describe() -> None:
    assert isinstance(resolve_solver("lstsq"), LeastSquares)
    assert isinstance(resolve_solver("least_squares"), LeastSquares)
    assert isinstance(resolve_solver("ridge"), Ridge)
    assert isinstance(resolve_solver("lasso"), Lasso)
    assert isinstance(resolve_solver("streaming"), StreamingSolver)
    assert isinstance(resolve_solver("ridge_auto"), AutoRidge)
    assert isinstance(resolve_solver("auto"), AutoRidge)
    assert isinstance(resolve_solver("lasso_auto"), AutoLasso)
    r = Ridge(alpha=2.0)
    assert resolve_solver(r) is r and isinstance(r, Solver)
    assert r.describe() == {
        "name": "ridge",
        "alpha": 2.0,
        "alphas": None,
        "selection": "per_example",
        "rcond": 1e-10,
        "standard_errors": True,
    }
    assert MinibatchRidge().describe()["dtype"] == "torch.float64"
    with pytest.raises(ValueError, match=r"`solver` must be one of .*'lasso'.*; got 'sgd'"):
        resolve_solver("sgd")
    with pytest.raises(TypeError, match="got int 1"):
        resolve_solver(1)  # type: ignore[arg-type]


def test_fit_result_summary() -> None:
    X, Y, _, _ = make_problem(100, 5, 2, noise=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = Ridge(alpha=1.0).fit(SufficientStatistics.from_arrays(X, Y))
    s = res.summary()
    assert s["solver"] == "ridge" and s["alpha"] == 1.0 and s["train_mse"] > 0

