"""Speed, part 3: our solvers on sufficient statistics against scikit-learn.

Contract
--------
``solver_comparison(N, m, n, repeats, lasso_examples, seed, ridge_alpha, lasso_alpha, tol)
-> dict``
    Synthetic problem: keep masks ``X`` (m, N) from ``BernoulliSampler(0.05)``; a known linear
    model with intercept, ``W`` (N, n) sparse (5% of entries N(0, 0.5^2)), plus Gaussian noise
    (sd 0.1), gives ``Y`` (m, n). Timed, each the median of ``repeats`` runs:

    - ours, accumulation: ``SufficientStatistics.update`` over chunks of 2,000 rows of the bool
      masks and float32 outputs (float64 sums);
    - ours, solves on those statistics: ``LeastSquares``, ``Ridge(ridge_alpha)``,
      ``Lasso(lasso_alpha, tol)``; each total = accumulation + solve;
    - scikit-learn ``Ridge(ridge_alpha)`` on all n outputs at once (multi-output; X handed over
      already as float64, its conversion not timed);
    - scikit-learn ``Lasso(lasso_alpha, tol)`` looped over examples, timed on the first
      ``lasso_examples`` examples and extrapolated linearly to n.

    Agreement of coefficients: ours Ridge vs sklearn Ridge, ours least squares vs sklearn
    Ridge (alpha is tiny next to X'X, so this is nearly least squares), ours Lasso vs sklearn
    Lasso on the timed examples, and each of ours against the true ``W``. Speed-ups are sklearn
    time over ours. Target: our Lasso at least 100x faster than the looped sklearn Lasso with
    coefficients matching (relative max difference reported). BLAS and torch run on the
    threads the caller set (the benchmark default is one), via threadpoolctl for numpy.

Memory: X as float64 (m N 8 bytes, 370 MB at the full size) plus sklearn's centred copy
(another 370 MB) and Y; about 1.5 GB at the full size.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Dict

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)

from benchmarks.speed_common import Timing, agreement, measure  # noqa: E402

LASSO_TARGET = 100.0
CHUNK_ROWS = 2000


def synthetic_problem(N: int, m: int, n: int, seed: int = 0):
    """Bool masks (m, N), float32 outputs (m, n), true coef (N, n) and intercept (n,)."""
    from captum_coar.sampling import BernoulliSampler

    X = BernoulliSampler(0.05).sample(N, 0, m, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    W = torch.randn(N, n, generator=gen) * 0.5 * (torch.rand(N, n, generator=gen) < 0.05)
    b = torch.randn(n, generator=gen)
    Y = torch.addmm(b.expand(m, n), X.float(), W) + 0.1 * torch.randn(m, n, generator=gen)
    return X, Y, W.double(), b.double()


def _accumulate(X: torch.Tensor, Y: torch.Tensor):
    from captum_coar.solvers import SufficientStatistics

    stats = SufficientStatistics(X.shape[1], Y.shape[1])
    for start in range(0, X.shape[0], CHUNK_ROWS):
        stats.update(X[start:start + CHUNK_ROWS], Y[start:start + CHUNK_ROWS])
    return stats


def _t(timing: Timing) -> Dict[str, Any]:
    return timing.to_dict()


def solver_comparison(N: int, m: int, n: int, repeats: int, lasso_examples: int,
                      seed: int = 0, ridge_alpha: float = 1.0, lasso_alpha: float = 1e-3,
                      tol: float = 1e-6) -> Dict[str, Any]:
    """Part 3; see the module docstring."""
    from sklearn.linear_model import Lasso as SkLasso
    from sklearn.linear_model import Ridge as SkRidge

    from captum_coar.solvers import Lasso, LeastSquares, Ridge

    cpu = torch.device("cpu")
    start = time.perf_counter()
    X, Y, W_true, _ = synthetic_problem(N, m, n, seed)
    X64 = X.numpy().astype(np.float64)
    Y64 = Y.double().numpy()
    setup_s = time.perf_counter() - start

    timings, stats_runs = measure({"accumulate": lambda: _accumulate(X, Y)}, repeats, cpu,
                                  warmup=0)
    stats = stats_runs["accumulate"]
    lasso_ours = Lasso(alpha=lasso_alpha, tol=tol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        solve_t, fits = measure({
            "least_squares": lambda: LeastSquares().fit(stats),
            "ridge": lambda: Ridge(alpha=ridge_alpha).fit(stats),
            "lasso": lambda: lasso_ours.fit(stats),
        }, repeats, cpu, warmup=0)
    timings.update(solve_t)
    sk_ridge_t, sk_fit = measure({"sk_ridge": lambda: SkRidge(alpha=ridge_alpha).fit(X64, Y64)},
                                 repeats, cpu, warmup=0)
    timings.update(sk_ridge_t)
    sk_ridge = sk_fit["sk_ridge"]

    subset = list(range(min(lasso_examples, n)))
    sk_lasso_coef, sk_lasso_iter = [], []
    per_example_wall, per_example_cpu = [], []
    for j in subset:
        t, fit = measure({"fit": lambda j=j: SkLasso(alpha=lasso_alpha, tol=tol).fit(
            X64, Y64[:, j])}, 1, cpu, warmup=0)
        per_example_wall.append(t["fit"].wall)
        per_example_cpu.append(t["fit"].cpu)
        sk_lasso_coef.append(fit["fit"].coef_)
        sk_lasso_iter.append(int(fit["fit"].n_iter_))
    sk_lasso_wall = float(np.median(per_example_wall)) * n
    sk_lasso_cpu = float(np.median(per_example_cpu)) * n

    acc = timings["accumulate"]
    total = {name: {"wall": acc.wall + timings[name].wall, "cpu": acc.cpu + timings[name].cpu}
             for name in ("least_squares", "ridge", "lasso")}
    coef = {name: fits[name].coef.cpu() for name in ("least_squares", "ridge", "lasso")}
    sk_ridge_coef = torch.from_numpy(np.asarray(sk_ridge.coef_))
    lasso_speedup = sk_lasso_wall / total["lasso"]["wall"]
    lasso_agree = agreement(coef["lasso"][subset], torch.from_numpy(np.stack(sk_lasso_coef)))
    lasso_fit = fits["lasso"]
    return {
        "N": N, "m": m, "n": n, "setup_s": setup_s, "ridge_alpha": ridge_alpha,
        "lasso_alpha": lasso_alpha, "tol": tol, "lasso_examples_timed": len(subset),
        "problem": "X ~ Bernoulli keep masks (alpha 0.05); Y = b + X W + N(0, 0.1^2), W 5%"
                   " nonzero N(0, 0.5^2)",
        "timings": {name: _t(t) for name, t in timings.items()},
        "ours_total_s": total,
        "sklearn_lasso_per_example_wall_s": per_example_wall,
        "sklearn_lasso_per_example_cpu_s": per_example_cpu,
        "sklearn_lasso_n_iter": sk_lasso_iter,
        "sklearn_lasso_looped_s": {"wall": sk_lasso_wall, "cpu": sk_lasso_cpu},
        "ours_lasso_n_iter": lasso_fit.diagnostics.get("n_iter_by_alpha"),
        "ours_lasso_nonzero_fraction": float((coef["lasso"] != 0).double().mean()),
        "solver_warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
        "speedups": {
            "ridge_vs_sklearn_ridge": {
                "wall": timings["sk_ridge"].wall / total["ridge"]["wall"],
                "cpu": timings["sk_ridge"].cpu / total["ridge"]["cpu"]},
            "least_squares_vs_sklearn_ridge": {
                "wall": timings["sk_ridge"].wall / total["least_squares"]["wall"],
                "cpu": timings["sk_ridge"].cpu / total["least_squares"]["cpu"]},
            "lasso_vs_sklearn_lasso_looped": {
                "wall": lasso_speedup, "cpu": sk_lasso_cpu / total["lasso"]["cpu"]},
        },
        "agreement": {
            "ridge_vs_sklearn_ridge": agreement(coef["ridge"], sk_ridge_coef),
            "ridge_intercept_vs_sklearn": agreement(fits["ridge"].intercept.cpu(),
                                                    torch.from_numpy(np.asarray(
                                                        sk_ridge.intercept_))),
            "least_squares_vs_sklearn_ridge": agreement(coef["least_squares"], sk_ridge_coef),
            "lasso_vs_sklearn_lasso": lasso_agree,
            "least_squares_vs_truth": agreement(coef["least_squares"], W_true.T),
            "ridge_vs_truth": agreement(coef["ridge"], W_true.T),
            "lasso_vs_truth": agreement(coef["lasso"], W_true.T),
        },
        "target": LASSO_TARGET,
        "met": bool(lasso_speedup >= LASSO_TARGET and lasso_agree["relative"] < 1e-3),
    }
