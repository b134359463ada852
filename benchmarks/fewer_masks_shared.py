"""Fewer masks by sharing across examples or by another mask design: an exploration.

COAR fits one linear model per example, but every example sees the same masks, so the
coefficient matrix ``B`` (examples x components) could borrow strength across examples.
This program measures whether it does, at small ``m``, on a digits CNN trained here
(``captum_coar.demo_model``; conv filters as components):

- ``ridge_auto`` (GCV), the library's default at ``m <= 2 N``: the baseline;
- ridge shrunk toward the mean coefficient over all examples, or over the examples of the
  same class (``AutoRidge(prior=...)``, the prior taken from the ridge fit itself);
- reduced rank: the ridge coefficients projected on the top ``r`` directions of the fitted
  values' example-by-example Gram matrix ``B Sxx B'`` (reduced-rank regression on ridge),
  alone and as a prior for ``AutoRidge``;
- a different design: ``sampler="fixed"`` (exactly ``round(alpha N)`` ablated per mask)
  instead of independent Bernoulli masks, fitted by ``ridge_auto``.

Every fit uses the first ``m`` rows of one store of ``--ref-factor N`` masks and is scored by
the paper's counterfactual correlation on ``--test-masks`` fresh Bernoulli masks (another
seed); the asymptote is least squares on the whole store.

    python benchmarks/fewer_masks_shared.py --threads 1
    python benchmarks/fewer_masks_shared.py --threads 1 --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from captum_coar.coar import ComponentAblationRegression, tensor_batches  # noqa: E402
from captum_coar.demo_model import load_digits_split, train_digits_cnn  # noqa: E402
from captum_coar.evaluation import counterfactual_correlation  # noqa: E402
from captum_coar.selectors import conv_filters  # noqa: E402
from captum_coar.solvers import AutoRidge, LeastSquares, SufficientStatistics  # noqa: E402
from captum_coar.stores.memory import InMemoryStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FIT_SEED, TEST_SEED = 7, 424242


def reduced_rank(coef: torch.Tensor, stats: SufficientStatistics, rank: int) -> torch.Tensor:
    """``coef`` (n, N) projected on the top ``rank`` eigenvectors of ``coef Sxx coef'``."""
    sxx, _, _ = stats.centered()
    _, vectors = torch.linalg.eigh(coef @ sxx @ coef.T)
    top = vectors[:, -rank:]
    return top @ (top.T @ coef)


def with_intercept(coef: torch.Tensor, stats: SufficientStatistics) -> tuple:
    mx, my = stats.means()
    return coef, my - mx @ coef.T


def shared_fits(stats: SufficientStatistics, classes: torch.Tensor,
                ranks: Sequence[int]) -> Dict[str, tuple]:
    """Every cross-example estimator of the module docstring on one set of statistics."""
    ridge = AutoRidge(selection="global").fit(stats)
    fits: Dict[str, tuple] = {"ridge_auto": (ridge.coef, ridge.intercept)}
    mean = ridge.coef.mean(0, keepdim=True).expand_as(ridge.coef).clone()
    by_class = torch.zeros_like(ridge.coef)
    for c in classes.unique():
        by_class[classes == c] = ridge.coef[classes == c].mean(0)
    priors = {"ridge toward the example mean": mean, "ridge toward the class mean": by_class}
    for rank in ranks:
        low = reduced_rank(ridge.coef, stats, rank)
        fits[f"reduced rank {rank}"] = with_intercept(low, stats)
        priors[f"ridge toward reduced rank {rank}"] = low
    for name, prior in priors.items():
        fit = AutoRidge(prior=prior).fit(stats)
        fits[name] = (fit.coef, fit.intercept)
    return fits


def collect(coar: ComponentAblationRegression, x: torch.Tensor, y: torch.Tensor, n_masks: int,
            alpha: float, sampler: str) -> InMemoryStore:
    store = InMemoryStore()
    coar.collect(tensor_batches(x, y), store, n_masks=n_masks, ablation_fraction=alpha,
                 seed=FIT_SEED, sampler=sampler)
    return store


def run(args: argparse.Namespace) -> Dict[str, Any]:
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_digits_split()
    model = train_digits_cnn(x_train, y_train, width=args.width, epochs=args.epochs)
    components = conv_filters(model)
    N = components.n_components
    x, y = x_test[:args.n_examples], y_test[:args.n_examples]
    coar = ComponentAblationRegression(model, components)
    M = int(round(args.ref_factor * N))
    stores = {s: collect(coar, x, y, M, args.alpha, s) for s in ("bernoulli", "fixed")}
    ms = [max(8, int(round(f * N))) for f in args.factors]
    fits: Dict[str, tuple] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # never-ablated components at the smallest m
        for m in ms:
            for name, fit in shared_fits(stores["bernoulli"].statistics((0, m)), y,
                                         args.ranks).items():
                fits[f"{name} @ {m}"] = fit
            fixed = AutoRidge(selection="global").fit(stores["fixed"].statistics((0, m)))
            fits[f"ridge_auto, fixed-count masks @ {m}"] = (fixed.coef, fixed.intercept)
        asymptote = LeastSquares().fit(stores["bernoulli"].statistics((0, M)))
    fits["asymptote"] = (asymptote.coef, asymptote.intercept)
    scored = counterfactual_correlation(model, components, x, fits, target=y,
                                        ablation_fractions=(args.alpha,), n_masks=args.test_masks,
                                        seed=TEST_SEED, keep_masks=False)
    corr = {k: float(v) for k, v in zip(scored.methods, scored.mean()[0])}
    names = sorted({k.rsplit(" @ ", 1)[0] for k in corr if " @ " in k},
                   key=lambda k: list(corr).index(f"{k} @ {ms[0]}"))
    table = {name: {m: corr[f"{name} @ {m}"] for m in ms} for name in names}
    return {"N": N, "n_examples": int(x.shape[0]), "alpha": args.alpha, "M": M,
            "test_accuracy": float((model(x_test).argmax(1) == y_test).double().mean()),
            "asymptote": corr["asymptote"], "ms": ms, "correlation": table,
            "wall_s": time.perf_counter() - start}


def render(result: Dict[str, Any]) -> str:
    N, ms = result["N"], result["ms"]
    lines = [f"Digits CNN, N = {N} conv filters, {result['n_examples']} examples, alpha "
             f"{result['alpha']}, asymptote (least squares on {result['M']} masks) "
             f"{result['asymptote']:.3f}", "",
             "| estimator | " + " | ".join(f"m = {m / N:.2g} N" for m in ms) + " |",
             "|---|" + "---|" * len(ms)]
    for name, row in result["correlation"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[m]:.3f}" for m in ms) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-examples", type=int, default=60)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--ref-factor", type=float, default=10.0)
    p.add_argument("--factors", type=float, nargs="+", default=[0.5, 1, 1.5, 2, 3])
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 5, 10, 20])
    p.add_argument("--test-masks", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON path (default results/fewer_masks_shared.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.epochs, args.n_examples, args.ref_factor = 8, 2, 12, 4.0
        args.factors, args.ranks, args.test_masks = [1, 2], [2], 40
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    command = "python benchmarks/fewer_masks_shared.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    result["command"] = command.strip()
    default = (Path(tempfile.gettempdir()) / "fewer_masks_shared_quick.json" if args.quick
               else RESULTS / "fewer_masks_shared.json")
    out = Path(args.out) if args.out else default
    out.write_text(json.dumps(result, indent=1))
    text = render(result)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
