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

Ranks first compare settings, components, model weights and data (fingerprints), and after
collecting they exchange success or failure, so a problem on one rank raises on every rank
(the failing rank re-raises its own exception, the others a ``RuntimeError`` naming it)
instead of leaving them waiting in a collective; disagreements raise ``ValueError`` naming each
differing field per rank. Without an initialised process group they raise ``RuntimeError``.
With nccl, give each rank its own GPU before ``init_process_group``
(``torch.cuda.set_device(local_rank)``): object collectives run on the current device.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

import torch
import torch.distributed as dist

from ..ablation import resolve_ablation
from ..components import ComponentSet
from ..solvers.statistics import SufficientStatistics
from ..stores.base import IDENTITY_FIELDS, RowSelection, normalise_metadata, select_rows
from ..stores.memmap import MemmapStore
from ._fingerprint import model_fingerprint, scan_data, tensor_fingerprint
from .collection import CollectedStatistics, collect_statistics, split_batch, stats_device
from .shards import collect_shard, row_ranges, shard_rows, unpack_model

__all__ = ["collect_statistics_distributed", "all_reduce_statistics", "collect_distributed"]

T = TypeVar("T")
# arguments that change the statistics (others, like perturbations_per_eval, may differ)
_RESULT_SETTINGS = ("seed", "validation_fraction", "ablation_fraction", "sampler", "output")
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
    for key in entries[0]["check"]:
        values = [e["check"].get(key) for e in entries]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values[:8]))
            differing.append(f"{key} ({shown}{', ...' if len(values) > 8 else ''})")
    if differing:
        raise ValueError(f"{what}: ranks disagree on " + "; ".join(differing) + f"; {_SAME_DATA}")
    return result


def _signature(components: ComponentSet, data: Any, n_masks: int, rows: RowSelection,
               ablation: Any, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """What every rank must agree on before collecting (cheap: one read of the data)."""
    scan = scan_data((split_batch(b, kwargs.get("batch_fn")) for b in data), fingerprints=True)
    simple = {k: kwargs[k] for k in _RESULT_SETTINGS if k in kwargs and (
        kwargs[k] is None or isinstance(kwargs[k], (str, int, float)))}
    return {"n_masks": n_masks, "rows": tensor_fingerprint(select_rows(rows, n_masks)),
            "settings": simple, "ablation": resolve_ablation(ablation).describe(),
            "components_fingerprint": components.fingerprint,
            "model_fingerprint": model_fingerprint(components.model),
            "n_examples": scan.n_examples, "data_fingerprint": scan.data_fingerprint}


# --------------------------------------------------------------------------- process group API
def collect_statistics_distributed(
        forward_func: Any, components: Optional[ComponentSet] = None, data: Any = None, *,
        n_masks: int, seed: int = 0, rows: RowSelection = None, validation_fraction: float = 0.0,
        ablation: Any = None, show_progress: bool = False, verify: bool = True, group: Any = None,
        **collect_kwargs: Any) -> CollectedStatistics:
    """Collect COAR statistics split over the ranks of ``group``; every rank gets the sum.

    Args:
        forward_func: the model or forward function, or a
            :class:`~captum_coar.coar.ComponentAblationRegression` (then components and
            ablation come from it: ``collect_statistics_distributed(coar, data=loader, ...)``).
        data: the same re-iterable of batches on every rank (all examples, same order).
        rows: the rows of the whole collection (default all ``n_masks``), split into
            contiguous blocks, one per rank (:func:`shard_rows`).
        verify: compare model, components, settings and data fingerprints across ranks first.
        group: the process group (default the world).
        collect_kwargs: ``ablation_fraction``, ``sampler``, ``output``,
            ``perturbations_per_eval``, ``max_rows``, ``chunk_rows``, ``batch_fn``, ``dtype``
            as in :func:`~captum_coar.coar.collection.collect_statistics`.

    Returns the all-reduced statistics; ``settings["rows"]`` lists the rows as runs
    ``[start, stop)`` and ``settings["distributed"]`` the world size and backend.
    """
    what = "collect_statistics_distributed"
    rank, world, backend = _group_info(group, what)
    func, comps, abl = unpack_model(forward_func, components, data, ablation)

    def precheck() -> Tuple[None, Dict[str, Any]]:
        _reduce_device(backend, stats_device(comps))
        kwargs = dict(collect_kwargs, seed=seed, validation_fraction=validation_fraction)
        return None, _signature(comps, data, n_masks, rows, abl, kwargs) if verify else {}

    def run() -> Tuple[CollectedStatistics, Dict[str, Any]]:
        stats = collect_statistics(
            func, comps, data, n_masks=n_masks, seed=seed, validation_fraction=validation_fraction,
            rows=shard_rows(n_masks, rank, world, rows), ablation=abl,
            show_progress=show_progress and rank == 0, **collect_kwargs)
        return stats, {"settings": normalise_metadata(stats.settings)}

    _collective(precheck, group, what)
    stats = _collective(run, group, what)
    all_reduce_statistics(stats, group)
    stats.settings["rows"] = row_ranges(select_rows(rows, n_masks))
    stats.settings["distributed"] = {"world_size": world, "backend": backend}
    return stats


def all_reduce_statistics(stats: Union[CollectedStatistics, SufficientStatistics],
                          group: Any = None) -> Union[CollectedStatistics, SufficientStatistics]:
    """Sum statistics over the ranks of ``group`` in place (every rank ends with the total).

    Shapes (and whether validation statistics exist) are compared across ranks first; the
    tensors are reduced where the backend can (CUDA for nccl, the CPU for gloo).
    """
    what = "all_reduce_statistics"
    _, _, backend = _group_info(group, what)
    if isinstance(stats, SufficientStatistics):
        parts = [stats]
    elif isinstance(stats, CollectedStatistics):
        parts = [stats.train] + ([stats.validation] if stats.validation is not None else [])
    else:
        raise TypeError(f"expected CollectedStatistics or SufficientStatistics, got"
                        f" {type(stats).__name__}")
    shapes = [(p.n_components, p.n_outputs, str(p.dtype)) for p in parts]
    _collective(lambda: (None, {"(n_components, n_outputs, dtype) per part": shapes}), group, what)
    for part in parts:
        device = _reduce_device(backend, part.device)
        for key, value in part.to_dict().items():
            if key == "count":
                total = value.to(device)
                dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
                part.count = int(round(float(total.item())))
                continue
            target = getattr(part, key)
            buffer = target if target.device == device else target.to(device)
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
            if buffer is not target:
                target.copy_(buffer)
    return stats


def collect_distributed(forward_func: Any, components: Optional[ComponentSet] = None,
                        data: Any = None, directory: Union[str, "os.PathLike[str]", None] = None,
                        *, n_masks: int, rows: RowSelection = None, ablation: Any = None,
                        show_progress: bool = False, group: Any = None,
                        **collect_kwargs: Any) -> MemmapStore:
    """Each rank collects its rows into ``directory/shard-RRRRR-of-WWWWW``; returns its store.

    Ranks compare fingerprints first and wait for each other at the end, so when this returns
    every shard is complete. ``directory`` must be visible to the rank that merges. Other
    arguments as in :func:`captum_coar.shards.collect_shard`.
    """
    what = "collect_distributed"
    rank, world, _ = _group_info(group, what)
    func, comps, abl = unpack_model(forward_func, components, data, ablation)
    _collective(lambda: (None, _signature(comps, data, n_masks, rows, abl, collect_kwargs)),
                group, what)

    def run() -> Tuple[MemmapStore, Dict[str, Any]]:
        store = collect_shard(func, comps, data, directory, n_masks=n_masks, shard=rank,
                              n_shards=world, rows=rows, ablation=abl,
                              show_progress=show_progress and rank == 0, **collect_kwargs)
        return store, {key: store.metadata.get(key) for key in IDENTITY_FIELDS}

    return _collective(run, group, what)
