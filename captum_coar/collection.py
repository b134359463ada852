"""Collection: evaluate every mask on every example, into a store or into sufficient statistics.

Contract
--------
Data is a re-iterable of batches (a ``DataLoader`` without shuffling, or a list of batches).
A batch is ``inputs``, ``(inputs, target)`` or ``(inputs, target, *additional_forward_args)``
(``inputs`` a tensor or a tuple of tensors), or anything ``batch_fn`` maps to that. Mask rows
``r`` in ``rows`` (default all of ``0 .. n_masks - 1``) come from ``sampler.sample(N, r, r+1,
seed)``, so any shard of rows can be collected anywhere.

Rows are processed in chunks of ``chunk_rows`` aligned to multiples of ``chunk_rows``; for each
chunk the data is passed over once and each batch is evaluated under the chunk's masks,
``perturbations_per_eval`` masks per forward pass (:func:`captum_coar.engine.evaluate_masks`,
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
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .ablation import AblationStrategy, resolve_ablation
from .components import ComponentSet
from .engine import as_tuple, evaluate_masks, progress
from .fingerprint import DataScan, check_reiterable, model_fingerprint, scan_data
from .gates import ComponentGates
from .outputs import OutputFunction, resolve_output
from .sampling import BLOCK_ROWS, MaskSampler, resolve_sampler
from .solvers.statistics import SufficientStatistics
from .stores.base import FORMAT_VERSION, MaskOutputStore, RowSelection, select_rows
from .stores.memmap import MemmapStore

__all__ = ["collect", "collect_statistics", "CollectedStatistics", "CollectionSettings",
           "tensor_batches", "validation_split", "split_batch", "stats_device"]

Batch = Tuple[Tuple[Tensor, ...], Any, Tuple[Any, ...]]
BatchFn = Callable[[Any], Any]
_CHUNK_ELEMENTS = 1 << 26  # outputs held per chunk (rows x examples) by default


# --------------------------------------------------------------------------- data
def split_batch(batch: Any, batch_fn: Optional[BatchFn] = None) -> Batch:
    """``(inputs tuple, target, additional_forward_args tuple)`` from one batch."""
    if batch_fn is not None:
        batch = batch_fn(batch)
    if isinstance(batch, Tensor):
        return (batch,), None, ()
    if isinstance(batch, (tuple, list)) and batch:
        inputs = as_tuple(batch[0])
        if not inputs or not all(isinstance(x, Tensor) for x in inputs):
            raise TypeError("the first item of a batch must be a tensor or a tuple of tensors")
        target = batch[1] if len(batch) > 1 else None
        extra = as_tuple(batch[2]) if len(batch) == 3 and isinstance(batch[2], (tuple, list)) \
            else tuple(batch[2:])
        return inputs, target, extra
    raise TypeError(
        f"cannot read a batch of type {type(batch).__name__}; batches must be inputs, (inputs,"
        " target) or (inputs, target, *additional_forward_args); pass batch_fn=... to convert"
        " other formats (e.g. dicts)"
    )


def tensor_batches(inputs: Union[Tensor, Tuple[Tensor, ...]], target: Any = None,
                   additional_forward_args: Any = None,
                   batch_size: Optional[int] = None) -> List[Tuple[Any, Any, Tuple[Any, ...]]]:
    """In-memory tensors as a list of ``(inputs, target, additional_forward_args)`` batches."""
    inputs_t = as_tuple(inputs)
    if not inputs_t or not all(isinstance(x, Tensor) for x in inputs_t):
        raise TypeError("inputs must be a tensor or a tuple of tensors with the batch on dim 0")
    n = inputs_t[0].shape[0]
    for x in inputs_t:
        if x.shape[0] != n:
            raise ValueError(f"all inputs must have the same number of rows; got"
                             f" {[tuple(t.shape) for t in inputs_t]}")
    extra = as_tuple(additional_forward_args)
    size = n if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    batches = []
    for start in range(0, max(n, 1), size):
        rows = slice(start, min(start + size, n))
        t = _slice_target(target, rows, n)
        e = tuple(a[rows] if isinstance(a, Tensor) and a.dim() and a.shape[0] == n else a
                  for a in extra)
        batches.append((tuple(x[rows] for x in inputs_t), t, e))
    return batches


def _slice_target(target: Any, rows: slice, n: int) -> Any:
    if target is None or isinstance(target, int):
        return target
    t = torch.as_tensor(target)
    if t.dim() == 0:
        return target
    if t.shape[0] != n:
        raise ValueError(f"target has {t.shape[0]} entries but inputs have {n} rows")
    return t[rows]


# --------------------------------------------------------------------------- settings
@dataclass
class CollectionSettings:
    """Resolved settings of one collection (what makes its data what it is)."""

    components: ComponentSet
    forward_func: Callable[..., Any]
    sampler: MaskSampler
    ablation: AblationStrategy
    output: OutputFunction
    seed: int
    n_masks: int
    perturbations_per_eval: Optional[int] = None
    max_rows: int = 4096
    chunk_rows: Optional[int] = None

    @classmethod
    def build(cls, forward_func: Callable[..., Any], components: ComponentSet, n_masks: int,
              ablation_fraction: Optional[float] = 0.05,
              sampler: Union[str, MaskSampler] = "bernoulli",
              ablation: Union[str, AblationStrategy] = "weights",
              output: Union[None, str, OutputFunction, Callable[..., Tensor]] = None,
              has_target: bool = True, seed: int = 0,
              perturbations_per_eval: Optional[int] = None, max_rows: int = 4096,
              chunk_rows: Optional[int] = None) -> "CollectionSettings":
        """Resolve and validate every setting (messages say what was given and allowed)."""
        if not isinstance(components, ComponentSet):
            raise TypeError(f"components must be a ComponentSet, got {type(components).__name__}")
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        n_masks = _positive_int("n_masks", n_masks)
        if isinstance(sampler, MaskSampler) and ablation_fraction is not None and \
                float(ablation_fraction) != float(sampler.ablation_fraction):
            ablation_fraction = None  # the instance's own fraction wins over the default
        resolved = resolve_sampler(sampler, ablation_fraction)
        resolved.sample(components.n_components, 0, 0, 0)  # validates alpha (and N) up front
        output_fn = resolve_output(output, "target" if has_target else None)
        if not has_target and output_fn.needs_target:
            raise ValueError(
                f"output={output_fn.name!r} needs a target (e.g. the class index per example);"
                " pass target=... (or batches of (inputs, target)), or use output='logit' for"
                " a model with one output per example, or a callable"
            )
        if perturbations_per_eval is not None:
            perturbations_per_eval = _positive_int("perturbations_per_eval", perturbations_per_eval)
        if chunk_rows is not None:
            chunk_rows = _positive_int("chunk_rows", chunk_rows)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        if components.model.training:
            warnings.warn(
                f"{type(components.model).__name__} is in training mode: BatchNorm would mix the"
                " statistics of different masks in one forward pass and dropout adds noise to"
                " every output; call model.eval() before COAR", UserWarning, stacklevel=3)
        return cls(components, forward_func, resolved, resolve_ablation(ablation), output_fn,
                   int(seed), n_masks, perturbations_per_eval, _positive_int("max_rows", max_rows),
                   chunk_rows)

    def chunk_size(self, n_examples: int) -> int:
        """Mask rows per pass over the data (default: bounded memory, multiple of 64)."""
        if self.chunk_rows is not None:
            return self.chunk_rows
        size = min(8192, max(BLOCK_ROWS, _CHUNK_ELEMENTS // max(1, n_examples)))
        return max(BLOCK_ROWS, size // BLOCK_ROWS * BLOCK_ROWS)

    def metadata(self, scan: DataScan) -> Dict[str, Any]:
        """Store metadata: identity fields and descriptive extras."""
        from . import __version__

        return {
            "format_version": FORMAT_VERSION,
            "n_masks": self.n_masks,
            "n_components": self.components.n_components,
            "n_examples": scan.n_examples,
            "components_fingerprint": self.components.fingerprint,
            "model_fingerprint": model_fingerprint(self.components.model),
            "data_fingerprint": scan.data_fingerprint,
            "sampler": self.sampler.describe(),
            "ablation": self.ablation.describe(),
            "output": self.output.describe(),
            "seed": self.seed,
            "batch_sizes": scan.batch_sizes,
            "components": self.components.describe(),
            "captum_coar_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def stats_device(components: ComponentSet) -> torch.device:
    """Where float64 statistics live: the model's device, unless it lacks float64 (MPS)."""
    param = next(components.model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.device("cpu") if device.type == "mps" else device


def validation_split(n_masks: int, validation_fraction: float) -> int:
    """Rows held out for validation: the LAST ``round(fraction * n_masks)`` rows (>= 1 if > 0)."""
    fraction = validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
            not 0.0 <= float(fraction) < 1.0 or math.isnan(float(fraction)):
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if fraction == 0:
        return 0
    return min(n_masks - 1, max(1, int(round(float(fraction) * n_masks))))


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
    device = next(settings.components.model.parameters()).device
    work = [(c, rows[(rows >= c) & (rows < c + chunk)]) for c in range(0, settings.n_masks, chunk)]
    work = [(c, r) for c, r in work if r.size]
    total = int(sum(int((n - sink.pending(r)).sum()) for _, r in work))
    bar = progress(total, show_progress and total > 0, "COAR ablated outputs")
    try:
        with ComponentGates(settings.components, settings.ablation,
                            settings.forward_func) as hooks:
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
            perturbations_per_eval: Optional[int] = None, max_rows: int = 4096,
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
    from .stores.memory import InMemoryStore

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
                       perturbations_per_eval: Optional[int] = None, max_rows: int = 4096,
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
