"""``python -m captum_coar.demo``: COAR and the baselines on a small CNN, end to end, on the CPU.

Contract
--------
:func:`main` trains :class:`~captum_coar.demo_model.DigitsCNN` on scikit-learn's digits (no
download), declares its conv filters and hidden neurons as components, computes COAR and
every baseline for test examples (correct-class margin, weight ablation), scores them all
with the counterfactual correlation on the same held-out masks and with top-k ablation
curves, prints a table of correlations per method and test ablation fraction with run
times, and writes plots, the table (``results.md``) and the numbers (``results.json``) into
the output folder, whose path it prints. ``--quick`` shrinks everything for tests (well
under a minute). The demo runs on one torch thread unless ``--threads`` says otherwise: its
batches are small, and more threads than idle cores leave torch's thread pool waiting on
busy cores (measured run times are in the README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .components import ComponentSet
from .evaluation import EVALUATION_SEED, counterfactual_correlation, topk_ablation_curve

__all__ = ["main", "build_parser", "run_demo", "SIZES"]

#: Problem sizes: model, examples, COAR masks, test masks, path steps, training epochs.
SIZES: Dict[str, Dict[str, Any]] = {
    "full": dict(width=16, hidden=64, epochs=15, n_examples=40, n_masks=4000, n_test_masks=100,
                 n_steps=32),
    "quick": dict(width=8, hidden=32, epochs=6, n_examples=8, n_masks=300, n_test_masks=30,
                  n_steps=8),
}


def _methods(model: torch.nn.Module, components: ComponentSet, sizes: Dict[str, Any],
             alpha: float, seed: int) -> Dict[str, Callable[[torch.Tensor, torch.Tensor], Any]]:
    """Each method as ``f(inputs, target) -> attributions or a COAR result``."""
    from .baselines import (
        ComponentAblation,
        ComponentAttributionPatching,
        ComponentConductance,
        ComponentGradientXParameter,
        ComponentIntegratedGradients,
        ComponentInternalInfluence,
    )
    from .coar import ComponentAblationRegression

    coar = ComponentAblationRegression(model, components, ablation="weights")
    steps = sizes["n_steps"]

    def run_coar(x: torch.Tensor, t: torch.Tensor) -> Any:
        coar.attribute(x, target=t, n_masks=sizes["n_masks"], ablation_fraction=alpha, seed=seed)
        return coar.last_result_

    def random(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed + 1)
        return torch.randn(x.shape[0], components.n_components, generator=generator)

    return {
        "COAR": run_coar,
        "leave-one-out": lambda x, t: ComponentAblation(model, components).attribute(x, target=t),
        "attribution patching":
            lambda x, t: ComponentAttributionPatching(model, components).attribute(x, target=t),
        "gradient x parameter":
            lambda x, t: ComponentGradientXParameter(model, components).attribute(x, target=t),
        "integrated gradients (gates)":
            lambda x, t: ComponentIntegratedGradients(model, components).attribute(
                x, target=t, n_steps=steps),
        "conductance": lambda x, t: ComponentConductance(model, components).attribute(
            x, target=t, n_steps=steps),
        "internal influence": lambda x, t: ComponentInternalInfluence(model, components).attribute(
            x, target=t, n_steps=steps),
        "random (reference)": random,
    }


def run_demo(output_dir: str, seed: int = 0, quick: bool = False,
             ablation_fraction: float = 0.1, test_fractions: Sequence[float] = (0.05, 0.1, 0.2),
             n_masks: Optional[int] = None, n_examples: Optional[int] = None,
             plots: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the demo; returns the numbers written to ``results.json``."""
    from .demo_model import accuracy, load_digits_split, train_digits_cnn

    start, start_cpu = time.perf_counter(), time.process_time()
    sizes = dict(SIZES["quick" if quick else "full"])
    if n_masks is not None:
        sizes["n_masks"] = n_masks
    if n_examples is not None:
        sizes["n_examples"] = n_examples
    os.makedirs(output_dir, exist_ok=True)

    x_train, y_train, x_test, y_test = load_digits_split(seed=seed)
    tick = time.perf_counter()
    model = train_digits_cnn(x_train, y_train, epochs=sizes["epochs"], seed=seed,
                             width=sizes["width"], hidden=sizes["hidden"])
    train_time = time.perf_counter() - tick
    test_accuracy = accuracy(model, x_test, y_test)
    log(f"Trained DigitsCNN on {len(x_train)} digits in {train_time:.1f} s on"
        f" {torch.get_num_threads()} torch thread(s); test accuracy {test_accuracy:.3f} on"
        f" {len(x_test)}.")

    components = ComponentSet.from_model(model, kinds=("conv_filters", "linear_neurons"),
                                         exclude="fc2")
    x, target = x_test[: sizes["n_examples"]], y_test[: sizes["n_examples"]]
    log(f"Components: {components}. Explaining the correct-class margin of {len(x)} test"
        f" examples; COAR fits {sizes['n_masks']} masks at alpha = {ablation_fraction:g}.")

    attributions: Dict[str, Any] = {}
    run_times: Dict[str, float] = {}
    cpu_times: Dict[str, float] = {}
    for name, method in _methods(model, components, sizes, ablation_fraction, seed).items():
        tick, tick_cpu = time.perf_counter(), time.process_time()
        attributions[name] = method(x, target)
        run_times[name] = time.perf_counter() - tick
        cpu_times[name] = time.process_time() - tick_cpu
        log(f"  {name}: {run_times[name]:.3g} s wall, {cpu_times[name]:.3g} s CPU")

    tick = time.perf_counter()
    result = counterfactual_correlation(
        model, components, x, attributions, target=target, ablation="weights",
        ablation_fractions=test_fractions, n_masks=sizes["n_test_masks"], seed=EVALUATION_SEED,
        fit_seeds=[seed])
    eval_time = time.perf_counter() - tick
    plain = {k: getattr(v, "attributions", v) for k, v in attributions.items()}
    curve = topk_ablation_curve(model, components, x, plain, target=target, max_fraction=0.25)

    table = result.to_table(run_times=cpu_times)
    log("")
    log(f"Counterfactual correlation (actual vs predicted margin under held-out ablations;"
        f" COAR trained at alpha = {ablation_fraction:g}); time = CPU seconds of the"
        f" attribution:")
    log(table)
    log("")
    log("Top-k ablation curves (k highest attributions ablated; a lower mean margin along the"
        " curve = the method found the components that hold the margin up):")
    log(curve.to_table())
    total, total_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    log(f"\nScoring took {eval_time:.1f} s; whole demo {total:.1f} s wall, {total_cpu:.1f} s CPU"
        f" ({torch.get_num_threads()} torch thread(s); wall > CPU means waiting for busy cores).")

    summary = {
        "settings": {"seed": seed, "quick": quick, "ablation_fraction": ablation_fraction,
                     "test_fractions": list(test_fractions), **sizes,
                     "components": components.n_components,
                     "torch_threads": torch.get_num_threads()},
        "test_accuracy": test_accuracy, "train_time_s": train_time, "run_times_s": run_times,
        "cpu_times_s": cpu_times,
        "correlation": result.to_dict(), "topk_auc": curve.mean_auc(), "total_time_s": total,
        "total_cpu_time_s": total_cpu,
    }
    with open(os.path.join(output_dir, "results.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w") as handle:
        handle.write(table + "\n\n" + curve.to_table() + "\n")
    files = ["results.json", "results.md"]
    if plots:
        files += _write_plots(output_dir, result, curve, plain, components, ablation_fraction)
    log(f"Wrote {', '.join(files)} to {os.path.abspath(output_dir)}")
    summary["files"] = [os.path.join(output_dir, f) for f in files]
    return summary


def _write_plots(output_dir: str, result: Any, curve: Any, attributions: Dict[str, torch.Tensor],
                 components: ComponentSet, alpha: float) -> List[str]:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .visualization import (
        plot_component_attributions,
        plot_correlation_bars,
        plot_counterfactual_scatter,
        plot_topk_curves,
    )

    def save(fig: Any, name: str) -> str:
        fig.savefig(os.path.join(output_dir, name), dpi=110, bbox_inches="tight")
        plt.close(fig)
        return name

    files = [save(plot_correlation_bars(result, output="margin").figure, "correlation_bars.png")]
    shown = [m for m in ("COAR", "leave-one-out", "gradient x parameter") if m in result.methods]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.3 * len(shown), 4.0), squeeze=False)
    alpha_shown = alpha if any(abs(a - alpha) < 1e-12 for a in result.ablation_fractions) else None
    for ax, method in zip(axes[0], shown):  # each method in its colour (method_colours)
        plot_counterfactual_scatter(result, method=method, example=0, ablation_fraction=alpha_shown, ax=ax,
                                    output="margin")
    fig.tight_layout()
    files.append(save(fig, "scatter_example0.png"))
    fig, axes = plt.subplots(2, 1, figsize=(11, 7.5))
    for ax, method in zip(axes, ("COAR", "leave-one-out")):
        plot_component_attributions(attributions[method], components, example=0, top_k=5, ax=ax,
                                    title=f"{method} attributions to the correct-class margin,"
                                          " example 0", output="margin")
    fig.tight_layout()
    files.append(save(fig, "attributions_example0.png"))
    files.append(save(plot_topk_curves(curve, output="margin").figure, "topk_curves.png"))
    return files


def build_parser() -> argparse.ArgumentParser:
    """The command line's argument parser (options and defaults of ``captum-coar-demo``)."""
    parser = argparse.ArgumentParser(
        prog="python -m captum_coar.demo",
        description="COAR and component-attribution baselines on a small CNN trained on"
                    " scikit-learn's digits, scored by counterfactual correlation.")
    parser.add_argument("--output-dir", "-o", default="captum_coar_demo",
                        help="folder for plots and results (default: ./captum_coar_demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and COAR masks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests (~10-30 s)")
    parser.add_argument("--alpha", type=float, default=0.1,
                        help="COAR's training ablation fraction (default 0.1, as for CIFAR)")
    parser.add_argument("--test-alphas", type=float, nargs="+", default=[0.05, 0.1, 0.2],
                        help="test ablation fractions of the counterfactual correlation")
    parser.add_argument("--n-masks", type=int, default=None, help="COAR's number of masks")
    parser.add_argument("--n-examples", type=int, default=None, help="test examples explained")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the demo's batches are small, and"
                             " more threads than idle cores slow it down many times; 0 = torch's"
                             " own choice, one per core)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (``captum-coar-demo``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be 0 (torch's choice) or a positive integer,"
                     f" got {args.threads}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        run_demo(args.output_dir, seed=args.seed, quick=args.quick, ablation_fraction=args.alpha,
                 test_fractions=args.test_alphas, n_masks=args.n_masks,
                 n_examples=args.n_examples, plots=not args.no_plots)
    except ImportError as error:
        print(f"captum-coar-demo: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
