"""Stores of raw COAR data (keep masks and outputs), resumable row by row.

Implementations: :class:`InMemoryStore` (RAM) and :class:`MemmapStore` (memory-mapped files
and JSON metadata in a directory). See :mod:`captum_coar.stores.base` for the contract.
"""

from .base import FORMAT_VERSION, IDENTITY_FIELDS, MaskOutputStore, pack_masks, unpack_masks
from .memmap import MemmapStore
from .memory import InMemoryStore

__all__ = ["MaskOutputStore", "InMemoryStore", "MemmapStore", "IDENTITY_FIELDS",
           "FORMAT_VERSION", "pack_masks", "unpack_masks"]
