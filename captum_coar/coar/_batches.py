"""Data for collection: every batch read as ``(inputs, target, additional_forward_args)``.

Contract
--------
Collection passes over a re-iterable of batches (a ``DataLoader`` without shuffling, or a
list of batches). :func:`split_batch` reads one batch: ``inputs``, ``(inputs, target)`` or
``(inputs, target, *additional_forward_args)`` (``inputs`` a tensor or a tuple of tensors), or a mapping with the keys
``"inputs"``, ``"baselines"`` (paired reference inputs, optional), ``"target"`` and
``"additional_forward_args"`` (optional), or anything ``batch_fn`` maps to one of these, as a
:class:`PairedBatch`: the tuple ``(inputs tuple, target, additional_forward_args tuple)``
that also carries ``.baselines`` (a tuple shaped like the inputs, or None). Paired batches
make the collection patch from their baselines (:class:`captum_coar._pairing.BatchPatchAblation`). :func:`tensor_batches` makes such a list of batches from tensors held in memory
(rows sliced as :func:`captum_coar._inputs.example_batches` does). :func:`read_data` passes over
the data once: batch sizes and fingerprints (:func:`captum_coar.coar._fingerprint.scan_data`)
and the first batch (for the identity's probe).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple, Union

from torch import Tensor

from .._checks import check_int
from .._inputs import as_tuple, example_batches
from .._preflight import check_batch
from ._fingerprint import DataScan, check_reiterable, scan_data

__all__ = ["Batch", "BatchFn", "PairedBatch", "split_batch", "tensor_batches", "read_data"]

Batch = Tuple[Tuple[Tensor, ...], Any, Tuple[Any, ...]]
BatchFn = Callable[[Any], Any]
_KEYS = ("inputs", "baselines", "target", "additional_forward_args")


class PairedBatch(tuple):
    """``(inputs, target, additional_forward_args)`` with the batch's ``baselines`` (or None)."""

    baselines: Optional[Tuple[Tensor, ...]] = None

    def __new__(cls, inputs: Tuple[Tensor, ...], target: Any, extra: Tuple[Any, ...],
                baselines: Optional[Tuple[Tensor, ...]] = None) -> "PairedBatch":
        batch = super().__new__(cls, (inputs, target, extra))
        batch.baselines = baselines
        return batch

    def payload(self) -> List[Any]:
        """What identifies the batch's data: inputs, target, extra (and baselines)."""
        return list(self) + ([self.baselines] if self.baselines is not None else [])


def split_batch(batch: Any, batch_fn: Optional[BatchFn] = None) -> PairedBatch:
    """``(inputs tuple, target, additional_forward_args tuple)`` (and ``.baselines``) from one
    batch."""
    if batch_fn is not None:
        batch = batch_fn(batch)
    if isinstance(batch, Mapping):
        unknown = sorted(set(batch) - set(_KEYS))
        if unknown or "inputs" not in batch:
            raise ValueError(f"a batch given as a mapping needs the key 'inputs' and may hold"
                             f" {list(_KEYS[1:])}; got keys {sorted(batch)}")
        inputs = as_tuple(batch["inputs"])
        baselines = batch.get("baselines")
        return PairedBatch(inputs, batch.get("target"),
                           as_tuple(batch.get("additional_forward_args")),
                           None if baselines is None else as_tuple(baselines))
    if isinstance(batch, Tensor):
        return PairedBatch((batch,), None, ())
    if isinstance(batch, (tuple, list)) and batch:
        inputs = as_tuple(batch[0])
        if not inputs or not all(isinstance(x, Tensor) for x in inputs):
            raise TypeError("the first item of a batch must be a tensor or a tuple of tensors")
        target = batch[1] if len(batch) > 1 else None
        extra = as_tuple(batch[2]) if len(batch) == 3 and isinstance(batch[2], (tuple, list)) \
            else tuple(batch[2:])
        return PairedBatch(inputs, target, extra)
    raise TypeError(
        f"cannot read a batch of type {type(batch).__name__}; batches must be inputs, (inputs,"
        " target), (inputs, target, *additional_forward_args) or a mapping with 'inputs' (and"
        " 'baselines', 'target', 'additional_forward_args'); pass batch_fn=... to convert"
        " other formats"
    )


def tensor_batches(inputs: Union[Tensor, Tuple[Tensor, ...]], target: Any = None,
                   additional_forward_args: Any = None,
                   batch_size: Optional[int] = None, baselines: Any = None) -> List[Any]:
    """In-memory tensors as a list of ``(inputs, target, additional_forward_args)`` batches,
    or of mappings that also hold each batch's rows of the paired ``baselines``.

    Example:
        >>> import torch
        >>> from captum_coar import tensor_batches
        >>> x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
        >>> batches = tensor_batches(x, y, batch_size=2)
        >>> [len(inputs[0]) for inputs, target, extra in batches]
        [2, 2, 1]
        >>> paired = tensor_batches(x, y, batch_size=2, baselines=torch.zeros(5, 3))
        >>> sorted(paired[0]), paired[2]["baselines"][0].shape
        (['additional_forward_args', 'baselines', 'inputs', 'target'], torch.Size([1, 3]))
    """
    inputs_t = check_batch("tensor_batches", inputs)
    n = inputs_t[0].shape[0]
    size = n if batch_size is None else check_int("batch_size", batch_size, minimum=1)
    batches = example_batches(inputs_t, additional_forward_args, target, size)
    if baselines is None:
        return [(batch, batch_target, extra) for _, batch, extra, batch_target in batches]
    paired = as_tuple(baselines)
    if not all(isinstance(b, Tensor) and b.dim() > 0 and b.shape[0] == n for b in paired):
        raise ValueError(
            f"baselines must be tensors with the inputs' {n} rows (one paired reference per"
            f" example); got {[tuple(getattr(b, 'shape', ())) for b in paired]}")
    return [{"inputs": batch, "baselines": tuple(b[rows] for b in paired),
             "target": batch_target, "additional_forward_args": extra}
            for rows, batch, extra, batch_target in batches]


def read_data(data: Iterable[Any], batch_fn: Optional[BatchFn]) -> Tuple[DataScan, PairedBatch]:
    """One pass over re-iterable ``data``: sizes and fingerprints of every batch, the first batch."""
    check_reiterable(data)
    first: List[PairedBatch] = []

    def batches() -> Iterable[PairedBatch]:
        for item in data:
            batch = split_batch(item, batch_fn)
            if not first:
                first.append(batch)
            yield batch

    scan = scan_data(batches(), fingerprints=True)
    return scan, first[0]
