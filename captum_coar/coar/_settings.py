"""Resolved settings of one collection, and the row split and device they imply.

Contract
--------
:meth:`CollectionSettings.build` resolves and validates everything that makes collected data
what it is (components, forward function, mask sampler, ablation strategy, output function,
seed, number of masks) plus the batching knobs, before any forward pass, with messages that
say what was given and what is allowed. :meth:`~CollectionSettings.metadata` is what a store
records and checks on resume; :meth:`~CollectionSettings.chunk_size` the mask rows per pass
over the data. :func:`validation_split` says how many of the last mask rows are held out, and
:func:`stats_device` where float64 statistics live.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .._checks import check_optional_positive_int, check_positive_int
from ..ablation import AblationStrategy, resolve_ablation
from ..components import ComponentSet
from ..outputs import OutputFunction, resolve_output
from ..sampling import BLOCK_ROWS, MaskSampler, resolve_sampler
from ..stores.base import FORMAT_VERSION
from ._fingerprint import DataScan, model_fingerprint

__all__ = ["CollectionSettings", "validation_split", "stats_device"]

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
    perturbations_per_eval: Optional[int] = None
    max_rows: Optional[int] = None
    chunk_rows: Optional[int] = None

    @classmethod
    def build(cls, forward_func: Callable[..., Any], components: ComponentSet, n_masks: int,
              ablation_fraction: Optional[float] = 0.05,
              sampler: Union[str, MaskSampler] = "bernoulli",
              ablation: Union[str, AblationStrategy] = "weights",
              output: Union[None, str, OutputFunction, Callable[..., Tensor]] = None,
              has_target: bool = True, seed: int = 0,
              perturbations_per_eval: Optional[int] = None, max_rows: Optional[int] = None,
              chunk_rows: Optional[int] = None) -> "CollectionSettings":
        """Resolve and validate every setting (messages say what was given and allowed)."""
        if not isinstance(components, ComponentSet):
            raise TypeError(f"components must be a ComponentSet, got {type(components).__name__}")
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        n_masks = check_positive_int("n_masks", n_masks)
        if isinstance(sampler, MaskSampler) and ablation_fraction is not None and \
                float(ablation_fraction) != float(sampler.ablation_fraction):
            ablation_fraction = None  # the instance's own fraction wins over the default
        resolved = resolve_sampler(sampler, ablation_fraction)
        resolved.sample(components.n_components, 0, 0, 0)  # validates alpha (and N) up front
        output_fn = resolve_output(output, "target" if has_target else None)
        if not has_target and output_fn.needs_target:
            raise ValueError(
                f"output={output_fn.name!r} needs a target (e.g. the class index per example);"
                " pass target=... (or batches of (inputs, target)), or use output='logit' for"
                " a model with one output per example, or a callable"
            )
        perturbations_per_eval = check_optional_positive_int("perturbations_per_eval",
                                                             perturbations_per_eval)
        chunk_rows = check_optional_positive_int("chunk_rows", chunk_rows)
        max_rows = check_optional_positive_int("max_rows", max_rows)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        if components.model.training:
            warnings.warn(
                f"{type(components.model).__name__} is in training mode: BatchNorm would mix the"
                " statistics of different masks in one forward pass and dropout adds noise to"
                " every output; call model.eval() before COAR", UserWarning, stacklevel=3)
        return cls(components, forward_func, resolved, resolve_ablation(ablation), output_fn,
                   int(seed), n_masks, perturbations_per_eval, max_rows, chunk_rows)

    def chunk_size(self, n_examples: int) -> int:
        """Mask rows per pass over the data (default: bounded memory, multiple of 64)."""
        if self.chunk_rows is not None:
            return self.chunk_rows
        size = min(8192, max(BLOCK_ROWS, _CHUNK_ELEMENTS // max(1, n_examples)))
        return max(BLOCK_ROWS, size // BLOCK_ROWS * BLOCK_ROWS)

    def metadata(self, scan: DataScan) -> Dict[str, Any]:
        """Store metadata: identity fields and descriptive extras."""
        from .. import __version__

        return {
            "format_version": FORMAT_VERSION,
            "n_masks": self.n_masks,
            "n_components": self.components.n_components,
            "n_examples": scan.n_examples,
            "components_fingerprint": self.components.fingerprint,
            "model_fingerprint": model_fingerprint(self.components.model),
            "data_fingerprint": scan.data_fingerprint,
            "sampler": self.sampler.describe(),
            "ablation": self.ablation.describe(),
            "output": self.output.describe(),
            "seed": self.seed,
            "batch_sizes": scan.batch_sizes,
            "components": self.components.describe(),
            "captum_coar_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def stats_device(components: ComponentSet) -> torch.device:
    """Where float64 statistics live: the model's device, unless it lacks float64 (MPS)."""
    param = next(components.model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.device("cpu") if device.type == "mps" else device


def validation_split(n_masks: int, validation_fraction: float) -> int:
    """Rows held out for validation: the LAST ``round(fraction * n_masks)`` rows (>= 1 if > 0)."""
    fraction = validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
            not 0.0 <= float(fraction) < 1.0 or math.isnan(float(fraction)):
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if fraction == 0:
        return 0
    return min(n_masks - 1, max(1, int(round(float(fraction) * n_masks))))
