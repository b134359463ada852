"""Memory of sufficient statistics, estimated before they are allocated.

Contract
--------
:func:`statistics_bytes` is the size of one :class:`~captum_coar.solvers.statistics.
SufficientStatistics` (the ``N x N`` Gram matrix ``X'X`` dominates, then ``X'Y``).
:func:`available_memory` is what a device can still give: on the CPU the system's available
memory (``MemAvailable`` on Linux, else the physical memory), on CUDA the free memory of the
device; None where it cannot be known (then nothing is refused).
:func:`check_statistics_memory` raises ``ValueError`` with the bytes needed, the bytes
available and what to do (fewer components, a streaming solver over a store, float32
statistics) when statistics of at least :data:`CHECKED_BYTES` would not fit, so a too-large
request is refused by name before any allocation (or forward pass), never as a raw allocator
error.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

__all__ = ["statistics_bytes", "available_memory", "check_statistics_memory", "CHECKED_BYTES",
           "format_bytes"]

#: Statistics smaller than this are never checked (nothing to gain, no file read).
CHECKED_BYTES = 1 << 28


def format_bytes(n: float) -> str:
    """``n`` bytes for people (``"18.6 GiB"``), with the exact count for large values."""
    exact = int(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            text = f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
            return text if unit == "bytes" else f"{text} ({exact:,} bytes)"
        n /= 1024
    return f"{exact:,} bytes"


def statistics_bytes(n_components: int, n_outputs: int, dtype: torch.dtype) -> int:
    """Bytes of X'X (N, N), X'Y (N, n), x sums (N,) and the three (n,) output vectors."""
    N, n = int(n_components), int(n_outputs)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return itemsize * (N * N + N * n + N + 3 * n)


def available_memory(device: Union[str, torch.device, None]) -> Optional[int]:
    """Bytes ``device`` can still allocate (None when unknown; see the module docstring)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_statistics_memory(n_components: int, n_outputs: int, dtype: torch.dtype,
                            device: Union[str, torch.device, None], parts: int = 1) -> int:
    """Bytes of ``parts`` statistics objects; ``ValueError`` when they cannot fit (see the
    module docstring)."""
    one = statistics_bytes(n_components, n_outputs, dtype)
    needed = parts * one
    if needed < CHECKED_BYTES:
        return needed
    available = available_memory(device)
    if available is None or needed <= available:
        return needed
    N, n = int(n_components), int(n_outputs)
    itemsize = torch.empty((), dtype=dtype).element_size()
    gram = itemsize * N * N
    where = torch.device(device) if device is not None else torch.device("cpu")
    shares = f"{parts} x " if parts > 1 else ""
    raise ValueError(
        f"sufficient statistics of {N:,} components x {n:,} outputs in {dtype} need"
        f" {format_bytes(needed)} ({shares}the N x N Gram matrix X'X, {format_bytes(gram)}, plus"
        f" X'Y and sums), more than the {format_bytes(available)} available on {where} (a fit"
        " needs about as much again). Use fewer components (narrow the selection: kinds=,"
        " include=, exclude=, or ComponentSet.subset), fit with a streaming solver that never"
        " forms the Gram matrix (collect into a store, e.g. a directory path, then"
        " fit(store, solver='streaming')), or float32 statistics (dtype=torch.float32, half the"
        " memory)")
