"""Fingerprints: short hashes that identify a model's state and a stream of data batches.

Contract
--------
:func:`model_fingerprint` hashes the names, shapes, dtypes and values of every entry of a
model's ``state_dict()`` (parameters and buffers, e.g. BatchNorm running statistics), so two
models give the same fingerprint exactly when they compute the same function with the same
architecture names. :func:`tensor_fingerprint` hashes any nested structure of tensors
(tuples, lists, dicts, None, numbers, strings) by dtype, shape and bytes; collection uses it
to check that a data loader yields the same batches on every pass and across resumed runs.
Hashes are BLAKE2b hex strings (16 characters); they are deterministic across processes and
machines for the same bytes. Tensors on an accelerator are copied to the CPU to be hashed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["model_fingerprint", "tensor_fingerprint"]

_DIGEST_SIZE = 8


def _update_with_tensor(h: "hashlib._Hash", tensor: Tensor) -> None:
    t = tensor.detach()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel() == 0:
        return
    t = t.to("cpu").contiguous().reshape(-1)
    if t.dtype.is_complex:
        t = torch.view_as_real(t).reshape(-1)
    h.update(t.view(torch.uint8).numpy().tobytes())


def _update(h: "hashlib._Hash", value: Any) -> None:
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


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the names, shapes, dtypes and values of ``model.state_dict()``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_fingerprint needs an nn.Module, got {type(model).__name__}")
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    h.update(type(model).__name__.encode())
    for name, value in model.state_dict().items():
        h.update(f"|{name}|".encode())
        if isinstance(value, Tensor):
            _update_with_tensor(h, value)
        else:  # extra state objects
            h.update(repr(value).encode())
    return h.hexdigest()
