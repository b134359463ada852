"""Fingerprints: short hashes that identify a model's state and a stream of data batches.

Contract
--------
:func:`model_fingerprint` hashes the names, shapes, dtypes and values of every entry of a
model's ``state_dict()`` (parameters and buffers, e.g. BatchNorm running statistics), so two
models give the same fingerprint exactly when they compute the same function with the same
architecture names; inside :func:`fingerprints_reused` (the rounds of one adaptive collection)
each model is hashed once. :func:`tensor_fingerprint` hashes any nested structure of tensors
(tuples, lists, dicts, None, numbers, strings) by dtype, shape and bytes; collection uses it
to check that a data loader yields the same batches on every pass and across resumed runs.
Hashes are BLAKE2b hex strings (16 characters); they are deterministic across processes and
machines for the same bytes. Tensors on an accelerator are copied to the CPU to be hashed.

:func:`scan_data` reads a stream of ``(inputs, target, additional_forward_args)`` batches once
and returns a :class:`DataScan` (batch sizes, per-batch fingerprints, a fingerprint of the
whole stream, the first batch whose target holds fractional numbers); :meth:`DataScan.verify` checks a later pass against it, and
:func:`check_reiterable` refuses one-shot iterators and shuffling ``DataLoader`` objects.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["model_fingerprint", "tensor_fingerprint", "DataScan", "scan_data", "check_reiterable",
           "fingerprints_reused"]

_DIGEST_SIZE = 8
_REUSED: Optional[Dict[int, Tuple[nn.Module, str]]] = None


def _update_with_tensor(h: Any, tensor: Tensor) -> None:
    t = tensor.detach()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel() == 0:
        return
    t = t.to("cpu").contiguous().reshape(-1)
    if t.dtype.is_complex:
        t = torch.view_as_real(t).reshape(-1)
    h.update(t.view(torch.uint8).numpy().tobytes())


def _update(h: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        _update_with_tensor(h, value)
    elif isinstance(value, (tuple, list)):
        h.update(f"seq{len(value)}(".encode())
        for item in value:
            _update(h, item)
        h.update(b")")
    elif isinstance(value, dict):
        h.update(f"map{len(value)}(".encode())
        for key in sorted(value, key=str):
            h.update(f"{key!s}=".encode())
            _update(h, value[key])
        h.update(b")")
    elif value is None or isinstance(value, (bool, int, float, str)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    elif hasattr(value, "__array__"):
        _update_with_tensor(h, torch.as_tensor(value))
    else:
        raise TypeError(
            f"cannot fingerprint a value of type {type(value).__name__}; batches must hold"
            " tensors, arrays, numbers, strings or None (in tuples, lists or dicts)"
        )


def tensor_fingerprint(value: Any) -> str:
    """Hash of a (nested) structure of tensors: dtype, shape and bytes of every tensor."""
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    _update(h, value)
    return h.hexdigest()


@contextmanager
def fingerprints_reused() -> Iterator[None]:
    """Inside the block, :func:`model_fingerprint` hashes each model once (by object; the
    caller guarantees the weights do not change in between, e.g. the rounds of one adaptive
    collection)."""
    global _REUSED
    outer, _REUSED = _REUSED, ({} if _REUSED is None else _REUSED)
    try:
        yield
    finally:
        _REUSED = outer


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the names, shapes, dtypes and values of ``model.state_dict()`` (once per model
    inside :func:`fingerprints_reused`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_fingerprint needs an nn.Module, got {type(model).__name__}")
    if _REUSED is not None and id(model) in _REUSED:
        return _REUSED[id(model)][1]
    digest = _hash_model(model)
    if _REUSED is not None:
        _REUSED[id(model)] = (model, digest)  # the model is kept, so its id is not reused
    return digest


def _hash_model(model: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    h.update(type(model).__name__.encode())
    for name, value in model.state_dict().items():
        h.update(f"|{name}|".encode())
        if isinstance(value, Tensor):
            _update_with_tensor(h, value)
        else:  # extra state objects
            h.update(repr(value).encode())
    return h.hexdigest()


def check_reiterable(data: Any) -> None:
    """Refuse one-shot iterators and shuffling DataLoaders (collection passes several times)."""
    if iter(data) is data:
        raise TypeError(
            "data must be re-iterable (a DataLoader or a list of batches): collection passes"
            " over it once per chunk of mask rows; got a one-shot iterator"
            f" ({type(data).__name__})"
        )
    if isinstance(getattr(data, "sampler", None), torch.utils.data.RandomSampler):
        raise ValueError(
            "the DataLoader shuffles (shuffle=True); collection passes over the data several"
            " times and needs the same order every time: use shuffle=False"
        )


@dataclass
class DataScan:
    """What one pass over the data saw: batch sizes, fingerprints, whether targets exist."""

    batch_sizes: List[int]
    fingerprints: Optional[List[str]]
    has_target: bool
    fractional_target_batch: Optional[int] = None  # first batch whose target has fractions

    @property
    def n_examples(self) -> int:
        return int(sum(self.batch_sizes))

    @property
    def data_fingerprint(self) -> Optional[str]:
        """Hash of the whole stream (None when batches were not fingerprinted)."""
        if self.fingerprints is None:
            return None
        return tensor_fingerprint([self.batch_sizes, self.fingerprints])

    def verify(self, index: int, size: int, batch: Tuple[Any, ...], fingerprint: bool) -> None:
        """Check batch ``index`` of a later pass (its size; its bytes when ``fingerprint``)."""
        if index >= len(self.batch_sizes) or size != self.batch_sizes[index]:
            seen = self.batch_sizes[index] if index < len(self.batch_sizes) else "no such batch"
            raise ValueError(
                f"batch {index} has {size} examples on this pass but the data held {seen} when"
                " it was first read; the data must yield the same batches on every pass"
            )
        if fingerprint and self.fingerprints is not None and \
                tensor_fingerprint(_payload(batch)) != self.fingerprints[index]:
            raise ValueError(
                f"batch {index} holds different data on this pass than when it was first read"
                " (shuffling or random augmentation?); COAR needs the same examples on every pass"
            )


def scan_data(batches: Iterable[Tuple[Tuple[Tensor, ...], Any, Tuple[Any, ...]]],
              fingerprints: bool) -> DataScan:
    """One pass over ``(inputs, target, additional_forward_args)`` batches."""
    sizes: List[int] = []
    prints: List[str] = []
    has_target = True
    fractional: Optional[int] = None
    for index, batch in enumerate(batches):
        inputs, target, extra = batch
        has_target = has_target and target is not None
        if fractional is None and _has_fractions(target):
            fractional = index
        sizes.append(int(inputs[0].shape[0]))
        if fingerprints:
            prints.append(tensor_fingerprint(_payload(batch)))
    if not sizes or sum(sizes) == 0:
        raise ValueError("data yielded no examples")
    return DataScan(sizes, prints if fingerprints else None, has_target, fractional)


def _has_fractions(target: Any) -> bool:
    """Whether ``target`` holds numbers that are not whole (1.7; never truncated silently)."""
    if target is None or isinstance(target, (bool, int, str)):
        return False
    try:
        t = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError):
        return False
    return bool(t.is_floating_point() and t.numel() and not bool((t == t.round()).all()))


def _payload(batch: Any) -> List[Any]:
    """The data that identifies a batch: ``[inputs, target, extra]``, plus its baselines when
    it carries them (:class:`captum_coar.coar._batches.PairedBatch`)."""
    payload = getattr(batch, "payload", None)
    return payload() if callable(payload) else list(batch)
