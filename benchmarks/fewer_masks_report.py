"""Tables of the fewer-masks benchmark: thresholds per estimator and the Markdown report.

``thresholds(setup_result)`` -> ``{estimator: {"95": cost or None, "99": cost or None}}``: the
first grid point (in increasing m) whose held-out correlation reaches 95% / 99% of the
asymptote, as forward equivalents per example (m plus the prior's cost); None when no grid
point reaches it. ``render(payload)`` -> the Markdown of ``results/fewer_masks.md``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional


def thresholds(result: Dict[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    target = result["asymptote"]["correlation"]
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for p in sorted(result["points"], key=lambda q: q["m"]):
        entry = out.setdefault(p["estimator"], {"95": None, "99": None})
        for level, share in (("95", 0.95), ("99", 0.99)):
            if entry[level] is None and p["correlation"] >= share * target:
                entry[level] = p["cost"]
    return out


def _cost(value: Optional[float], N: int) -> str:
    return "not reached" if value is None else f"{value:,.0f} ({value / N:.2f} N)"


def _coverage_cell(cover: List[Dict[str, Any]], estimator: str) -> str:
    cells = []
    for c in cover:
        entry = c.get(estimator)
        if not entry or "classical" not in entry:
            continue
        cl, sw = entry["classical"], entry["sandwich"]
        cells.append(f"m={c['m_over_N']:g}N: {cl['coverage_se_comb']:.3f} /"
                     f" {sw['coverage_se_comb']:.3f}")
    return "; ".join(cells) if cells else "—"


def render(payload: Dict[str, Any]) -> str:
    lines = ["## Fewer masks: forward equivalents to reach the asymptote, and error-bar coverage",
             "", f"Command: `{payload['command']}` ({payload['threads']} thread(s), finished"
             f" {payload['finished']}).", "",
             "Cost = forward equivalents per example: masks m (held-out rows included) plus the"
             " prior's cost (attribution patching 3, leave-one-out N + 1). First grid point"
             " reaching 95% / 99% of the asymptote's held-out correlation (grid: the m / N"
             " values of the per-setup tables). Coverage = share of (example, component) pairs"
             " whose reference coefficient (least squares on disjoint rows) lies in the nominal"
             " 95% interval, classical / sandwich, with the reference's own standard error added"
             " in quadrature (the reference is itself an estimate; plain figures per setup"
             " below).", ""]
    lines += ["| setup | estimator | forward equivalents to 95% | to 99% | coverage of 95%"
              " intervals (classical / sandwich) |", "|---|---|---|---|---|"]
    for name, r in payload["setups"].items():
        N = r["N"]
        for est, th in r["thresholds"].items():
            cov = _coverage_cell(r["coverage"], est)
            lines.append(f"| {name} | {est} | {_cost(th['95'], N)} | {_cost(th['99'], N)} |"
                         f" {cov} |")
    for r in payload["setups"].values():
        N = r["N"]
        quick = " (QUICK model: barely trained)" if r["quick_model"] else ""
        lines += ["", f"### {r['title']}{quick}", "",
                  f"N = {N}, {r['n_examples']} examples, alpha = {r['alpha']}; asymptote:"
                  f" {r['asymptote']['estimator']} -> {r['asymptote']['correlation']:.3f} ±"
                  f" {r['asymptote']['se']:.3f}; priors alone: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["priors_alone"].items())
                  + f"; coverage reference: {r['coverage_reference']}; collection"
                  f" {r['collect_s']:.0f} s, total {r['wall_s']:.0f} s.", ""]
        ests = list(r["thresholds"])
        ms = sorted({p["m"] for p in r["points"]})
        lines.append("| m / N | " + " | ".join(ests) + " |")
        lines.append("|---" * (len(ests) + 1) + "|")
        by = {(p["estimator"], p["m"]): p for p in r["points"]}
        for m in ms:
            cells = [f"{by[(e, m)]['correlation']:.3f}" if (e, m) in by else "—" for e in ests]
            lines.append(f"| {m / N:.2f} | " + " | ".join(cells) + " |")
        lines += ["", "Coverage of nominal 95% intervals (plain; with the reference's se added):",
                  ""]
        for c in r["coverage"]:
            for est in ("least squares", "ridge_auto (GCV)"):
                e = c.get(est)
                if not e or "classical" not in e:
                    continue
                lines.append(
                    f"- m = {c['m_over_N']:g} N, {est}: classical {e['classical']['coverage']:.3f}"
                    f" ({e['classical']['coverage_se_comb']:.3f}), sandwich"
                    f" {e['sandwich']['coverage']:.3f} ({e['sandwich']['coverage_se_comb']:.3f}),"
                    f" median se {e['classical']['median_se']:.3g}")
    return "\n".join(lines) + "\n"


def merge(paths: List[str], out: str) -> Dict[str, Any]:
    """One payload from several runs' JSON files (setups in order; commands joined)."""
    import json
    from pathlib import Path

    payloads = [json.loads(Path(p).read_text()) for p in paths]
    merged: Dict[str, Any] = {
        "command": " && ".join(p["command"] for p in payloads),
        "threads": payloads[0]["threads"],
        "finished": max(p["finished"] for p in payloads),
        "setups": {k: v for p in payloads for k, v in p["setups"].items()},
    }
    Path(out).write_text(json.dumps(merged, indent=1))
    Path(out).with_suffix(".md").write_text(render(merged))
    return merged


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="merge fewer_masks JSON files and render")
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out", required=True)
    ns = parser.parse_args()
    print(render(merge(ns.inputs, ns.out)))
