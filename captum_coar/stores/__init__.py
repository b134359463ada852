"""Stores of raw COAR data (keep masks and outputs), resumable row by row and self-verifying.

Implementations: :class:`InMemoryStore` (RAM) and :class:`MemmapStore` (memory-mapped files
and JSON metadata in a directory). See :mod:`captum_coar.stores.base` for the contract. The
identity fields a store records are defined once, in :mod:`captum_coar.coar._identity`
(``IDENTITY_FIELDS``); this package imports nothing from the collection layer above it.
"""

from ._integrity import StoreReport
from .base import FORMAT_VERSION, MaskOutputStore, pack_masks, unpack_masks
from .memmap import MemmapStore
from .memory import InMemoryStore

__all__ = ["MaskOutputStore", "InMemoryStore", "MemmapStore", "StoreReport", "FORMAT_VERSION",
           "pack_masks", "unpack_masks"]
