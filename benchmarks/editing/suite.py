"""Planted-backdoor suite: 3 seeds x 2 architectures x 2 triggers, every selection method.

Usage: ``python -m benchmarks.editing.suite [--quick] [--threads 1] [--seeds 0,1,2]
[--archs cnn,resnet] [--triggers patch,blend] [--n-masks 1000] [--out benchmarks/results]``.

For every member (:mod:`benchmarks.editing.digits`): target = the 40 attribution images with
the trigger (true labels), reference = the same images without it. Each selection method of
:mod:`benchmarks.editing.selection` gets the same forward budget as COAR's attributions (Welch,
joint selection, re-estimation, optimised gates; random costs nothing); its ``k`` (and, for
joint selection, its bound) is chosen on 160 validation images by choose_k's rule: the smallest
k whose triggered accuracy reaches clean validation accuracy - 5 points with clean accuracy
down at most 1 point, else the best triggered accuracy within that 1 point. ``auto`` chooses,
by the same rule, among ablations (weights; mean over clean training images; zero is the same
as weights for these bias-free convs) x scores (Welch t, mean difference, joint) x methods
(rankings, optimised gates). ``welch@rows`` / ``gates@rows``: the same on finer components,
every filter at each of the last two rows of its map (hooks only; no state_dict export).
Test metrics: triggered and clean accuracy on the ~340 test images whose class is not 0.
The goal per member: triggered accuracy within 5 points of the unedited clean accuracy, with
clean accuracy down at most 1 point. Writes ``editing_suite.json``, ``editing_suite.md`` and
``editing_suite.png`` to ``--out`` (``--quick``: one member, few masks, a temp folder).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from benchmarks.editing import digits as D
from benchmarks.editing.selection import (
    JOINT_BOUNDS,
    EditTask,
    choose,
    coar,
    mean_margin,
    method_candidates,
    test_curves,
)
from benchmarks.editing.suite_report import write_suite_report
from captum_coar import ComponentSet
from captum_coar.ablation import MeanAblation
from captum_coar.editing_choice import EditCandidate, ranking_candidates
from captum_coar.editing_gates import optimise_gates
from captum_coar.spatial import filters_at_rows

GRID = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20)
RESULTS = Path(__file__).resolve().parent.parent / "results"


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def _row(model, comps, candidates: List[EditCandidate], task: EditTask, tests, cost,
         seconds, **extra) -> Dict[str, Any]:
    choice = choose(model, comps, candidates, task)
    candidate = next(c for c in candidates if c.name == choice.name)
    curves = test_curves(model, comps, candidate, GRID, tests)
    i = GRID.index(choice.k)
    return {"chosen": choice.name, "k": choice.k, "rule": choice.rule, "cost": cost,
            "seconds": seconds, "validation": {r["name"]: {"k": r["k"], "target": r["target"],
                                                           "reference": r["reference"]}
                                               for r in choice.table},
            "before": {s: c[0] for s, c in curves.items()},
            "after": {s: c[i] for s, c in curves.items()}, "curves": curves,
            "components": [comps.label(int(j)) for j in choice.components], **extra}


def _auto(model, comps, task, tests, d, n_masks, weights_attr) -> Dict[str, Any]:
    """Choice among ablations x scores x methods on validation (item 4 of the issue)."""
    start = time.time()
    scale = abs(mean_margin(model, task.xr, task.yr))
    candidates: List[EditCandidate] = []
    cost = 0
    for name, ablation in (("weights", "weights"), ("mean", MeanAblation(d.x_fit))):
        a_t, a_r, c = weights_attr if name == "weights" else coar(model, comps, task, n_masks,
                                                                     ablation)
        cost += c
        candidates += ranking_candidates(a_t, a_r, "raise", task.grid, prefix=f"{name}/",
                                         ablation=ablation,
                                         joint_bounds=[b * scale for b in JOINT_BOUNDS])
        rows = task.yt.numel() + task.yr.numel()
        gates = optimise_gates(model, comps, task.xt, task.yt, task.xr, task.yr,
                               ablation=ablation, steps=max(10, round(c / (3 * rows))))
        cost += gates.forward_equivalents
        candidates.append(EditCandidate(f"{name}/gates", ablation, order=gates.order))
    return _row(model, comps, candidates, task, tests, cost, time.time() - start)


def run_member(arch: str, trigger: str, seed: int, n_masks: int, cache: Path,
               fine: bool = True, auto: bool = True) -> Dict[str, Any]:
    d = D.suite_data(trigger, seed)
    model, info = D.trained(arch, trigger, seed, d, cache)
    comps = ComponentSet.from_model(model, kinds=("conv_filters",), exclude="*downsample*")
    trig = lambda x: D.apply_trigger(trigger, x)  # noqa: E731
    clean_val = accuracy(model, d.x_val, d.y_val)
    task = EditTask(trig(d.x_attr), d.y_attr, d.x_attr, d.y_attr,
                    (trig(d.x_val), d.y_val, d.x_val, d.y_val), "raise", GRID,
                    goal=clean_val - 0.05, tolerance=0.01)
    tests = {"triggered": (trig(d.x_test), d.y_test), "clean": (d.x_test, d.y_test)}
    start = time.time()
    weights_attr = coar(model, comps, task, n_masks)
    methods = method_candidates(model, comps, task, n_masks, attributions=weights_attr)
    methods["welch"]["seconds"] = methods["joint"]["seconds"] = time.time() - start
    rows = {}
    for name, m in methods.items():
        extra = {k: v for k, v in m.items() if k not in ("candidates", "cost", "seconds")}
        rows[name] = _row(model, comps, m["candidates"], task, tests, m["cost"], m["seconds"],
                          **extra)
    if auto:
        rows["auto"] = _auto(model, comps, task, tests, d, n_masks, weights_attr)
    if fine:
        fine_comps = filters_at_rows(comps, (-2, -1))
        for name, m in method_candidates(model, fine_comps, task, n_masks,
                                         methods=("welch", "gates")).items():
            rows[f"{name}@rows"] = _row(model, fine_comps, m["candidates"], task, tests,
                                        m["cost"], m["seconds"])
    clean, triggered = accuracy(model, *tests["clean"]), accuracy(model, *tests["triggered"])
    for row in rows.values():
        row["goal_met"] = (row["after"]["triggered"] >= clean - 0.05 - 1e-9
                           and clean - row["after"]["clean"] <= 0.01 + 1e-9)
    return {"arch": arch, "trigger": trigger, "seed": seed, "model": info,
            "n_components": comps.n_components, "poisoned": d.poisoned,
            "n_test": len(d.y_test), "clean": clean, "triggered": triggered,
            "clean_validation": clean_val, "methods": rows}


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--archs", default=",".join(D.ARCHS))
    parser.add_argument("--triggers", default=",".join(D.TRIGGERS))
    parser.add_argument("--n-masks", type=int, default=None)
    parser.add_argument("--no-fine", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--cache-dir", default=str(D.CACHE_DIR))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    archs, triggers = args.archs.split(","), args.triggers.split(",")
    if args.quick:
        seeds, archs, triggers = seeds[:1], archs[:1], triggers[:1]
    n_masks = args.n_masks or (150 if args.quick else 1000)
    out_dir = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="editing-suite-"))
                                                if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "editing_suite.json"
    results = json.loads(path.read_text()) if path.exists() else {"members": {}}
    results.update({"quick": args.quick, "threads": args.threads, "n_masks": n_masks,
                    "grid": list(GRID), "joint_bounds": list(JOINT_BOUNDS)})
    total = time.time()
    for arch in archs:
        for trigger in triggers:
            for seed in seeds:
                start = time.time()
                member = run_member(arch, trigger, seed, n_masks, Path(args.cache_dir),
                                    fine=not args.no_fine)
                member["seconds"] = time.time() - start
                results["members"][f"{arch}/{trigger}/{seed}"] = member
                path.write_text(json.dumps(results, indent=1))
                summary = ", ".join(f"{n} {100 * r['after']['triggered']:.0f}/"
                                    f"{100 * r['after']['clean']:.0f} k={r['k']}"
                                    for n, r in member["methods"].items())
                print(f"[suite] {arch}/{trigger}/{seed} ({member['seconds']:.0f} s): clean"
                      f" {100 * member['clean']:.1f}; triggered/clean after: {summary}",
                      flush=True)
    results["seconds"] = time.time() - total
    path.write_text(json.dumps(results, indent=1))
    write_suite_report(results, out_dir)
    print(f"[suite] wrote {out_dir}/editing_suite.json, .md and .png in"
          f" {results['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
