"""Stores of raw COAR data (keep masks and outputs), resumable row by row and self-verifying.

Implementations: :class:`InMemoryStore` (RAM) and :class:`MemmapStore` (memory-mapped files
and JSON metadata in a directory). See :mod:`captum_coar.stores.base` for the contract. The
identity fields a store records are defined once, in :mod:`captum_coar.coar._identity`
(``IDENTITY_FIELDS`` is still importable from here).
"""

from typing import Any

from ._integrity import StoreReport
from .base import FORMAT_VERSION, MaskOutputStore, pack_masks, unpack_masks
from .memmap import MemmapStore
from .memory import InMemoryStore

__all__ = ["MaskOutputStore", "InMemoryStore", "MemmapStore", "StoreReport", "IDENTITY_FIELDS",
           "FORMAT_VERSION", "pack_masks", "unpack_masks"]


def __getattr__(name: str) -> Any:
    if name == "IDENTITY_FIELDS":  # defined with the collection's identity (a higher layer)
        from ..coar._identity import IDENTITY_FIELDS

        return IDENTITY_FIELDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
