"""Speed, parts 1 and 2: the gate engine against plain inference and against the reference loop.

Contract
--------
``engine_throughput(setup, rows_per_forward, work_rows, repeats, device, seed) -> dict``
    Part 1. ``b = 32`` examples of setup A; for each ``R`` in ``rows_per_forward``, ``p = R / b``
    masks per forward pass and ``work_rows / R`` passes per timed call. Our side is
    :func:`captum_coar.engine.evaluate_masks` (``perturbations_per_eval = p``, correct-class margin,
    weight ablation, Bernoulli masks at alpha 0.05); the hardware limit is the same model,
    unhooked, on the same ``R``-row batch (the examples repeated ``p`` times), margin included.
    The ratio is (mask, example) evaluations per second of ours over rows per second of plain
    inference. Target: at least 0.85 at every ``R``.

``reference_comparison(setup, sizes, work_rows, repeats, device, seed) -> dict``
    Part 2. For each eval-set size ``n`` in ``sizes``, ``k = max(1, work_rows // n)`` masks;
    :func:`benchmarks.reference_loop.reference_ablation_outputs` (per mask: deep copy of the
    CPU model, zero the ablated filters' weights, move the copy to ``device``, run the eval
    set in batches of 256) against :func:`captum_coar.engine.evaluate_masks` with its defaults (the
    model and data already on ``device``; rows per forward pass from
    :func:`captum_coar._engine.default_max_rows`: 128 on a CPU, 4096 on a GPU). At the largest
    size the reference is also timed with batches of that many rows (``ratio_same_batch``),
    which shows how much of the ratio is the batch size alone. The ratio is reference time over
    ours; outputs must agree (max abs difference reported). Target: at least 1.0 at every size.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Sequence

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)

from benchmarks.speed_common import SetupA, agreement, measure, ratio  # noqa: E402

THROUGHPUT_TARGET = 0.85
REFERENCE_TARGET = 1.0
EXAMPLES_PER_BATCH = 32
ALPHA = 0.05


def _masks(n_components: int, k: int, seed: int) -> torch.Tensor:
    from captum_coar.sampling import BernoulliSampler

    return BernoulliSampler(ALPHA).sample(n_components, 0, k, seed)


def engine_throughput(setup: SetupA, rows_per_forward: Sequence[int], work_rows: int,
                      repeats: int, device: torch.device, seed: int = 0) -> Dict[str, Any]:
    """Part 1; see the module docstring."""
    from captum_coar.engine import evaluate_masks
    from captum_coar.outputs import resolve_output

    model, components = setup.model, setup.components
    x, y = setup.x[:EXAMPLES_PER_BATCH], setup.y[:EXAMPLES_PER_BATCH]
    b = x.shape[0]
    margin = resolve_output("margin", y)
    rows_out = []
    for rows in rows_per_forward:
        per_pass = max(1, rows // b)
        rows = per_pass * b
        passes = max(1, work_rows // rows)
        k = per_pass * passes
        masks = _masks(components.n_components, k, seed).to(device)
        x_rep, y_rep = x.repeat(per_pass, 1, 1, 1), y.repeat(per_pass)

        def plain(x_rep=x_rep, y_rep=y_rep, passes=passes) -> torch.Tensor:
            with torch.no_grad():
                return torch.stack([margin(model(x_rep), y_rep) for _ in range(passes)])

        def ours(masks=masks, per_pass=per_pass) -> torch.Tensor:
            return evaluate_masks(model, components, x, masks, target=y, output="margin",
                                  ablation="weights", perturbations_per_eval=per_pass)

        timings, _ = measure({"plain": plain, "ours": ours}, repeats, device)
        evaluations = k * b
        speed = ratio(timings["plain"], timings["ours"])  # time plain / time ours, same work
        rows_out.append({
            "rows_per_forward": rows, "masks_per_forward": per_pass, "examples": b,
            "forward_passes": passes, "evaluations": evaluations,
            "plain_rows_per_s": evaluations / timings["plain"].wall,
            "ours_evaluations_per_s": evaluations / timings["ours"].wall,
            "ratio": speed["wall"], "ratio_cpu_time": speed["cpu"],
            "plain": timings["plain"].to_dict(), "ours": timings["ours"].to_dict(),
        })
    worst = min(r["ratio"] for r in rows_out)
    return {"target": THROUGHPUT_TARGET, "model": "ResNetSmall (setup A)",
            "n_components": components.n_components, "ablation_fraction": ALPHA,
            "rows": rows_out, "min_ratio": worst, "met": worst >= THROUGHPUT_TARGET}


def reference_comparison(setup: SetupA, sizes: Sequence[int], work_rows: int, repeats: int,
                         device: torch.device, seed: int = 0) -> Dict[str, Any]:
    """Part 2; see the module docstring."""
    from benchmarks.reference_loop import reference_ablation_outputs
    from captum_coar._engine import default_max_rows
    from captum_coar.engine import evaluate_masks

    model, components = setup.model, setup.components
    model_cpu = model if device.type == "cpu" else copy.deepcopy(model).cpu()
    rows_out = []
    for n in sizes:
        k = max(1, work_rows // n)
        masks = _masks(components.n_components, k, seed + n)
        x, y = setup.x[:n], setup.y[:n]
        x_cpu, y_cpu = x.cpu(), y.cpu()
        masks_dev = masks.to(device)

        def reference(masks=masks, x_cpu=x_cpu, y_cpu=y_cpu) -> torch.Tensor:
            return reference_ablation_outputs(model_cpu, setup.module_names, masks, x_cpu,
                                              y_cpu, batch_size=256, device=str(device))

        def ours(masks_dev=masks_dev, x=x, y=y) -> torch.Tensor:
            return evaluate_masks(model, components, x, masks_dev, target=y, output="margin",
                                  ablation="weights")

        functions = {"reference": reference, "ours": ours}
        same_batch = min(n, default_max_rows(device))
        if n == max(sizes) and same_batch != 256:
            functions["reference_same_batch"] = (
                lambda masks=masks, x_cpu=x_cpu, y_cpu=y_cpu, batch=same_batch:
                reference_ablation_outputs(model_cpu, setup.module_names, masks, x_cpu, y_cpu,
                                           batch_size=batch, device=str(device)))
        timings, results = measure(functions, repeats, device)
        speed = ratio(timings["reference"], timings["ours"])
        extra = {}
        if "reference_same_batch" in timings:
            extra = {"reference_same_batch_size": same_batch,
                     "ratio_same_batch": ratio(timings["reference_same_batch"],
                                               timings["ours"])["wall"],
                     "reference_same_batch": timings["reference_same_batch"].to_dict()}
        rows_out.append({
            "eval_set_size": n, "masks": k, "evaluations": k * n,
            "reference_evaluations_per_s": k * n / timings["reference"].wall,
            "ours_evaluations_per_s": k * n / timings["ours"].wall,
            "ratio": speed["wall"], "ratio_cpu_time": speed["cpu"],
            "outputs_agree": agreement(results["ours"], results["reference"]),
            "reference": timings["reference"].to_dict(), "ours": timings["ours"].to_dict(),
            **extra,
        })
    worst = min(r["ratio"] for r in rows_out)
    return {"target": REFERENCE_TARGET, "model": "ResNetSmall (setup A)",
            "reference": "per mask: deepcopy, zero weights, .to(device), eval set in batches of"
                         " 256 (benchmarks/reference_loop.py)",
            "ours": "evaluate_masks defaults (rows per forward pass:"
                    f" default_max_rows = {default_max_rows(device)} on {device.type})",
            "rows": rows_out, "min_ratio": worst, "met": worst >= REFERENCE_TARGET}
