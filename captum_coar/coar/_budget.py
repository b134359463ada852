"""What a collection will cost, said before it starts, and shown while it runs.

Contract
--------
- :func:`warn_large_default` warns once per call, before any collecting forward pass, when
  ``n_masks`` was left to its default (``10 N``) and that is more than
  :data:`LARGE_DEFAULT_MASKS` masks: the number of masks, the forward passes per example and an
  estimated time, measured on ONE plain forward pass of up to :data:`TIMED_EXAMPLES` examples of
  the first batch (the gates add a little; more masks per pass subtract some), with what to do
  instead (``n_masks=`` smaller, e.g. ``3 N`` where the default estimator is measured to be
  enough, or ``n_masks="auto"``). A budget the caller chose is never warned about.
- :class:`AutoProgress` is the progress bar of a collection. ``show_progress=True``: a tqdm bar
  from the start; ``False``: none; ``None`` (the default of
  :class:`~captum_coar.coar._options.CollectionOptions`): a bar appears as soon as the run is
  projected (time so far / work done so far x all the work) to take more than
  :data:`AUTO_PROGRESS_SECONDS`, and only where someone can see it: stderr is a terminal or the
  code runs in a notebook, and the environment variable ``CI`` is not set. The bar then starts
  at the work already done.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any, Callable, Optional, Sequence

import torch

from .._engine import progress

__all__ = ["LARGE_DEFAULT_MASKS", "AUTO_PROGRESS_SECONDS", "TIMED_EXAMPLES",
           "warn_large_default", "AutoProgress", "interactive"]

#: A default ``n_masks`` above this many masks is warned about.
LARGE_DEFAULT_MASKS = 20_000

#: ``show_progress=None`` shows a bar for runs projected to last longer than this.
AUTO_PROGRESS_SECONDS = 10.0

#: Examples of the first batch timed for the estimate.
TIMED_EXAMPLES = 8


def interactive() -> bool:
    """Whether someone watches: stderr is a terminal or this is a notebook, and not in CI."""
    if os.environ.get("CI"):
        return False
    if "ipykernel" in sys.modules:
        return True
    stream = getattr(sys, "stderr", None)
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def _seconds_per_example(forward_func: Callable[..., Any], inputs: Sequence[torch.Tensor],
                         extra: Sequence[Any]) -> float:
    k = min(TIMED_EXAMPLES, int(inputs[0].shape[0]))
    rows = tuple(x[:k] for x in inputs)
    args = tuple(a[:k] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] ==
                 inputs[0].shape[0] else a for a in extra)
    with torch.no_grad():
        tick = time.perf_counter()
        forward_func(*rows, *args)
        return (time.perf_counter() - tick) / max(1, k)


def warn_large_default(given: Optional[int], n_components: int, n_masks: int,
                       n_examples: Optional[int], forward_func: Callable[..., Any],
                       inputs: Sequence[torch.Tensor], extra: Sequence[Any] = ()) -> None:
    """The warning of the module docstring (nothing when ``given`` is not None or the default
    is small); ``n_examples`` None (a data set of unknown size): the time per 1,000 examples."""
    if given is not None or n_masks <= LARGE_DEFAULT_MASKS:
        return
    seconds = _seconds_per_example(forward_func, inputs, extra) * n_masks
    cost = (f"about {_duration(seconds * n_examples)} for these {n_examples:,} example(s)"
            if n_examples is not None else f"about {_duration(seconds * 1000)} per 1,000"
            " examples")
    warnings.warn(
        f"n_masks defaults to 10 x N = {n_masks:,} masks for N = {n_components:,} components:"
        f" {n_masks:,} forward passes per example, {cost} on this machine (timed on one"
        " forward pass). Below"
        f" {3 * n_components:,} masks (3 N) the default fit departs from attribution patching"
        " and is measured to reach about 95% of the large-m answer at 2 N; pass n_masks="
        f"{2 * n_components:,} (2 N), or n_masks='auto' to stop when the answer settles",
        UserWarning, stacklevel=4)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class AutoProgress:
    """A progress bar over ``total`` units of work, shown as the module docstring says."""

    def __init__(self, total: int, setting: Optional[bool], desc: str,
                 seconds: float = AUTO_PROGRESS_SECONDS) -> None:
        self.total, self.desc, self.seconds = total, desc, seconds
        self.done = 0
        self.start = time.perf_counter()
        self.watch = setting is None and total > 0 and interactive()
        self.bar: Any = progress(total, bool(setting) and total > 0, desc)

    def update(self, n: int) -> None:
        self.done += n
        if self.watch and self.done < self.total:
            elapsed = time.perf_counter() - self.start
            if elapsed / self.done * self.total > self.seconds:
                self.watch = False
                self.bar = progress(self.total, True, self.desc)
                self.bar.update(self.done)
                return
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
