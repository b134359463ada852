"""Splitting one COAR collection among independent jobs, and adding the pieces up.

Contract
--------
Mask row ``r`` depends only on ``(seed, r)``, so the rows of one collection can be split among
workers and their sufficient statistics summed. Workers split **mask rows, never examples**:
every worker evaluates its rows on ALL examples of the same data, in the same order. Shares are
contiguous blocks: :func:`shard_rows` gives shard ``s`` of ``k`` the ``s``-th of ``k``
consecutive runs of the selected rows, sizes differing by at most one (contiguous rows need
fewer passes over the data than strided ones). Validation rows are the last rows of the whole
collection (:func:`~captum_coar.collection.validation_split` of ``n_masks``), whoever collects
them, so the train / validation split is the one of a single run.

Independent jobs (e.g. a SLURM array, no process group) use

- :func:`collect_shard` -- raw (masks, outputs) of one shard's rows into its own
  :class:`~captum_coar.stores.memmap.MemmapStore` ``directory/shard-SSSSS-of-KKKKK``
  (re-running resumes), or
- :func:`collect_statistics_shard` -- the shard's statistics, with ``settings["rows"]``
  recording its rows, then :func:`save_statistics` (a ``.pt`` file read back by
  :func:`load_statistics` with ``weights_only=True``);

and :func:`merge_statistics` adds stores, shard directories, saved files and statistics
objects into one :class:`~captum_coar.collection.CollectedStatistics` (fit it with
``ComponentAblationRegression.fit``). It refuses, with a ``ValueError`` naming what differs,
sources made with other settings, components, model or data, rows counted twice, and (by
default) missing rows. Inside a ``torch.distributed`` process group see
:mod:`captum_coar.distributed`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..components import ComponentSet
from ..solvers.statistics import SufficientStatistics
from ..stores.base import (
    MaskOutputStore,
    RowSelection,
    normalise_metadata,
    select_rows,
)
from ..stores.memmap import METADATA_FILE, MemmapStore
from .collection import CollectedStatistics, collect, collect_statistics, validation_split
from .estimator import ComponentAblationRegression

__all__ = ["shard_rows", "collect_shard", "collect_statistics_shard", "save_statistics",
           "load_statistics", "merge_statistics"]

Source = Union[str, "os.PathLike[str]", MaskOutputStore, CollectedStatistics, SufficientStatistics]
_SHARD_NAME = "shard-{:05d}-of-{:05d}"
_SHARD_RE = re.compile(r"^shard-(\d+)-of-(\d+)$")
_FORMAT = "captum_coar.statistics"
# settings that must agree for statistics to be added up
_CHECKED = ("n_masks", "n_validation", "seed", "sampler", "ablation", "output", "n_examples",
            "components_fingerprint", "model_fingerprint", "data_fingerprint")


# --------------------------------------------------------------------------- rows
def shard_rows(n_masks: int, shard: int, n_shards: int, rows: RowSelection = None) -> np.ndarray:
    """Rows of shard ``shard`` of ``n_shards``: the ``shard``-th contiguous block of ``rows``."""
    for name, value, low in (("n_masks", n_masks, 1), ("n_shards", n_shards, 1),
                             ("shard", shard, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if shard >= n_shards:
        raise ValueError(f"shard must be in [0, n_shards={n_shards}), got {shard}")
    return np.array_split(select_rows(rows, int(n_masks)), int(n_shards))[int(shard)]


def row_ranges(rows: np.ndarray) -> List[List[int]]:
    """Sorted unique rows as ``[[start, stop), ...]`` runs (JSON friendly)."""
    if rows.size == 0:
        return []
    breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
    starts, ends = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, rows.size - 1]] + 1
    return [[int(a), int(b)] for a, b in zip(starts, ends)]


def _rows_of(ranges: Sequence[Sequence[int]]) -> np.ndarray:
    parts = [np.arange(int(a), int(b), dtype=np.int64) for a, b in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def unpack_model(forward_func: Any, components: Optional[ComponentSet], data: Any,
                 ablation: Any) -> Tuple[Callable[..., Any], ComponentSet, Any]:
    """(forward_func, components, ablation) from a function + components or a COAR object."""
    if data is None:
        raise TypeError("data is required (a re-iterable of batches, the same on every worker)")
    if isinstance(forward_func, ComponentAblationRegression):
        coar = forward_func
        if components is not None and components is not coar.components:
            raise ValueError("components are taken from the ComponentAblationRegression; pass"
                             " components=None (or its own .components)")
        if ablation is not None:
            raise ValueError("ablation is taken from the ComponentAblationRegression; set it"
                             " there, not here")
        return coar.forward_func, coar.components, coar.ablation
    if not isinstance(components, ComponentSet):
        raise TypeError(f"components must be a ComponentSet, got {type(components).__name__}"
                        " (or pass a ComponentAblationRegression as the first argument)")
    return forward_func, components, "weights" if ablation is None else ablation


# --------------------------------------------------------------------------- shards
def collect_shard(forward_func: Any, components: Optional[ComponentSet] = None, data: Any = None,
                  directory: Union[str, "os.PathLike[str]", None] = None, *, n_masks: int,
                  shard: int, n_shards: int, rows: RowSelection = None, ablation: Any = None,
                  show_progress: bool = False, **collect_kwargs: Any) -> MemmapStore:
    """Collect shard ``shard`` of ``n_shards`` into its own store ``directory/shard-SSSSS-of-KKKKK``.

    ``forward_func`` may be a :class:`~captum_coar.coar.ComponentAblationRegression` (then
    components and ablation come from it). Re-running resumes. Other arguments as in
    :func:`~captum_coar.coar.collection.collect`. Merge with ``merge_statistics(directory)``.

    Raises ``ValueError`` when ``directory`` holds shards of a run split another number of ways.
    """
    if directory is None:
        raise TypeError("directory is required (where the shard stores go)")
    func, comps, abl = unpack_model(forward_func, components, data, ablation)
    own_rows = shard_rows(n_masks, shard, n_shards, rows)
    root = Path(directory)
    layouts = sorted({int(m.group(2)) for m in _shard_dirs(root)} - {int(n_shards)})
    if layouts:
        raise ValueError(
            f"world sizes mismatch: {str(root)!r} holds shards of a run split {layouts} way(s),"
            f" but this run has n_shards={n_shards}; resume with the same number of processes"
            " (shards), or use a new directory")
    store = collect(func, comps, data, str(root / _SHARD_NAME.format(shard, n_shards)),
                    n_masks=n_masks, rows=own_rows, ablation=abl,
                    show_progress=show_progress, **collect_kwargs)
    assert isinstance(store, MemmapStore)
    return store


def collect_statistics_shard(forward_func: Any, components: Optional[ComponentSet] = None,
                             data: Any = None, *, n_masks: int, shard: int, n_shards: int,
                             rows: RowSelection = None, ablation: Any = None,
                             **collect_kwargs: Any) -> CollectedStatistics:
    """Statistics of shard ``shard`` of ``n_shards`` (one job of many, no process group).

    ``settings["rows"]`` records the rows, so :func:`merge_statistics` detects overlapping and
    missing shards. Other arguments as in :func:`~captum_coar.coar.collection.collect_statistics`.
    """
    func, comps, abl = unpack_model(forward_func, components, data, ablation)
    own_rows = shard_rows(n_masks, shard, n_shards, rows)
    stats = collect_statistics(func, comps, data, n_masks=n_masks, rows=own_rows, ablation=abl,
                               **collect_kwargs)
    stats.settings["rows"] = row_ranges(own_rows)
    return stats


def _shard_dirs(root: Path) -> List["re.Match[str]"]:
    if not root.is_dir():
        return []
    matches = (_SHARD_RE.match(p.name) for p in sorted(root.iterdir()) if p.is_dir())
    return [m for m in matches if m is not None]


# --------------------------------------------------------------------------- files
def save_statistics(stats: Union[CollectedStatistics, SufficientStatistics],
                    path: Union[str, "os.PathLike[str]"]) -> None:
    """Write statistics (CPU tensors and JSON settings) to a ``.pt`` file, atomically."""
    if isinstance(stats, SufficientStatistics):
        stats = CollectedStatistics(stats, None)
    if not isinstance(stats, CollectedStatistics):
        raise TypeError(f"expected CollectedStatistics or SufficientStatistics, got"
                        f" {type(stats).__name__}")

    def tensors(part: Optional[SufficientStatistics]) -> Optional[Dict[str, torch.Tensor]]:
        return None if part is None else {k: v.detach().cpu() for k, v in part.to_dict().items()}

    payload = {"format": _FORMAT, "version": 1, "train": tensors(stats.train),
               "validation": tensors(stats.validation),
               "settings": json.dumps(stats.settings, sort_keys=True, default=str)}
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, target)


def load_statistics(path: Union[str, "os.PathLike[str]"],
                    device: Optional[Union[str, torch.device]] = None) -> CollectedStatistics:
    """Read a :func:`save_statistics` file (``weights_only=True``) onto ``device`` (CPU)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is not a captum_coar statistics file (save_statistics)")
    validation = payload["validation"]
    return CollectedStatistics(
        SufficientStatistics.from_dict(payload["train"], device=device),
        None if validation is None else SufficientStatistics.from_dict(validation, device=device),
        json.loads(payload["settings"]))


# --------------------------------------------------------------------------- merging
def _expand(sources: Any) -> List[Tuple[str, Any]]:
    single = (str, os.PathLike, MaskOutputStore, CollectedStatistics, SufficientStatistics)
    items = [sources] if isinstance(sources, single) else list(sources)
    out: List[Tuple[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike)):
            if not isinstance(item, single):
                raise TypeError(f"source {i} is a {type(item).__name__}; sources are stores, store"
                                " or shard directories, statistics files or statistics objects")
            out.append((f"source {i} ({type(item).__name__})", item))
            continue
        path = Path(item)
        if path.is_file():
            out.append((str(path), load_statistics(path)))
        elif (path / METADATA_FILE).is_file():
            out.append((str(path), MemmapStore(path, read_only=True)))
        elif _shard_dirs(path):
            shards = _shard_dirs(path)
            if len({m.group(2) for m in shards}) > 1:
                raise ValueError(f"world sizes mismatch: {str(path)!r} holds shards of runs split"
                                 f" different ways: {[m.group(0) for m in shards]}")
            out += [(str(path / m.group(0)), MemmapStore(path / m.group(0), read_only=True))
                    for m in shards]
        else:
            raise FileNotFoundError(f"{str(path)!r} is neither a statistics file, a store nor a"
                                    " directory of shard stores")
    if not out:
        raise ValueError("merge_statistics needs at least one source")
    return out


def _from_store(store: MaskOutputStore, validation_fraction: float, device: Any
                ) -> Tuple[CollectedStatistics, np.ndarray]:
    meta = store.metadata
    n_masks = int(meta["n_masks"])
    n_val = validation_split(n_masks, validation_fraction)
    done = store.rows()[store.completed()]
    train_rows, val_rows = done[done < n_masks - n_val], done[done >= n_masks - n_val]
    train = store.statistics(train_rows, device=device)
    validation = store.statistics(val_rows, device=device) if n_val else None
    settings = {k: meta.get(k) for k in _CHECKED if k in meta}
    settings.update(n_validation=n_val, rows=row_ranges(done))
    return CollectedStatistics(train, validation, settings), done


def merge_statistics(sources: Union[Source, Sequence[Source]], *, validation_fraction: float = 0.0,
                     require_complete: bool = True,
                     device: Optional[Union[str, torch.device]] = None) -> CollectedStatistics:
    """Add up statistics of shards made by independent jobs (or saved by several runs).

    Args:
        sources: one or a list of: store objects, store directories, directories of
            :func:`collect_shard` stores, :func:`save_statistics` files, ``CollectedStatistics``
            or ``SufficientStatistics`` (the last carry no settings: unchecked).
        validation_fraction: for stores, the last rows of ``n_masks`` held out (as in a single
            ``collect_statistics(validation_fraction=...)``); statistics bring their own split,
            which must agree.
        require_complete: raise unless every row of ``n_masks`` is present exactly once.
        device: where the merged statistics live (default: the first statistics' device or CPU).

    Raises ``ValueError`` naming the differing settings, rows counted twice, or missing rows.
    The inputs are left unchanged.
    """
    parts: List[Tuple[str, CollectedStatistics, Optional[np.ndarray]]] = []
    for label, item in _expand(sources):
        rows: Optional[np.ndarray]
        if isinstance(item, MaskOutputStore):
            stats, rows = _from_store(item, validation_fraction, device)
        else:
            stats = item if isinstance(item, CollectedStatistics) else CollectedStatistics(item, None)
            known = stats.settings.get("rows")
            rows = None if known is None else _rows_of(known)
        parts.append((label, stats, rows))
    settings: Dict[str, Any] = {}
    seen_in: Dict[str, str] = {}  # setting -> label of the first source that had it
    for label, stats, _ in parts:
        given = normalise_metadata(stats.settings)
        diffs = [f"{k}: {seen_in[k]} has {json.dumps(settings[k])}, {label} has"
                 f" {json.dumps(given[k])}" for k in _CHECKED
                 if k in given and k in settings and given[k] != settings[k]]
        if diffs:
            raise ValueError("these statistics were made differently and cannot be added: "
                             + "; ".join(diffs) + " (for stores, n_validation follows"
                             f" validation_fraction={validation_fraction})")
        for key, value in given.items():
            if key not in settings:
                settings[key], seen_in[key] = value, label
    first = parts[0][1]
    where = device if device is not None else first.train.device
    N, n = first.train.n_components, first.train.n_outputs
    train = SufficientStatistics(N, n, device=where)
    has_val = any(s.validation is not None for _, s, _ in parts)
    validation = SufficientStatistics(N, n, device=where) if has_val else None
    for _, stats, _ in parts:
        train.merge(stats.train)
        if stats.validation is not None and validation is not None:
            validation.merge(stats.validation)
    settings.pop("distributed", None)
    if "n_masks" in settings:
        total = train.count + (validation.count if validation is not None else 0)
        _check_rows(parts, int(settings["n_masks"]), total, require_complete, settings)
    return CollectedStatistics(train, validation, settings)


def _check_rows(parts: List[Tuple[str, CollectedStatistics, Optional[np.ndarray]]], n_masks: int,
                total: int, require_complete: bool, settings: Dict[str, Any]) -> None:
    """Refuse rows counted twice and (when required) missing rows; record the rows covered."""
    settings.pop("rows", None)
    if all(rows is not None for _, _, rows in parts):
        seen = np.zeros(n_masks, dtype=np.int64)
        for _, _, rows in parts:
            assert rows is not None
            np.add.at(seen, rows, 1)
        twice = np.nonzero(seen > 1)[0]
        if twice.size:
            holders = [lab for lab, _, rows in parts if rows is not None and twice[0] in rows]
            raise ValueError(f"{twice.size} row(s) are counted more than once (e.g. row"
                             f" {twice[0]} in {holders}); a shard was given twice or shards"
                             " overlap")
        missing = np.nonzero(seen == 0)[0]
        if missing.size and require_complete:
            raise ValueError(
                f"{missing.size} of the {n_masks} rows are missing (e.g. rows"
                f" {row_ranges(missing)[:5]} as [start, stop) runs); a shard is missing, failed or"
                " still running (re-running it resumes a store); pass require_complete=False to"
                " merge what is there")
        settings["rows"] = row_ranges(np.nonzero(seen)[0])
        return
    if total > n_masks:
        raise ValueError(f"the sources hold {total} rows but n_masks={n_masks}: a shard was given"
                         " twice or shards overlap")
    if total < n_masks and require_complete:
        raise ValueError(f"the sources hold {total} of the n_masks={n_masks} rows; a shard is"
                         " missing (pass require_complete=False to merge what is there)")
