"""Collection: evaluate every mask on every example, into a store or into sufficient statistics.

Contract
--------
Data is a re-iterable of batches (a ``DataLoader`` without shuffling, or a list of batches).
A batch is ``inputs``, ``(inputs, target)`` or ``(inputs, target, *additional_forward_args)``
(``inputs`` a tensor or a tuple of tensors), a mapping with ``"inputs"``, ``"baselines"``,
``"target"`` and ``"additional_forward_args"`` (paired batches: every mask patches its
ablated components from the batch's baselines, recorded once per batch and pass), or
anything ``batch_fn`` maps to one of these (read by :mod:`captum_coar.coar._batches`). Every
setting is resolved and validated up front by
:class:`~captum_coar.coar._settings.CollectionSettings`; how the collection runs (masks per
pass, chunking, batch function, statistics dtype, store bound, progress) is one
:class:`~captum_coar.coar._options.CollectionOptions`, given as ``options=`` or as the keywords
of the same names (:func:`~captum_coar.coar._options.resolve_options`). Mask rows
``r`` in ``rows`` (default all of ``0 .. n_masks - 1``) come from ``sampler.sample(N, r, r+1,
seed)``, so any shard of rows can be collected anywhere.

Rows are processed in chunks of ``chunk_rows`` aligned to multiples of ``chunk_rows``; for each
chunk the data is passed over once and each batch is evaluated under the chunk's masks,
``perturbations_per_eval`` masks per forward pass (:func:`captum_coar._engine.evaluate_masks`,
with ONE entered :class:`~captum_coar.gates.ComponentGates` reused for every batch).

- :func:`collect` writes into a :class:`~captum_coar.stores.base.MaskOutputStore` (in memory or
  memory-mapped), holding the store's write lock. After each batch the outputs are flushed and
  then the rows' progress is advanced, so re-running the same call after an interruption
  resumes: rows and batches already written are skipped, and the result is the same as one
  uninterrupted run. Damaged rows among those asked for (progress out of range, checksums
  that do not match, stored masks that differ from the sampler's) are reset and recollected,
  with a warning naming them. Asking a store for more rows (a larger ``n_masks``, everything
  else the same) grows it: the new rows are appended and collected, the old ones kept
  (:mod:`captum_coar.stores._growth`), so collecting 100 rows and then 200 gives the store one
  collection of 200 makes. A store made with a different identity
  (:mod:`captum_coar.coar._identity`: model, components, data, sampler, ablation, output,
  seed, sizes, and the probe outputs that identify functions by behaviour) is refused
  (``ValueError`` naming each differing field, given vs stored), and so is one whose stored
  outputs the given functions do not reproduce (a resume re-evaluates one stored row on every
  example: :func:`~captum_coar.coar._identity.recheck_stored_outputs`). A new store larger than
  the free disk (or memory) is refused before anything is written (:func:`check_store_size`),
  and so is a non-empty directory that is not a store (its files are never touched; see
  :mod:`captum_coar.stores._ownership`).
- :func:`collect_statistics` accumulates :class:`~captum_coar.solvers.statistics.
  SufficientStatistics` (float64; their memory is checked before any forward pass) chunk by
  chunk, with the last ``validation_rows`` rows
  (see :func:`validation_split`) kept apart as held-out statistics; memory does not grow with
  ``n_masks``. ``CollectedStatistics.settings`` holds the identity, the validation split and
  the rows covered, so results of different row shards can be checked and merged.

Everything is validated, the shared preflight run (:mod:`captum_coar._preflight`: empty
batches, non-finite inputs and random training-mode modules with the settings, then its probe
on the first batch after every argument check; the targets of every batch are checked against
the classes it found), the strategy fitted and the identity probe run before the first
collecting forward pass; the model's parameters and buffers are left as they were
(:func:`captum_coar._state.model_state_kept`). Setting up chunks is linear in ``n_masks``.
Non-finite outputs raise ``ValueError`` naming the mask rows and examples. A ``DataLoader``
that shuffles, or data that changes between passes (random augmentation), is refused.

The data functions (:func:`split_batch`, :func:`tensor_batches`) and the settings
(:class:`CollectionSettings`, :func:`validation_split`, :func:`stats_device`) are re-exported
here from :mod:`captum_coar.coar._batches` and :mod:`captum_coar.coar._settings`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._engine import evaluate_masks
from .._modules import model_device
from .._pairing import BatchPatchAblation, check_default_ablation, paired_baselines, use_batch
from .._preflight import preflight
from .._state import model_state_kept
from ..ablation import AblationStrategy, fitted_ablation
from ..components import ComponentSet
from ..gates import ComponentGates
from ..outputs import OutputFunction
from ..sampling import MaskSampler
from ..solvers._footprint import check_statistics_memory
from ..solvers.statistics import SufficientStatistics
from ..stores.base import MaskOutputStore, RowSelection, select_rows
from ..stores.memmap import METADATA_FILE, MemmapStore
from ..stores.memory import InMemoryStore
from ._batches import Batch, BatchFn, read_data, split_batch, tensor_batches
from ._budget import AutoProgress
from ._collected import CollectedStatistics, row_ranges
from ._fingerprint import DataScan
from ._identity import collection_identity, identity_differences, recheck_stored_outputs
from ._options import CollectionOptions, resolve_options
from ._settings import (
    CollectionSettings,
    check_store_size,
    machine_memory,
    stats_device,
    validation_split,
)
from ._sinks import StatisticsSink, StoreSink, repair

OutputLike = Union[None, str, OutputFunction, Callable[..., Tensor]]

__all__ = ["collect", "collect_statistics", "CollectedStatistics", "CollectionOptions",
           "CollectionSettings", "tensor_batches", "validation_split", "split_batch",
           "stats_device", "row_ranges", "identify"]


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


def chunk_work(rows: np.ndarray, n_masks: int, chunk: int) -> List[np.ndarray]:
    """The selected (sorted) rows cut at multiples of ``chunk``; linear in ``len(rows)``."""
    edges = np.searchsorted(rows, np.arange(0, n_masks + chunk, chunk, dtype=np.int64))
    return [rows[a:b] for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _run(settings: CollectionSettings, strategy: AblationStrategy, data: Iterable[Any],
         scan: DataScan, rows: np.ndarray, sink: Any, verify_passes: bool) -> None:
    options = settings.options
    batch_fn, show_progress = options.batch_fn, options.show_progress
    N = settings.components.n_components
    n = scan.n_examples
    device = model_device(settings.components.model)
    work = chunk_work(rows, settings.n_masks, settings.chunk_size(n))
    total = int(n * len(rows) - int(sink.pending(rows).sum())) if len(rows) else 0
    bar = AutoProgress(total, show_progress, "COAR ablated outputs")
    try:
        with ComponentGates(settings.components, strategy) as hooks:
            for chunk_rows in work:
                if bool((sink.pending(chunk_rows) == n).all()):
                    continue
                lo, hi = int(chunk_rows[0]), int(chunk_rows[-1]) + 1
                masks = settings.sampler.sample(N, lo, hi, settings.seed)[
                    torch.from_numpy(chunk_rows - lo)]
                gates = masks.to(device=device, dtype=torch.float32)
                sink.start_chunk(chunk_rows, masks)
                done = sink.pending(chunk_rows)
                start = 0
                for b, batch in enumerate(data):
                    paired = split_batch(batch, batch_fn)
                    inputs, target, extra = paired
                    size = int(inputs[0].shape[0])
                    scan.verify(b, size, paired, verify_passes)
                    if settings.preflight is not None:  # raw gather errors otherwise
                        settings.preflight.check_target(target, start)
                    stop = start + size
                    todo = (done >= start) & (done < stop)
                    if todo.any():
                        use_batch(strategy, settings.forward_func, settings.components, paired,
                                  start)  # a paired batch's baselines, recorded once here
                        select = torch.from_numpy(np.nonzero(todo)[0]).to(device)
                        outputs = evaluate_masks(
                            settings.forward_func, settings.components, inputs, gates[select],
                            target=target, additional_forward_args=extra or None,
                            output=settings.output, ablation=strategy,
                            perturbations_per_eval=options.perturbations_per_eval,
                            max_rows=options.max_rows, hooks=hooks, example_offset=start)
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


def _identity(settings: CollectionSettings, strategy: AblationStrategy, scan: DataScan,
              first: Batch) -> Dict[str, Any]:
    return collection_identity(
        components=settings.components, forward_func=settings.forward_func, strategy=strategy,
        output=settings.output, sampler=settings.sampler, seed=settings.seed,
        n_masks=settings.n_masks, n_examples=scan.n_examples,
        data_fingerprint=scan.data_fingerprint, first_batch=first)


def _scan_and_settings(data: Iterable[Any], options: CollectionOptions,
                       forward_func: Callable[..., Any], components: ComponentSet, n_masks: int,
                       ablation_fraction: Optional[float], sampler: Union[str, MaskSampler],
                       ablation: Union[str, AblationStrategy], output: OutputLike, seed: int
                       ) -> Tuple[DataScan, Any, CollectionSettings]:
    """One pass over the data's first batch and every setting resolved and checked (once per
    collection, before any forward pass)."""
    scan, first = read_data(data, options.batch_fn)
    if first.baselines is not None:  # paired batches: patch from each batch's baselines
        check_default_ablation(ablation)
        paired_baselines(first[0], first.baselines, forward_func)  # before any forward pass
        ablation = BatchPatchAblation()
    settings = CollectionSettings.build(
        forward_func, components, n_masks, ablation_fraction, sampler, ablation, output,
        has_target=scan.has_target, seed=seed, options=options,
        fractional_target_batch=scan.fractional_target_batch)
    # empty batch, non-finite inputs, random training-mode modules (no forward pass)
    preflight("COAR collection", forward_func, components, first[0], probe=False)
    return scan, first, settings


def _probe(settings: CollectionSettings, first: Batch) -> None:
    """The shared preflight's probe on the first batch (targets, determinism, finite outputs):
    the first forward passes of a collection, after every argument check."""
    inputs, target, extra = first
    settings.preflight = preflight("COAR collection", settings.forward_func, settings.components,
                                   inputs, target, extra, settings.output)


def identify(forward_func: Callable[..., Any], components: ComponentSet, data: Iterable[Any], *,
             n_masks: int, ablation_fraction: Optional[float] = None,
             sampler: Union[str, MaskSampler] = "bernoulli",
             ablation: Union[str, AblationStrategy] = "weights", output: OutputLike = None,
             seed: int = 0, batch_fn: Optional[BatchFn] = None,
             options: Optional[CollectionOptions] = None) -> Dict[str, Any]:
    """The identity a collection with these arguments would have (one pass, one probe)."""
    scan, first, settings = _scan_and_settings(
        data, resolve_options(options, batch_fn=batch_fn), forward_func, components, n_masks,
        ablation_fraction, sampler, ablation, output, seed)
    with model_state_kept(components.model):
        _probe(settings, first)
        strategy = fitted_ablation(settings.ablation, forward_func, components)
        return _identity(settings, strategy, scan, first)


def _available_bytes(store: MaskOutputStore) -> Tuple[int, str]:
    if isinstance(store, MemmapStore):
        where = Path(store.path).absolute()
        while not where.exists():
            where = where.parent
        return shutil.disk_usage(where).free, f"on the disk at {str(where)!r}"
    return machine_memory(), "in this machine's memory"


def _check_new_store(store: MaskOutputStore, settings: CollectionSettings,
                     scan: DataScan) -> None:
    available, where = _available_bytes(store)
    itemsize = np.dtype(getattr(store, "dtype", "float32")).itemsize
    check_store_size(settings.n_masks, settings.components.n_components, scan.n_examples,
                     itemsize, available, where, settings.options.max_store_bytes)


# --------------------------------------------------------------------------- public API
def collect(forward_func: Callable[..., Any], components: ComponentSet, data: Iterable[Any],
            store: Union[MaskOutputStore, str, "os.PathLike[str]", None] = None, *,
            n_masks: int, ablation_fraction: Optional[float] = None,
            sampler: Union[str, MaskSampler] = "bernoulli",
            ablation: Union[str, AblationStrategy] = "weights", output: OutputLike = None,
            seed: int = 0, rows: RowSelection = None,
            perturbations_per_eval: Optional[int] = None, max_rows: Optional[int] = None,
            chunk_rows: Optional[int] = None, batch_fn: Optional[BatchFn] = None,
            max_store_bytes: Optional[int] = None, show_progress: Optional[bool] = None,
            options: Optional[CollectionOptions] = None) -> MaskOutputStore:
    """Evaluate mask rows ``rows`` on every example of ``data`` into ``store`` (resumable).

    Args:
        store: a store object, a directory path (a :class:`MemmapStore` there), or None for a
            new :class:`~captum_coar.stores.memory.InMemoryStore`.
        ablation_fraction: probability that a component is ablated (default 0.05 for a sampler
            given by name; a sampler object carries its own, and a different value here is an
            error).
        rows: the mask rows to collect now: None (all), ``(start, stop)``, a slice or integer
            indices.
        perturbations_per_eval, max_rows, chunk_rows, batch_fn, max_store_bytes, show_progress:
            how the collection runs, as in
            :class:`~captum_coar.coar._options.CollectionOptions` (None: from ``options``).
        options: a :class:`~captum_coar.coar._options.CollectionOptions` (default: its
            defaults); a keyword above given beside it must agree with it.

    Returns the store. Raises ``ValueError`` when the store holds data made differently or
    the directory holds files that are not a store's, ``RuntimeError`` when another process is
    writing into it or the directory is deleted or replaced during the collection, and
    ``OSError`` naming the file when the disk is full or a file too large.
    """
    options = resolve_options(
        options, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
        chunk_rows=chunk_rows, batch_fn=batch_fn, max_store_bytes=max_store_bytes,
        show_progress=show_progress)
    if store is None:
        store = InMemoryStore()
    elif not isinstance(store, MaskOutputStore):
        store = MemmapStore(store)
    if isinstance(store, MemmapStore):  # someone else's files, a linked lock: before any pass
        store.check_writable()
    scan, first, settings = _scan_and_settings(
        data, options, forward_func, components, n_masks, ablation_fraction, sampler, ablation,
        output, seed)
    fresh = (not (store.path / METADATA_FILE).exists() if isinstance(store, MemmapStore)
             else not store.is_open)
    if fresh:  # refused before the directory is created or claimed
        _check_new_store(store, settings, scan)
    index = select_rows(rows, settings.n_masks)
    with model_state_kept(components.model):  # before the store is claimed or created
        _probe(settings, first)
    with model_state_kept(components.model), store.writing():
        if not store.is_open or store.n_masks < settings.n_masks:  # new, or to be grown
            _check_new_store(store, settings, scan)
        strategy = fitted_ablation(settings.ablation, settings.forward_func, components)
        identity = _identity(settings, strategy, scan, first)
        store.open({**settings.extras(scan), **identity}, identity_differences)
        repair(store, index, settings.chunk_size(scan.n_examples))
        recheck_stored_outputs(settings.forward_func, components, strategy, settings.output, data,
                               options.batch_fn, store)
        _run(settings, strategy, data, scan, index, StoreSink(store),
             verify_passes=not isinstance(data, (list, tuple)))
    return store


def collect_statistics(forward_func: Callable[..., Any], components: ComponentSet,
                       data: Iterable[Any], *, n_masks: int,
                       ablation_fraction: Optional[float] = None,
                       sampler: Union[str, MaskSampler] = "bernoulli",
                       ablation: Union[str, AblationStrategy] = "weights",
                       output: OutputLike = None, seed: int = 0, rows: RowSelection = None,
                       validation_fraction: float = 0.0,
                       perturbations_per_eval: Optional[int] = None, max_rows: Optional[int] = None,
                       chunk_rows: Optional[int] = None, batch_fn: Optional[BatchFn] = None,
                       dtype: Optional[torch.dtype] = None,
                       show_progress: Optional[bool] = None,
                       options: Optional[CollectionOptions] = None) -> CollectedStatistics:
    """Accumulate sufficient statistics over ``data`` without keeping raw outputs.

    Rows ``n_masks - validation_split(n_masks, validation_fraction)`` and above go into the
    validation statistics. Statistics live on the model's device in ``options.dtype``
    (float64; the keyword ``dtype`` sets it too). Arguments as in :func:`collect`.
    """
    options = resolve_options(
        options, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
        chunk_rows=chunk_rows, batch_fn=batch_fn, dtype=dtype, show_progress=show_progress)
    dtype = options.dtype
    scan, first, settings = _scan_and_settings(
        data, options, forward_func, components, n_masks, ablation_fraction, sampler, ablation,
        output, seed)
    n_val = validation_split(settings.n_masks, validation_fraction)
    index = select_rows(rows, settings.n_masks)
    device = stats_device(settings.components)
    N, n = settings.components.n_components, scan.n_examples
    check_statistics_memory(N, n, dtype, device, parts=2 if n_val else 1)  # before any forward
    train = SufficientStatistics(N, n, dtype=dtype, device=device)
    validation = SufficientStatistics(N, n, dtype=dtype, device=device) if n_val else None
    with model_state_kept(components.model):
        _probe(settings, first)
        strategy = fitted_ablation(settings.ablation, settings.forward_func, components)
        identity = _identity(settings, strategy, scan, first)
        sink = StatisticsSink(train, validation, settings.n_masks - n_val, n)
        _run(settings, strategy, data, scan, index, sink,
             verify_passes=not isinstance(data, (list, tuple)))
    return CollectedStatistics(train, validation,
                               {**identity, "n_validation": n_val, "rows": row_ranges(index)})
