"""Collection: evaluate every mask on every example, into a store or into sufficient statistics.

Contract
--------
Data is a re-iterable of batches (a ``DataLoader`` without shuffling, or a list of batches).
A batch is ``inputs``, ``(inputs, target)`` or ``(inputs, target, *additional_forward_args)``
(``inputs`` a tensor or a tuple of tensors), or anything ``batch_fn`` maps to that (read by
:mod:`captum_coar.coar._batches`). Every setting is resolved and validated up front by
:class:`~captum_coar.coar._settings.CollectionSettings`. Mask rows
``r`` in ``rows`` (default all of ``0 .. n_masks - 1``) come from ``sampler.sample(N, r, r+1,
seed)``, so any shard of rows can be collected anywhere.

Rows are processed in chunks of ``chunk_rows`` aligned to multiples of ``chunk_rows``; for each
chunk the data is passed over once and each batch is evaluated under the chunk's masks,
``perturbations_per_eval`` masks per forward pass (:func:`captum_coar._engine.evaluate_masks`,
with ONE entered :class:`~captum_coar.gates.ComponentGates` reused for every batch).

- :func:`collect` writes into a :class:`~captum_coar.stores.base.MaskOutputStore` (in memory or
  memory-mapped). After each batch the outputs are flushed and then the rows' progress is
  advanced, so re-running the same call after an interruption resumes: rows and batches
  already written are skipped, and the result is the same as one uninterrupted run. A store
  made with a different model, components, data or settings is refused (``ValueError``
  naming each differing field, given vs stored).
- :func:`collect_statistics` accumulates :class:`~captum_coar.solvers.statistics.
  SufficientStatistics` (float64) chunk by chunk, with the last ``validation_rows`` rows
  (see :func:`validation_split`) kept apart as held-out statistics; memory does not grow with
  ``n_masks``. Results of different row shards can be merged.

Non-finite outputs raise ``ValueError`` naming the mask rows and examples. A ``DataLoader``
that shuffles, or data that changes between passes (random augmentation), is refused.

The data functions (:func:`split_batch`, :func:`tensor_batches`) and the settings
(:class:`CollectionSettings`, :func:`validation_split`, :func:`stats_device`) are re-exported
here from :mod:`captum_coar.coar._batches` and :mod:`captum_coar.coar._settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .._engine import evaluate_masks, progress
from ..ablation import AblationStrategy, fitted_ablation
from ..components import ComponentSet, model_device
from ..gates import ComponentGates
from ..outputs import OutputFunction
from ..sampling import MaskSampler
from ..solvers.statistics import SufficientStatistics
from ..stores.base import MaskOutputStore, RowSelection, select_rows
from ..stores.memmap import MemmapStore
from ._batches import BatchFn, split_batch, tensor_batches
from ._fingerprint import DataScan, check_reiterable, scan_data
from ._settings import CollectionSettings, stats_device, validation_split

__all__ = ["collect", "collect_statistics", "CollectedStatistics", "CollectionSettings",
           "tensor_batches", "validation_split", "split_batch", "stats_device"]


# --------------------------------------------------------------------------- sinks
class _StoreSink:
    """Writes outputs into a store; knows which rows still need which examples."""

    def __init__(self, store: MaskOutputStore) -> None:
        self.store = store

    def pending(self, rows: np.ndarray) -> np.ndarray:
        return self.store.progress(rows)

    def start_chunk(self, rows: np.ndarray, masks: Tensor) -> None:
        todo = self.store.progress(rows) == 0
        if todo.any():
            self.store.write_masks(rows[todo], masks[torch.from_numpy(todo)])

    def write(self, rows: np.ndarray, examples: slice, outputs: Tensor) -> None:
        self.store.write_outputs(rows, examples, outputs)
        self.store.commit(rows, examples.stop)

    def end_chunk(self, rows: np.ndarray, masks: Tensor) -> None:
        pass


class _StatisticsSink:
    """Buffers one chunk's outputs and adds complete rows to the statistics."""

    def __init__(self, train: SufficientStatistics, validation: Optional[SufficientStatistics],
                 first_validation_row: int, n_examples: int) -> None:
        self.train, self.validation = train, validation
        self.first_validation_row = first_validation_row
        self.n_examples = n_examples
        self.buffer: Optional[Tensor] = None

    def pending(self, rows: np.ndarray) -> np.ndarray:
        return np.zeros(len(rows), dtype=np.int64)

    def start_chunk(self, rows: np.ndarray, masks: Tensor) -> None:
        self.buffer = None

    def write(self, rows: np.ndarray, examples: slice, outputs: Tensor) -> None:
        if self.buffer is None:
            self.buffer = torch.empty(len(rows), self.n_examples, dtype=outputs.dtype,
                                      device=outputs.device)
        self.buffer[:, examples] = outputs

    def end_chunk(self, rows: np.ndarray, masks: Tensor) -> None:
        if self.buffer is None:
            return
        held_out = torch.from_numpy(rows >= self.first_validation_row)
        masks = masks.to(self.buffer.device)
        held_out = held_out.to(self.buffer.device)
        if (~held_out).any():
            self.train.update(masks[~held_out], self.buffer[~held_out])
        if held_out.any():
            assert self.validation is not None
            self.validation.update(masks[held_out], self.buffer[held_out])
        self.buffer = None


# --------------------------------------------------------------------------- the loop
def _check_finite(outputs: Tensor, rows: np.ndarray, first_example: int) -> None:
    bad = ~torch.isfinite(outputs)
    if not bool(bad.any()):
        return
    pairs = torch.nonzero(bad).tolist()
    shown = ", ".join(f"(mask {int(rows[i])}, example {first_example + j})" for i, j in pairs[:8])
    bad_rows = sorted({int(rows[i]) for i, _ in pairs})
    bad_examples = sorted({first_example + j for _, j in pairs})
    raise ValueError(
        f"the output is not finite for {len(pairs)} (mask, example) pair(s): {shown}"
        f"{' ...' if len(pairs) > 8 else ''}; masks {bad_rows[:20]}, examples"
        f" {bad_examples[:20]}. Check the model and output function under ablation (e.g. a"
        " division by an ablated activation, or log of a zero probability)"
    )


def _run(settings: CollectionSettings, data: Iterable[Any], batch_fn: Optional[BatchFn],
         scan: DataScan, rows: np.ndarray, sink: Any, show_progress: bool,
         verify_passes: bool) -> None:
    N = settings.components.n_components
    n = scan.n_examples
    chunk = settings.chunk_size(n)
    device = model_device(settings.components.model)
    work = [(c, rows[(rows >= c) & (rows < c + chunk)]) for c in range(0, settings.n_masks, chunk)]
    work = [(c, r) for c, r in work if r.size]
    total = int(sum(int((n - sink.pending(r)).sum()) for _, r in work))
    bar = progress(total, show_progress and total > 0, "COAR ablated outputs")
    try:
        strategy = fitted_ablation(settings.ablation, settings.forward_func, settings.components)
        with ComponentGates(settings.components, strategy) as hooks:
            for _, chunk_rows in work:
                done = sink.pending(chunk_rows)
                if bool((done == n).all()):
                    continue
                lo, hi = int(chunk_rows[0]), int(chunk_rows[-1]) + 1
                masks = settings.sampler.sample(N, lo, hi, settings.seed)[
                    torch.from_numpy(chunk_rows - lo)]
                gates = masks.to(device=device, dtype=torch.float32)
                sink.start_chunk(chunk_rows, masks)
                start = 0
                for b, batch in enumerate(data):
                    inputs, target, extra = split_batch(batch, batch_fn)
                    size = int(inputs[0].shape[0])
                    scan.verify(b, size, (inputs, target, extra), verify_passes)
                    stop = start + size
                    todo = (done >= start) & (done < stop)
                    if todo.any():
                        select = torch.from_numpy(np.nonzero(todo)[0]).to(device)
                        outputs = evaluate_masks(
                            settings.forward_func, settings.components, inputs, gates[select],
                            target=target, additional_forward_args=extra or None,
                            output=settings.output, ablation=settings.ablation,
                            perturbations_per_eval=settings.perturbations_per_eval,
                            max_rows=settings.max_rows, hooks=hooks, example_offset=start)
                        _check_finite(outputs, chunk_rows[todo], start)
                        sink.write(chunk_rows[todo], slice(start, stop), outputs)
                        done[todo] = stop
                        bar.update(int(todo.sum()) * size)
                    start = stop
                if start != n:
                    raise ValueError(f"the data yielded {start} examples on this pass but"
                                     f" {n} before; it must yield the same examples every pass")
                sink.end_chunk(chunk_rows, masks)
    finally:
        bar.close()


# --------------------------------------------------------------------------- public API
def collect(forward_func: Callable[..., Any], components: ComponentSet, data: Iterable[Any],
            store: Union[MaskOutputStore, str, None] = None, *, n_masks: int,
            ablation_fraction: Optional[float] = 0.05,
            sampler: Union[str, MaskSampler] = "bernoulli",
            ablation: Union[str, AblationStrategy] = "weights",
            output: Union[None, str, OutputFunction, Callable[..., Tensor]] = None,
            seed: int = 0, rows: RowSelection = None,
            perturbations_per_eval: Optional[int] = None, max_rows: Optional[int] = None,
            chunk_rows: Optional[int] = None, batch_fn: Optional[BatchFn] = None,
            show_progress: bool = False) -> MaskOutputStore:
    """Evaluate mask rows ``rows`` on every example of ``data`` into ``store`` (resumable).

    Args:
        store: a store object, a directory path (a :class:`MemmapStore` there), or None for a
            new :class:`~captum_coar.stores.memory.InMemoryStore`.
        rows: the mask rows to collect now: None (all), ``(start, stop)``, a slice or indices.
        chunk_rows: mask rows per pass over the data (default: about 2**26 outputs per chunk).

    Returns the store. Raises ``ValueError`` when the store holds data made differently.
    """
    from ..stores.memory import InMemoryStore

    check_reiterable(data)
    scan = scan_data((split_batch(b, batch_fn) for b in data), fingerprints=True)
    settings = CollectionSettings.build(
        forward_func, components, n_masks, ablation_fraction, sampler, ablation, output,
        has_target=scan.has_target, seed=seed, perturbations_per_eval=perturbations_per_eval,
        max_rows=max_rows, chunk_rows=chunk_rows)
    if store is None:
        store = InMemoryStore()
    elif not isinstance(store, MaskOutputStore):
        store = MemmapStore(store)
    store.open(settings.metadata(scan))
    _run(settings, data, batch_fn, scan, select_rows(rows, settings.n_masks), _StoreSink(store),
         show_progress, verify_passes=not isinstance(data, (list, tuple)))
    return store


@dataclass
class CollectedStatistics:
    """Sufficient statistics of training rows and of held-out (validation) rows."""

    train: SufficientStatistics
    validation: Optional[SufficientStatistics]
    settings: Dict[str, Any] = field(default_factory=dict)

    def merge(self, other: "CollectedStatistics") -> "CollectedStatistics":
        """Add another shard's statistics (in place); returns self."""
        self.train.merge(other.train)
        if other.validation is not None:
            if self.validation is None:
                self.validation = other.validation
            else:
                self.validation.merge(other.validation)
        return self


def collect_statistics(forward_func: Callable[..., Any], components: ComponentSet,
                       data: Iterable[Any], *, n_masks: int,
                       ablation_fraction: Optional[float] = 0.05,
                       sampler: Union[str, MaskSampler] = "bernoulli",
                       ablation: Union[str, AblationStrategy] = "weights",
                       output: Union[None, str, OutputFunction, Callable[..., Tensor]] = None,
                       seed: int = 0, rows: RowSelection = None, validation_fraction: float = 0.0,
                       perturbations_per_eval: Optional[int] = None, max_rows: Optional[int] = None,
                       chunk_rows: Optional[int] = None, batch_fn: Optional[BatchFn] = None,
                       dtype: torch.dtype = torch.float64, show_progress: bool = False) -> CollectedStatistics:
    """Accumulate sufficient statistics over ``data`` without keeping raw outputs.

    Rows ``n_masks - validation_split(n_masks, validation_fraction)`` and above go into the
    validation statistics. Statistics live on the model's device in ``dtype`` (float64).
    """
    check_reiterable(data)
    static = isinstance(data, (list, tuple))
    scan = scan_data((split_batch(b, batch_fn) for b in data), fingerprints=not static)
    settings = CollectionSettings.build(
        forward_func, components, n_masks, ablation_fraction, sampler, ablation, output,
        has_target=scan.has_target, seed=seed, perturbations_per_eval=perturbations_per_eval,
        max_rows=max_rows, chunk_rows=chunk_rows)
    n_val = validation_split(settings.n_masks, validation_fraction)
    device = stats_device(settings.components)
    N, n = settings.components.n_components, scan.n_examples
    train = SufficientStatistics(N, n, dtype=dtype, device=device)
    validation = SufficientStatistics(N, n, dtype=dtype, device=device) if n_val else None
    sink = _StatisticsSink(train, validation, settings.n_masks - n_val, n)
    _run(settings, data, batch_fn, scan, select_rows(rows, settings.n_masks), sink, show_progress,
         verify_passes=not static)
    description = {"n_masks": settings.n_masks, "n_validation": n_val, "seed": settings.seed,
                   "sampler": settings.sampler.describe(), "ablation": settings.ablation.describe(),
                   "output": settings.output.describe(), "n_examples": n,
                   "components_fingerprint": settings.components.fingerprint}
    return CollectedStatistics(train, validation, description)
