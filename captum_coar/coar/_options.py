"""How a collection runs: the ONE options object of every collection entry point.

Contract
--------
:class:`CollectionOptions` holds what changes how a collection runs but never what it collects
(none of it enters the collection's identity, :mod:`captum_coar.coar._identity`): masks per
forward pass, the row budget of a pass, mask rows per pass over the data, the function that
reads a batch, the dtype of sufficient statistics, the bound on a new store's size and the
progress bar. Each default is written here and nowhere else; fields are checked when the
object is made (the messages of :mod:`captum_coar._checks`).

Every collection function and estimator method takes ``options=`` and, for the fields that
existed as keyword arguments before it, those keywords too. :func:`resolve_options` turns both
into one object, once, at the public entry point; the layers below (shards, process groups,
the collection loop) receive that object and pass it on unchanged. A keyword given beside
``options`` must agree with it (a different value is an error); a keyword alone changes that
field of ``base`` (the estimator's own options, or the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional

import torch

from .._checks import check_callable, check_instance, check_optional_positive_int, fail
from ._batches import BatchFn

__all__ = ["CollectionOptions", "resolve_options", "OPTION_NAMES"]


@dataclass(frozen=True)
class CollectionOptions:
    """How a collection runs (batching, chunking, dtype, progress, batch function).

    Attributes:
        perturbations_per_eval: masks per forward pass (default: ``max_rows // batch``).
        max_rows: forward-pass row budget used when ``perturbations_per_eval`` is None
            (default: 128 rows on a CPU, 4096 on an accelerator; see
            ``captum_coar._engine.default_max_rows``).
        chunk_rows: mask rows per pass over the data (default: about 2**26 outputs per chunk,
            a multiple of 64).
        batch_fn: maps each item of the data to a batch (default: items are batches).
        dtype: dtype of sufficient statistics (``collect_statistics`` and its shard and
            process-group forms; default float64).
        max_store_bytes: the largest new store allowed (``collect`` and its forms; default:
            the free disk space, or the machine's memory for an in-memory store).
        show_progress: a tqdm bar: True (always), False (never) or None (default: once the
            run is projected to take more than 10 s, where a terminal or notebook shows it and
            not in CI; :class:`~captum_coar.coar._budget.AutoProgress`).
    """

    perturbations_per_eval: Optional[int] = None
    max_rows: Optional[int] = None
    chunk_rows: Optional[int] = None
    batch_fn: Optional[BatchFn] = None
    dtype: torch.dtype = torch.float64
    max_store_bytes: Optional[int] = None
    show_progress: Optional[bool] = None

    def __post_init__(self) -> None:
        for name in ("perturbations_per_eval", "max_rows", "chunk_rows", "max_store_bytes"):
            check_optional_positive_int(name, getattr(self, name))
        if self.batch_fn is not None:
            check_callable("batch_fn", self.batch_fn)
        check_instance("dtype", self.dtype, torch.dtype, "a torch.dtype")
        if self.show_progress is not None and not isinstance(self.show_progress, bool):
            raise fail("show_progress", "True, False or None (automatic)", self.show_progress)


#: The fields of :class:`CollectionOptions`, in order.
OPTION_NAMES = tuple(f.name for f in fields(CollectionOptions))


def resolve_options(options: Optional[CollectionOptions],
                    base: Optional[CollectionOptions] = None,
                    **keywords: Any) -> CollectionOptions:
    """One :class:`CollectionOptions` from ``options`` and option keywords (None = not given).

    ``options`` (when given) replaces ``base`` (default: all defaults); a keyword given beside
    ``options`` must equal its field, a keyword alone sets that field.
    """
    unknown = sorted(set(keywords) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"unknown collection option(s) {unknown}; the options are"
                        f" {list(OPTION_NAMES)}")
    if options is not None:
        check_instance("options", options, CollectionOptions, "a CollectionOptions or None")
    given = {key: value for key, value in keywords.items() if value is not None}
    if options is None:
        start = base if base is not None else CollectionOptions()
        return replace(start, **given) if given else start
    for key, value in given.items():
        if value != getattr(options, key):
            raise fail(key, f"{getattr(options, key)!r} (the value in options=) or left out",
                       value, f"give {key} either as a keyword or in options=, not both")
    return options
