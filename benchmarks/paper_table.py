"""The COAR paper's comparison table, reproduced on three models trained here.

Run ``python benchmarks/paper_table.py [--setups resnet,vit,gpt2] [--quick] [--out DIR]``.

Contract
--------
For each setup of :mod:`benchmarks.paper_setups` (A: ResNet-style CNN, B: ViT, C: GPT-2 on
induction, D: Llama-style model on associative recall) it loads or trains the model, explains ``--n-examples`` test examples (true
labels / tokens as targets) with COAR (``m = --m-factor * N`` masks at every training fraction
of the setup, least squares) and every baseline (internal influence, conductance, gradient x
parameter, leave-one-out, attribution patching, integrated gradients over the gates), and
scores all of them with ONE call of :func:`captum_coar.counterfactual_correlation` (shared
held-out forwards, ``--test-masks`` masks per test fraction, fractions {alpha/2, alpha,
2 alpha}). Each method's cost is recorded as wall time and forward-pass equivalents (example
forwards, a backward counted as two). On setup A it also collects ``max(--curve-factors) * N``
masks once and fits COAR on row prefixes (ridge, penalty picked on the store's last N/2 rows,
for m <= N; least squares above) for the curve of correlation against m.

Before the work it measures the gated forward rate and prints the cost estimate of every
stage (``--plan-only`` stops there). Writes ``paper_table.json`` (merged with the setups of
an earlier run in the same folder), ``paper_table.md`` and PNGs into ``--out`` (default
``benchmarks/results``; with ``--quick`` a temporary folder unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)

from benchmarks._harness import command_line  # noqa: E402
from benchmarks.paper_setups import SETUP_NAMES, Setup, build_setup, method_runners  # noqa: E402
from captum_coar import ComponentAblationRegression, counterfactual_correlation, tensor_batches
from captum_coar.engine import evaluate_masks
from captum_coar.evaluation import EVALUATION_SEED
from captum_coar.sampling import BernoulliSampler
from captum_coar.solvers import Ridge
from captum_coar.stores import InMemoryStore

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RIDGE_ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SIZES = {
    "full": dict(n_examples=200, m_factor=5.0, curve_factors=(0.5, 1, 2, 5, 10), test_masks=100,
                 n_steps=24),
    "quick": dict(n_examples=3, m_factor=1.2, curve_factors=(0.5, 1.2), test_masks=8,
                  n_steps=4),
}
#: Rows per forward pass that ran fastest on one CPU thread (smaller batches stay in cache).
MAX_ROWS = {"resnet": 1024, "vit": 400, "gpt2": 256, "llama": 512}
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:8.1f}s] {message}", flush=True)


def coar_name(setup: Setup, alpha: float) -> str:
    return "COAR" if len(setup.alphas_train) == 1 else f"COAR (alpha_train={alpha:g})"


def _summary(result: Any, name: str) -> Dict[str, Dict[str, float]]:
    mean, err = result.mean(), result.std_error()
    j = result.methods.index(name)
    return {f"{a:g}": {"mean": float(mean[i, j]), "se": float(err[i, j])}
            for i, a in enumerate(result.ablation_fractions)}


# ---------------------------------------------------------------------- cost estimate
def estimate(setup: Setup, args: argparse.Namespace, curve: bool) -> Dict[str, Any]:
    """Measured gated-forward rate and the forwards (and seconds) each stage will take."""
    n, N = setup.inputs.shape[0], setup.n_components
    masks = BernoulliSampler(0.05).sample(N, 0, max(4, 2 * args.max_rows // n), 123)
    before = setup.forward.snapshot()
    tick = time.perf_counter()
    evaluate_masks(setup.forward, setup.components, setup.inputs, masks, target=setup.target,
                   output=setup.output, max_rows=args.max_rows)
    rate = setup.forward.since(before)["example_forwards"] / (time.perf_counter() - tick)
    m = int(round(args.m_factor * N))
    stages = {f"COAR alpha={a:g} (m={m})": m * n for a in setup.alphas_train}
    if curve:
        stages["m-curve extra masks"] = max(0, int(round(max(args.curve_factors) * N)) - m) * n
    stages["leave-one-out"] = (N + 1) * n
    stages["3 path methods"] = 3 * 3 * (args.n_steps + 1) * n
    stages["grad x param + attribution patching"] = 2 * 3 * n
    stages["scoring"] = (len(setup.test_alphas()) * args.test_masks + 1) * n
    total = sum(stages.values())
    return {"forwards_per_s": rate, "stages": stages, "total_forward_equivalents": total,
            "estimated_s": total / rate}


# ---------------------------------------------------------------------- one setup
def run_coar(setup: Setup, args: argparse.Namespace, alpha: float, seed: int, curve: bool,
             data: List[Any]) -> Tuple[Dict[str, Any], Dict[str, Any], Optional[Dict[str, Any]]]:
    """COAR at ``alpha`` (m = m_factor N); with ``curve``, the prefix fits as well."""
    N = setup.n_components
    m = int(round(args.m_factor * N))
    total = max(m, int(round(max(args.curve_factors) * N))) if curve else m
    coar = ComponentAblationRegression(setup.forward, setup.components, ablation="weights")
    store = InMemoryStore()
    common = dict(n_masks=total, ablation_fraction=alpha, output=setup.output, seed=seed,
                  max_rows=args.max_rows, show_progress=args.progress)
    log(f"{setup.name}: COAR alpha={alpha:g}: collecting m={m} masks x {len(setup.inputs)}"
        f" examples ({m * len(setup.inputs):,} ablated forwards)")
    before, tick = setup.forward.snapshot(), time.perf_counter()
    coar.collect(data, store, rows=(0, m), **common)
    result = coar.fit(store, solver="least_squares", rows=(0, m))
    cost = {"wall_s": time.perf_counter() - tick, **setup.forward.since(before), "m": m,
            "alpha_train": alpha, "seed": seed, "solver": "least_squares"}
    log(f"{setup.name}: COAR alpha={alpha:g} done in {cost['wall_s']:.1f} s")
    if not curve:
        return cost, {coar_name(setup, alpha): result}, None
    log(f"{setup.name}: m-curve: collecting rows {m}..{total} more")
    before, tick = setup.forward.snapshot(), time.perf_counter()
    if total > m:
        coar.collect(data, store, rows=(m, total), **common)
    curve_info: Dict[str, Any] = {"alpha_train": alpha, "n_masks_collected": total,
                                  "extra_wall_s": time.perf_counter() - tick,
                                  **{f"extra_{k}": v for k, v in setup.forward.since(before).items()},
                                  "points": []}
    fits: Dict[str, Any] = {}
    validation = None
    for factor in args.curve_factors:
        rows = int(round(factor * N))
        tick = time.perf_counter()
        point: Dict[str, Any] = {"factor": factor, "m": rows}
        if rows <= N:
            if validation is None:
                validation = store.statistics((total - N // 2, total))
            fit = Ridge(alphas=RIDGE_ALPHAS, selection="global").fit(store.statistics((0, rows)),
                                                                     validation)
            point.update(solver="ridge", ridge_alpha=float(fit.alpha),
                         validation_rows=[total - N // 2, total])
            pair: Any = (fit.coef, fit.intercept)
        else:
            pair = coar.fit(store, solver="least_squares", rows=(0, rows))
            point["solver"] = "least_squares"
        point["fit_s"] = time.perf_counter() - tick
        name = f"COAR m={rows}"
        point["method"] = name
        fits[name] = pair
        curve_info["points"].append(point)
        log(f"{setup.name}: m-curve fit m={rows} ({point['solver']}) in {point['fit_s']:.1f} s")
    return cost, {coar_name(setup, alpha): result}, {"info": curve_info, "fits": fits}


def run_setup(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    start = time.perf_counter()
    setup = build_setup(name, args.n_examples, quick=args.quick,
                        gpt2_mlp_layers=args.gpt2_mlp_layers, llama_output=args.llama_output)
    args = argparse.Namespace(**vars(args))
    args.max_rows = args.max_rows or MAX_ROWS[name]
    N, n = setup.n_components, int(setup.inputs.shape[0])
    curve = name == "resnet" and not args.no_curve
    log(f"{name}: {setup.title}; test accuracy {setup.info.get('test_accuracy')} (cached:"
        f" {setup.info.get('loaded_from_cache')}), on the {n} explained examples"
        f" {setup.example_accuracy:.3f}; N = {N} components ({setup.components})")
    for note in setup.notes:
        log(f"{name}: note: {note}")
    plan = estimate(setup, args, curve)
    log(f"{name}: gated forwards run at {plan['forwards_per_s']:.0f} examples/s; estimate"
        f" {plan['total_forward_equivalents']:,} forward equivalents ~"
        f" {plan['estimated_s'] / 60:.1f} min:")
    for stage, count in plan["stages"].items():
        log(f"{name}:   {stage}: {count:,} ({count / plan['forwards_per_s']:.0f} s)")
    if args.plan_only:
        return {"setup": setup.describe(), "estimate": plan}

    data = tensor_batches(setup.inputs, setup.target)
    costs: Dict[str, Dict[str, Any]] = {}
    attributions: Dict[str, Any] = {}
    curve_result = None
    for i, alpha in enumerate(setup.alphas_train):
        cost, fitted, extra = run_coar(setup, args, alpha, i, curve and i == 0, data)
        costs.update({k: cost for k in fitted})
        attributions.update(fitted)
        if extra is not None:
            curve_result = extra
    for method, runner in method_runners(setup, args.n_steps, args.max_rows,
                                         args.progress).items():
        before, tick = setup.forward.snapshot(), time.perf_counter()
        attributions[method] = runner()
        costs[method] = {"wall_s": time.perf_counter() - tick, **setup.forward.since(before)}
        if method in ("internal influence", "conductance", "integrated gradients (gates)"):
            costs[method]["n_steps"] = args.n_steps
        log(f"{name}: {method} in {costs[method]['wall_s']:.1f} s"
            f" ({costs[method]['forward_equivalents']:,} forward equivalents)")
    main_methods = list(attributions)
    if curve_result is not None:
        attributions.update(curve_result["fits"])
    alphas = setup.test_alphas()
    log(f"{name}: scoring {len(attributions)} attribution sets in one call: test alphas"
        f" {list(alphas)}, {args.test_masks} masks each ({len(alphas) * args.test_masks * n:,}"
        " forwards)")
    before, tick = setup.forward.snapshot(), time.perf_counter()
    result = counterfactual_correlation(
        setup.forward, setup.components, setup.inputs, attributions, target=setup.target,
        output=setup.output, ablation="weights", ablation_fractions=alphas,
        n_masks=args.test_masks, seed=EVALUATION_SEED, fit_seeds=range(len(setup.alphas_train)),
        keep_masks=False, max_rows=args.max_rows, show_progress=args.progress)
    scoring = {"wall_s": time.perf_counter() - tick, **setup.forward.since(before),
               "seed": EVALUATION_SEED, "n_masks": args.test_masks}
    log(f"{name}: scoring done in {scoring['wall_s']:.1f} s")
    methods = {m: {**costs[m], "correlation": _summary(result, m)} for m in main_methods}
    for m in main_methods:
        log(f"{name}: {m:30s} " + "  ".join(
            f"a={a}: {v['mean']:.3f}" for a, v in methods[m]["correlation"].items()))
    out: Dict[str, Any] = {
        "setup": setup.describe(), "estimate": plan, "methods": methods, "scoring": scoring,
        "settings": {"n_examples": n, "m_factor": args.m_factor, "n_steps": args.n_steps,
                     "test_masks": args.test_masks, "max_rows": args.max_rows,
                     "threads": torch.get_num_threads(), "ablation": "weights",
                     "coar_seeds": list(range(len(setup.alphas_train)))},
        "correlation": result.to_dict(),
    }
    if curve_result is not None:
        info = curve_result["info"]
        for point in info["points"]:
            point["correlation"] = _summary(result, point["method"])
        out["m_curve"] = info
    out["total_wall_s"] = time.perf_counter() - start
    log(f"{name}: setup done in {out['total_wall_s'] / 60:.1f} min")
    out["_result"] = result  # for the plots; dropped before writing JSON
    return out


# ---------------------------------------------------------------------- command line
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = command_line(__doc__, quick="tiny sizes and quick models (CI, <2 min)", out=None,
                     out_help="output folder (default benchmarks/results; with --quick a"
                     " temporary folder)", threads=1, threads_help="torch threads (default 1)")
    p.add_argument("--setups", default=",".join(SETUP_NAMES),
                   help="comma-separated subset of resnet,vit,gpt2,llama (default: all)")
    p.add_argument("--n-examples", type=int, default=None, help="test examples explained (200)")
    p.add_argument("--m-factor", type=float, default=None, help="COAR masks m = factor * N (5)")
    p.add_argument("--curve-factors", default=None,
                   help="m-curve points as multiples of N (default 0.5,1,2,5,10)")
    p.add_argument("--no-curve", action="store_true", help="skip the m-curve on setup A")
    p.add_argument("--test-masks", type=int, default=None, help="held-out masks per alpha (100)")
    p.add_argument("--n-steps", type=int, default=None, help="steps of the path methods (24)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="example rows per forward pass (default per setup: fastest measured"
                   f" here, {MAX_ROWS})")
    p.add_argument("--gpt2-mlp-layers", choices=("last", "all"), default="last",
                   help="GPT-2 MLP neurons of the last layer only (default) or of every layer")
    p.add_argument("--llama-output", choices=("token_log_prob", "logit_difference"),
                   default="token_log_prob",
                   help="setup D's output: log-probability of the answer (default) or the logit"
                   " difference answer - distractor")
    p.add_argument("--plan-only", action="store_true", help="print the cost estimate and stop")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no tqdm progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = p.parse_args(argv)
    sizes = SIZES["quick" if args.quick else "full"]
    for key in ("n_examples", "m_factor", "test_masks", "n_steps"):
        if getattr(args, key) is None:
            setattr(args, key, sizes[key])
    args.curve_factors = (tuple(float(f) for f in args.curve_factors.split(","))
                          if args.curve_factors else tuple(float(f) for f in sizes["curve_factors"]))
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = [s for s in args.setups if s not in SETUP_NAMES]
    if unknown:
        p.error(f"unknown setups {unknown}; allowed: {', '.join(SETUP_NAMES)}")
    if args.m_factor <= 1:
        p.error(f"--m-factor must exceed 1 (least squares needs m > N); got {args.m_factor}")
    if args.out is None:
        args.out = (os.path.join(tempfile.gettempdir(), "captum_coar_paper_table_quick")
                    if args.quick else str(RESULTS_DIR))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    log(f"paper table: setups {args.setups}, {'quick' if args.quick else 'full'} sizes:"
        f" n_examples={args.n_examples}, m={args.m_factor:g}N, curve {list(args.curve_factors)}"
        f" x N, test masks {args.test_masks}, n_steps {args.n_steps}, threads {args.threads}")
    results = {name: run_setup(name, args) for name in args.setups}
    if args.plan_only:
        return 0
    from benchmarks.paper_report import write_outputs

    command = " ".join(["python benchmarks/paper_table.py"]
                       + list(sys.argv[1:] if argv is None else argv))
    files = write_outputs(args.out, results, command=command, quick=args.quick,
                          plots=not args.no_plots)
    log(f"wrote {', '.join(files)} to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
