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
``ComponentAblationRegression.fit``). It compares every source's identity
(:mod:`captum_coar.coar._identity`: a field missing on one side is a difference) and refuses,
with a ``ValueError`` naming what differs, sources made with other settings, components,
model, data or functions, rows counted twice, and (by default) missing rows. Bare
``SufficientStatistics`` carry no identity and are refused unless the caller passes
``allow_unidentified=True``. Stores' checksums are verified as they are read.

Signatures: the first argument is the forward function, required arguments are
keyword-only, every option is named. A :class:`~captum_coar.coar.ComponentAblationRegression`
offers the same as methods (``coar.collect_shard(data, directory=..., ...)``); this module
does not import the estimator. Inside a ``torch.distributed`` process group see
:mod:`captum_coar.coar.distributed`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._checks import check_int
from ..ablation import AblationStrategy
from ..components import ComponentSet
from ..sampling import MaskSampler
from ..solvers.statistics import SufficientStatistics
from ..stores._files import unique_temp_path
from ..stores.base import MaskOutputStore, RowSelection, select_rows
from ..stores.memmap import METADATA_FILE, MemmapStore
from ._batches import BatchFn
from ._collected import rows_of
from ._identity import identity_differences
from ._options import CollectionOptions, resolve_options
from .collection import (
    CollectedStatistics,
    OutputLike,
    collect,
    collect_statistics,
    row_ranges,
    validation_split,
)

__all__ = ["shard_rows", "collect_shard", "collect_statistics_shard", "save_statistics",
           "load_statistics", "merge_statistics", "row_ranges", "check_forward_func"]

Source = Union[str, "os.PathLike[str]", MaskOutputStore, CollectedStatistics, SufficientStatistics]
_SHARD_NAME = "shard-{:05d}-of-{:05d}"
_SHARD_RE = re.compile(r"^shard-(\d+)-of-(\d+)$")
_FORMAT = "captum_coar.statistics"


# --------------------------------------------------------------------------- rows
def shard_rows(n_masks: int, shard: int, n_shards: int, rows: RowSelection = None) -> np.ndarray:
    """Rows of shard ``shard`` of ``n_shards``: the ``shard``-th contiguous block of ``rows``."""
    n_masks = check_int("n_masks", n_masks, minimum=1)
    n_shards = check_int("n_shards", n_shards, minimum=1)
    shard = check_int("shard", shard, minimum=0, maximum=n_shards - 1)
    return np.array_split(select_rows(rows, n_masks), n_shards)[shard]


def check_forward_func(forward_func: Any, components: Any, what: str) -> None:
    """One type for the first argument: a callable forward function, with a ComponentSet."""
    if hasattr(forward_func, "collect_shard") and hasattr(forward_func, "components"):
        raise TypeError(
            f"{what}: the first argument is the forward function; for a"
            f" ComponentAblationRegression call its method instead: coar.{what}(data, ...)")
    if not callable(forward_func):
        raise TypeError(f"{what}: `forward_func` must be callable; got"
                        f" {type(forward_func).__name__}")
    if not isinstance(components, ComponentSet):
        raise TypeError(f"{what}: `components` must be a ComponentSet; got"
                        f" {type(components).__name__}")


# --------------------------------------------------------------------------- shards
def collect_shard(forward_func: Callable[..., Any], components: ComponentSet, data: Any, *,
                  directory: Union[str, "os.PathLike[str]"], n_masks: int, shard: int,
                  n_shards: int, rows: RowSelection = None,
                  ablation: Union[str, AblationStrategy] = "weights",
                  ablation_fraction: Optional[float] = None,
                  sampler: Union[str, MaskSampler] = "bernoulli", output: OutputLike = None,
                  seed: int = 0, perturbations_per_eval: Optional[int] = None,
                  max_rows: Optional[int] = None, chunk_rows: Optional[int] = None,
                  batch_fn: Optional[BatchFn] = None, max_store_bytes: Optional[int] = None,
                  show_progress: Optional[bool] = None,
                  options: Optional[CollectionOptions] = None) -> MemmapStore:
    """Collect shard ``shard`` of ``n_shards`` into its own store ``directory/shard-SSSSS-of-KKKKK``.

    Re-running resumes. Options (``options=`` or its keywords) as in
    :func:`~captum_coar.coar.collection.collect`. Merge with ``merge_statistics(directory)``.

    Raises ``ValueError`` when ``directory`` holds shards of a run split another number of ways.
    """
    check_forward_func(forward_func, components, "collect_shard")
    options = resolve_options(
        options, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
        chunk_rows=chunk_rows, batch_fn=batch_fn, max_store_bytes=max_store_bytes,
        show_progress=show_progress)
    own_rows = shard_rows(n_masks, shard, n_shards, rows)
    root = Path(directory)
    layouts = sorted({int(m.group(2)) for m in _shard_dirs(root)} - {int(n_shards)})
    if layouts:
        raise ValueError(
            f"world sizes mismatch: {str(root)!r} holds shards of a run split {layouts} way(s),"
            f" but this run has n_shards={n_shards}; resume with the same number of processes"
            " (shards), or use a new directory")
    store = collect(forward_func, components, data, str(root / _SHARD_NAME.format(shard, n_shards)),
                    n_masks=n_masks, rows=own_rows, ablation=ablation,
                    ablation_fraction=ablation_fraction, sampler=sampler, output=output,
                    seed=seed, options=options)
    assert isinstance(store, MemmapStore)
    return store


def collect_statistics_shard(forward_func: Callable[..., Any], components: ComponentSet,
                             data: Any, *, n_masks: int, shard: int, n_shards: int,
                             rows: RowSelection = None,
                             ablation: Union[str, AblationStrategy] = "weights",
                             ablation_fraction: Optional[float] = None,
                             sampler: Union[str, MaskSampler] = "bernoulli",
                             output: OutputLike = None, seed: int = 0,
                             validation_fraction: float = 0.0,
                             perturbations_per_eval: Optional[int] = None,
                             max_rows: Optional[int] = None, chunk_rows: Optional[int] = None,
                             batch_fn: Optional[BatchFn] = None,
                             dtype: Optional[torch.dtype] = None,
                             show_progress: Optional[bool] = None,
                             options: Optional[CollectionOptions] = None) -> CollectedStatistics:
    """Statistics of shard ``shard`` of ``n_shards`` (one job of many, no process group).

    ``settings["rows"]`` records the rows, so :func:`merge_statistics` detects overlapping and
    missing shards. Options (``options=`` or its keywords) as in
    :func:`~captum_coar.coar.collection.collect_statistics`.
    """
    check_forward_func(forward_func, components, "collect_statistics_shard")
    options = resolve_options(
        options, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
        chunk_rows=chunk_rows, batch_fn=batch_fn, dtype=dtype, show_progress=show_progress)
    own_rows = shard_rows(n_masks, shard, n_shards, rows)
    return collect_statistics(
        forward_func, components, data, n_masks=n_masks, rows=own_rows, ablation=ablation,
        ablation_fraction=ablation_fraction, sampler=sampler, output=output, seed=seed,
        validation_fraction=validation_fraction, options=options)


def _shard_dirs(root: Path) -> List["re.Match[str]"]:
    if not root.is_dir():
        return []
    matches = (_SHARD_RE.match(p.name) for p in sorted(root.iterdir()) if p.is_dir())
    return [m for m in matches if m is not None]


# --------------------------------------------------------------------------- files
def save_statistics(stats: Union[CollectedStatistics, SufficientStatistics],
                    path: Union[str, "os.PathLike[str]"]) -> None:
    """Write statistics (CPU tensors and JSON settings) to a ``.pt`` file, atomically.

    Example:
        >>> import os, tempfile, torch
        >>> from captum_coar import linear_neurons, merge_statistics, save_statistics
        >>> from captum_coar.coar import collect_statistics, load_statistics
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet().eval()
        >>> data = [(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))]
        >>> stats = collect_statistics(model, linear_neurons(model, ["hidden"]), data,
        ...                            n_masks=20, ablation_fraction=0.3, output="logit")
        >>> path = os.path.join(tempfile.mkdtemp(), "stats.pt")
        >>> save_statistics(stats, path)
        >>> load_statistics(path).train.count
        20
    """
    if isinstance(stats, SufficientStatistics):
        stats = CollectedStatistics(stats, None)
    if not isinstance(stats, CollectedStatistics):
        raise TypeError(f"expected CollectedStatistics or SufficientStatistics, got"
                        f" {type(stats).__name__}")

    def tensors(part: Optional[SufficientStatistics]) -> Optional[Dict[str, torch.Tensor]]:
        return None if part is None else {k: v.detach().cpu() for k, v in part.to_dict().items()}

    stats.check_rows()
    payload = {"format": _FORMAT, "version": 1, "train": tensors(stats.train),
               "validation": tensors(stats.validation),
               "settings": json.dumps(stats.settings, sort_keys=True, default=str),
               "rows": json.dumps([stats.train.rows, None if stats.validation is None else
                                   stats.validation.rows])}
    target = Path(path)
    tmp = unique_temp_path(target)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_statistics(path: Union[str, "os.PathLike[str]"],
                    device: Optional[Union[str, torch.device]] = None) -> CollectedStatistics:
    """Read a :func:`save_statistics` file (``weights_only=True``) onto ``device`` (CPU)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file: name it
        raise ValueError(f"{str(path)!r} cannot be read as a captum_coar statistics file"
                         f" ({type(error).__name__}: {error}); it is damaged or of another"
                         " kind") from error
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is not a captum_coar statistics file (save_statistics)")
    try:
        validation = payload["validation"]
        loaded = CollectedStatistics(
            SufficientStatistics.from_dict(payload["train"], device=device),
            None if validation is None else SufficientStatistics.from_dict(validation,
                                                                           device=device),
            json.loads(payload["settings"]))
        rows = json.loads(payload.get("rows", "[null, null]"))
        for part, covered in zip((loaded.train, loaded.validation), rows):
            if part is not None:
                part.rows = covered
        loaded.check_rows(repr(str(path)))
        return loaded
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{str(path)!r} is damaged: {type(error).__name__}: {error}") from error


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
    settings = dict(meta)
    settings.update(n_validation=n_val, rows=row_ranges(done))
    return CollectedStatistics(train, validation, settings), done


def merge_statistics(sources: Union[Source, Sequence[Source]], *, validation_fraction: float = 0.0,
                     require_complete: bool = True, allow_unidentified: bool = False,
                     device: Optional[Union[str, torch.device]] = None) -> CollectedStatistics:
    """Add up statistics of shards made by independent jobs (or saved by several runs).

    Args:
        sources: one or a list of: store objects, store directories, directories of
            :func:`collect_shard` stores, :func:`save_statistics` files, ``CollectedStatistics``
            or ``SufficientStatistics``.
        validation_fraction: for stores, the last rows of ``n_masks`` held out (as in a single
            ``collect_statistics(validation_fraction=...)``); statistics bring their own split,
            which must agree.
        require_complete: raise unless every row of ``n_masks`` is present exactly once.
        allow_unidentified: accept sources without an identity (bare ``SufficientStatistics``,
            statistics whose settings lost it); they are added unchecked, so only pass it for
            statistics you know belong together.
        device: where the merged statistics live (default: the first statistics' device or CPU).

    Raises ``ValueError`` naming each identity field that differs between two sources (a field
    missing on one side included), rows counted twice, or missing rows. The inputs are left
    unchanged.

    Example:
        >>> import torch
        >>> from captum_coar import ComponentAblationRegression, linear_neurons, merge_statistics
        >>> from captum_coar.coar import collect_statistics_shard
        >>> from captum_coar.testing import AdditiveNet
        >>> model = AdditiveNet().eval()                       # exactly additive in its neurons
        >>> neurons = linear_neurons(model, ["hidden"])
        >>> x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
        >>> shards = [collect_statistics_shard(model, neurons, [(x, y)], n_masks=40, shard=s,
        ...                                    n_shards=2, ablation_fraction=0.3, output="logit")
        ...           for s in range(2)]                        # e.g. two independent jobs
        >>> merged = merge_statistics(shards)
        >>> fit = ComponentAblationRegression(model, neurons).fit(merged)
        >>> merged.train.count, torch.allclose(fit.attributions, model.effects(x, y), atol=1e-4)
        (40, True)
    """
    parts: List[Tuple[str, CollectedStatistics, Optional[np.ndarray]]] = []
    for label, item in _expand(sources):
        rows: Optional[np.ndarray]
        if isinstance(item, MaskOutputStore):
            stats, rows = _from_store(item, validation_fraction, device)
        else:
            stats = item if isinstance(item, CollectedStatistics) else CollectedStatistics(item, None)
            known = stats.settings.get("rows")
            rows = None if known is None else rows_of(known)
        stats.check_rows(label)
        parts.append((label, stats, rows))
    identified = [(label, stats) for label, stats, _ in parts if "probe" in stats.settings]
    unidentified = [label for label, stats, _ in parts if "probe" not in stats.settings]
    if unidentified and not allow_unidentified:
        raise ValueError(
            f"{unidentified} carry no collection identity (bare SufficientStatistics, or"
            " statistics whose settings were replaced), so nothing says they were made with the"
            " same model, data and settings as the others; merge what collect_statistics,"
            " collect_statistics_shard or a store returned, or pass allow_unidentified=True to"
            " add them unchecked")
    fields = ("n_validation",)
    if identified:
        first_label, first_stats = identified[0]
        for label, stats in identified[1:]:
            lines = identity_differences(first_stats.settings, stats.settings, first_label, label)
            lines += identity_differences(first_stats.settings, stats.settings, first_label,
                                          label, fields=fields)
            if lines:
                raise ValueError("these statistics were made differently and cannot be added: "
                                 + "; ".join(lines) + " (for stores, n_validation follows"
                                 f" validation_fraction={validation_fraction})")
    settings: Dict[str, Any] = dict(identified[0][1].settings) if identified else {}
    first = parts[0][1]
    where = device if device is not None else first.train.device
    N, n = first.train.n_components, first.train.n_outputs
    for label, stats, _ in parts:
        if (stats.train.n_components, stats.train.n_outputs) != (N, n):
            raise ValueError(f"{label} holds statistics of {stats.train.n_components} components"
                             f" x {stats.train.n_outputs} outputs, {parts[0][0]} of {N} x {n}")
    for key in ("distributed", "files", "checksum", "progress_semantics", "created"):
        settings.pop(key, None)
    if "n_masks" in settings:  # rows counted twice are named by source before any sum
        total = sum(s.train.count + (s.validation.count if s.validation is not None else 0)
                    for _, s, _ in parts)
        _check_rows(parts, int(settings["n_masks"]), total, require_complete, settings)
    train = SufficientStatistics(N, n, device=where)
    has_val = any(s.validation is not None for _, s, _ in parts)
    validation = SufficientStatistics(N, n, device=where) if has_val else None
    for _, stats, _ in parts:
        train.merge(stats.train)
        if stats.validation is not None and validation is not None:
            validation.merge(stats.validation)
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
