"""Fewer masks: forward-pass cost of each COAR estimator to reach 95% / 99% of the asymptote.

For each setup of ``benchmarks/paper_setups.py`` (A resnet, B vit, C gpt2; models from
``benchmarks/train.py``'s cache, trained on first use) at its training ablation fraction:

1. collect ONE store of ``M = --ref-factor * N`` masks on ``--n-examples`` test examples;
2. for every ``m`` of the grid (``--factors`` times N) fit on the store's first ``m`` rows:
   least squares (m > N), ``ridge_auto`` (GCV, all m rows), ``ridge_auto`` with the penalty
   chosen on the last 20% of the m rows and refitted on all of them, ``lasso_auto`` (same
   split), the difference of means (maximum sample reuse), and ``ridge_auto`` shrunk toward
   (or ``lasso_auto`` sparse around) a prior: attribution patching (3 forward equivalents per
   example: one forward and one backward) or leave-one-out (N + 1);
3. score every fit by the paper's counterfactual correlation (``--test-masks`` fresh masks at
   the same fraction, another seed; one call for all fits); the asymptote is least squares on
   all M rows;
4. report, per estimator, the first grid point whose correlation reaches 95% / 99% of the
   asymptote, in forward equivalents per example (``m`` + the prior's cost), and the
   coverage of nominal 95% intervals from fits at small m: the fraction of (example,
   component) pairs whose reference coefficient (least squares on rows ``[--ref-start * N,
   M)``, disjoint from the small fits) lies within ``coef +- 1.96 se`` -- plain, and with the
   reference's own standard error added in quadrature (``se_comb``).

    python benchmarks/fewer_masks.py --threads 1                 # the committed table
    python benchmarks/fewer_masks.py --threads 1 --quick         # seconds, tiny models
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fewer_masks_report import render, thresholds  # noqa: E402
from benchmarks.paper_setups import Setup, build_setup  # noqa: E402
from captum_coar import ComponentAblation, ComponentAttributionPatching  # noqa: E402
from captum_coar.coar import ComponentAblationRegression, tensor_batches  # noqa: E402
from captum_coar.evaluation import counterfactual_correlation  # noqa: E402
from captum_coar.solvers import (  # noqa: E402
    AutoLasso,
    AutoRidge,
    DifferenceOfMeans,
    LeastSquares,
    SufficientStatistics,
    sandwich_standard_errors,
)
from captum_coar.stores.memory import InMemoryStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MAX_ROWS = {"resnet": 1024, "vit": 400, "gpt2": 256}
FIT_SEED, TEST_SEED = 7, 424242
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:8.1f}s] {message}", flush=True)


def _copy(stats: SufficientStatistics) -> SufficientStatistics:
    return SufficientStatistics.from_dict(stats.to_dict())


def _difference(big: SufficientStatistics, small: SufficientStatistics) -> SufficientStatistics:
    """Statistics of the rows in ``big`` but not in ``small`` (prefixes of one store)."""
    a, b = big.to_dict(), small.to_dict()
    return SufficientStatistics.from_dict({k: a[k] - b[k] for k in a})


def prefix_statistics(store: InMemoryStore, cuts: Sequence[int]) -> Dict[int, SufficientStatistics]:
    """Statistics of rows ``[0, c)`` for every cut, each increment read once."""
    out: Dict[int, SufficientStatistics] = {}
    running: Optional[SufficientStatistics] = None
    start = 0
    for cut in sorted(set(cuts)):
        part = store.statistics((start, cut))
        running = part if running is None else running.merge(part)
        out[cut] = _copy(running)
        start = cut
    return out


def priors(setup: Setup, args: argparse.Namespace) -> Dict[str, Tuple[torch.Tensor, int]]:
    """Prior attributions and their cost in forward equivalents per example."""
    f, c, x, t, out = setup.forward, setup.components, setup.inputs, setup.target, setup.output
    N = setup.n_components
    patching = ComponentAttributionPatching(f, c).attribute(x, target=t, output=out)
    loo = ComponentAblation(f, c).attribute(x, target=t, output=out, max_rows=args.max_rows)
    return {"attribution patching": (patching.detach().double(), 3),
            "leave-one-out": (loo.detach().double(), N + 1)}


def estimators(prior: Dict[str, Tuple[torch.Tensor, int]]) -> Dict[str, Tuple[Any, float, int]]:
    """name -> (solver, held-out share of the m rows, extra cost per example); penalties chosen
    for the batch as a whole (``selection="global"``, the default when the committed table was
    made; per example is the default since, see ``fewer_masks_default.py``)."""
    table: Dict[str, Tuple[Any, float, int]] = {
        "least squares": (LeastSquares(), 0.0, 0),
        "ridge_auto (GCV)": (AutoRidge(selection="global"), 0.0, 0),
        "ridge_auto (held-out 20%, refit)": (AutoRidge(selection="global"), 0.2, 0),
        "lasso_auto (held-out 20%, refit)": (AutoLasso(selection="global"), 0.2, 0),
        "difference of means": (DifferenceOfMeans(), 0.0, 0),
    }
    for name, (p, cost) in prior.items():
        table[f"prior ridge: {name} (GCV)"] = (AutoRidge(prior=p, selection="global"), 0.0,
                                               cost)
        table[f"prior lasso: {name} (held-out 20%, refit)"] = (
            AutoLasso(prior=p, selection="global"), 0.2, cost)
    return table


def coverage(setup: Setup, store: InMemoryStore, stats: Dict[int, SufficientStatistics],
             ref: Any, m: int, N: int) -> Dict[str, Any]:
    """Coverage of nominal 95% intervals of least squares and ridge_auto fits on m rows."""
    out: Dict[str, Any] = {"m": m, "m_over_N": m / N}
    cases = [("ridge_auto (GCV)", AutoRidge(selection="global"))]
    if m > N + 1:
        cases.insert(0, ("least squares", LeastSquares()))
    for name, solver in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = solver.fit(stats[m])
        if fit.standard_errors is None:
            out[name] = {"note": fit.diagnostics.get("standard_errors")}
            continue
        penalty = fit.alpha if fit.alpha is not None else 0.0
        sand, _ = sandwich_standard_errors(store.iter_chunks((0, m)), stats[m], fit.coef,
                                           fit.intercept, penalty)
        entry: Dict[str, Any] = {}
        for kind, se in (("classical", fit.standard_errors), ("sandwich", sand)):
            err = (fit.coef - ref.coef).abs()
            comb = (se ** 2 + ref.standard_errors ** 2).sqrt()
            entry[kind] = {"coverage": float((err <= 1.96 * se).double().mean()),
                           "coverage_se_comb": float((err <= 1.96 * comb).double().mean()),
                           "median_se": float(se.median())}
        entry["penalty"] = float(penalty) if isinstance(penalty, float) else None
        out[name] = entry
    return out


def run_setup(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    start = time.perf_counter()
    quick = args.quick or name in args.quick_models
    setup = build_setup(name, args.n_examples, quick=quick)
    N, n = setup.n_components, int(setup.inputs.shape[0])
    alpha = setup.alphas_train[0]
    args.max_rows = MAX_ROWS[name] if not args.quick else 256
    M = int(round(args.ref_factor * N))
    data = tensor_batches(setup.inputs, setup.target)
    log(f"{name}: N={N}, {n} examples, alpha={alpha}, collecting M={M} masks "
        f"({M * n:,} forwards){' [quick model]' if quick else ''}")
    coar = ComponentAblationRegression(setup.forward, setup.components, ablation="weights")
    store = InMemoryStore()
    tick = time.perf_counter()
    coar.collect(data, store, n_masks=M, ablation_fraction=alpha, output=setup.output,
                 seed=FIT_SEED, max_rows=args.max_rows)
    collect_s = time.perf_counter() - tick
    log(f"{name}: collected in {collect_s:.1f} s ({M * n / collect_s:,.0f} forwards/s)")
    prior = priors(setup, args)
    ms = sorted({max(8, int(round(f * N))) for f in args.factors if f * N <= M})
    cuts = set(ms) | {m - int(round(0.2 * m)) for m in ms} | {M}
    ref_start = int(round(args.ref_start * N))
    stats = prefix_statistics(store, sorted(cuts | {ref_start}))
    fits: Dict[str, Any] = {}
    points: List[Dict[str, Any]] = []
    table = estimators(prior)
    for m in ms:
        for est, (solver, share, cost) in table.items():
            if isinstance(solver, LeastSquares) and m <= N + 1:
                continue
            tick = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if share:
                    cut = m - int(round(share * m))
                    fit = solver.fit(stats[cut], _difference(stats[m], stats[cut]))
                else:
                    fit = solver.fit(stats[m])
            key = f"{est} @ m={m}"
            fits[key] = (fit.coef, fit.intercept)
            alpha_used = fit.alpha if isinstance(fit.alpha, float) else None
            points.append({"estimator": est, "m": m, "m_over_N": m / N, "cost": m + cost,
                           "fit_s": time.perf_counter() - tick, "penalty": alpha_used,
                           "key": key})
        log(f"{name}: fits at m={m} ({m / N:.2f} N) done")
    asymptote = LeastSquares().fit(stats[M])
    fits["asymptote"] = (asymptote.coef, asymptote.intercept)
    for prior_name, (p, _) in prior.items():
        fits[f"prior alone: {prior_name}"] = p
    log(f"{name}: scoring {len(fits)} fits on {args.test_masks} held-out masks")
    scored = counterfactual_correlation(
        setup.forward, setup.components, setup.inputs, fits, target=setup.target,
        output=setup.output, ablation_fractions=(alpha,), n_masks=args.test_masks,
        seed=TEST_SEED, max_rows=args.max_rows, keep_masks=False)
    mean = scored.mean()[0]
    err = scored.std_error()[0]
    corr = {k: (float(mean[i]), float(err[i])) for i, k in enumerate(scored.methods)}
    for p in points:
        p["correlation"], p["correlation_se"] = corr[p.pop("key")]
    ref_stats = _difference(stats[M], stats[ref_start])
    ref = LeastSquares().fit(ref_stats)
    cover = [coverage(setup, store, stats, ref, int(round(f * N)), N)
             for f in args.coverage_factors if int(round(f * N)) in stats]
    result = {
        "setup": name, "title": setup.title, "quick_model": quick, "N": N, "n_examples": n,
        "alpha": alpha, "M": M, "ref_factor": args.ref_factor, "collect_s": collect_s,
        "asymptote": {"correlation": corr["asymptote"][0], "se": corr["asymptote"][1],
                      "estimator": f"least squares on all {M} masks ({args.ref_factor:g} N)"},
        "priors_alone": {k: corr[f"prior alone: {k}"][0] for k in prior},
        "prior_cost": {k: c for k, (_, c) in prior.items()},
        "points": points, "coverage": cover,
        "coverage_reference": f"least squares on rows [{ref_start}, {M})",
        "wall_s": time.perf_counter() - start,
    }
    result["thresholds"] = thresholds(result)
    log(f"{name}: done in {result['wall_s']:.1f} s; asymptote {corr['asymptote'][0]:.3f}")
    return result


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", nargs="+", default=["resnet", "vit", "gpt2"])
    p.add_argument("--n-examples", type=int, default=16)
    p.add_argument("--ref-factor", type=float, default=20.0)
    p.add_argument("--ref-start", type=float, default=5.0)
    p.add_argument("--factors", type=float, nargs="+",
                   default=[0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 7, 10, 14, 20])
    p.add_argument("--coverage-factors", type=float, nargs="+", default=[1, 2, 5])
    p.add_argument("--test-masks", type=int, default=100)
    p.add_argument("--quick-models", nargs="*", default=[],
                   help="setups whose --quick (barely trained) model is used")
    p.add_argument("--quick", action="store_true", help="quick models and tiny sizes")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON path (default results/fewer_masks.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_examples, args.ref_factor, args.ref_start = 4, 6.0, 3.0
        args.factors, args.coverage_factors, args.test_masks = [0.5, 1, 2, 3, 6], [2], 20
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {name: run_setup(name, args) for name in args.setups}
    command = "python benchmarks/fewer_masks.py " + " ".join(argv if argv is not None
                                                            else sys.argv[1:])
    payload = {"command": command.strip(), "threads": torch.get_num_threads(),
               "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "setups": results}
    out = Path(args.out) if args.out else RESULTS / ("fewer_masks_quick.json" if args.quick
                                                     else "fewer_masks.json")
    out.write_text(json.dumps(payload, indent=1))
    md = out.with_suffix(".md")
    md.write_text(render(payload))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
