"""Mask samplers: which components each ablation keeps.

Contract
--------
A :class:`MaskSampler` turns ``(n_components, start, stop, seed)`` into a boolean tensor of
shape ``(stop - start, n_components)`` where ``True`` means the component is KEPT and
``False`` means it is ablated. Row ``r`` (a global mask index) depends only on
``(seed, r)`` (and ``n_components``), never on ``start``/``stop``: any shard of rows can be
produced independently, on any machine, in any order, and concatenating shards gives the
same masks as one call. Rows are generated on the CPU with a generator keyed by
``(seed, block)`` for fixed-size blocks of :data:`BLOCK_ROWS` rows and then sliced, so the
result is bit-identical everywhere; pass ``device=`` to move it afterwards.

Samplers follow the scikit-learn lifecycle: the constructor only stores its arguments;
they are validated when :meth:`MaskSampler.sample` is called.

Implementations
---------------
- :class:`BernoulliSampler` -- each component is ablated independently with probability
  ``ablation_fraction`` (as in the reference COAR code), so the number ablated varies.
- :class:`FixedFractionSampler` -- exactly ``max(1, round(ablation_fraction * N))``
  components ablated per row, chosen uniformly at random. Note that then every row keeps
  the same number of components, so the keep-mask columns sum to a constant and ordinary
  least squares *with intercept* is rank deficient (use ridge, or expect the minimum-norm
  solution).

:func:`resolve_sampler` maps ``"bernoulli"`` / ``"fixed"`` or an instance to a sampler.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Dict, Optional, Union

import torch

from ._checks import check_fraction, check_int, check_positive_int, fail
from ._registry import Registry

__all__ = [
    "BLOCK_ROWS",
    "MaskSampler",
    "BernoulliSampler",
    "FixedFractionSampler",
    "resolve_sampler",
]

#: Rows are generated in blocks of this many rows, each from its own generator keyed by
#: ``(seed, block index)``. Changing it changes the masks, so it is part of the format.
BLOCK_ROWS = 64

_MASK64 = (1 << 64) - 1
# Uniform numbers materialised at once (float32): about 64 MiB.
_GROUP_ELEMENTS = 1 << 24


def _splitmix64(x: int) -> int:
    """One step of the SplitMix64 finaliser (a good 64-bit integer mixer)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _block_generator(seed: int, block: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, block)``."""
    key = _splitmix64(_splitmix64(seed & _MASK64) ^ (block & _MASK64))
    gen = torch.Generator(device="cpu")
    gen.manual_seed(key)
    return gen


class MaskSampler(ABC):
    """Base class of mask samplers (True = component kept).

    Subclasses implement :meth:`_keep_from_uniform`, a row-wise map from i.i.d. uniform
    numbers to keep masks (row r of the result may use only row r of the input).
    """

    #: Short name used by :func:`resolve_sampler` and in :meth:`describe`.
    name: str = "base"

    def __init__(self, ablation_fraction: float) -> None:
        self.ablation_fraction = ablation_fraction

    # -- validation -------------------------------------------------------------------
    def _validated_fraction(self) -> float:
        return check_fraction(f"{type(self).__name__}.ablation_fraction", self.ablation_fraction)

    def _validate_n_components(self, n_components: Any) -> int:
        return check_positive_int("n_components", n_components)

    # -- public API -------------------------------------------------------------------
    def sample(
        self,
        n_components: int,
        start: int,
        stop: int,
        seed: int,
        *,
        device: Optional[Union[torch.device, str]] = None,
    ) -> torch.Tensor:
        """Masks for global rows ``start .. stop-1``: bool tensor ``(stop - start, N)``.

        ``True`` = kept. Row ``r`` depends only on ``(seed, r)`` and ``n_components``.
        """
        alpha = self._validated_fraction()
        n = self._validate_n_components(n_components)
        start = check_int("start", start, minimum=0)
        stop = check_int("stop", stop, minimum=start)
        seed = check_int("seed", seed)
        out = torch.empty((stop - start, n), dtype=torch.bool)
        if stop > start:
            blocks = list(range(start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS + 1))
            # Several blocks per vectorised step (few large tensor ops, bounded memory).
            per_group = max(1, _GROUP_ELEMENTS // (BLOCK_ROWS * n))
            for g0 in range(0, len(blocks), per_group):
                group = blocks[g0 : g0 + per_group]
                u = torch.empty((len(group) * BLOCK_ROWS, n), dtype=torch.float32)
                for i, block in enumerate(group):
                    gen = _block_generator(seed, block)
                    u[i * BLOCK_ROWS : (i + 1) * BLOCK_ROWS].uniform_(0.0, 1.0, generator=gen)
                keep = self._keep_from_uniform(u, alpha)
                b0 = group[0] * BLOCK_ROWS
                lo, hi = max(start, b0), min(stop, b0 + u.shape[0])
                out[lo - start : hi - start] = keep[lo - b0 : hi - b0]
        if device is not None:
            out = out.to(device)
        return out

    def describe(self) -> Dict[str, Any]:
        """Name and parameters, for store metadata (JSON serialisable)."""
        return {
            "name": self.name,
            "ablation_fraction": float(self.ablation_fraction),
            "block_rows": BLOCK_ROWS,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ablation_fraction={self.ablation_fraction!r})"

    @abstractmethod
    def _keep_from_uniform(self, u: torch.Tensor, alpha: float) -> torch.Tensor:
        """Bool keep masks (rows, N) from uniforms ``u`` (rows, N), row by row."""


class BernoulliSampler(MaskSampler):
    """Each component ablated independently with probability ``ablation_fraction``.

    This is the scheme of the reference COAR code; the number of ablated components per
    row is Binomial(N, alpha).
    """

    name = "bernoulli"

    def _keep_from_uniform(self, u: torch.Tensor, alpha: float) -> torch.Tensor:
        return u >= alpha  # P(ablated) = P(u < alpha) = alpha


class FixedFractionSampler(MaskSampler):
    """Exactly ``n_ablated(N) = max(1, round(alpha * N))`` components ablated per row.

    ``round`` is to the nearest integer with halves rounded up; the count is capped at
    ``N - 1`` so at least one component is always kept (which needs ``N >= 2``).
    """

    name = "fixed"

    def n_ablated(self, n_components: int) -> int:
        """Number of components ablated in every row for ``n_components`` components."""
        return self._count(self._validate_n_components(n_components), self._validated_fraction())

    @staticmethod
    def _count(n_components: int, alpha: float) -> int:
        return min(n_components - 1, max(1, int(math.floor(alpha * n_components + 0.5))))

    def _validate_n_components(self, n_components: Any) -> int:
        n = super()._validate_n_components(n_components)
        if n < 2:
            raise ValueError(
                "FixedFractionSampler needs n_components >= 2 (with one component every "
                f"row would be identical), got n_components={n}; use BernoulliSampler."
            )
        return n

    def _keep_from_uniform(self, u: torch.Tensor, alpha: float) -> torch.Tensor:
        k = self._count(u.shape[1], alpha)
        # topk gives exactly k distinct indices per row even if some u values tie.
        idx = torch.topk(u, k, dim=1, largest=False, sorted=False).indices
        keep = torch.ones(u.shape, dtype=torch.bool)
        keep.scatter_(1, idx, False)
        return keep


SAMPLERS: Registry[MaskSampler] = Registry("sampler", MaskSampler, "BernoulliSampler(0.05)")
SAMPLERS.register("bernoulli", BernoulliSampler)
SAMPLERS.register("fixed", FixedFractionSampler, "fixed_fraction")


def resolve_sampler(
    name_or_sampler: Union[str, MaskSampler] = "bernoulli",
    ablation_fraction: Optional[float] = None,
) -> MaskSampler:
    """Return a sampler from a name (``"bernoulli"``, ``"fixed"``) or an instance.

    A name needs ``ablation_fraction``. An instance is returned as is; an
    ``ablation_fraction`` given beside it must equal the instance's (conflicting values are an
    error, never silently resolved in favour of one).
    """
    if isinstance(name_or_sampler, MaskSampler):
        if ablation_fraction is not None and float(ablation_fraction) != float(
                name_or_sampler.ablation_fraction):
            raise fail("ablation_fraction", f"None or {name_or_sampler.ablation_fraction} (the"
                       f" fraction of the sampler given, {name_or_sampler!r})", ablation_fraction,
                       "Give one of the two, or make them equal")
        return name_or_sampler
    if isinstance(name_or_sampler, str) and name_or_sampler in SAMPLERS and ablation_fraction is None:
        raise fail("ablation_fraction", "a number in (0, 1) when the sampler is given by name",
                   ablation_fraction)
    return SAMPLERS.resolve(name_or_sampler, ablation_fraction=ablation_fraction)
