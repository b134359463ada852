"""COAR-Edit benchmark: five editing tasks on small ResNets trained here, four ways to choose.

Usage: ``python -m benchmarks.editing.run [--quick] [--threads 1] [--tasks errors,forget,...]
[--out benchmarks/results] [--n-masks M]``.

For every task, component attributions on the task's target and reference examples come from
COAR, leave-one-out, attribution patching and random numbers; each is turned into Welch-t
scores and a component order by :mod:`captum_coar.editing`. ``k`` is chosen on a validation
split from COAR's curve (rule and goal per task below) and the SAME ``k`` is applied with every
method's order; test metrics are reported before (k = 0) and after. Task 1 edits one example at
a time and gives every method the same budget (k <= 10). Writes ``editing.json``, ``editing.md``
and ``editing_<task>.png`` to ``--out`` (``--quick``: tiny sizes, a temp folder by default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from benchmarks.data import load_fashion_mnist
from benchmarks.editing import tasks as T
from benchmarks.editing.methods import METHODS, attributions
from benchmarks.editing.population import extra_methods, per_example_methods
from benchmarks.editing.report import write_report
from benchmarks.editing.selection import EditTask
from captum_coar import ComponentSet
from captum_coar.editing import (
    choose_k,
    coar_edit,
    component_scores,
    edit_curve,
    edit_masks,
    select_components,
)
from captum_coar.engine import evaluate_masks

GRID = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40)
RESULTS = Path(__file__).resolve().parent.parent / "results"
TASKS = ("errors", "forget", "spurious", "backdoor", "typographic")
WIDTHS_USED = T.WIDTHS  # set from --widths
GATE_STEPS_PER_EXAMPLE = 150  # task 1: optimised gates per example (41 rows a step)


def components_of(model) -> ComponentSet:
    """Conv filters of every conv layer except the 1x1 downsample shortcuts."""
    return ComponentSet.from_model(model, kinds=("conv_filters",), exclude="*downsample*")


def accuracy_curves(model, comps, order, ks, sets: Dict[str, tuple]) -> Dict[str, List[float]]:
    """Accuracy of each named (x, y) set with ``order[:k]`` ablated, for every k (batched)."""
    masks = edit_masks(order, ks, comps.n_components)
    out = {}
    for name, (x, y) in sets.items():
        margins = evaluate_masks(model, comps, x, masks, target=y, output="margin")
        out[name] = (margins > 0).double().mean(dim=1).tolist()
    return out


def all_attributions(model, comps, x, y, n_masks) -> Dict[str, Any]:
    out = {}
    for method in METHODS:
        values, seconds, forwards = attributions(method, model, comps, x, y, n_masks)
        out[method] = {"A": values, "seconds": seconds, "forwards": forwards}
        print(f"    {method}: {seconds:.1f} s", flush=True)
    return out


def population_task(model, comps, attr_sets, direction, validation, goal, tolerance,
                    test_sets, n_masks, derive: Optional[Callable] = None) -> Dict[str, Any]:
    """Tasks 2-5: one edit for a population of target examples, compared at COAR's k."""
    xt, yt, xr, yr = attr_sets
    attr = all_attributions(model, comps, torch.cat([xt, xr]), torch.cat([yt, yr]), n_masks)
    n_t = len(yt)
    result = coar_edit(model, comps, attr["coar"]["A"][:n_t], attr["coar"]["A"][n_t:], direction,
                       GRID[1:], validation=validation, goal=goal, tolerance=tolerance)
    k = result.k
    methods = {}
    for method, a in attr.items():
        scores = component_scores(a["A"][:n_t], a["A"][n_t:])
        order = select_components(scores, max(GRID), direction)
        curves = accuracy_curves(model, comps, order, GRID, test_sets)
        if derive is not None:
            curves.update(derive(curves))
        i = GRID.index(k)
        val_curve = edit_curve(model, comps, order, GRID, *validation)
        methods[method] = {
            "before": {s: c[0] for s, c in curves.items()},
            "after": {s: c[i] for s, c in curves.items()},
            "curves": curves, "attribution_seconds": a["seconds"], "forwards": a["forwards"],
            "own_validation_k": choose_k(val_curve, direction, goal, tolerance)[0],
            "first_components": [comps.label(int(j)) for j in order[:max(k, 5)]],
        }
    for m in methods.values():  # test metrics at each method's own validation k
        m["own_k_after"] = {s: c[GRID.index(m["own_validation_k"])] for s, c in m["curves"].items()}
    task = EditTask(xt, yt, xr, yr, validation, direction, GRID, goal, tolerance)
    coar_attr = (attr["coar"]["A"][:n_t], attr["coar"]["A"][n_t:], attr["coar"]["forwards"],
                 attr["coar"]["seconds"])
    methods.update(extra_methods(model, comps, task, coar_attr, k, test_sets, n_masks, derive))
    return {"k": k, "rule": result.rule, "goal": goal, "tolerance": tolerance,
            "direction": direction, "validation": result.to_dict(top_scores=10),
            "n_target": n_t, "n_reference": len(yr), "grid": list(GRID), "methods": methods}


def correct_mask(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def task_errors(base, quick, n_masks, cache):
    data = T.task_data("plain", base, quick)
    model, info = T.trained_model("plain", data, quick, cache, widths=WIDTHS_USED)
    comps = components_of(model)
    n_err, n_ref, n_held = (5, 10, 100) if quick else (20, 40, 150)
    ok = correct_mask(model, data.x_val, data.y_val)
    errors = torch.nonzero(~ok).reshape(-1)[:n_err]
    correct = torch.nonzero(ok).reshape(-1)
    induce, reference = correct[:n_err], correct[n_err:n_err + n_ref]
    held_x, held_y = data.x_test[:n_held], data.y_test[:n_held]
    idx = torch.cat([errors, induce, reference])
    attr = all_attributions(model, comps, data.x_val[idx], data.y_val[idx], n_masks)
    ks = list(range(11))
    methods = {}
    for method, a in attr.items():
        ref_a = a["A"][2 * n_err:]
        rows = {"fix": [], "induce": []}
        for kind, direction, goal, offset in (("fix", "raise", 1.0, 0), ("induce", "lower", 0.0, n_err)):
            for j in range(n_err):
                example = idx[offset + j]
                scores = component_scores(a["A"][offset + j:offset + j + 1], ref_a)
                order = select_components(scores, 10, direction)
                curve = edit_curve(model, comps, order, ks, data.x_val[example:example + 1],
                                   data.y_val[example:example + 1], held_x, held_y)
                k, rule = choose_k(curve, direction, goal=goal, tolerance=0.02)
                done = rule == "goal"
                at = curve.at(k)
                # smallest k that flips the example whatever happens to the held-out images
                flips = [kk for kk, v in zip(curve.ks, curve.target.tolist()) if v == goal]
                rows[kind].append({"example": int(example), "done": done, "k": k if done else None,
                                   "held_out_before": curve.at(0)["reference"],
                                   "held_out_after": at["reference"] if done else None,
                                   "k_any_held_out": flips[0] if flips else None,
                                   "held_out_at_k_any": (curve.at(flips[0])["reference"]
                                                         if flips else None)})
        methods[method] = _summary(rows, ks, a)
        print(f"    {method}: fixed {methods[method]['summary']['fix']['share']:.2f}, induced"
              f" {methods[method]['summary']['induce']['share']:.2f}", flush=True)
    a = attr["coar"]
    new_rows: Dict[str, Dict[str, list]] = {m: {"fix": [], "induce": []}
                                            for m in ("joint", "gates", "auto")}
    ref_a, ref_set = a["A"][2 * n_err:], (data.x_val[reference], data.y_val[reference])
    for kind, direction, goal, offset in (("fix", "raise", 1.0, 0), ("induce", "lower", 0.0, n_err)):
        for j in range(n_err):
            example = idx[offset + j]
            one = (data.x_val[example:example + 1], data.y_val[example:example + 1])
            found = per_example_methods(model, comps, one, a["A"][offset + j:offset + j + 1],
                                        ref_a, ref_set, (held_x, held_y), direction, goal, ks,
                                        GATE_STEPS_PER_EXAMPLE)
            for name, row in found.items():
                new_rows[name][kind].append({"example": int(example), **row})
    for name, rows in new_rows.items():
        cost = sum(r["cost"] for kind in rows.values() for r in kind)
        seconds = sum(r["seconds"] for kind in rows.values() for r in kind)
        methods[name] = _summary(rows, ks, {"seconds": a["seconds"] + seconds,
                                            "forwards": a["forwards"] + cost})
        print(f"    {name}: fixed {methods[name]['summary']['fix']['share']:.2f}, induced"
              f" {methods[name]['summary']['induce']['share']:.2f}", flush=True)
    return {"model": info, "n_errors": n_err, "n_reference": n_ref, "n_held_out": n_held,
            "budget": 10, "tolerance": 0.02, "gate_steps_per_example": GATE_STEPS_PER_EXAMPLE,
            "held_out_accuracy": float(correct_mask(model, held_x, held_y).double().mean()),
            "methods": methods}


def _summary(rows, ks, a) -> Dict[str, Any]:
    """Task 1: share fixed / induced within the budget, mean k and held-out change."""
    summary = {}
    for kind, r in rows.items():
        done = [x for x in r if x["done"]]
        summary[kind] = {
            "share": len(done) / max(1, len(r)),
            "mean_k": sum(x["k"] for x in done) / len(done) if done else None,
            "mean_held_out_change": (sum(x["held_out_after"] - x["held_out_before"] for x in done)
                                     / len(done)) if done else None,
            "by_budget": [sum(1 for x in done if x["k"] <= b) / max(1, len(r)) for b in ks],
            "share_ignoring_held_out": sum(1 for x in r if x["k_any_held_out"] is not None)
            / max(1, len(r)),
        }
    return {"summary": summary, "rows": rows, "attribution_seconds": a["seconds"],
            "forwards": a["forwards"]}


def _split_half(x, y, n):
    return x[:n], y[:n], x[n:], y[n:]


def task_forget(base, quick, n_masks, cache, forget_class=1):
    data = T.task_data("plain", base, quick)
    model, info = T.trained_model("plain", data, quick, cache, widths=WIDTHS_USED)
    comps = components_of(model)
    n = 10 if quick else 40
    is_c = data.y_val == forget_class
    xc, yc, xo, yo = data.x_val[is_c], data.y_val[is_c], data.x_val[~is_c], data.y_val[~is_c]
    attr_sets = (xc[:n], yc[:n], xo[:n], yo[:n])
    validation = (xc[n:], yc[n:], xo[n:n + 400], yo[n:n + 400])
    test_c = data.y_test == forget_class
    tests = {"class": (data.x_test[test_c], data.y_test[test_c]),
             "others": (data.x_test[~test_c][:1000], data.y_test[~test_c][:1000])}
    out = population_task(model, comps, attr_sets, "lower", validation, goal=0.05, tolerance=0.03,
                          test_sets=tests, n_masks=n_masks)
    return {"model": info, "class": base.classes[forget_class], "target_set": "class",
            "reference_set": "others", **out}


def task_spurious(base, quick, n_masks, cache):
    data = T.task_data("spurious", base, quick)
    model, info = T.trained_model("spurious", data, quick, cache, widths=WIDTHS_USED)
    comps = components_of(model)
    n = 10 if quick else 40
    g_val, g_test = data.extra["group_val"], data.extra["group_test"]
    minority_val = (g_val == 1) | (g_val == 2)
    xm, ym = data.x_val[minority_val], data.y_val[minority_val]
    xM, yM = data.x_val[~minority_val], data.y_val[~minority_val]
    attr_sets = (xm[:n], ym[:n], xM[:n], yM[:n])
    validation = (xm[n:], ym[n:], xM[n:n + 400], yM[n:n + 400])
    tests = {f"group{g}": (data.x_test[g_test == g], data.y_test[g_test == g]) for g in range(4)}
    counts = {f"group{g}": int((g_test == g).sum()) for g in range(4)}
    total = sum(counts.values())

    def derive(curves):
        n_k = len(curves["group0"])
        worst = [min(curves[f"group{g}"][i] for g in range(4)) for i in range(n_k)]
        avg = [sum(curves[s][i] * counts[s] for s in counts) / total for i in range(n_k)]
        return {"worst_group": worst, "average": avg}

    out = population_task(model, comps, attr_sets, "raise", validation, goal=None, tolerance=0.03,
                          test_sets=tests, n_masks=n_masks, derive=derive)
    return {"model": info, "group_counts": counts, "target_set": "worst_group",
            "reference_set": "average", **out}


def task_backdoor(base, quick, n_masks, cache):
    data = T.task_data("backdoor", base, quick)
    model, info = T.trained_model("backdoor", data, quick, cache, widths=WIDTHS_USED)
    comps = components_of(model)
    n = 10 if quick else 20
    not0 = data.y_val != 0
    xv, yv = data.x_val[not0], data.y_val[not0]
    attr_sets = (T.triggered(xv[:n]), yv[:n], xv[:n], yv[:n])  # the same images, +/- trigger
    xvv, yvv = xv[n:n + 400], yv[n:n + 400]
    clean_val = float(correct_mask(model, xvv, yvv).double().mean())
    validation = (T.triggered(xvv), yvv, xvv, yvv)
    t_not0 = data.y_test != 0
    xt, yt = data.x_test[t_not0][:1000], data.y_test[t_not0][:1000]
    tests = {"triggered": (T.triggered(xt), yt), "clean": (xt, yt)}
    # tolerance 0.05: with the 0.01 no k > 0 qualifies here and the rule returns k = 0
    out = population_task(model, comps, attr_sets, "raise", validation, goal=clean_val - 0.10,
                          tolerance=0.05, test_sets=tests, n_masks=n_masks)
    return {"model": info, "poisoned": data.extra["poisoned"], "target_set": "triggered",
            "reference_set": "clean", **out}


def _wrong_names(y, num_classes=10, seed=0):
    shift = torch.randint(1, num_classes, y.shape, generator=torch.Generator().manual_seed(seed))
    return (y + shift) % num_classes


def task_typographic(base, quick, n_masks, cache):
    data = T.task_data("typographic", base, quick)
    model, info = T.trained_model("typographic", data, quick, cache, widths=WIDTHS_USED)
    comps = components_of(model)
    n = 10 if quick else 40
    xv, yv = data.x_val, data.y_val
    attacked_v = T.with_text(xv, _wrong_names(yv, seed=1))
    attr_sets = (attacked_v[:n], yv[:n], xv[:n], yv[:n])
    xvv, yvv = xv[n:n + 400], yv[n:n + 400]
    clean_val = float(correct_mask(model, xvv, yvv).double().mean())
    validation = (attacked_v[n:n + 400], yvv, xvv, yvv)
    xt, yt = data.x_test[:1000], data.y_test[:1000]
    tests = {"attacked": (T.with_text(xt, _wrong_names(yt, seed=2)), yt), "clean": (xt, yt),
             "true_text": (T.with_text(xt, yt), yt)}
    out = population_task(model, comps, attr_sets, "raise", validation, goal=clean_val - 0.10,
                          tolerance=0.02, test_sets=tests, n_masks=n_masks)
    return {"model": info, "target_set": "attacked", "reference_set": "clean", **out}


RUNNERS = {"errors": task_errors, "forget": task_forget, "spurious": task_spurious,
           "backdoor": task_backdoor, "typographic": task_typographic}


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--n-masks", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--cache-dir", default=str(T.CACHE_DIR))
    parser.add_argument("--widths", default=",".join(str(w) for w in T.WIDTHS),
                        help="ResNetSmall stage widths (one block per stage)")
    args = parser.parse_args(argv)
    global WIDTHS_USED
    WIDTHS_USED = tuple(int(w) for w in args.widths.split(","))
    torch.set_num_threads(args.threads)
    names = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in names if t not in RUNNERS]
    if unknown:
        raise SystemExit(f"--tasks must be a comma list of {list(TASKS)}; got {unknown}")
    out_dir = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="editing-"))
                                                if args.quick else RESULTS)
    n_masks = args.n_masks or (500 if args.quick else 1500)
    base = load_fashion_mnist(n_train=None if not args.quick else 6000)
    path = out_dir / "editing.json"
    results = json.loads(path.read_text()) if path.exists() else {"tasks": {}}
    results.update({"quick": args.quick, "threads": args.threads, "n_masks": n_masks,
                    "n_components": 2 * sum(WIDTHS_USED) + WIDTHS_USED[0],
                    "widths": list(WIDTHS_USED), "dataset": base.name, "grid": list(GRID)})
    for name in names:
        print(f"[editing] task {name}", flush=True)
        start = time.time()
        results["tasks"][name] = RUNNERS[name](base, args.quick, n_masks, Path(args.cache_dir))
        results["tasks"][name]["seconds"] = time.time() - start
        results["tasks"][name]["n_masks"] = n_masks
        print(f"[editing] task {name} done in {time.time() - start:.0f} s", flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    write_report(results, out_dir)
    print(f"[editing] wrote {out_dir}/editing.json, editing.md and plots", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
