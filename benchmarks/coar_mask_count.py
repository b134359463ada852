"""How many masks does COAR need? Held-out counterfactual correlation against m / N.

Trains :class:`captum_coar.demo_model.DigitsCNN` (width 24: conv1/conv2/conv3 give 24 + 48 +
48 = 120 conv filters) on scikit-learn's digits, then for m = N, 2N, 5N, 10N masks at
alpha = 0.05 collects COAR's sufficient statistics on the test examples and fits least
squares (undefined at m = N, where m <= N: ridge only) and ridge (alpha 1). Each fit is
scored by the paper's counterfactual correlation: 100 fresh masks at the same alpha drawn
with a different seed; per example, Pearson between the actual outputs (margins) and
``intercept + coef . keep_mask``; averaged over examples. Wall times of collection (all
forward passes) and of each fit are reported separately.

    python benchmarks/coar_mask_count.py                # the table in the closing note
    python benchmarks/coar_mask_count.py --multiples 1 2 --n-examples 100 --json out.json
"""

from __future__ import annotations

import json
import time
import warnings

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)

from benchmarks._harness import command_line  # noqa: E402
from captum_coar.coar import ComponentAblationRegression, tensor_batches
from captum_coar.demo_model import accuracy, load_digits_split, train_digits_cnn
from captum_coar.evaluation import counterfactual_correlation
from captum_coar.selectors import conv_filters
from captum_coar.solvers import LeastSquares, Ridge

FIT_SEED, TEST_SEED = 0, 12345


def main() -> None:
    parser = command_line(__doc__, threads=None)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n-examples", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--multiples", type=float, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--test-masks", type=int, default=100)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x_train, y_train, x_test, y_test = load_digits_split()
    start = time.perf_counter()
    model = train_digits_cnn(x_train, y_train, epochs=args.epochs, width=args.width)
    train_time = time.perf_counter() - start
    for p in model.parameters():
        p.requires_grad_(False)
    components = conv_filters(model, ["conv1", "conv2", "conv3"])
    N = components.n_components
    x, y = x_test[: args.n_examples], y_test[: args.n_examples]
    print(f"DigitsCNN(width={args.width}): test accuracy {accuracy(model, x_test, y_test):.3f},"
          f" trained in {train_time:.1f} s; N = {N} conv filters, {len(y)} test examples,"
          f" alpha = {args.alpha}, torch threads = {torch.get_num_threads()}")

    coar = ComponentAblationRegression(model, components)
    rows = []
    for multiple in args.multiples:
        m = int(round(multiple * N))
        start = time.perf_counter()
        stats = coar.collect_statistics(tensor_batches(x, y), n_masks=m,
                                        ablation_fraction=args.alpha, seed=FIT_SEED)
        collect_time = time.perf_counter() - start
        solvers = [("ridge(alpha=1)", Ridge(alpha=1.0))]
        if m > N:
            solvers.insert(0, ("least squares", LeastSquares()))
        for name, solver in solvers:
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = coar.fit(stats, solver=solver)
            fit_time = time.perf_counter() - start
            score = counterfactual_correlation(
                model, components, x, {name: result}, target=y,
                ablation_fractions=args.alpha, n_masks=args.test_masks, seed=TEST_SEED)
            mean, err = float(score.mean()[0, 0]), float(score.std_error()[0, 0])
            row = {"m": m, "m_over_N": multiple, "solver": name, "collect_s": collect_time,
                   "fit_s": fit_time, "correlation": mean, "se": err,
                   "warnings": sorted({type(w.message).__name__ for w in caught})}
            rows.append(row)
            print(f"m={m:5d} ({multiple:g}N) {name:15s} collect {collect_time:6.1f} s, fit"
                  f" {fit_time:5.2f} s, counterfactual correlation {mean:.3f} ± {err:.3f}"
                  f"{'  warnings: ' + ', '.join(row['warnings']) if row['warnings'] else ''}",
                  flush=True)

    print()
    print("| m | m/N | solver | collection (s) | fit (s) | counterfactual corr. (mean ± s.e.) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['m']} | {r['m_over_N']:g} | {r['solver']} | {r['collect_s']:.1f} |"
              f" {r['fit_s']:.2f} | {r['correlation']:.3f} ± {r['se']:.3f} |")
    skipped = [r["m"] for r in rows if r["solver"].startswith("ridge")
               and not any(q["m"] == r["m"] and q["solver"] == "least squares" for q in rows)]
    if skipped:
        print(f"\nLeast squares is undefined at m = {skipped} (m <= N = {N}): ridge only.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"N": N, "n_examples": len(y), "alpha": args.alpha, "rows": rows}, handle,
                      indent=1)


if __name__ == "__main__":
    main()
