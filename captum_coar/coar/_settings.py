"""Resolved settings of one collection, and the row split, device and sizes they imply.

Contract
--------
:meth:`CollectionSettings.build` resolves and validates everything that makes collected data
what it is (components, forward function, mask sampler, ablation strategy, output function,
seed, number of masks) and carries the :class:`~captum_coar.coar._options.CollectionOptions`
(how it runs, checked when made), before any forward pass, with messages that say what was
given and what is allowed. :func:`default_n_masks` is the one default of ``n_masks``
(``10 * N``). The sampler and its fraction follow one rule: a
sampler given by name takes ``ablation_fraction`` (default :data:`DEFAULT_ABLATION_FRACTION`);
a sampler object carries its own, and an ``ablation_fraction`` given beside it must equal it
(conflicting values are an error). What identifies the collected data is defined in
:mod:`captum_coar.coar._identity`; :meth:`~CollectionSettings.extras` are the descriptive
fields a store records beside it. :meth:`~CollectionSettings.chunk_size` gives the mask rows per
pass over the data, :func:`check_store_size` the upper bound on ``n_masks`` a store's memory or
disk allows (refused with the estimate unless the caller raises the bound),
:func:`validation_split` how many of the last mask rows are held out, and :func:`stats_device`
where float64 statistics live.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import Tensor

from .._checks import check_callable, check_float, check_instance, check_int, check_positive_int
from .._modules import model_device
from .._preflight import Preflight
from .._version import __version__
from ..ablation import AblationStrategy, resolve_ablation
from ..components import ComponentSet
from ..outputs import CallableOutput, OutputFunction, resolve_output
from ..sampling import BLOCK_ROWS, MaskSampler, resolve_sampler
from ._fingerprint import DataScan
from ._identity import describe_callable
from ._options import CollectionOptions

__all__ = ["CollectionSettings", "validation_split", "stats_device", "check_store_size",
           "store_bytes", "DEFAULT_ABLATION_FRACTION", "default_n_masks",
           "MASKS_PER_COMPONENT"]

#: The paper's ablation fraction, used when the sampler is given by name without a fraction.
DEFAULT_ABLATION_FRACTION = 0.05

#: ``n_masks=None`` means this many masks per component.
MASKS_PER_COMPONENT = 10


def default_n_masks(n_masks: Optional[int], n_components: int) -> int:
    """``n_masks`` itself, or for None the default ``10 * N`` (:data:`MASKS_PER_COMPONENT`)."""
    return MASKS_PER_COMPONENT * n_components if n_masks is None else n_masks

_CHUNK_ELEMENTS = 1 << 26  # outputs held per chunk (rows x examples) by default


@dataclass
class CollectionSettings:
    """Resolved settings of one collection (what makes its data what it is)."""

    components: ComponentSet
    forward_func: Callable[..., Any]
    sampler: MaskSampler
    ablation: AblationStrategy
    output: OutputFunction
    seed: int
    n_masks: int
    #: how the collection runs (passed on unchanged)
    options: CollectionOptions = field(default_factory=CollectionOptions)
    #: the preflight's findings on the first batch (targets of later batches are checked)
    preflight: Optional[Preflight] = None

    @classmethod
    def build(cls, forward_func: Callable[..., Any], components: ComponentSet, n_masks: int,
              ablation_fraction: Optional[float] = None,
              sampler: Union[str, MaskSampler] = "bernoulli",
              ablation: Union[str, AblationStrategy] = "weights",
              output: Union[None, str, OutputFunction, Callable[..., Tensor]] = None,
              has_target: bool = True, seed: int = 0,
              options: Optional[CollectionOptions] = None,
              fractional_target_batch: Optional[int] = None) -> "CollectionSettings":
        """Resolve and validate every setting (messages say what was given and allowed)."""
        check_instance("components", components, ComponentSet, "a ComponentSet")
        check_callable("forward_func", forward_func)
        n_masks = check_positive_int("n_masks", n_masks)
        if 8 * n_masks > machine_memory():  # the row index alone (int64 per mask row)
            raise ValueError(
                f"n_masks={n_masks} needs {_size(8 * n_masks)} of memory for the index of mask"
                f" rows alone, more than this machine's {_size(machine_memory())}; lower"
                " n_masks (the paper uses 50,000 to 200,000)")
        if ablation_fraction is None and not isinstance(sampler, MaskSampler):
            ablation_fraction = DEFAULT_ABLATION_FRACTION
        resolved = resolve_sampler(sampler, ablation_fraction)  # conflicting values raise
        resolved.sample(components.n_components, 0, 0, 0)  # validates alpha (and N) up front
        output_fn = resolve_output(output, "target" if has_target else None)
        if not has_target and output_fn.needs_target:
            raise ValueError(
                f"output={output_fn.name!r} needs a target (e.g. the class index per example);"
                " pass target=... (or batches of (inputs, target)), or use output='logit' for"
                " a model with one output per example, or a callable"
            )
        if fractional_target_batch is not None and not isinstance(output_fn, CallableOutput):
            raise ValueError(
                f"`target` must be whole numbers (class indices or token ids) for"
                f" output={output_fn.name!r}; got fractional values in batch"
                f" {fractional_target_batch}. Fractions are never truncated; pass integer"
                " targets, or a callable output that takes real-valued targets")
        check_int("seed", seed)
        options = CollectionOptions() if options is None else check_instance(
            "options", options, CollectionOptions, "a CollectionOptions or None")
        return cls(components, forward_func, resolved, resolve_ablation(ablation), output_fn,
                   int(seed), n_masks, options)

    def chunk_size(self, n_examples: int) -> int:
        """Mask rows per pass over the data (default: bounded memory, multiple of 64)."""
        if self.options.chunk_rows is not None:
            return self.options.chunk_rows
        size = min(8192, max(BLOCK_ROWS, _CHUNK_ELEMENTS // max(1, n_examples)))
        return max(BLOCK_ROWS, size // BLOCK_ROWS * BLOCK_ROWS)

    def extras(self, scan: DataScan) -> Dict[str, Any]:
        """Descriptive store metadata beside the identity (never compared)."""
        return {
            "batch_sizes": scan.batch_sizes,
            "components": self.components.describe(),
            "forward": describe_callable(self.forward_func),
            "captum_coar_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def store_bytes(n_masks: int, n_components: int, n_examples: int, itemsize: int = 4) -> int:
    """Bytes a store of these sizes holds: packed masks, outputs, progress and checksums."""
    return int(n_masks) * ((int(n_components) + 7) // 8 + int(n_examples) * itemsize + 8 + 4)


def machine_memory() -> int:
    """Physical memory of this machine in bytes (1 TiB when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_store_size(n_masks: int, n_components: int, n_examples: int, itemsize: int,
                     available: int, where: str, max_store_bytes: Optional[int]) -> int:
    """The store's size in bytes; ``ValueError`` stating it when it exceeds the bound.

    The bound is ``max_store_bytes`` when the caller gives one, else ``available`` (the free
    disk space at the store's directory, or the machine's memory for an in-memory store).
    """
    needed = store_bytes(n_masks, n_components, n_examples, itemsize)
    bound = available if max_store_bytes is None else check_int("max_store_bytes",
                                                                max_store_bytes, minimum=1)
    assert bound is not None
    if needed > bound:
        source = f"max_store_bytes={bound}" if max_store_bytes is not None else \
            f"the {_size(available)} available {where}"
        raise ValueError(
            f"n_masks={n_masks} needs a store of {_size(needed)} ({n_masks} rows x"
            f" ({(n_components + 7) // 8} bytes of packed mask + {n_examples} outputs x"
            f" {itemsize} bytes + 12 bytes of progress and checksum)), more than {source}."
            " Lower n_masks, use collect_statistics (its memory does not grow with n_masks),"
            + (" collect into a directory path (a memory-mapped store on disk)," if "memory" in
               where else "") + " or pass max_store_bytes=<bytes> to raise the bound")
    return needed


def stats_device(components: ComponentSet) -> torch.device:
    """Where float64 statistics live: the model's device, unless it lacks float64 (MPS)."""
    device = model_device(components.model)
    return torch.device("cpu") if device.type == "mps" else device


def validation_split(n_masks: int, validation_fraction: float) -> int:
    """Rows held out for validation: the LAST ``round(fraction * n_masks)`` rows (>= 1 if > 0)."""
    fraction = check_float("validation_fraction", validation_fraction, 0.0, 1.0, high_open=True)
    if fraction == 0:
        return 0
    return min(n_masks - 1, max(1, int(round(fraction * n_masks))))
