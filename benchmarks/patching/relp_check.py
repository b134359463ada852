"""RelP and AtP against exact patching on the IOI GPT-2: which components each estimates well.

Contract
--------
``python -m benchmarks.patching.relp_check [--n 32] [--random-init] [--no-neurons]`` loads (or
trains) the cached IOI GPT-2 of :mod:`benchmarks.patching.ioi`, draws ``n`` held-out prompts
(seed 7) with their ``s2_io`` corruptions, and for every component kind computes exact
single-component effects (:class:`~captum_coar.ComponentAblation`), attribution patching and
relevance patching on ``output="logit_difference"`` in two settings: zero ablation, and
patching from the corrupted prompt (``baselines=``, the RelP and AtP papers' setting). Kinds:
attention heads and MLP neurons (all positions together), and, at each of the 15 positions,
the residual stream after each block, each attention output (``attn.c_proj``) and each MLP
output (the paper's "MLP outputs"). It prints and writes
``benchmarks/results/patching/relp_check.json`` and ``.md``: Pearson r with the exact effects
over every (prompt, component) entry and over the per-component means. ``--random-init`` adds the same model untrained; ``--no-neurons``
skips the 2048 neurons (their exact effects take most of the time: about 95 s per setting on
one thread).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

import captum_coar.language_outputs  # noqa: F401  (registers the language-model outputs)
from benchmarks._harness import command_line
from benchmarks.models import build_gpt2
from benchmarks.patching.ioi import LENGTH, make_ioi_data, recipe, train_or_load_ioi
from captum_coar import (
    ComponentAblation,
    ComponentAttributionPatching,
    ComponentGroup,
    ComponentRelevancePatching,
    ComponentSet,
    attention_heads,
    mlp_neurons,
    residual_stream,
)

RESULTS = Path(__file__).resolve().parents[1] / "results" / "patching"
METHODS = (("exact", ComponentAblation), ("AtP", ComponentAttributionPatching),
           ("RelP", ComponentRelevancePatching))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item(), 3)


def component_kinds(model: Any, neurons: bool) -> List[Tuple[str, ComponentSet]]:
    positions = tuple(range(LENGTH))
    width, layers = model.config.n_embd, model.config.n_layer

    def outputs(module: str) -> ComponentSet:
        return ComponentSet(model, [ComponentGroup(f"transformer.h.{layer}.{module}", "output",
                                                   1, unit_size=width, positions=positions)
                                    for layer in range(layers)])

    kinds = [("heads", attention_heads(model))]
    if neurons:
        kinds.append(("MLP neurons", mlp_neurons(model)))
    return kinds + [("residual stream @ position", residual_stream(model, positions=positions)),
                    ("attention outputs @ position", outputs("attn.c_proj")),
                    ("MLP outputs @ position", outputs("mlp"))]


def measure(model_name: str, model: Any, data: Any, neurons: bool) -> List[Dict[str, Any]]:
    rows = []
    common = dict(target=data.target, output="logit_difference")
    settings = (("zero ablation", "zero", {}),
                ("patched from corrupted", "weights", {"baselines": data.corrupted_ids}))
    for kind, comps in component_kinds(model, neurons):
        for setting, ablation, extra in settings:
            found, seconds = {}, {}
            for name, method in METHODS:
                start = time.time()
                found[name] = method(model, comps, ablation).attribute(data.input_ids, **common,
                                                                       **extra)
                seconds[name] = round(time.time() - start, 2)
            row: Dict[str, Any] = dict(model=model_name, components=kind, n=comps.n_components,
                                       setting=setting, seconds=seconds)
            for name in ("AtP", "RelP"):
                row[f"{name} r"] = pearson(found[name], found["exact"])
                row[f"{name} r of means"] = pearson(found[name].mean(0), found["exact"].mean(0))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(rows: List[Dict[str, Any]], n_prompts: int) -> str:
    lines = [f"# RelP and AtP against exact patching (IOI GPT-2, {n_prompts} held-out prompts,"
             " logit difference)", "",
             "Pearson r with the exact single-component effects, over every (prompt, component)"
             " entry, and (in brackets) over the per-component means.", "",
             "| model | components | n | setting | AtP r | RelP r |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['components']} | {r['n']} | {r['setting']} |"
                     f" {r['AtP r']:.3f} ({r['AtP r of means']:.3f}) |"
                     f" {r['RelP r']:.3f} ({r['RelP r of means']:.3f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = command_line(__doc__, threads=1)
    parser.add_argument("--n", type=int, default=32, help="held-out prompts")
    parser.add_argument("--random-init", action="store_true", help="also the untrained model")
    parser.add_argument("--no-neurons", action="store_true", help="skip the MLP neurons")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trained, _ = train_or_load_ioi(verbose=True)
    models = [("trained", trained)]
    if args.random_init:
        rec = recipe()
        models.append(("random init", build_gpt2(seed=rec["seed"], **rec["model"]).eval()))
    data = make_ioi_data(args.n, seed=7, split="test")
    rows = [row for name, model in models
            for row in measure(name, model, data, not args.no_neurons)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "relp_check.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "relp_check.md").write_text(markdown(rows, args.n))


if __name__ == "__main__":
    main()
