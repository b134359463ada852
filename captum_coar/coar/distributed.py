"""COAR collection inside a ``torch.distributed`` process group: rows split, statistics summed.

Contract
--------
Inside an initialised process group (any backend: gloo on CPU, nccl on GPU; the statistics stay
on each rank's model device, and gloo reduces CUDA tensors through the CPU), rank ``r`` of
``W`` takes the contiguous block ``shard_rows(n_masks, r, W, rows)`` of mask rows (see
:mod:`captum_coar.shards`: ranks split mask rows, never examples, so every rank passes the same
data, all examples in the same order: no ``DistributedSampler``), and

- :func:`collect_statistics_distributed` collects its rows' sufficient statistics and
  all-reduces them (SUM, float64), so every rank returns the same
  :class:`~captum_coar.collection.CollectedStatistics`, equal to a single-process
  ``collect_statistics`` up to float64 summation order, with the same validation rows. Fit as
  usual: ``ComponentAblationRegression.fit(stats)``.
- :func:`all_reduce_statistics` is the reduction alone (in place).
- :func:`collect_distributed` writes raw (masks, outputs) of its rows into its own store
  ``directory/shard-RRRRR-of-WWWWW`` (:func:`captum_coar.shards.collect_shard`; resumable with
  the same world size); when it returns on any rank, every shard is complete, and
  ``merge_statistics(directory)`` adds them up.

Signatures: the first argument is the forward function (a
:class:`~captum_coar.coar.ComponentAblationRegression` offers the same as methods:
``coar.collect_distributed(data, directory=..., n_masks=...)``), required arguments are
keyword-only and every option is named.

Ranks first compare the collection's identity (:mod:`captum_coar.coar._identity`: settings,
components, model weights, data, and the probe outputs that identify functions), and after
collecting they exchange success or failure, so a problem on one rank raises on every rank
(the failing rank re-raises its own exception, the others a ``RuntimeError`` naming it)
instead of leaving them waiting in a collective; disagreements raise ``ValueError`` naming each
differing field per rank. Without an initialised process group they raise ``RuntimeError``.
With nccl, give each rank its own GPU before ``init_process_group``
(``torch.cuda.set_device(local_rank)``): object collectives run on the current device.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

import torch
import torch.distributed as dist

from ..ablation import AblationStrategy
from ..components import ComponentSet
from ..sampling import MaskSampler
from ..solvers._ranges import add_ranges
from ..solvers.statistics import SufficientStatistics
from ..stores.base import RowSelection, select_rows
from ..stores.memmap import MemmapStore
from ._batches import BatchFn
from ._fingerprint import tensor_fingerprint
from ._identity import identity_differences
from ._options import CollectionOptions, resolve_options
from .collection import (
    CollectedStatistics,
    OutputLike,
    collect_statistics,
    identify,
    row_ranges,
    stats_device,
)
from .shards import check_forward_func, collect_shard, shard_rows

__all__ = ["collect_statistics_distributed", "all_reduce_statistics", "collect_distributed"]

T = TypeVar("T")
_SAME_DATA = ("every rank must use the same model weights, components and settings, and the same"
              " data (all examples, same order: ranks split mask rows, not examples, so no"
              " DistributedSampler)")


# --------------------------------------------------------------------------- process groups
def _group_info(group: Any, what: str) -> Tuple[int, int, str]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{what} needs an initialised torch.distributed process group: call"
            " torch.distributed.init_process_group('gloo' or 'nccl') first (torchrun sets the"
            " environment for it); independent jobs without a group use captum_coar.shards"
            " (collect_shard, collect_statistics_shard, merge_statistics)")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rank < 0:
        raise RuntimeError(f"{what}: this process is not a member of the given group")
    return rank, world, str(dist.get_backend(group))


def _reduce_device(backend: str, device: torch.device) -> torch.device:
    """Where a backend can reduce tensors that live on ``device``."""
    name = backend.lower()
    if name in ("gloo", "mpi", "ucc") and device.type != "cpu":
        return torch.device("cpu")
    if name == "nccl" and device.type != "cuda":
        raise ValueError(
            f"backend 'nccl' reduces CUDA tensors only, but the model (and so the statistics) is"
            f" on {device}: move the model to this rank's GPU (torch.cuda.set_device(local_rank);"
            " model.to(local_rank)) or use backend='gloo'")
    return device


def _collective(step: Callable[[], Tuple[T, Dict[str, Any]]], group: Any, what: str) -> T:
    """Run ``step`` on every rank; raise everywhere if it failed or disagreed on any rank."""
    error: Optional[BaseException] = None
    result: Any = None
    check: Dict[str, Any] = {}
    try:
        result, check = step()
    except Exception as exc:  # noqa: BLE001 - reported to every rank, then re-raised
        error = exc
    entries: List[Any] = [None] * dist.get_world_size(group)
    note = None if error is None else f"{type(error).__name__}: {error}"
    dist.all_gather_object(entries, {"error": note, "check": check}, group=group)
    if error is not None:
        raise error
    failed = [r for r, e in enumerate(entries) if e["error"] is not None]
    if failed:
        raise RuntimeError(f"{what} failed on rank(s) {failed}; rank {failed[0]}:"
                           f" {entries[failed[0]]['error']}")
    differing = []
    for rank, entry in enumerate(entries[1:], start=1):
        if "identity" in entries[0]["check"]:
            differing += [f"rank {rank} vs rank 0: {line}" for line in identity_differences(
                entry["check"].get("identity", {}), entries[0]["check"]["identity"],
                f"rank {rank}", "rank 0")]
    for key in entries[0]["check"]:
        if key == "identity":
            continue
        values = [e["check"].get(key) for e in entries]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values[:8]))
            differing.append(f"{key} ({shown}{', ...' if len(values) > 8 else ''})")
    if differing:
        raise ValueError(f"{what}: ranks disagree on " + "; ".join(differing) + f"; {_SAME_DATA}")
    return result


def _signature(forward_func: Callable[..., Any], components: ComponentSet, data: Any,
               n_masks: int, rows: RowSelection, identity_options: Dict[str, Any],
               options: CollectionOptions, other: Dict[str, Any]) -> Dict[str, Any]:
    """What every rank must agree on before collecting (one read of the data, one probe)."""
    return {"identity": identify(forward_func, components, data, n_masks=n_masks,
                                 options=options, **identity_options),
            "rows": tensor_fingerprint(select_rows(rows, n_masks)), **other}


def _on_rank(options: CollectionOptions, rank: int) -> CollectionOptions:
    """The options as given, with the progress bar on rank 0 only."""
    return options if rank == 0 or options.show_progress is False else replace(
        options, show_progress=False)


# --------------------------------------------------------------------------- process group API
def collect_statistics_distributed(
        forward_func: Callable[..., Any], components: ComponentSet, data: Any, *, n_masks: int,
        rows: RowSelection = None, ablation: Union[str, AblationStrategy] = "weights",
        ablation_fraction: Optional[float] = None, sampler: Union[str, MaskSampler] = "bernoulli",
        output: OutputLike = None, seed: int = 0, validation_fraction: float = 0.0,
        perturbations_per_eval: Optional[int] = None, max_rows: Optional[int] = None,
        chunk_rows: Optional[int] = None, batch_fn: Optional[BatchFn] = None,
        dtype: Optional[torch.dtype] = None, show_progress: Optional[bool] = None,
        verify: bool = True, group: Any = None,
        options: Optional[CollectionOptions] = None) -> CollectedStatistics:
    """Collect COAR statistics split over the ranks of ``group``; every rank gets the sum.

    Args:
        data: the same re-iterable of batches on every rank (all examples, same order).
        rows: the rows of the whole collection (default all ``n_masks``), split into
            contiguous blocks, one per rank (:func:`shard_rows`).
        verify: compare the collection's identity across ranks first.
        group: the process group (default the world).

    Other arguments (``options=`` or its keywords) are as in
    :func:`~captum_coar.coar.collection.collect_statistics`; only rank 0 shows progress.

    Returns the all-reduced statistics; ``settings["rows"]`` lists the rows as runs
    ``[start, stop)`` and ``settings["distributed"]`` the world size and backend.
    """
    what = "collect_statistics_distributed"
    check_forward_func(forward_func, components, what)
    options = resolve_options(
        options, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
        chunk_rows=chunk_rows, batch_fn=batch_fn, dtype=dtype, show_progress=show_progress)
    rank, world, backend = _group_info(group, what)
    identity_options: Dict[str, Any] = dict(
        ablation=ablation, ablation_fraction=ablation_fraction, sampler=sampler, output=output,
        seed=seed)

    def precheck() -> Tuple[None, Dict[str, Any]]:
        _reduce_device(backend, stats_device(components))
        if not verify:
            return None, {}
        return None, _signature(forward_func, components, data, n_masks, rows, identity_options,
                                options, {"validation_fraction": validation_fraction})

    def run() -> Tuple[CollectedStatistics, Dict[str, Any]]:
        stats = collect_statistics(
            forward_func, components, data, n_masks=n_masks,
            rows=shard_rows(n_masks, rank, world, rows), validation_fraction=validation_fraction,
            options=_on_rank(options, rank), **identity_options)
        check = {key: value for key, value in stats.settings.items() if key != "rows"}
        return stats, {"identity": check, "n_validation": stats.settings["n_validation"]}

    _collective(precheck, group, what)
    stats = _collective(run, group, what)
    all_reduce_statistics(stats, group)
    stats.settings["rows"] = row_ranges(select_rows(rows, n_masks))
    stats.settings["distributed"] = {"world_size": world, "backend": backend}
    return stats


def all_reduce_statistics(stats: Union[CollectedStatistics, SufficientStatistics],
                          group: Any = None) -> Union[CollectedStatistics, SufficientStatistics]:
    """Sum statistics over the ranks of ``group`` in place (every rank ends with the total).

    Shapes (and whether validation statistics exist) are compared across ranks first, and so
    are the rows each rank covers: a row held by two ranks -- statistics all-reduced a second
    time, or ranks that collected the same rows -- is refused on every rank (``ValueError``),
    as are statistics whose count disagrees with their rows. Statistics that do not know their
    rows (built by hand) cannot be checked. Offset-shifted (float32) sums are brought to one
    shift first. The tensors are reduced where the backend can (CUDA for nccl, the CPU for
    gloo); afterwards ``rows`` (and ``settings["rows"]``) is the union of the ranks' rows.
    """
    what = "all_reduce_statistics"
    _, world, backend = _group_info(group, what)
    if isinstance(stats, SufficientStatistics):
        parts = [stats]
    elif isinstance(stats, CollectedStatistics):
        parts = [stats.train] + ([stats.validation] if stats.validation is not None else [])
    else:
        raise TypeError(f"expected CollectedStatistics or SufficientStatistics, got"
                        f" {type(stats).__name__}")
    shapes = [(p.n_components, p.n_outputs, str(p.dtype)) for p in parts]

    def check() -> Tuple[None, Dict[str, Any]]:
        stats.check_rows()
        return None, {"(n_components, n_outputs, dtype) per part": shapes}

    _collective(check, group, what)
    local = {"rows": [p.rows for p in parts], "count": [p.count for p in parts],
             "shift": [None if p.dtype == torch.float64 else p.y_shift.cpu().tolist()
                       for p in parts],
             "settings": (stats.settings.get("rows") if isinstance(stats, CollectedStatistics)
                          else None)}
    entries: List[Any] = [None] * world
    dist.all_gather_object(entries, local, group=group)
    unions = [_union([e["rows"][i] for e in entries]) for i in range(len(parts))]
    settings_rows = _union([e["settings"] for e in entries])
    for i, part in enumerate(parts):
        shifts = [e["shift"][i] for e in entries if e["count"][i] and e["shift"][i] is not None]
        if shifts:
            part.shift_to(torch.tensor(shifts[0], dtype=torch.float64))
        device = _reduce_device(backend, part.device)
        for key in ("xtx", "xty", "x_sum", "y_sum", "y_sq_sum"):
            target = getattr(part, key)
            buffer = target if target.device == device else target.to(device)
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
            if buffer is not target:
                target.copy_(buffer)
        part.count = int(sum(e["count"][i] for e in entries))
        part.rows = unions[i]
    if isinstance(stats, CollectedStatistics) and settings_rows is not None:
        stats.settings["rows"] = settings_rows
    return stats


def _union(per_rank: List[Any]) -> Optional[List[List[int]]]:
    """The union of the ranks' row runs (None when any rank does not know its rows);
    ``ValueError`` naming the ranks when a row is on two of them."""
    if any(rows is None for rows in per_rank):
        return None
    total: List[List[int]] = []
    for rank, rows in enumerate(per_rank):
        total = add_ranges(total, rows, f"ranks 0..{rank - 1}" if rank else "no rank",
                           f"rank {rank}")
    return total


def collect_distributed(forward_func: Callable[..., Any], components: ComponentSet, data: Any,
                        *, directory: Union[str, "os.PathLike[str]"], n_masks: int,
                        rows: RowSelection = None,
                        ablation: Union[str, AblationStrategy] = "weights",
                        ablation_fraction: Optional[float] = None,
                        sampler: Union[str, MaskSampler] = "bernoulli", output: OutputLike = None,
                        seed: int = 0, perturbations_per_eval: Optional[int] = None,
                        max_rows: Optional[int] = None, chunk_rows: Optional[int] = None,
                        batch_fn: Optional[BatchFn] = None, max_store_bytes: Optional[int] = None,
                        show_progress: Optional[bool] = None, group: Any = None,
                        options: Optional[CollectionOptions] = None) -> MemmapStore:
    """Each rank collects its rows into ``directory/shard-RRRRR-of-WWWWW``; returns its store.

    Ranks compare identities first and wait for each other at the end, so when this returns
    every shard is complete. ``directory`` must be visible to the rank that merges. Options
    (``options=`` or its keywords) as in :func:`captum_coar.coar.shards.collect_shard`; only
    rank 0 shows progress.
    """
    what = "collect_distributed"
    check_forward_func(forward_func, components, what)
    options = resolve_options(
        options, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
        chunk_rows=chunk_rows, batch_fn=batch_fn, max_store_bytes=max_store_bytes,
        show_progress=show_progress)
    rank, world, _ = _group_info(group, what)
    identity_options: Dict[str, Any] = dict(
        ablation=ablation, ablation_fraction=ablation_fraction, sampler=sampler, output=output,
        seed=seed)
    _collective(lambda: (None, _signature(forward_func, components, data, n_masks, rows,
                                          identity_options, options, {})), group, what)

    def run() -> Tuple[MemmapStore, Dict[str, Any]]:
        store = collect_shard(forward_func, components, data, directory=directory,
                              n_masks=n_masks, shard=rank, n_shards=world, rows=rows,
                              options=_on_rank(options, rank), **identity_options)
        return store, {"identity": store.metadata}

    return _collective(run, group, what)
