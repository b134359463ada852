"""Patching benchmark: exact activation patching against AtP, AtP*, RelP, gate IG and COAR.

Usage: ``python -m benchmarks.patching.run [--threads 1] [--quick] [--out DIR]
[--tasks ioi,recall]``.

Two tasks, each with paired clean / corrupted prompts and the logit difference (answer -
distractor) at the last token as output:

- ``ioi``: indirect object identification on a 4-layer GPT-2 trained here
  (:mod:`benchmarks.patching.ioi`); corrupted prompt = S2 replaced by the IO name.
- ``recall``: setup D's Llama-style associative-recall model with the in-context subject
  corrupted (:mod:`benchmarks.patching.recall`).

For each task and each component set (every attention head; every MLP neuron) the methods of
:mod:`benchmarks.patching.methods` run with ``baselines=`` the corrupted prompts (noising) and
are scored against exact patching (Pearson over example x component pairs and over mean
effects, the AtP* paper's top-k verification cost, time). Also: the causal-tracing grid
(residual stream x named position, denoising, normalised) on both tasks, the layer x head map
(noising, normalised) on IOI, and a speed check of COAR with baselines against COAR with
weight ablation on the same model, components and masks. Writes ``patching.json``,
``patching.md`` and PNG plots to ``--out`` (default ``benchmarks/results/patching``;
``--quick``: tiny models and sizes, a temporary folder unless ``--out`` is given).
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from benchmarks._harness import command_line
from benchmarks.patching import methods as M
from benchmarks.patching.ioi import make_ioi_data, train_or_load_ioi
from benchmarks.patching.recall import (
    PatchingTask,
    ioi_task,
    named_positions,
    recall_task,
    tracing_components,
)
from benchmarks.patching.report import goals, write_report
from captum_coar import ComponentAblationRegression, ComponentSet
from captum_coar.patching import activation_patching
from captum_coar.patching_plots import head_grid

RESULTS = Path(__file__).resolve().parents[1] / "results" / "patching"
FULL = dict(n_ioi=32, n_recall=64, n_steps=16, ks=(5, 10), max_rows=None,
            sets={"heads": dict(coar_masks_per_component=20, coar_alpha=0.05),
                  "mlp_neurons": dict(coar_masks_per_component=2, coar_alpha=0.025)},
            speed=dict(n_masks=256, repeats=2, n_examples=32))
QUICK = dict(n_ioi=6, n_recall=6, n_steps=4, ks=(2, 5), max_rows=None,
             sets={"heads": dict(coar_masks_per_component=4, coar_alpha=0.1),
                   "mlp_neurons": dict(coar_masks_per_component=1, coar_alpha=0.05)},
             speed=dict(n_masks=16, repeats=1, n_examples=6))


def log(message: str) -> None:
    print(message, flush=True)


def _sets(model: Any) -> Dict[str, ComponentSet]:
    return {kind: ComponentSet.from_model(model, kinds=(kind,))
            for kind in ("attention_heads", "mlp_neurons")}


def _grid_record(grid: torch.Tensor, rows: List[str], columns: List[str]) -> Dict[str, Any]:
    return {"grid": grid.tolist(), "rows": rows, "columns": columns}


def tracing(task: PatchingTask) -> Dict[str, Any]:
    """Denoising causal tracing: residual stream (embedding + blocks) x named positions."""
    components = tracing_components(task.model, named_positions(task))
    result = activation_patching(task.forward, components, task.baselines, task.inputs,
                                 target=task.target, output="logit_difference",
                                 direction="denoising")
    record = _grid_record(*result.grid())
    record.update(sign=result.sign, top=result.top(5),
                  clean=float(result.baseline_value.mean()),
                  corrupted=float(result.input_value.mean()))
    return record


def head_map(task: PatchingTask, heads: ComponentSet) -> Dict[str, Any]:
    """Noising patching of every head (all positions together) as a layer x head map."""
    result = activation_patching(task.forward, heads, task.inputs, task.baselines,
                                 target=task.target, output="logit_difference")
    values = result.normalized
    record = _grid_record(*head_grid(heads, values[~values.isnan().any(dim=1)].mean(dim=0)))
    record.update(sign=result.sign, top=result.top(5))
    return record


def run_task(task: PatchingTask, cfg: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"model": task.info, "notes": task.notes,
                           "n_examples": int(task.target.shape[0]), "sets": {}}
    sets = _sets(task.model)
    for label, components in zip(("heads", "mlp_neurons"), sets.values()):
        log(f"  {task.name} / {label}: {components.n_components} components")
        settings = dict(cfg["sets"][label], n_steps=cfg["n_steps"], max_rows=cfg["max_rows"])
        runs = M.run_methods(task, components, settings, log=log)
        out["sets"][label] = {
            "n_components": components.n_components, "settings": settings,
            "scores": M.score(runs, cfg["ks"]),
            "mean_effects": {name: [round(float(v), 6) for v in run.values.mean(dim=0)]
                             for name, run in runs.items()}}
    log(f"  {task.name}: causal-tracing grid and head map")
    out["tracing"] = tracing(task)
    out["heads_map"] = head_map(task, sets["attention_heads"])
    return out


def _rows(value: Any, n: int) -> Any:
    return tuple(v[:n] for v in value) if isinstance(value, tuple) else value[:n]


def speed_check(task: PatchingTask, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """COAR with baselines against COAR with weight ablation: same model, components, masks."""
    components = ComponentSet.from_model(task.model)
    n, m = cfg["n_examples"], cfg["n_masks"]
    x, base, target = _rows(task.inputs, n), _rows(task.baselines, n), task.target[:n]
    times: Dict[str, List[float]] = {"baselines": [], "weights": []}
    for _ in range(cfg["repeats"]):
        for mode in ("baselines", "weights"):
            extra = {"baselines": base} if mode == "baselines" else {}
            tick = time.perf_counter()
            ComponentAblationRegression(task.forward, components).attribute(
                x, target=target, output="logit_difference", n_masks=m,
                ablation_fraction=0.025, seed=0, solver="ridge", **extra)
            times[mode].append(time.perf_counter() - tick)
    best = {k: min(v) for k, v in times.items()}
    return {"model": task.name, "n_components": components.n_components, "n_examples": n,
            "n_masks": m, "repeats": cfg["repeats"], "seconds": times,
            "best_seconds": best, "ratio": best["baselines"] / best["weights"]}


def main(argv: Optional[List[str]] = None) -> int:
    p = command_line(__doc__, quick="tiny models and sizes (CI smoke)", threads=1, out=None)
    p.add_argument("--tasks", default="ioi,recall")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(tasks) - {"ioi", "recall"}
    if unknown:
        p.error(f"unknown tasks {sorted(unknown)}; allowed: ioi, recall")
    cfg = QUICK if args.quick else FULL
    out = Path(args.out) if args.out else (
        Path(tempfile.mkdtemp(prefix="patching_quick_")) if args.quick else RESULTS)
    cache = Path(tempfile.mkdtemp(prefix="patching_cache_")) if args.quick else None
    start = time.time()
    results: Dict[str, Any] = {
        "command": "python -m benchmarks.patching.run " + " ".join(argv or sys.argv[1:]),
        "quick": args.quick, "threads": args.threads, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "tasks": {},
        "settings": {k: v for k, v in cfg.items()}}
    built: Dict[str, PatchingTask] = {}
    if "ioi" in tasks:
        log("ioi: model")
        model, info = train_or_load_ioi(quick=args.quick, cache_dir=cache)
        log(f"ioi: held-out accuracy {info['test_accuracy']:.3f}, trained in"
            f" {info['train_seconds']:.0f} s ({info['steps']} steps)")
        built["ioi"] = ioi_task(model, make_ioi_data(cfg["n_ioi"], seed=7, split="test"), info)
    if "recall" in tasks:
        log("recall: model")
        built["recall"] = recall_task(cfg["n_recall"], quick=args.quick, cache_dir=cache)
    for name, task in built.items():
        log(f"{name}: methods")
        results["tasks"][name] = run_task(task, cfg)
    first = next(iter(built.values()))
    log(f"speed check on {first.name}")
    results["speed"] = speed_check(first, cfg["speed"])
    log(f"  COAR with baselines / with weight ablation: {results['speed']['ratio']:.2f}")
    results["missing_methods"] = list(M.MISSING)
    results["goals"] = goals(results)
    results["seconds"] = time.time() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "patching.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    write_report(results, out)
    log(f"wrote {out}/patching.json, patching.md and plots in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
