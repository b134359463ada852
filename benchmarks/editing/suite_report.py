"""Markdown tables and plots of the planted-backdoor suite (from its JSON results).

``write_suite_report(results, out_dir)`` writes ``editing_suite.md`` and ``editing_suite.png``;
``python -m benchmarks.editing.suite_report [results/editing_suite.json]`` re-renders them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

NAMES = {"welch": "Welch ranking (COAR)", "joint": "joint selection (COAR)",
         "reestimate": "re-estimation (COAR rounds)", "gates": "optimised gates",
         "random": "random", "auto": "auto (ablation x score x method)",
         "welch@rows": "Welch, filters at rows", "gates@rows": "gates, filters at rows"}
EQUAL_K = (4, 8, 12)


def _mean(values: List[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _methods(members: Dict[str, Any]) -> List[str]:
    seen: List[str] = []
    for member in members.values():
        seen += [m for m in member["methods"] if m not in seen]
    return seen


def summary_rows(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    members = results["members"]
    rows = []
    for method in _methods(members):
        runs = [(m, m["methods"][method]) for m in members.values() if method in m["methods"]]
        rows.append({
            "method": method, "members": len(runs),
            "goal_met": sum(1 for _, r in runs if r["goal_met"]),
            "triggered": _mean([r["after"]["triggered"] for _, r in runs]),
            "clean_change": _mean([r["after"]["clean"] - m["clean"] for m, r in runs]),
            "worst_gap": max((m["clean"] - r["after"]["triggered"] for m, r in runs),
                             default=float("nan")),
            "k": _mean([r["k"] for _, r in runs]),
            "cost": _mean([r["cost"] for _, r in runs]),
            "seconds": _mean([r["seconds"] for _, r in runs]),
            "equal_k": {k: (_mean([r["curves"]["triggered"][results["grid"].index(k)]
                                   for _, r in runs]),
                            _mean([r["curves"]["clean"][results["grid"].index(k)]
                                   for _, r in runs])) for k in EQUAL_K},
        })
    return rows


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def write_suite_report(results: Dict[str, Any], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    members = results["members"]
    rows = summary_rows(results)
    before_t = _mean([m["triggered"] for m in members.values()])
    before_c = _mean([m["clean"] for m in members.values()])
    lines = [f"# Planted-backdoor suite{' (quick)' if results.get('quick') else ''}", "",
             f"{len(members)} members (architecture / trigger / seed); unedited: triggered"
             f" {_pct(before_t)}%, clean {_pct(before_c)}% (means). COAR m ="
             f" {results['n_masks']} masks; every method gets COAR's forward budget (random:"
             " none; auto: every ablation's). k chosen on validation by choose_k's rule (goal"
             " triggered >= clean - 5 points, clean down <= 1 point). Goal per member:"
             " triggered within 5 points of the unedited clean accuracy, clean down <= 1 point.",
             "", "| method | goal met | triggered after (%) | clean change (pts) | worst"
             " clean - triggered (pts) | mean k | forward equivalents | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {NAMES.get(r['method'], r['method'])} | {r['goal_met']}/{r['members']}"
                     f" | {_pct(r['triggered'])} | {100 * r['clean_change']:+.1f} |"
                     f" {100 * r['worst_gap']:.1f} | {r['k']:.1f} | {r['cost']:,.0f} |"
                     f" {r['seconds']:.1f} |")
    lines += ["", "At equal k (test triggered / clean accuracy %, mean over members):", "",
              "| method | " + " | ".join(f"k = {k}" for k in EQUAL_K) + " |",
              "|---" * (len(EQUAL_K) + 1) + "|"]
    for r in rows:
        cells = [f"{_pct(t)} / {_pct(c)}" for t, c in r["equal_k"].values()]
        lines.append(f"| {NAMES.get(r['method'], r['method'])} | " + " | ".join(cells) + " |")
    methods = _methods(members)
    lines += ["", "Per member (test triggered / clean %, k; **bold** = goal met):", "",
              "| member | clean before | " + " | ".join(methods) + " |",
              "|---" * (len(methods) + 2) + "|"]
    for key, m in members.items():
        cells = []
        for method in methods:
            r = m["methods"].get(method)
            if r is None:
                cells.append("-")
                continue
            text = f"{_pct(r['after']['triggered'])} / {_pct(r['after']['clean'])}, k={r['k']}"
            cells.append(f"**{text}**" if r["goal_met"] else text)
        lines.append(f"| {key} | {_pct(m['clean'])} | " + " | ".join(cells) + " |")
    autos = [m["methods"]["auto"]["chosen"] for m in members.values() if "auto" in m["methods"]]
    if autos:
        lines += ["", "auto chose: " + ", ".join(f"{c} x{autos.count(c)}"
                                                 for c in sorted(set(autos)))]
    lines += ["", f"Run time {results.get('seconds', 0):.0f} s.",
              "![suite](editing_suite.png)", ""]
    (out_dir / "editing_suite.md").write_text("\n".join(lines))
    _plot(results, out_dir)


def _plot(results: Dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = results["members"]
    panels = sorted({(m["arch"], m["trigger"]) for m in members.values()})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    grid = results["grid"]
    for ax, (arch, trigger) in zip(axes[0], panels):
        group = [m for m in members.values() if (m["arch"], m["trigger"]) == (arch, trigger)]
        for method in ("welch", "joint", "reestimate", "gates", "random"):
            runs = [m["methods"][method] for m in group if method in m["methods"]]
            if not runs:
                continue
            t = [_mean([r["curves"]["triggered"][i] for r in runs]) for i in range(len(grid))]
            c = [_mean([r["curves"]["clean"][i] for r in runs]) for i in range(len(grid))]
            line, = ax.plot(grid, t, marker="o", ms=3, label=f"{method} triggered")
            ax.plot(grid, c, ls="--", color=line.get_color())
        ax.set_title(f"{arch}, {trigger} trigger ({len(group)} seeds)", fontsize=9)
        ax.set_xlabel("components ablated (k)")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("test accuracy (dashed: clean)")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / "editing_suite.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else
                Path(__file__).resolve().parent.parent / "results" / "editing_suite.json")
    write_suite_report(json.loads(path.read_text()), path.parent)
