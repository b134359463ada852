"""COAR's new default (``solver=None`` below 3 N masks) beside the old one, with the goals.

For each setup (A ``resnet`` of ``benchmarks/paper_setups.py``, the README demo's digits CNN,
and B ``vit`` / C ``gpt2`` when their trained models are cached) at its training ablation
fraction:

1. collect ONE store of ``M = --ref-factor * N`` masks on the setup's examples;
2. fit on the store's first ``m`` rows for every ``m`` of the grid (``--factors`` times N):
   the old default (``ridge_auto`` with one penalty for the batch up to 2 N, least squares
   above), the README recipe (lasso around attribution patching, penalty on the last 20% of
   the rows), the new default (``eb_ridge`` around attribution patching with the component
   groups up to 3 N, least squares above) and ``eb_ridge`` without a prior (what ``fit`` on a
   store uses);
3. score every fit by the paper's counterfactual correlation on ``--test-masks`` fresh masks
   (another seed); the asymptote is least squares on all ``M`` rows;
4. coverage of the 95% intervals of the new default (and the old one) at the ``--coverage``
   factors: the share of (example, component) pairs whose reference coefficient (least
   squares on rows ``[--ref-start * N, M)``, disjoint from the fits) lies in the interval,
   with the reference's own standard error added in quadrature;
5. the default adaptive run (``StopWhen()``: stop when the error bars predict 95% of the
   asymptote), resuming the same store (rows it holds cost no forward pass), against the
   fewest grid masks with which the new default reaches 95%.

The prior's cost is counted on the model (one forward and one backward per example, plus the
method's own probe) and added to ``m`` as forward equivalents.

    python benchmarks/fewer_masks_default.py --threads 1 --setups resnet digits
    python benchmarks/fewer_masks_default.py --threads 1 --quick      # seconds: digits, tiny
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fewer_masks import prefix_statistics  # noqa: E402
from benchmarks.train import CACHE_DIR  # noqa: E402
from captum_coar import ComponentSet  # noqa: E402
from captum_coar.coar import ComponentAblationRegression, tensor_batches  # noqa: E402
from captum_coar.coar._prior import attribution_patching_prior  # noqa: E402
from captum_coar.coar.adaptive import StopWhen, collect_until  # noqa: E402
from captum_coar.evaluation import counterfactual_correlation  # noqa: E402
from captum_coar.solvers import (  # noqa: E402
    AutoLasso,
    AutoRidge,
    EmpiricalBayesRidge,
    LeastSquares,
    SufficientStatistics,
)
from captum_coar.stores.memory import InMemoryStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MAX_ROWS = {"resnet": 1024, "vit": 400, "gpt2": 256, "digits": 512}
FIT_SEED, TEST_SEED = 7, 424242
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:8.1f}s] {message}", flush=True)


def digits_setup(n_examples: int) -> Any:
    """The README demo's digits CNN: conv filters and fc1 neurons (N = 144), alpha 0.1."""
    from captum_coar.demo_model import load_digits_split, train_digits_cnn

    x_train, y_train, x_test, y_test = load_digits_split()
    model = train_digits_cnn(x_train, y_train, epochs=15, seed=0, width=16, hidden=64)
    components = ComponentSet.from_model(model, kinds=("conv_filters", "linear_neurons"),
                                         exclude="fc2")
    return SimpleNamespace(name="digits", title="digits CNN of the README demo (scikit-learn"
                           " digits)", forward=model, components=components,
                           inputs=x_test[:n_examples], target=y_test[:n_examples], output=None,
                           alphas_train=(0.1,), n_components=components.n_components, notes=[])


def build(name: str, n_examples: int) -> Any:
    if name == "digits":
        return digits_setup(n_examples)
    if not (CACHE_DIR / f"{name}.pt").exists():
        raise FileNotFoundError(f"no trained {name} model in benchmarks/cache (train it with"
                                f" python -m benchmarks.train {name})")
    from benchmarks.paper_setups import build_setup

    return build_setup(name, n_examples)


def _difference(big: SufficientStatistics, small: SufficientStatistics) -> SufficientStatistics:
    a, b = big.to_dict(), small.to_dict()
    return SufficientStatistics.from_dict({k: a[k] - b[k] for k in a})


def fits_at(m: int, N: int, stats: Dict[int, SufficientStatistics], prior: torch.Tensor,
            groups: List[int]) -> Dict[str, Any]:
    """Every estimator of the module docstring on the first m rows."""
    old = AutoRidge(selection="global") if m <= 2 * N else LeastSquares()
    new = EmpiricalBayesRidge(prior=prior, groups=groups) if m <= 3 * N else LeastSquares()
    cut = m - int(round(0.2 * m))
    out = {"old default (ridge_auto, one penalty for the batch; least squares > 2 N)":
           old.fit(stats[m]),
           "README recipe (lasso around attribution patching, 20% held out)":
           AutoLasso(prior=prior, selection="global").fit(stats[cut],
                                                          _difference(stats[m], stats[cut])),
           "new default (eb_ridge around attribution patching; least squares > 3 N)":
           new.fit(stats[m]),
           "eb_ridge without a prior (fit on a store)":
           EmpiricalBayesRidge(groups=groups).fit(stats[m])}
    if m > N + 1:
        out["least squares"] = LeastSquares().fit(stats[m])
    return out


def coverage(fit: Any, ref: Any) -> Optional[float]:
    if fit.standard_errors is None:
        return None
    err = (fit.coef - ref.coef).abs()
    comb = (fit.standard_errors ** 2 + ref.standard_errors ** 2).sqrt()
    return float((err <= 1.96 * comb).double().mean())


def run_setup(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    start = time.perf_counter()
    setup = build(name, args.n_examples[name] if name in args.n_examples else 10)
    N, n = setup.n_components, int(setup.inputs.shape[0])
    alpha = setup.alphas_train[0]
    groups = [g.n_components for g in setup.components.groups]
    M = int(round(args.ref_factor.get(name, 10.0) * N))
    data = tensor_batches(setup.inputs, setup.target)
    coar = ComponentAblationRegression(setup.forward, setup.components)
    common = dict(ablation_fraction=alpha, output=setup.output, seed=FIT_SEED,
                  max_rows=MAX_ROWS[name], show_progress=False)
    log(f"{name}: N={N} in {len(groups)} groups, {n} examples, alpha={alpha}; M={M} masks")
    store = InMemoryStore()
    tick = time.perf_counter()
    coar.collect(data, store, n_masks=M, **common)
    collect_s = time.perf_counter() - tick
    report = attribution_patching_prior(setup.forward, setup.components, "weights", data,
                                        setup.output)
    prior, prior_cost = report.prior, report.forward_equivalents / n
    log(f"{name}: collected in {collect_s:.0f} s; prior costs {prior_cost:.2f} forward"
        " equivalents per example")
    ms = sorted({max(8, int(round(f * N))) for f in args.factors if f * N <= M})
    cuts = set(ms) | {m - int(round(0.2 * m)) for m in ms} | {M, int(round(args.ref_start * N))}
    stats = prefix_statistics(store, sorted(cuts))
    ref = LeastSquares().fit(_difference(stats[M], stats[int(round(args.ref_start * N))]))
    scored_fits: Dict[str, Any] = {}
    points: List[Dict[str, Any]] = []
    cover: List[Dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in ms:
            tick = time.perf_counter()
            for est, fit in fits_at(m, N, stats, prior, groups).items():
                key = f"{est} @ {m}"
                scored_fits[key] = (fit.coef, fit.intercept)
                cost = m + (prior_cost if "attribution patching" in est and
                            (m <= 3 * N or "README" in est) else 0)
                points.append({"estimator": est, "m": m, "m_over_N": m / N, "cost": cost,
                               "key": key, "coverage": coverage(fit, ref)})
            log(f"{name}: fits at m={m} ({m / N:.2f} N) in {time.perf_counter() - tick:.1f} s")
        scored_fits["asymptote"] = (LeastSquares().fit(stats[M]).coef, None)
        scored_fits["attribution patching alone"] = prior
    adaptive = run_adaptive(coar, data, store, common, setup)
    scored_fits["adaptive default"] = adaptive.pop("fit")
    log(f"{name}: scoring {len(scored_fits)} fits on {args.test_masks} fresh masks")
    scored = counterfactual_correlation(
        setup.forward, setup.components, setup.inputs, scored_fits, target=setup.target,
        output=setup.output, ablation_fractions=(alpha,), n_masks=args.test_masks,
        seed=TEST_SEED, max_rows=MAX_ROWS[name], keep_masks=False)
    corr = {k: float(v) for k, v in zip(scored.methods, scored.mean()[0])}
    asymptote = corr["asymptote"]
    for p in points:
        p["correlation"] = corr[p.pop("key")]
        p["share_of_asymptote"] = p["correlation"] / asymptote
    for f in args.coverage:
        m = int(round(f * N))
        cover.append({"m_over_N": f, **{p["estimator"]: p["coverage"] for p in points
                                        if p["m"] == m and p["coverage"] is not None}})
    new = [p for p in points if p["estimator"].startswith("new default")]
    m95 = next((p["m"] for p in new if p["share_of_asymptote"] >= 0.95), None)
    adaptive.update({"correlation": corr["adaptive default"],
                     "share_of_asymptote": corr["adaptive default"] / asymptote,
                     "fixed_m_for_95": m95,
                     "ratio_to_fixed": None if m95 is None else adaptive["masks"] / m95})
    log(f"{name}: done in {time.perf_counter() - start:.0f} s; asymptote {asymptote:.3f}")
    return {"setup": name, "title": setup.title, "notes": list(setup.notes), "N": N,
            "groups": groups, "n_examples": n, "alpha": alpha, "M": M, "collect_s": collect_s,
            "asymptote": asymptote, "prior_alone": corr["attribution patching alone"],
            "prior_cost_per_example": prior_cost, "points": points, "coverage": cover,
            "coverage_reference": f"least squares on rows [{int(round(args.ref_start * N))},"
            f" {M})", "adaptive": adaptive, "wall_s": time.perf_counter() - start}


def run_adaptive(coar: Any, data: Any, store: Any, common: Dict[str, Any],
                 setup: Any) -> Dict[str, Any]:
    """The default adaptive run, resuming ``store`` (its rows cost no forward pass)."""
    tick = time.perf_counter()
    result, report = collect_until(coar, data, StopWhen(), None, store, **common)
    return {"rounds": report.rounds, "reason": report.reason, "n_masks": report.n_masks,
            "n_validation": report.n_validation,
            "masks": report.n_masks + report.n_validation, "seconds": time.perf_counter() - tick,
            "fit": (result.fit.coef, result.fit.intercept)}


def render(payload: Dict[str, Any]) -> str:
    lines = ["## Fewer masks: the new default beside the old one", "",
             f"Command: `{payload['command']}` ({payload['threads']} thread(s), finished"
             f" {payload['finished']}).", ""]
    for r in payload["setups"].values():
        N, factors = r["N"], sorted({p["m_over_N"] for p in r["points"]})
        lines += [f"### {r['title']}", "", f"N = {N} in {len(r['groups'])} groups,"
                  f" {r['n_examples']} examples, alpha = {r['alpha']}; asymptote (least squares"
                  f" on {r['M']} masks) {r['asymptote']:.3f}; attribution patching alone"
                  f" {r['prior_alone']:.3f} at {r['prior_cost_per_example']:.2f} forward"
                  " equivalents per example. Held-out correlation (share of the asymptote):", "",
                  "| estimator | " + " | ".join(f"m = {f:g} N" for f in factors) + " |",
                  "|---|" + "---|" * len(factors)]
        for est in dict.fromkeys(p["estimator"] for p in r["points"]):
            cells = {p["m_over_N"]: f"{p['correlation']:.3f} ({100 * p['share_of_asymptote']:.0f}%)"
                     for p in r["points"] if p["estimator"] == est}
            lines.append(f"| {est} | " + " | ".join(cells.get(f, "—") for f in factors) + " |")
        lines += ["", f"Coverage of nominal 95% intervals (reference: {r['coverage_reference']},"
                  " its standard error added in quadrature):", ""]
        for c in r["coverage"]:
            cells = "; ".join(f"{k}: {v:.3f}" for k, v in c.items() if k != "m_over_N")
            lines.append(f"- m = {c['m_over_N']:g} N: {cells}")
        lines += ["", _adaptive_line(r["adaptive"], N), ""]
    for name, why in payload.get("not_run", {}).items():
        lines.append(f"- {name}: not run ({why})")
    return "\n".join(lines) + "\n"


def _adaptive_line(a: Dict[str, Any], N: int) -> str:
    masks = ", ".join(str(x["n_masks"]) for x in a["rounds"])
    shares = ", ".join(f"{x['predicted_share']:.3f}" for x in a["rounds"])
    ratio = "—" if a["ratio_to_fixed"] is None else f"{a['ratio_to_fixed']:.2f}"
    return (f"Adaptive default: {a['reason']} at m = {a['n_masks']} ({a['n_masks'] / N:.2f} N) +"
            f" {a['n_validation']} held-out masks after {len(a['rounds'])} round(s) ({masks};"
            f" predicted shares {shares}); held-out correlation {a['correlation']:.3f}"
            f" ({100 * a['share_of_asymptote']:.0f}% of the asymptote); the fewest masks of the"
            f" grid with which the new default reaches 95%: {a['fixed_m_for_95']} (ratio"
            f" {ratio}).")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", nargs="+", default=["resnet", "digits", "vit", "gpt2"])
    p.add_argument("--factors", type=float, nargs="+", default=[0.5, 1, 1.5, 2, 3, 4])
    p.add_argument("--coverage", type=float, nargs="+", default=[1, 2])
    p.add_argument("--ref-start", type=float, default=5.0)
    p.add_argument("--test-masks", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="the digits CNN at tiny sizes")
    args = p.parse_args(argv)
    args.n_examples = {"resnet": 10, "vit": 16, "gpt2": 16, "digits": 40}
    args.ref_factor = {"resnet": 10.0, "vit": 10.0, "gpt2": 10.0, "digits": 20.0}
    if args.quick:
        args.setups, args.factors, args.coverage, args.test_masks = ["digits"], [1, 2], [1], 20
        args.n_examples["digits"], args.ref_factor["digits"], args.ref_start = 6, 6.0, 3.0
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results, not_run = {}, {}
    for name in args.setups:
        try:
            results[name] = run_setup(name, args)
        except FileNotFoundError as error:
            not_run[name] = str(error)
            log(f"{name}: not run: {error}")
    command = "python benchmarks/fewer_masks_default.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    payload = {"command": command.strip(), "threads": torch.get_num_threads(),
               "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "setups": results,
               "not_run": not_run}
    out = Path(args.out) if args.out else RESULTS / ("fewer_masks_default_quick.json"
                                                     if args.quick else
                                                     "fewer_masks_default.json")
    out.write_text(json.dumps(payload, indent=1))
    out.with_suffix(".md").write_text(render(payload))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
