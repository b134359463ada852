"""Adaptive stopping on a benchmark setup: where ``attribute(n_masks="auto")`` stops, and why.

Runs :func:`captum_coar.coar.adaptive.collect_until` on setup ``--setup`` (default A, the
trained ResNetSmall) with the rule that was the default when its table was made
(``criterion="correlation"``: first round N masks, doubling, stop when the held-out correlation
gains less than ``--tol``, cap 20 N, 100 held-out masks) and ``ridge_auto``, into one in-memory
store (the default since issue 21 is measured by ``fewer_masks_default.py``); then scores the final fit on 100
fresh masks (another seed) with the paper's counterfactual correlation, and prints the rounds.

    python benchmarks/fewer_masks_adaptive.py --threads 1 --n-examples 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.paper_setups import build_setup  # noqa: E402
from captum_coar.coar import ComponentAblationRegression, tensor_batches  # noqa: E402
from captum_coar.coar.adaptive import StopWhen, collect_until  # noqa: E402
from captum_coar.evaluation import counterfactual_correlation  # noqa: E402
from captum_coar.stores.memory import InMemoryStore  # noqa: E402

MAX_ROWS = {"resnet": 1024, "vit": 400, "gpt2": 256}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setup", default="resnet")
    p.add_argument("--n-examples", type=int, default=10)
    p.add_argument("--tol", type=float, default=0.01)
    p.add_argument("--quick-model", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = build_setup(args.setup, args.n_examples, quick=args.quick_model)
    alpha = setup.alphas_train[0]
    coar = ComponentAblationRegression(setup.forward, setup.components, ablation="weights")
    tick = time.perf_counter()
    result, report = collect_until(coar, tensor_batches(setup.inputs, setup.target),
                                   StopWhen(criterion="correlation", tol=args.tol),
                                   "ridge_auto", InMemoryStore(),
                                   ablation_fraction=alpha, output=setup.output, seed=7,
                                   max_rows=MAX_ROWS[args.setup])
    wall = time.perf_counter() - tick
    scored = counterfactual_correlation(
        setup.forward, setup.components, setup.inputs, {"adaptive": result},
        target=setup.target, output=setup.output, ablation_fractions=(alpha,), n_masks=100,
        seed=424242, max_rows=MAX_ROWS[args.setup], keep_masks=False)
    N = setup.n_components
    out = {"setup": args.setup, "N": N, "n_examples": args.n_examples, "alpha": alpha,
           "tol": args.tol, "reason": report.reason, "n_masks": report.n_masks,
           "n_validation": report.n_validation, "rounds": report.rounds, "wall_s": wall,
           "fresh_mask_correlation": float(scored.mean()[0][0]),
           "forward_equivalents_per_example": report.n_masks + report.n_validation,
           "command": "python benchmarks/fewer_masks_adaptive.py " + " ".join(sys.argv[1:])}
    for r in report.rounds:
        print(f"m = {r['n_masks']:6d} ({r['n_masks'] / N:5.2f} N): held-out correlation"
              f" {r['correlation']:.3f}, relative 95% width {r['relative_width']:.3f}")
    print(f"stopped: {report.reason} at m = {report.n_masks} ({report.n_masks / N:.2f} N) +"
          f" {report.n_validation} held-out masks; fresh-mask correlation"
          f" {out['fresh_mask_correlation']:.3f}; {wall:.0f} s")
    path = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results"
                                            / f"fewer_masks_adaptive_{args.setup}.json")
    path.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
