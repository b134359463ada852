"""Thin entry points of :class:`~captum_coar.coar.ComponentAblationRegression` into the
collection infrastructure: collection, shards and ``torch.distributed`` process groups.

Contract
--------
:class:`CollectionEntryPoints` is a mixin for a class with ``forward_func``, ``components``,
``ablation`` and ``options`` (a :class:`~captum_coar.coar._options.CollectionOptions`)
attributes. Each method passes them, plus every argument by name, to the function of the same
name in :mod:`captum_coar.coar.collection`, :mod:`~captum_coar.coar.shards` or
:mod:`~captum_coar.coar.distributed`; the dependency runs from the estimator to the
infrastructure, never back. How the collection runs is resolved once here
(:func:`~captum_coar.coar._options.resolve_options`: ``options=`` or the keywords of the same
names, over the estimator's own ``options``) and passed down unchanged. ``n_masks`` defaults to
``10 * n_components`` (:func:`~captum_coar.coar._settings.default_n_masks`); every other required
argument is keyword-only and required. ``collect_statistics`` also computes the prior of COAR's
default fit (attribution patching, :mod:`captum_coar.coar._prior`) when the default rule uses
one for its training rows (``prior=None``), so that ``fit(collect_statistics(...))`` is
``attribute``; ``prior=False`` skips it, ``True`` computes it whatever the rule.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional, Union

import torch

from ..ablation import AblationStrategy
from ..components import ComponentSet
from ..sampling import MaskSampler
from ..solvers import default_solver
from ..stores.base import MaskOutputStore, RowSelection
from ..stores.memmap import MemmapStore
from . import collection, distributed, shards
from ._batches import BatchFn, split_batch
from ._budget import LARGE_DEFAULT_MASKS, warn_large_default
from ._options import CollectionOptions, resolve_options
from ._prior import prior_or_none
from ._settings import default_n_masks, validation_split
from .collection import CollectedStatistics, OutputLike

__all__ = ["CollectionEntryPoints"]

PathLike = Union[str, "os.PathLike[str]"]
Sampler = Union[str, MaskSampler]


class CollectionEntryPoints:
    """``collect``, ``collect_statistics``, their shard and process-group forms as methods."""

    forward_func: Callable[..., Any]
    components: ComponentSet
    ablation: Union[str, AblationStrategy]
    options: CollectionOptions

    def _call(self, n_masks: Optional[int], options: Optional[CollectionOptions], data: Any,
              **keywords: Any) -> Any:
        """``(n_masks, options)`` of one call: the defaults filled in (a large default warned
        about, :func:`~captum_coar.coar._budget.warn_large_default`), the options resolved."""
        resolved = resolve_options(options, self.options, **keywords)
        N = self.components.n_components
        masks = default_n_masks(n_masks, N)
        if n_masks is None and masks > LARGE_DEFAULT_MASKS:
            inputs, _, extra = split_batch(next(iter(data)), resolved.batch_fn)
            warn_large_default(None, N, masks, None, self.forward_func, inputs, extra)
        return masks, resolved

    def collect(self, data: Iterable[Any], store: Union[MaskOutputStore, PathLike, None] = None,
                *, n_masks: Optional[int] = None, ablation_fraction: Optional[float] = None,
                sampler: Sampler = "bernoulli", output: OutputLike = None, seed: int = 0,
                rows: RowSelection = None,
                ablation: Union[str, AblationStrategy, None] = None,
                perturbations_per_eval: Optional[int] = None, max_rows: Optional[int] = None,
                chunk_rows: Optional[int] = None, batch_fn: Optional[BatchFn] = None,
                max_store_bytes: Optional[int] = None, show_progress: Optional[bool] = None,
                options: Optional[CollectionOptions] = None) -> MaskOutputStore:
        """Collect masks and outputs over ``data`` into ``store`` (see
        :func:`captum_coar.coar.collection.collect`); resumes when the store holds partial
        data. ``ablation`` defaults to the estimator's."""
        n_masks, options = self._call(
            n_masks, options, data, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
            chunk_rows=chunk_rows, batch_fn=batch_fn, max_store_bytes=max_store_bytes,
            show_progress=show_progress)
        return collection.collect(
            self.forward_func, self.components, data, store, n_masks=n_masks,
            ablation_fraction=ablation_fraction, sampler=sampler,
            ablation=self.ablation if ablation is None else ablation, output=output, seed=seed,
            rows=rows, options=options)

    def collect_statistics(self, data: Iterable[Any], *, n_masks: Optional[int] = None,
                           ablation_fraction: Optional[float] = None,
                           sampler: Sampler = "bernoulli", output: OutputLike = None,
                           seed: int = 0, rows: RowSelection = None,
                           validation_fraction: float = 0.0,
                           ablation: Union[str, AblationStrategy, None] = None,
                           perturbations_per_eval: Optional[int] = None,
                           max_rows: Optional[int] = None, chunk_rows: Optional[int] = None,
                           batch_fn: Optional[BatchFn] = None,
                           dtype: Optional[torch.dtype] = None,
                           show_progress: Optional[bool] = None,
                           options: Optional[CollectionOptions] = None,
                           prior: Optional[bool] = None) -> CollectedStatistics:
        """Sufficient statistics over ``data`` without raw storage (see
        :func:`captum_coar.coar.collection.collect_statistics`). ``ablation`` defaults to the
        estimator's. ``prior``: compute the default fit's prior (None: when the default rule
        uses one for these training rows; see the module docstring)."""
        n_masks, options = self._call(
            n_masks, options, data, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
            chunk_rows=chunk_rows, batch_fn=batch_fn, dtype=dtype, show_progress=show_progress)
        ablation = self.ablation if ablation is None else ablation
        stats = collection.collect_statistics(
            self.forward_func, self.components, data, n_masks=n_masks,
            ablation_fraction=ablation_fraction, sampler=sampler, ablation=ablation,
            output=output, seed=seed, rows=rows, validation_fraction=validation_fraction,
            options=options)
        n_train = n_masks - validation_split(n_masks, validation_fraction)
        if prior or (prior is None and default_solver(n_train, self.components.n_components)
                     == "eb_ridge"):
            stats.prior = prior_or_none(self.forward_func, self.components, ablation, data,
                                        output, options.batch_fn)
        return stats

    def collect_shard(self, data: Any, *, directory: PathLike, shard: int, n_shards: int,
                      n_masks: Optional[int] = None, rows: RowSelection = None,
                      ablation_fraction: Optional[float] = None, sampler: Sampler = "bernoulli",
                      output: OutputLike = None, seed: int = 0,
                      perturbations_per_eval: Optional[int] = None,
                      max_rows: Optional[int] = None, chunk_rows: Optional[int] = None,
                      batch_fn: Optional[BatchFn] = None, max_store_bytes: Optional[int] = None,
                      show_progress: Optional[bool] = None,
                      options: Optional[CollectionOptions] = None) -> MemmapStore:
        """Shard ``shard`` of ``n_shards`` into ``directory`` (see
        :func:`captum_coar.coar.shards.collect_shard`)."""
        n_masks, options = self._call(
            n_masks, options, data, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
            chunk_rows=chunk_rows, batch_fn=batch_fn, max_store_bytes=max_store_bytes,
            show_progress=show_progress)
        return shards.collect_shard(
            self.forward_func, self.components, data, directory=directory, n_masks=n_masks,
            shard=shard, n_shards=n_shards, rows=rows, ablation=self.ablation,
            ablation_fraction=ablation_fraction, sampler=sampler, output=output, seed=seed,
            options=options)

    def collect_statistics_shard(self, data: Any, *, shard: int, n_shards: int,
                                 n_masks: Optional[int] = None, rows: RowSelection = None,
                                 ablation_fraction: Optional[float] = None,
                                 sampler: Sampler = "bernoulli", output: OutputLike = None,
                                 seed: int = 0, validation_fraction: float = 0.0,
                                 perturbations_per_eval: Optional[int] = None,
                                 max_rows: Optional[int] = None, chunk_rows: Optional[int] = None,
                                 batch_fn: Optional[BatchFn] = None,
                                 dtype: Optional[torch.dtype] = None,
                                 show_progress: Optional[bool] = None,
                                 options: Optional[CollectionOptions] = None
                                 ) -> CollectedStatistics:
        """Statistics of shard ``shard`` of ``n_shards`` (see
        :func:`captum_coar.coar.shards.collect_statistics_shard`)."""
        n_masks, options = self._call(
            n_masks, options, data, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
            chunk_rows=chunk_rows, batch_fn=batch_fn, dtype=dtype, show_progress=show_progress)
        return shards.collect_statistics_shard(
            self.forward_func, self.components, data, n_masks=n_masks, shard=shard,
            n_shards=n_shards, rows=rows, ablation=self.ablation,
            ablation_fraction=ablation_fraction, sampler=sampler, output=output, seed=seed,
            validation_fraction=validation_fraction, options=options)

    def collect_distributed(self, data: Any, *, directory: PathLike,
                            n_masks: Optional[int] = None, rows: RowSelection = None,
                            ablation_fraction: Optional[float] = None,
                            sampler: Sampler = "bernoulli", output: OutputLike = None,
                            seed: int = 0, perturbations_per_eval: Optional[int] = None,
                            max_rows: Optional[int] = None, chunk_rows: Optional[int] = None,
                            batch_fn: Optional[BatchFn] = None,
                            max_store_bytes: Optional[int] = None,
                            show_progress: Optional[bool] = None, group: Any = None,
                            options: Optional[CollectionOptions] = None) -> MemmapStore:
        """This rank's shard of a collection split over a process group (see
        :func:`captum_coar.coar.distributed.collect_distributed`)."""
        n_masks, options = self._call(
            n_masks, options, data, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
            chunk_rows=chunk_rows, batch_fn=batch_fn, max_store_bytes=max_store_bytes,
            show_progress=show_progress)
        return distributed.collect_distributed(
            self.forward_func, self.components, data, directory=directory, n_masks=n_masks,
            rows=rows, ablation=self.ablation, ablation_fraction=ablation_fraction,
            sampler=sampler, output=output, seed=seed, group=group, options=options)

    def collect_statistics_distributed(
            self, data: Any, *, n_masks: Optional[int] = None, rows: RowSelection = None,
            ablation_fraction: Optional[float] = None, sampler: Sampler = "bernoulli",
            output: OutputLike = None, seed: int = 0, validation_fraction: float = 0.0,
            perturbations_per_eval: Optional[int] = None, max_rows: Optional[int] = None,
            chunk_rows: Optional[int] = None, batch_fn: Optional[BatchFn] = None,
            dtype: Optional[torch.dtype] = None, show_progress: Optional[bool] = None,
            verify: bool = True, group: Any = None,
            options: Optional[CollectionOptions] = None) -> CollectedStatistics:
        """Statistics summed over a process group (see
        :func:`captum_coar.coar.distributed.collect_statistics_distributed`)."""
        n_masks, options = self._call(
            n_masks, options, data, perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
            chunk_rows=chunk_rows, batch_fn=batch_fn, dtype=dtype, show_progress=show_progress)
        return distributed.collect_statistics_distributed(
            self.forward_func, self.components, data, n_masks=n_masks, rows=rows,
            ablation=self.ablation, ablation_fraction=ablation_fraction, sampler=sampler,
            output=output, seed=seed, validation_fraction=validation_fraction, verify=verify,
            group=group, options=options)
