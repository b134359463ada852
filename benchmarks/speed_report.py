"""Markdown summary of a speed benchmark report (the dict ``benchmarks/speed.py`` writes as JSON).

Contract
--------
``write_markdown(report) -> str``: a summary table (every ratio beside its target and whether
it is met), then one small table per part with the times behind the ratios, then the
environment (threads, device, CPU, load average). Parts missing from ``report`` are skipped.
``summary_rows(report)`` gives the summary table's rows as dicts.
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional


def _x(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def _ok(met: Optional[bool]) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


def summary_rows(report: Dict[str, Any]) -> List[Dict[str, str]]:
    rows: List[Dict[str, str]] = []
    if "throughput" in report:
        part = report["throughput"]
        for r in part["rows"]:
            rows.append({"what": f"1. engine / plain inference, {r['rows_per_forward']} rows per"
                                 " forward", "ratio": _x(r["ratio"]),
                         "cpu": _x(r["ratio_cpu_time"]), "target": f">= {part['target']}",
                         "met": _ok(r["ratio"] >= part["target"])})
    if "reference" in report:
        part = report["reference"]
        for r in part["rows"]:
            rows.append({"what": f"2. reference loop / engine, eval set {r['eval_set_size']}"
                                 f" ({r['masks']} masks)", "ratio": _x(r["ratio"]),
                         "cpu": _x(r["ratio_cpu_time"]), "target": f">= {part['target']}",
                         "met": _ok(r["ratio"] >= part["target"])})
    if "solvers" in report:
        part = report["solvers"]
        speed = part["speedups"]
        lasso = speed["lasso_vs_sklearn_lasso_looped"]
        rows.append({"what": "3. sklearn Lasso looped / our Lasso (N 2304 x m 20000 x n 1000"
                             if part["N"] == 2304 else
                             f"3. sklearn Lasso looped / our Lasso (N {part['N']} x m"
                             f" {part['m']} x n {part['n']}", "ratio": _x(lasso["wall"], 0),
                     "cpu": _x(lasso["cpu"], 0), "target": f">= {part['target']:.0f}",
                     "met": _ok(part["met"])})
        rows[-1]["what"] += f"; coef rel. diff {part['agreement']['lasso_vs_sklearn_lasso']['relative']:.1e})"
        for key, label in (("ridge_vs_sklearn_ridge", "our Ridge"),
                           ("least_squares_vs_sklearn_ridge", "our least squares")):
            rows.append({"what": f"3. sklearn Ridge (multi-output) / {label}",
                         "ratio": _x(speed[key]["wall"]), "cpu": _x(speed[key]["cpu"]),
                         "target": "-", "met": "-"})
    if "memory" in report:
        part = report["memory"]
        lo, hi = min(part["mask_counts"]), max(part["mask_counts"])
        rows.append({"what": f"4. peak-RSS growth from m = {lo} to {hi}: statistics vs store"
                             " (MiB)", "ratio": f"{_mib(part['statistics_growth_bytes'])} vs"
                                               f" {_mib(part['store_growth_bytes'])}",
                     "cpu": "-", "target": "statistics flat", "met": _ok(part["met"])})
    if "conductance" in report:
        part = report["conductance"]
        rows.append({"what": f"5. Captum LayerConductance per layer / ComponentConductance"
                             f" ({part['n_layers']} layers)", "ratio": _x(part["speedup"], 1),
                     "cpu": _x(part["speedup_cpu_time"], 1), "target": "-", "met": "-"})
    return rows


def _part_tables(report: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    if "throughput" in report:
        part = report["throughput"]
        out += ["", f"### 1. Ablation throughput ({part['model']}, {part['n_components']}"
                    f" filters, Bernoulli alpha {part['ablation_fraction']})", "",
                "| rows / forward | masks / forward | plain rows/s | ours evals/s | ratio | ratio"
                " (CPU time) |", "|---|---|---|---|---|---|"]
        for r in part["rows"]:
            out.append(f"| {r['rows_per_forward']} | {r['masks_per_forward']} |"
                       f" {r['plain_rows_per_s']:.0f} | {r['ours_evaluations_per_s']:.0f} |"
                       f" {_x(r['ratio'])} | {_x(r['ratio_cpu_time'])} |")
    if "reference" in report:
        part = report["reference"]
        out += ["", f"### 2. Against the reference loop ({part['model']})", "",
                f"Reference: {part['reference']}. Ours: {part['ours']}.", "",
                "| eval set | masks | reference evals/s | ours evals/s | ratio | ratio (CPU"
                " time) | max abs output diff |", "|---|---|---|---|---|---|---|"]
        for r in part["rows"]:
            out.append(f"| {r['eval_set_size']} | {r['masks']} |"
                       f" {r['reference_evaluations_per_s']:.0f} |"
                       f" {r['ours_evaluations_per_s']:.0f} | {_x(r['ratio'])} |"
                       f" {_x(r['ratio_cpu_time'])} |"
                       f" {r['outputs_agree']['max_abs_diff']:.1e} |")
        for r in part["rows"]:
            if "ratio_same_batch" in r:
                out += ["", f"At eval set {r['eval_set_size']} the reference run with batches of"
                            f" {r['reference_same_batch_size']} rows (ours' row budget) instead"
                            f" of 256: ratio {_x(r['ratio_same_batch'])}."]
    if "solvers" in report:
        part = report["solvers"]
        t, total, agree = part["timings"], part["ours_total_s"], part["agreement"]
        out += ["", f"### 3. Solvers (N {part['N']}, m {part['m']}, n {part['n']}; ridge alpha"
                    f" {part['ridge_alpha']}, lasso alpha {part['lasso_alpha']}, tol"
                    f" {part['tol']})", "", f"Problem: {part['problem']}.", "",
                "| step | wall (s) | CPU (s) |", "|---|---|---|",
                f"| ours: accumulate sufficient statistics | {_x(t['accumulate']['wall_s'])} |"
                f" {_x(t['accumulate']['cpu_s'])} |"]
        for name in ("least_squares", "ridge", "lasso"):
            out.append(f"| ours: {name} solve (total with accumulation) |"
                       f" {_x(t[name]['wall_s'])} ({_x(total[name]['wall'])}) |"
                       f" {_x(t[name]['cpu_s'])} ({_x(total[name]['cpu'])}) |")
        looped = part["sklearn_lasso_looped_s"]
        out += [f"| sklearn Ridge, multi-output | {_x(t['sk_ridge']['wall_s'])} |"
                f" {_x(t['sk_ridge']['cpu_s'])} |",
                f"| sklearn Lasso looped over {part['n']} examples (from"
                f" {part['lasso_examples_timed']}, extrapolated) | {_x(looped['wall'], 0)} |"
                f" {_x(looped['cpu'], 0)} |", "",
                "| coefficients compared | max abs diff | relative to max abs |", "|---|---|---|"]
        for key, value in agree.items():
            out.append(f"| {key.replace('_', ' ')} | {value['max_abs_diff']:.2e} |"
                       f" {value['relative']:.2e} |")
        per = sorted(part["sklearn_lasso_per_example_wall_s"])
        out += ["", f"sklearn Lasso per example (wall, s): min {per[0]:.2f}, median"
                    f" {statistics.median(per):.2f}, max {per[-1]:.2f} over"
                    f" {len(per)} examples; the median is extrapolated."]
        out += ["", f"Our Lasso: {part['ours_lasso_n_iter']} FISTA iterations, nonzero fraction"
                    f" {part['ours_lasso_nonzero_fraction']:.3f}; sklearn Lasso iterations on the"
                    f" timed examples: {part['sklearn_lasso_n_iter']}."]
        if part["solver_warnings"]:
            out.append("Warnings: " + "; ".join(part["solver_warnings"]))
    if "memory" in report:
        part = report["memory"]
        out += ["", f"### 4. Peak memory of collection ({part['model']}, {part['n_examples']}"
                    f" examples, {part['chunk_rows']} mask rows per chunk, fresh process each)",
                "", "| mode | m | peak RSS growth (MiB) | tracemalloc peak (MiB) | result held"
                    " (MiB) | seconds |", "|---|---|---|---|---|---|"]
        for r in part["runs"]:
            out.append(f"| {r['mode']} | {r['n_masks']} | {_mib(r['peak_rss_growth_bytes'])} |"
                       f" {_mib(r['tracemalloc_peak_bytes'])} | {_mib(r['result_bytes'])} |"
                       f" {r['seconds']:.1f} |")
        out += ["", f"Growth from the smaller to the larger m: statistics"
                    f" {_mib(part['statistics_growth_bytes'])} MiB, store"
                    f" {_mib(part['store_growth_bytes'])} MiB (expected for the store:"
                    f" {_mib(part['store_expected_growth_bytes'])} MiB of packed masks and"
                    " float32 outputs)."]
    if "conductance" in report:
        part = report["conductance"]
        agree = part["agreement"]
        out += ["", f"### 5. Conductance ({part['model']}, {part['n_components']} filters in"
                    f" {part['n_layers']} layers, batch {part['batch']}, n_steps"
                    f" {part['n_steps']}, {part['output']})", "",
                "| | wall (s) | CPU (s) |", "|---|---|---|",
                f"| ComponentConductance, one pass | {_x(part['ours']['wall_s'], 3)} |"
                f" {_x(part['ours']['cpu_s'], 3)} |",
                f"| Captum LayerConductance, per layer | {_x(part['captum_per_layer']['wall_s'], 3)}"
                f" | {_x(part['captum_per_layer']['cpu_s'], 3)} |", "",
                f"Speed-up {_x(part['speedup'], 1)}x; max abs difference"
                f" {agree['max_abs_diff']:.1e} (largest attribution"
                f" {agree['max_abs_reference']:.1e}, relative {agree['relative']:.1e})."]
    return out


def write_markdown(report: Dict[str, Any]) -> str:
    env = report["environment"]
    lines = ["# Speed benchmark", "",
             f"`{env['command']}` -- {env['date']}, commit {env['git_commit']}; device"
             f" {env['device']}, torch threads {env['torch_threads']}, medians of"
             f" {report['repeats']} repeat(s); {env['cpu']} ({env['cpu_count']} cores), load"
             f" average at start {_x((env.get('load_average_start') or [None])[0])}.", ""]
    if env.get("gpu_note"):
        lines += [env["gpu_note"], ""]
    if env.get("quick"):
        lines += ["Quick (smoke-test) sizes: the targets are meant for the full run.", ""]
    lines += ["Ratios are wall-clock (CPU-time ratios beside them: steadier on a shared machine).",
              "", "| measurement | ratio | ratio (CPU time) | target | met |", "|---|---|---|---|---|"]
    for row in summary_rows(report):
        lines.append(f"| {row['what']} | {row['ratio']} | {row['cpu']} | {row['target']} |"
                     f" {row['met']} |")
    lines += _part_tables(report)
    if "setup_a" in report:
        a = report["setup_a"]
        lines += ["", f"Setup A: ResNetSmall, {a['n_components']} conv filters in"
                      f" {a['n_layers']} layers (no downsample convs), trained on {a['dataset']}"
                      f" (test accuracy {_x(a.get('test_accuracy'), 4)})."]
    lines += ["", f"Total run time {env.get('total_seconds', 0):.0f} s.", ""]
    return "\n".join(lines)
