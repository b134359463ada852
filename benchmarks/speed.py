"""Speed benchmark: the gate engine, solvers, memory and conductance against their references.

Usage::

    python benchmarks/speed.py [--quick] [--out benchmarks/results] [--device cpu|cuda]
                               [--threads 1] [--repeats R] [--parts 1,2,3,4,5]

Measured side by side in one run, medians over ``--repeats`` (alternating order), each as a
ratio against its target:

1. ablation throughput of :func:`captum_coar.engine.evaluate_masks` vs plain inference of the same
   model at the same rows per forward pass (target >= 0.85)  -- ``speed_engine.py``;
2. vs the reference per-mask copy-zero-run loop on setup A's ResNet at eval-set sizes 32, 256
   and 2,048, outputs checked to agree (target >= 1.0 at each)  -- ``speed_engine.py``;
3. solvers at N = 2,304, m = 20,000, n = 1,000: ours (accumulate + solve) vs scikit-learn
   Ridge (multi-output) and Lasso looped over examples, coefficient agreement (target: our
   Lasso >= 100x faster than the looped sklearn Lasso)  -- ``speed_solvers.py``;
4. peak memory of collection into sufficient statistics vs into a full store at two m, one
   fresh subprocess each (target: the statistics do not grow with m)  -- ``speed_memory.py``;
5. ComponentConductance over all layers in one pass vs Captum's LayerConductance per layer
   -- ``speed_conductance.py``.

``--device cuda`` runs parts 1, 2, 4 and 5 on the GPU (the reference loop keeps its model on
the CPU and moves each copy, as the reference code does); part 3 always runs on the CPU, where
scikit-learn runs. ``--threads`` (default 1) sets torch's and BLAS's threads: steady numbers on a shared machine.
Ratios use wall-clock medians; process-CPU-time ratios are reported beside them (on a busy
machine they are the steadier of the two). ``--quick`` shrinks every part (well under a
minute; a CI smoke run) and writes ``speed_quick.json`` / ``speed_quick.md`` so that it does
not overwrite the full results ``speed.json`` / ``speed.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import _harness  # noqa: F401  (puts the repository root on sys.path)

from benchmarks._harness import command_line  # noqa: E402
from benchmarks.speed_report import write_markdown  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GPU_NOTE = ("No GPU was available for the run that produced these results, so every part ran"
            " on the CPU; the GPU comparison (where the reference's per-mask copy"
            " and host-to-device transfer weigh more) is left for a machine with one:"
            " `python benchmarks/speed.py --device cuda` runs every part there.")

SIZES: Dict[str, Dict[str, Any]] = {
    "full": dict(rows_per_forward=(128, 512, 4096), throughput_work=4096,
                 reference_sizes=(32, 256, 2048), reference_work=4096,
                 solver=dict(N=2304, m=20000, n=1000, lasso_examples=8),
                 memory=dict(mask_counts=(2000, 8000), n_examples=512, hidden=256,
                             chunk_rows=512),
                 conductance=dict(batch=8, n_steps=50), repeats=3),
    "quick": dict(rows_per_forward=(128,), throughput_work=256,
                  reference_sizes=(32, 256), reference_work=256,
                  solver=dict(N=128, m=1000, n=50, lasso_examples=2),
                  memory=dict(mask_counts=(200, 800), n_examples=64, hidden=64,
                              chunk_rows=128),
                  conductance=dict(batch=2, n_steps=10), repeats=1),
}


def _environment(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        commit = None
    cpu_name = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu_name = next((line.split(":", 1)[1].strip() for line in handle
                             if line.startswith("model name")), cpu_name)
    except OSError:
        pass
    import sklearn

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit, "python": platform.python_version(), "torch": torch.__version__,
        "sklearn": sklearn.__version__, "platform": platform.platform(), "cpu": cpu_name,
        "cpu_count": os.cpu_count(), "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(), "quick": args.quick,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu_note": GPU_NOTE if device.type == "cpu" else None,
        "command": " ".join(["python benchmarks/speed.py", *sys.argv[1:]]),
    }


def _log(message: str) -> None:
    print(f"[speed] {message}", flush=True)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from benchmarks.speed_common import load_setup_a

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    torch.set_num_threads(args.threads)
    size = SIZES["quick" if args.quick else "full"]
    repeats = args.repeats or size["repeats"]
    parts = {int(p) for p in args.parts.split(",")}
    report: Dict[str, Any] = {"environment": _environment(args, device), "repeats": repeats}
    start = time.perf_counter()
    setup = None
    if parts & {1, 2, 5}:
        n_needed = max(size["reference_sizes"]) if 2 in parts else 64
        setup = load_setup_a(args.quick, device, n_needed)
        report["setup_a"] = {"n_components": setup.components.n_components,
                             "n_layers": len(setup.components.groups),
                             "dataset": setup.dataset, **setup.info}
        _log(f"setup A: {setup.components.n_components} conv filters in"
             f" {len(setup.components.groups)} layers, data {setup.dataset}")
    if 1 in parts:
        from benchmarks.speed_engine import engine_throughput

        report["throughput"] = engine_throughput(setup, size["rows_per_forward"],
                                                 size["throughput_work"], repeats, device)
        _log(f"1. throughput ratio {report['throughput']['min_ratio']:.3f} (min over rows)")
    if 2 in parts:
        from benchmarks.speed_engine import reference_comparison

        report["reference"] = reference_comparison(setup, size["reference_sizes"],
                                                   size["reference_work"], repeats, device)
        _log("2. vs reference: " + ", ".join(f"n={r['eval_set_size']}: {r['ratio']:.2f}x"
                                             for r in report["reference"]["rows"]))
    if 3 in parts:
        from benchmarks.speed_solvers import solver_comparison

        report["solvers"] = solver_comparison(repeats=repeats, **size["solver"])
        speed = report["solvers"]["speedups"]["lasso_vs_sklearn_lasso_looped"]["wall"]
        _log(f"3. lasso {speed:.0f}x faster than looped sklearn Lasso")
    if 4 in parts:
        from benchmarks.speed_memory import memory_comparison

        report["memory"] = memory_comparison(threads=args.threads, device=args.device,
                                             **size["memory"])
        _log(f"4. memory growth: statistics {report['memory']['statistics_growth_bytes'] / 2**20:.1f}"
             f" MiB, store {report['memory']['store_growth_bytes'] / 2**20:.1f} MiB")
    if 5 in parts:
        from benchmarks.speed_conductance import conductance_comparison

        report["conductance"] = conductance_comparison(setup, repeats=repeats, device=device,
                                                       **size["conductance"])
        _log(f"5. conductance {report['conductance']['speedup']:.1f}x faster than Captum per"
             " layer")
    report["environment"]["total_seconds"] = time.perf_counter() - start
    if hasattr(os, "getloadavg"):
        report["environment"]["load_average_end"] = list(os.getloadavg())
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = command_line(__doc__, quick="small sizes (CI smoke run)", out=str(RESULTS_DIR),
                          out_help="directory for the results", device="cpu", threads=1,
                          threads_help="torch and BLAS threads (default 1: steady on a shared"
                          " machine)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement (default 3, quick 1)")
    parser.add_argument("--parts", default="1,2,3,4,5", help="comma-separated parts to run")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):
        report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "speed_quick" if args.quick else "speed"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = write_markdown(report)
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
    _log(f"wrote {out / stem}.json and .md in {report['environment']['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
