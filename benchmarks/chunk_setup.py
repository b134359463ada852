"""Set-up of mask-row chunks before the first forward pass: the old quadratic split against
:func:`captum_coar.coar.collection.chunk_work` (one ``searchsorted``), side by side.

    python benchmarks/chunk_setup.py --threads 1

Prints, per ``n_masks``, the seconds of each split (same rows, the default chunk of 8,192 rows)
and their ratio; both give the same chunks (checked). The old split is timed only up to
``--max-naive`` masks (it grows with ``n_masks**2``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from captum_coar.coar.collection import chunk_work


def naive(rows: np.ndarray, n_masks: int, chunk: int):
    """The split collection used before: one full scan of ``rows`` per chunk."""
    work = [rows[(rows >= c) & (rows < c + chunk)] for c in range(0, n_masks, chunk)]
    return [r for r in work if r.size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--max-naive", type=int, default=10_000_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'n_masks':>12} {'old (s)':>9} {'new (s)':>9} {'ratio':>7}")
    for n_masks in (100_000, 1_000_000, 10_000_000):
        rows = np.arange(n_masks, dtype=np.int64)
        start = time.perf_counter()
        fast = chunk_work(rows, n_masks, args.chunk)
        new = time.perf_counter() - start
        old = float("nan")
        if n_masks <= args.max_naive:
            start = time.perf_counter()
            slow = naive(rows, n_masks, args.chunk)
            old = time.perf_counter() - start
            assert len(slow) == len(fast) and all(np.array_equal(a, b) for a, b in zip(slow, fast))
        print(f"{n_masks:>12,} {old:>9.3f} {new:>9.4f} {old / new:>7.0f}")


if __name__ == "__main__":
    main()
