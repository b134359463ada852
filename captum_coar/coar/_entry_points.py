"""Thin entry points of :class:`~captum_coar.coar.ComponentAblationRegression` into the
collection infrastructure: shards and ``torch.distributed`` process groups.

Contract
--------
:class:`CollectionEntryPoints` is a mixin for a class with ``forward_func``, ``components`` and
``ablation`` attributes. Each method passes them, plus every option by name, to the function of
the same name in :mod:`captum_coar.coar.shards` or :mod:`captum_coar.coar.distributed`; the
dependency runs from the estimator to the infrastructure, never back. ``n_masks`` defaults to
``10 * n_components`` as in ``attribute``; every other required argument is keyword-only and
required.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import torch

from ..ablation import AblationStrategy
from ..components import ComponentSet
from ..sampling import MaskSampler
from ..stores.base import RowSelection
from ..stores.memmap import MemmapStore
from . import distributed, shards
from ._batches import BatchFn
from .collection import CollectedStatistics, OutputLike

__all__ = ["CollectionEntryPoints"]

PathLike = Union[str, "os.PathLike[str]"]


class CollectionEntryPoints:
    """``collect_shard``, ``collect_statistics_shard`` and ``collect_distributed`` as methods."""

    forward_func: Callable[..., Any]
    components: ComponentSet
    ablation: Union[str, AblationStrategy]

    def _n_masks(self, n_masks: Optional[int]) -> int:
        return 10 * self.components.n_components if n_masks is None else n_masks

    def collect_shard(self, data: Any, *, directory: PathLike, shard: int, n_shards: int,
                      n_masks: Optional[int] = None, rows: RowSelection = None,
                      ablation_fraction: Optional[float] = None,
                      sampler: Union[str, MaskSampler] = "bernoulli", output: OutputLike = None,
                      seed: int = 0, perturbations_per_eval: Optional[int] = None,
                      max_rows: Optional[int] = None, chunk_rows: Optional[int] = None,
                      batch_fn: Optional[BatchFn] = None, max_store_bytes: Optional[int] = None,
                      show_progress: bool = False) -> MemmapStore:
        """Shard ``shard`` of ``n_shards`` into ``directory`` (see
        :func:`captum_coar.coar.shards.collect_shard`)."""
        return shards.collect_shard(
            self.forward_func, self.components, data, directory=directory,
            n_masks=self._n_masks(n_masks), shard=shard, n_shards=n_shards, rows=rows,
            ablation=self.ablation, ablation_fraction=ablation_fraction, sampler=sampler,
            output=output, seed=seed, perturbations_per_eval=perturbations_per_eval,
            max_rows=max_rows, chunk_rows=chunk_rows, batch_fn=batch_fn,
            max_store_bytes=max_store_bytes, show_progress=show_progress)

    def collect_statistics_shard(self, data: Any, *, shard: int, n_shards: int,
                                 n_masks: Optional[int] = None, rows: RowSelection = None,
                                 ablation_fraction: Optional[float] = None,
                                 sampler: Union[str, MaskSampler] = "bernoulli",
                                 output: OutputLike = None, seed: int = 0,
                                 validation_fraction: float = 0.0,
                                 perturbations_per_eval: Optional[int] = None,
                                 max_rows: Optional[int] = None, chunk_rows: Optional[int] = None,
                                 batch_fn: Optional[BatchFn] = None,
                                 dtype: torch.dtype = torch.float64,
                                 show_progress: bool = False) -> CollectedStatistics:
        """Statistics of shard ``shard`` of ``n_shards`` (see
        :func:`captum_coar.coar.shards.collect_statistics_shard`)."""
        return shards.collect_statistics_shard(
            self.forward_func, self.components, data, n_masks=self._n_masks(n_masks),
            shard=shard, n_shards=n_shards, rows=rows, ablation=self.ablation,
            ablation_fraction=ablation_fraction, sampler=sampler, output=output, seed=seed,
            validation_fraction=validation_fraction, perturbations_per_eval=perturbations_per_eval,
            max_rows=max_rows, chunk_rows=chunk_rows, batch_fn=batch_fn, dtype=dtype,
            show_progress=show_progress)

    def collect_distributed(self, data: Any, *, directory: PathLike,
                            n_masks: Optional[int] = None, rows: RowSelection = None,
                            ablation_fraction: Optional[float] = None,
                            sampler: Union[str, MaskSampler] = "bernoulli",
                            output: OutputLike = None, seed: int = 0,
                            perturbations_per_eval: Optional[int] = None,
                            max_rows: Optional[int] = None, chunk_rows: Optional[int] = None,
                            batch_fn: Optional[BatchFn] = None,
                            max_store_bytes: Optional[int] = None, show_progress: bool = False,
                            group: Any = None) -> MemmapStore:
        """This rank's shard of a collection split over a process group (see
        :func:`captum_coar.coar.distributed.collect_distributed`)."""
        return distributed.collect_distributed(
            self.forward_func, self.components, data, directory=directory,
            n_masks=self._n_masks(n_masks), rows=rows, ablation=self.ablation,
            ablation_fraction=ablation_fraction, sampler=sampler, output=output, seed=seed,
            perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
            chunk_rows=chunk_rows, batch_fn=batch_fn, max_store_bytes=max_store_bytes,
            show_progress=show_progress, group=group)

    def collect_statistics_distributed(
            self, data: Any, *, n_masks: Optional[int] = None, rows: RowSelection = None,
            ablation_fraction: Optional[float] = None,
            sampler: Union[str, MaskSampler] = "bernoulli", output: OutputLike = None,
            seed: int = 0, validation_fraction: float = 0.0,
            perturbations_per_eval: Optional[int] = None, max_rows: Optional[int] = None,
            chunk_rows: Optional[int] = None, batch_fn: Optional[BatchFn] = None,
            dtype: torch.dtype = torch.float64, show_progress: bool = False,
            verify: bool = True, group: Any = None) -> CollectedStatistics:
        """Statistics summed over a process group (see
        :func:`captum_coar.coar.distributed.collect_statistics_distributed`)."""
        return distributed.collect_statistics_distributed(
            self.forward_func, self.components, data, n_masks=self._n_masks(n_masks), rows=rows,
            ablation=self.ablation, ablation_fraction=ablation_fraction, sampler=sampler,
            output=output, seed=seed, validation_fraction=validation_fraction,
            perturbations_per_eval=perturbations_per_eval, max_rows=max_rows,
            chunk_rows=chunk_rows, batch_fn=batch_fn, dtype=dtype, show_progress=show_progress,
            verify=verify, group=group)
