"""Data for collection: every batch read as ``(inputs, target, additional_forward_args)``.

Contract
--------
Collection passes over a re-iterable of batches (a ``DataLoader`` without shuffling, or a
list of batches). :func:`split_batch` reads one batch: ``inputs``, ``(inputs, target)`` or
``(inputs, target, *additional_forward_args)`` (``inputs`` a tensor or a tuple of tensors), or
anything ``batch_fn`` maps to that, as ``(inputs tuple, target, additional_forward_args
tuple)``. :func:`tensor_batches` makes such a list of batches from tensors held in memory
(rows sliced as :func:`captum_coar._inputs.example_batches` does). :func:`read_data` passes over
the data once: batch sizes and fingerprints (:func:`captum_coar.coar._fingerprint.scan_data`)
and the first batch (for the identity's probe).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

from torch import Tensor

from .._checks import check_int
from .._inputs import as_tuple, example_batches
from .._preflight import check_batch
from ._fingerprint import DataScan, check_reiterable, scan_data

__all__ = ["Batch", "BatchFn", "split_batch", "tensor_batches", "read_data"]

Batch = Tuple[Tuple[Tensor, ...], Any, Tuple[Any, ...]]
BatchFn = Callable[[Any], Any]


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
    inputs_t = check_batch("tensor_batches", inputs)
    n = inputs_t[0].shape[0]
    size = n if batch_size is None else check_int("batch_size", batch_size, minimum=1)
    return [(batch, batch_target, extra) for _, batch, extra, batch_target
            in example_batches(inputs_t, additional_forward_args, target, size)]


def read_data(data: Iterable[Any], batch_fn: Optional[BatchFn]) -> Tuple[DataScan, Batch]:
    """One pass over re-iterable ``data``: sizes and fingerprints of every batch, the first batch."""
    check_reiterable(data)
    first: List[Batch] = []

    def batches() -> Iterable[Batch]:
        for item in data:
            batch = split_batch(item, batch_fn)
            if not first:
                first.append(batch)
            yield batch

    scan = scan_data(batches(), fingerprints=True)
    return scan, first[0]
