"""Goals, markdown tables and plots of the patching benchmark (from its JSON results).

``goals(results) -> list`` checks the three goals of issue 20 against the numbers;
``write_report(results, out_dir)`` writes ``patching.md``, ``<task>_tracing.png`` (layer x
position, denoising), ``<task>_heads.png`` (layer x head, noising) and
``<task>_scatter.png`` (mean estimate against mean exact effect per component).
``python -m benchmarks.patching.report [results/patching/patching.json]`` re-renders them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

SETS = ("heads", "mlp_neurons")
SCATTER = ("AtP", "AtP*", "RelP", "gate IG", "COAR")
TITLES = {"tracing": "causal tracing of the logit difference (denoising)\ncorrupted run, one"
                     " clean residual cell patched in; 1 = clean value recovered",
          "heads_map": "heads, logit difference (noising)\nclean run, one head patched from"
                       " the corrupted run; 1 = the whole clean -> corrupted change"}


def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}"


def _recall_picture(tracing: Dict[str, Any]) -> Dict[str, Any]:
    grid, cols = tracing["grid"], tracing["columns"]
    subject = [max(row[cols.index("subject")], row[cols.index("subject value")]) for row in grid]
    query = [row[cols.index("query")] for row in grid]
    early = max(subject[:-1])
    met = early >= 0.5 and query[-1] >= 0.5 and subject[-1] < 0.5
    return {"value": f"subject/its value slot early {early:.2f}, late {subject[-1]:.2f};"
                     f" query late {query[-1]:.2f}", "met": met}


def goals(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The issue's three goals with the measured values (None when not measured)."""
    tasks = results["tasks"]
    out = []
    if "ioi" in tasks:
        star = tasks["ioi"]["sets"]["heads"]["scores"]["AtP*"]
        out.append({"goal": "AtP* correlates >= 0.9 with exact patching on IOI heads",
                    "value": f"{star['pearson']:.3f} (example x head pairs),"
                             f" {star['pearson_mean']:.3f} (mean effects)",
                    "met": star["pearson"] >= 0.9})
    for name, task in tasks.items():
        scores = task["sets"]["mlp_neurons"]["scores"]
        goal = f"RelP at least as good as AtP on MLP neurons ({name})"
        if "RelP" not in scores:
            out.append({"goal": goal, "value": "RelP not available when run", "met": None})
            continue
        relp, atp = scores["RelP"]["pearson"], scores["AtP"]["pearson"]
        out.append({"goal": goal, "value": f"RelP {relp:.3f} vs AtP {atp:.3f}",
                    "met": relp >= atp - 1e-3})
    if "recall" in tasks:
        picture = _recall_picture(tasks["recall"]["tracing"])
        out.append({"goal": "recall grid: the subject matters early, the last token late",
                    **picture})
    return out


def _set_table(name: str, record: Dict[str, Any], ks: List[str]) -> List[str]:
    head = ("| method | r (pairs) | r (means) | rank r (means) | "
            + " | ".join(f"top-{k} cost" for k in ks) + " | fwd / example | seconds |")
    lines = [f"**{name}** ({record['n_components']} components)", "", head,
             "|---" * (6 + len(ks)) + "|"]
    for method, s in record["scores"].items():
        costs = " | ".join(_f(s["topk_cost"].get(k), 0) for k in ks)
        star = " (magnitudes, vs abs)" if s.get("magnitudes") else ""
        lines.append(f"| {method}{star} | {_f(s.get('pearson'), 3)} |"
                     f" {_f(s.get('pearson_mean'), 3)} | {_f(s.get('spearman_mean'), 3)} |"
                     f" {costs} | {_f(s.get('forwards_per_example'), 0)} |"
                     f" {_f(s.get('seconds'), 1)} |")
    return lines + [""]


def _grid_table(record: Dict[str, Any]) -> List[str]:
    cols = record["columns"]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, row in zip(record["rows"], record["grid"]):
        lines.append(f"| {label} | " + " | ".join(_f(v) for v in row) + " |")
    return lines + [""]


def markdown(results: Dict[str, Any]) -> str:
    lines = ["# Patching benchmark: exact activation patching against cheap estimates", "",
             f"`{results['command']}` ({results['seconds']:.0f} s, {results['threads']} thread,"
             f" torch {results['torch']}, {results['machine']}){' QUICK' * results['quick']}.",
             "Output: logit difference (answer - distractor) at the last token. Estimates use"
             " `baselines=` the corrupted prompts (noising: clean inputs); effect ="
             " F(clean) - F(clean with the component patched from the corrupted run).", ""]
    if results["missing_methods"]:
        lines += [f"Not run (not in the package when this ran): "
                  f"{', '.join(results['missing_methods'])}.", ""]
    lines += ["## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for g in results["goals"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['value']} | {met} |")
    lines.append("")
    for name, task in results["tasks"].items():
        m = task["model"]
        lines += [f"## {name}", "", f"Model: held-out accuracy {m['test_accuracy']:.3f}, trained"
                  f" in {m['train_seconds']:.0f} s ({m['steps']} steps,"
                  f" {'cached' if m.get('loaded_from_cache') else 'trained in this run'});"
                  f" {task['n_examples']} prompt pairs. " + " ".join(task["notes"]), ""]
        ks = list(next(iter(task["sets"].values()))["scores"]["AtP"]["topk_cost"])
        for set_name in SETS:
            lines += _set_table(set_name, task["sets"][set_name], ks)
        tr = task["tracing"]
        lines += [f"Causal tracing (denoising: corrupted run, one residual-stream cell patched"
                  f" from the clean run; normalised, 1 = clean logit difference"
                  f" {tr['clean']:.2f} recovered from {tr['corrupted']:.2f}):", ""]
        lines += _grid_table(tr)
        lines += ["Heads (noising, all positions, normalised: share of the clean -> corrupted"
                  " change reproduced by patching that head alone):", ""]
        lines += _grid_table(task["heads_map"])
    sp = results["speed"]
    lines += ["## Speed: COAR with baselines against COAR with weight ablation", "",
              f"{sp['model']} model, {sp['n_components']} components, {sp['n_examples']}"
              f" examples, {sp['n_masks']} masks, best of {sp['repeats']}:"
              f" {sp['best_seconds']['baselines']:.2f} s with baselines,"
              f" {sp['best_seconds']['weights']:.2f} s with weight ablation, ratio"
              f" **{sp['ratio']:.2f}**.", ""]
    return "\n".join(lines)


def _scatter(task: Dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(SETS), len(SCATTER), figsize=(3 * len(SCATTER), 6),
                             squeeze=False)
    for row, set_name in enumerate(SETS):
        means = task["sets"][set_name]["mean_effects"]
        exact = means["exact patching"]
        for col, method in enumerate(SCATTER):
            ax = axes[row][col]
            if method in means:
                ax.scatter(exact, means[method], s=6)
                ax.axline((0, 0), slope=1, color="grey", lw=0.5)
                r = task["sets"][set_name]["scores"][method]["pearson_mean"]
                ax.set_title(f"{set_name}: {method} r={_f(r, 2)}", fontsize="small")
            else:
                ax.set_title(f"{set_name}: {method} (not run)", fontsize="small")
            ax.set_xlabel("exact patching effect (mean)", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: Dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from captum_coar.patching_plots import plot_patching_grid

    out_dir = Path(out_dir)
    (out_dir / "patching.md").write_text(markdown(results) + "\n")
    for name, task in results["tasks"].items():
        for key, suffix, xlabel, ylabel in (("tracing", "tracing", "token position",
                                             "residual stream after"),
                                            ("heads_map", "heads", "head", "layer")):
            record = task[key]
            ax = plot_patching_grid(torch.tensor(record["grid"]), record["rows"],
                                    record["columns"], output="logit_difference",
                                    title=f"{name}: {TITLES[key]}", xlabel=xlabel,
                                    ylabel=ylabel)
            ax.figure.savefig(out_dir / f"{name}_{suffix}.png", dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
        _scatter(task, out_dir / f"{name}_scatter.png")


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parents[1] / "results" / "patching" / "patching.json")
    write_report(json.loads(source.read_text()), source.parent)
