"""Outputs of the paper-table benchmark: JSON, markdown tables beside the paper, PNG plots.

Contract
--------
``write_outputs(out_dir, results, command, quick, plots=True) -> [file names]`` takes the
per-setup results of :func:`benchmarks.paper_table.run_setup`, merges them into
``paper_table.json`` in ``out_dir`` (setups from an earlier run that were not re-run are
kept, each with the command that produced it), renders ``paper_table.md`` from the merged
JSON (one table per setup: our mean correlation ± standard error per test fraction, the
paper's number at alpha_test = alpha_train for the comparable paper setups, wall time and
forward-pass equivalents; the m-curve of setup A) and, for the setups just run, the grouped
bars ``paper_table_<setup>.png`` (:func:`captum_coar.plot_correlation_bars`) and
``paper_table_m_curve.png``. ``markdown(data)`` renders the tables alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)

from benchmarks.paper_setups import PAPER, PAPER_REFERENCES, SETUP_NAMES  # noqa: E402


def _paper_key(method: str) -> str:
    return "COAR" if method.startswith("COAR") else method


def _cell(value: Dict[str, float]) -> str:
    return f"{value['mean']:.3f} ± {value['se']:.3f}"


def _setup_markdown(name: str, entry: Dict[str, Any]) -> List[str]:
    setup, settings, methods = entry["setup"], entry["settings"], entry["methods"]
    training = setup["training"]
    alphas = [f"{a:g}" for a in setup["test_alphas"]]
    train = {f"{a:g}" for a in setup["alphas_train"]}
    refs = PAPER_REFERENCES.get(name, ())
    lines = [f"### {setup['title']}", ""]
    accuracy = training.get("test_accuracy")
    acc_text = "n/a" if accuracy is None else f"{accuracy:.4f}"
    kind = "next-token accuracy on the repeated half" if name == "gpt2" else "top-1"
    lines += [
        f"- test accuracy ({kind}, {training.get('dataset')}, {training.get('n_test')} test"
        f" items): **{acc_text}**; on the {setup['n_examples']} explained examples:"
        f" {setup['example_accuracy']:.3f}",
        f"- N = {setup['n_components']} components ({', '.join(setup['groups'][:3])}"
        f"{', ...' if len(setup['groups']) > 3 else ''}; {len(setup['groups'])} groups)",
        f"- COAR: m = {settings['m_factor']:g} N masks per training fraction, least squares,"
        f" weight ablation; alpha_train = {', '.join(sorted(train))}",
        f"- scoring: {settings['test_masks']} held-out masks per test fraction (seed"
        f" {entry['scoring']['seed']}), one counterfactual_correlation call"
        f" ({entry['scoring']['wall_s']:.0f} s, {entry['scoring']['example_forwards']:,}"
        " forwards shared by all methods); path methods n_steps ="
        f" {settings['n_steps']}; {settings['threads']} CPU thread(s)",
    ] + [f"- {note}" for note in setup["notes"]] + [""]
    head = ["method"] + [f"α={a}{' (train)' if a in train else ''}" for a in alphas]
    head += [f"paper: {r} (α={PAPER[r]['alpha']:g})" for r in refs]
    head += ["wall (s)", "forward equiv.", "per example"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, values in methods.items():
        label = method + (f", m={values['m']}" if "m" in values else "")
        cells = [label] + [_cell(values["correlation"][a]) for a in alphas]
        for r in refs:
            ref = PAPER[r]["values"].get(_paper_key(method))
            if "alpha_train" in values and abs(values["alpha_train"] - PAPER[r]["alpha"]) > 1e-9:
                ref = None  # a COAR row is compared with the paper at its own alpha_train
            cells.append("—" if ref is None else f"{ref:.2f}")
        fe = values["forward_equivalents"]
        cells += [f"{values['wall_s']:.1f}", f"{fe:,}", f"{fe / setup['n_examples']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if {"gradient x parameter", "attribution patching"} <= set(methods):
        lines.append("\nWith weight ablation, attribution patching and gradient x parameter are"
                     " the same quantity (grad x (activation - bias) = grad x weights), so their"
                     " rows agree to float rounding.")
    for r in refs:
        if PAPER[r].get("extra"):
            lines.append(f"\nPaper, {r}: {PAPER[r]['extra']}.")
    curve = entry.get("m_curve")
    if curve:
        lines += ["", f"COAR correlation against m (alpha_train = {curve['alpha_train']:g}; one"
                  f" store of {curve['n_masks_collected']} masks, fits on row prefixes; ridge"
                  " penalty for m <= N picked on the store's last N/2 rows):", ""]
        lines += ["| m | m / N | solver | " + " | ".join(f"α={a}" for a in alphas) + " |",
                  "|" + "---|" * (3 + len(alphas))]
        for point in curve["points"]:
            solver = point["solver"] + (f" (λ={point['ridge_alpha']:g})"
                                        if "ridge_alpha" in point else "")
            lines.append(f"| {point['m']} | {point['factor']:g} | {solver} | " + " | ".join(
                _cell(point["correlation"][a]) for a in alphas) + " |")
    lines += ["", f"Setup wall time {entry['total_wall_s'] / 60:.1f} min (including model"
              " loading and the cost estimate).", ""]
    return lines


def summary_markdown(data: Dict[str, Any]) -> List[str]:
    """One table: every method at alpha_test = alpha_train, ours beside the paper's."""
    columns = []  # (header, setup name, alpha, paper reference or None)
    pairs = {("resnet", 0.05): "ImageNet ResNet-50", ("resnet", 0.1): "CIFAR-10 ResNet",
             ("vit", 0.05): "ImageNet ViT-B/16"}
    for name in SETUP_NAMES:
        if name not in data["setups"]:
            continue
        for alpha in data["setups"][name]["setup"]["alphas_train"]:
            letter = "ABCD"[SETUP_NAMES.index(name)]
            columns.append((f"ours {letter} ({name}) α={alpha:g}", name, alpha, None))
            ref = pairs.get((name, round(alpha, 10)))
            if ref:
                columns.append((f"paper {ref}", name, alpha, ref))
    methods: List[str] = ["COAR"]
    for entry in data["setups"].values():
        methods += [m for m in entry["methods"] if not m.startswith("COAR") and m not in methods]
    head = ["method"] + [c[0] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        cells = [method]
        for _, name, alpha, ref in columns:
            if ref is not None:
                value = PAPER[ref]["values"].get(method)
                cells.append("—" if value is None else f"{value:.2f}")
                continue
            found = data["setups"][name]["methods"]
            key = method
            if method == "COAR":
                key = next((m for m, v in found.items() if m.startswith("COAR")
                            and abs(v["alpha_train"] - alpha) < 1e-9), "")
            value = found.get(key, {}).get("correlation", {}).get(f"{alpha:g}")
            cells.append("—" if value is None else f"{value['mean']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(data: Dict[str, Any]) -> str:
    """The markdown report of a merged results dict."""
    lines = ["## Paper table: counterfactual correlation of component attributions", "",
             "Mean Pearson correlation over examples (± standard error) between the actual"
             " output under held-out random ablations and the output each method predicts;"
             " the paper's numbers are at alpha_test = alpha_train"
             " (Shah, Ilyas & Madry, 2024). Forward equivalents count example forwards, a"
             " backward as two forwards.", "",
             "Summary at alpha_test = alpha_train (ours beside the paper's):", ""]
    lines += summary_markdown(data) + [""]
    for name in SETUP_NAMES:
        if name in data["setups"]:
            entry = data["setups"][name]
            lines += _setup_markdown(name, entry)
            lines += [f"Command: `{entry['command'].strip()}`", ""]
    return "\n".join(lines)


def _plots(out_dir: str, results: Dict[str, Any], data: Dict[str, Any], suffix: str) -> List[str]:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from captum_coar import plot_correlation_bars

    files = []
    for name, entry in results.items():
        result = entry["_result"]
        main = list(entry["methods"])
        ax = plot_correlation_bars(result, methods=main)
        ax.set_title(f"{entry['setup']['title']}: counterfactual correlation"
                     f" ({result.n_masks} held-out masks per α)", fontsize="medium")
        file = f"paper_table_{name}{suffix}.png"
        ax.figure.savefig(os.path.join(out_dir, file), dpi=110, bbox_inches="tight")
        plt.close(ax.figure)
        files.append(file)
    curve_entry = results.get("resnet", {}).get("m_curve")
    if curve_entry:
        entry = data["setups"]["resnet"]
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        ms = [p["m"] for p in curve_entry["points"]]
        for i, alpha in enumerate(f"{a:g}" for a in entry["setup"]["test_alphas"]):
            means = [p["correlation"][alpha]["mean"] for p in curve_entry["points"]]
            errs = [p["correlation"][alpha]["se"] for p in curve_entry["points"]]
            ax.errorbar(ms, means, yerr=errs, marker="o", capsize=2, label=f"COAR, α_test={alpha}",
                        color=f"C{i}")
            loo = entry["methods"].get("leave-one-out")
            if loo:
                ax.axhline(loo["correlation"][alpha]["mean"], color=f"C{i}", ls=":", lw=1)
        n = entry["setup"]["n_components"]
        ax.axvline(n, color="grey", lw=0.8, ls="--")
        ax.text(n, 0.02, " m = N", color="grey", fontsize="small")
        ax.set_xscale("log")
        ax.set_xlabel("m (training masks)")
        ax.set_ylabel("mean Pearson correlation")
        ax.set_ylim(0, 1)
        ax.set_title(f"Setup A: COAR vs m (α_train={curve_entry['alpha_train']:g}; dotted:"
                     " leave-one-out)", fontsize="medium")
        ax.legend(fontsize="small", frameon=False)
        file = f"paper_table_m_curve{suffix}.png"
        fig.savefig(os.path.join(out_dir, file), dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(file)
    return files


def _rounded(entry: Dict[str, Any], digits: int = 4) -> Dict[str, Any]:
    """``entry`` with its per-example correlations rounded (keeps the JSON small)."""
    correlation = entry.get("correlation")
    if not correlation or "per_example" not in correlation:
        return entry
    rows = [[[None if v != v else round(v, digits) for v in per] for per in block]
            for block in correlation["per_example"]]
    return {**entry, "correlation": {**correlation, "per_example": rows}}


def write_outputs(out_dir: str, results: Dict[str, Any], command: str, quick: bool,
                  plots: bool = True) -> List[str]:
    """Merge into ``paper_table.json``, write ``paper_table.md`` and the plots."""
    os.makedirs(out_dir, exist_ok=True)
    suffix = "_quick" if quick else ""
    json_path = os.path.join(out_dir, f"paper_table{suffix}.json")
    data: Dict[str, Any] = {"setups": {}}
    if os.path.exists(json_path):
        with open(json_path) as handle:
            data = json.load(handle)
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    for name, entry in results.items():
        data["setups"][name] = _rounded({**{k: v for k, v in entry.items() if k != "_result"},
                                         "command": command, "finished": when})
    data["paper"] = PAPER
    data["quick"] = quick
    with open(json_path, "w") as handle:
        json.dump(data, handle, indent=1)
    md = f"paper_table{suffix}.md"
    with open(os.path.join(out_dir, md), "w") as handle:
        handle.write(markdown(data) + "\n")
    files = [os.path.basename(json_path), md]
    if plots:
        files += _plots(out_dir, results, data, suffix)
    return files


def main(argv: Optional[List[str]] = None) -> int:
    """``python benchmarks/paper_report.py [DIR]``: re-render ``paper_table.md`` from the JSON."""
    out_dir = (argv if argv is not None else sys.argv[1:]) or [str(Path(__file__).resolve()
                                                                   .parent / "results")]
    json_path = os.path.join(out_dir[0], "paper_table.json")
    with open(json_path) as handle:
        data = json.load(handle)
    data["setups"] = {k: _rounded(v) for k, v in data["setups"].items()}
    with open(json_path, "w") as handle:
        json.dump(data, handle, indent=1)
    with open(os.path.join(out_dir[0], "paper_table.md"), "w") as handle:
        handle.write(markdown(data) + "\n")
    print(f"re-rendered {json_path} and paper_table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
