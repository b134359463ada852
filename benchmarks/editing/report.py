"""Markdown tables and curve plots for the COAR-Edit benchmark (from its JSON results).

``write_report(results, out_dir)`` writes ``editing.md`` and ``editing_<task>.png``;
``python -m benchmarks.editing.report [results/editing.json]`` re-renders them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict

METHOD_NAMES = {"coar": "COAR", "leave_one_out": "leave-one-out",
                "attribution_patching": "attribution patching", "random": "random",
                "joint": "joint selection (COAR)", "reestimate": "re-estimation (COAR rounds)",
                "gates": "optimised gates", "auto": "auto (scores x methods)"}


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _errors_md(task: Dict[str, Any]) -> str:
    lines = [f"Model: test accuracy {task['model']['test_accuracy']:.3f}; {task['n_errors']}"
             f" errors and {task['n_errors']} correct examples, one at a time, reference ="
             f" {task['n_reference']} correct examples; budget k <= {task['budget']}; held-out"
             f" accuracy on {task['n_held_out']} test images ({_pct(task['held_out_accuracy'])}%)"
             f" may drop at most {100 * task['tolerance']:.0f} points.", "",
             "| method | errors fixed (k<=10) | mean k | held-out change (pts) | fixed, any"
             " held-out change | errors induced (k<=10) | mean k | held-out change (pts) |"
             " induced, any held-out change | attribution s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method, m in task["methods"].items():
        f, i = m["summary"]["fix"], m["summary"]["induce"]
        mk = lambda s: "-" if s["mean_k"] is None else f"{s['mean_k']:.1f}"  # noqa: E731
        anyk = lambda s: _pct(s.get("share_ignoring_held_out"))  # noqa: E731
        lines.append(f"| {METHOD_NAMES[method]} | {_pct(f['share'])}% | {mk(f)} |"
                     f" {_pct(f['mean_held_out_change'])} | {anyk(f)}% | {_pct(i['share'])}% |"
                     f" {mk(i)} | {_pct(i['mean_held_out_change'])} | {anyk(i)}% |"
                     f" {m['attribution_seconds']:.1f} |")
    return "\n".join(lines)


def _population_md(task: Dict[str, Any]) -> str:
    t, r = task["target_set"], task["reference_set"]
    extra = [s for s in task["methods"]["coar"]["before"] if s not in (t, r)
             and not s.startswith("group")]
    head = (f"k = {task['k']} chosen on validation from COAR's curve (rule `{task['rule']}`,"
            f" direction `{task['direction']}`, goal {task['goal']}, reference tolerance"
            f" {task['tolerance']}); {task['n_target']} target / {task['n_reference']} reference"
            " examples for the attributions. Test accuracy (%) before -> after at that k:")
    cols = [t, r] + extra
    lines = [head, "", "| method | " + " | ".join(cols) + " | own validation k | "
             + " | ".join(f"{c} at own k" for c in cols[:2]) + " | forward equivalents |"
             " seconds |", "|---" * (len(cols) + 6) + "|"]
    for method, m in task["methods"].items():
        cells = [f"{_pct(m['before'][c])} -> {_pct(m['after'][c])}" for c in cols]
        own = m.get("own_k_after", {})
        lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) +
                     f" | {m['own_validation_k']}{' (' + m['chosen'] + ')' if 'chosen' in m else ''}"
                     " | " + " | ".join(_pct(own.get(c)) for c in cols[:2]) +
                     f" | {m.get('forwards', 0):,} | {m['attribution_seconds']:.1f} |")
    lines.append("")
    lines.append("COAR's first components: " + ", ".join(
        f"`{x}`" for x in task["methods"]["coar"]["first_components"][:10]))
    return "\n".join(lines)


TITLES = {"errors": "1. Fixing and inducing individual errors", "forget": "2. Forgetting a class",
          "spurious": "3. Subpopulation robustness (spurious background stripes)",
          "backdoor": "4. Backdoor localisation", "typographic": "5. Typographic attack"}


def _plot(name: str, task: Dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if name == "errors":
        for method, m in task["methods"].items():
            ax.plot(range(11), m["summary"]["fix"]["by_budget"], marker="o", ms=3,
                    label=f"{METHOD_NAMES[method]} fixed")
            ax.plot(range(11), m["summary"]["induce"]["by_budget"], ls="--",
                    color=ax.lines[-1].get_color(), label=f"{METHOD_NAMES[method]} induced")
        ax.set_xlabel("budget k")
        ax.set_ylabel("share of examples")
    else:
        t, r = task["target_set"], task["reference_set"]
        for method, m in task["methods"].items():
            ax.plot(task["grid"], m["curves"][t], marker="o", ms=3, label=f"{METHOD_NAMES[method]} {t}")
            ax.plot(task["grid"], m["curves"][r], ls="--", color=ax.lines[-1].get_color(),
                    label=f"{METHOD_NAMES[method]} {r}")
        ax.axvline(task["k"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("components ablated (k)")
        ax.set_ylabel("test accuracy")
    ax.set_title(TITLES[name], fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / f"editing_{name}.png", dpi=110)
    plt.close(fig)


def write_report(results: Dict[str, Any], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    parts = [f"# COAR-Edit benchmark{' (quick)' if results.get('quick') else ''}", "",
             f"Data: {results['dataset']}. Models: ResNetSmall (widths"
             f" {'/'.join(str(w) for w in results.get('widths', (8, 16, 32)))}, one block per"
             f" stage), N = {results['n_components']} conv filters (downsample convs left out);"
             f" COAR with m = {results['n_masks']} masks at alpha 0.05; every method's"
             " attributions -> Welch-t scores -> order; weight ablation; "
             f"{results['threads']} CPU thread(s).", ""]
    for name, task in results["tasks"].items():
        parts += [f"## {TITLES[name]}", "",
                  _errors_md(task) if name == "errors" else _population_md(task), "",
                  f"Task time {task['seconds']:.0f} s (model {'loaded' if task['model'].get('loaded_from_cache') else 'trained'}).",
                  f"![{name}](editing_{name}.png)", ""]
        _plot(name, task, out_dir)
    (out_dir / "editing.md").write_text("\n".join(parts))


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else
                Path(__file__).resolve().parent.parent / "results" / "editing.json")
    write_report(json.loads(path.read_text()), path.parent)
