"""Speed, part 4: peak memory of collection into sufficient statistics vs into a full store.

Contract
--------
``memory_comparison(mask_counts, n_examples, hidden, chunk_rows, threads, device) -> dict``
    For every ``m`` in ``mask_counts`` and each mode, ``"statistics"``
    (:func:`captum_coar.coar.collect_statistics`) and ``"store"`` (:func:`captum_coar.coar.collect` into an
    :class:`~captum_coar.stores.InMemoryStore`), a FRESH Python subprocess builds a small MLP
    (``Linear(8, hidden)`` -> ReLU -> ``Linear(hidden, 10)``, components = the ``hidden``
    neurons, weight ablation, margin output), ``n_examples`` random inputs in batches of 256,
    and collects ``m`` Bernoulli(0.05) masks with ``chunk_rows`` mask rows per pass over the
    data (the same for both modes). It reports, relative to the moment just before collection:

    - ``peak_rss_growth_bytes``: the process's peak resident set size during collection minus
      its RSS just before (Linux: the peak is reset through ``/proc/self/clear_refs`` and read
      from ``VmHWM``; elsewhere ``ru_maxrss``). This covers torch's CPU allocations, which
      tracemalloc does not see;
    - ``tracemalloc_peak_bytes``: the peak of Python and numpy allocations (tracemalloc);
    - ``cuda_peak_bytes`` when the device is CUDA (``torch.cuda.max_memory_allocated``).

    Workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` (see ``MALLOC_ENV``) so that peak RSS is
    reproducible to about a MB.

    The statistics' footprint is ``O(N^2 + N n)`` plus one chunk's buffer; the store's grows by
    ``m (ceil(N/8) + 4 n)`` bytes. ``met`` is True when the statistics' growth from the smallest
    to the largest ``m`` stays under 25% of the store's growth over the same range (and under
    4 MiB in absolute terms).

Run ``python benchmarks/speed_memory.py --worker MODE M N_EXAMPLES HIDDEN CHUNK THREADS DEVICE``
to get one measurement as a JSON line (this is what the subprocesses do).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Dict, List, Sequence

ROOT = Path(__file__).resolve().parent.parent
STATS_SLACK_BYTES = 4 << 20
# glibc raises its mmap threshold after large frees, after which freed working buffers stay in
# a fragmented heap and peak RSS wanders by tens of MB between identical runs. A fixed
# threshold sends every block over 64 KiB to mmap and back to the OS on free, so the peak
# follows the memory actually live (the runs get slower; their time is not the point here).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _rss() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss(reset_worked: bool) -> int:
    if reset_worked:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def worker(mode: str, n_masks: int, n_examples: int, hidden: int, chunk_rows: int,
           threads: int, device_name: str) -> Dict[str, Any]:
    """One measurement in this (fresh) process; see the module docstring."""
    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT))
    from captum_coar import linear_neurons, tensor_batches
    from captum_coar.coar import collect, collect_statistics
    from captum_coar.stores import InMemoryStore

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential()
    model.add_module("hidden", nn.Linear(8, hidden))
    model.add_module("relu", nn.ReLU())
    model.add_module("out", nn.Linear(hidden, 10))
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    components = linear_neurons(model, ["hidden"])
    x = torch.randn(n_examples, 8, generator=gen).to(device)
    y = torch.randint(0, 10, (n_examples,), generator=gen).to(device)
    data = tensor_batches(x, y, batch_size=256)
    settings = dict(n_masks=n_masks, ablation_fraction=0.05, chunk_rows=chunk_rows, seed=0)
    # Warm-up on a handful of masks so one-off allocations (kernels, caches) are not counted.
    collect_statistics(model, components, data, **{**settings, "n_masks": 64})
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = _rss()
    reset = _reset_peak()
    tracemalloc.start()
    start = time.perf_counter()
    if mode == "statistics":
        result = collect_statistics(model, components, data, **settings)
        held = sum(v.numel() * v.element_size() for v in result.train.to_dict().values()
                   if isinstance(v, torch.Tensor))
    elif mode == "store":
        store = collect(model, components, data, InMemoryStore(), **settings)
        held = int(store._masks.nbytes + store._outputs.nbytes)  # noqa: SLF001 (benchmark)
    else:
        raise ValueError(f"mode must be 'statistics' or 'store', got {mode!r}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _peak_rss(reset)
    return {"mode": mode, "n_masks": n_masks, "n_examples": n_examples,
            "n_components": components.n_components, "chunk_rows": chunk_rows,
            "seconds": seconds, "rss_before_bytes": before,
            "peak_rss_growth_bytes": max(0, peak - before),
            "peak_rss_method": "VmHWM after clear_refs" if reset else "ru_maxrss",
            "tracemalloc_peak_bytes": int(traced_peak), "result_bytes": int(held),
            "cuda_peak_bytes": (int(torch.cuda.max_memory_allocated(device))
                                if device.type == "cuda" else None)}


def memory_comparison(mask_counts: Sequence[int], n_examples: int, hidden: int,
                      chunk_rows: int, threads: int, device: str) -> Dict[str, Any]:
    """Part 4: one fresh subprocess per (mode, m); see the module docstring."""
    runs: List[Dict[str, Any]] = []
    for m in mask_counts:
        for mode in ("statistics", "store"):
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, str(m),
                       str(n_examples), str(hidden), str(chunk_rows), str(threads), device]
            env = {**os.environ, "PYTHONWARNINGS": "ignore", **MALLOC_ENV}
            done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT),
                                  env=env)
            if done.returncode != 0:
                raise RuntimeError(f"memory worker {command[2:]} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))

    def growth(mode: str) -> int:
        by_m = {r["n_masks"]: r["peak_rss_growth_bytes"] for r in runs if r["mode"] == mode}
        return by_m[max(mask_counts)] - by_m[min(mask_counts)]

    stats_growth, store_growth = growth("statistics"), growth("store")
    met = stats_growth <= max(STATS_SLACK_BYTES, 0.25 * store_growth) and store_growth > 0
    return {"model": f"MLP 8 -> {hidden} -> 10, components = {hidden} hidden neurons",
            "n_examples": n_examples, "chunk_rows": chunk_rows, "mask_counts": list(mask_counts),
            "malloc_env": MALLOC_ENV, "runs": runs, "statistics_growth_bytes": stats_growth,
            "store_growth_bytes": store_growth,
            "store_expected_growth_bytes": (max(mask_counts) - min(mask_counts))
            * ((hidden + 7) // 8 + 4 * n_examples),
            "met": bool(met)}


if __name__ == "__main__":
    if len(sys.argv) == 9 and sys.argv[1] == "--worker":
        mode, m, n, h, chunk, threads, device = sys.argv[2:]
        print(json.dumps(worker(mode, int(m), int(n), int(h), int(chunk), int(threads),
                                device)))
    else:
        sys.exit("usage: speed_memory.py --worker MODE M N_EXAMPLES HIDDEN CHUNK THREADS DEVICE"
                 " (the benchmark itself is benchmarks/speed.py)")
