"""Sufficient statistics of a multi-output linear regression, accumulated chunk by chunk.

Contract
--------
:class:`SufficientStatistics` holds, for keep masks ``X`` (m, N) and outputs ``Y`` (m, n)
seen so far::

    xtx      = X'X            (N, N)
    xty      = X'Y            (N, n)
    x_sum    = X'1            (N,)
    y_sum    = Y'1            (n,)
    y_sq_sum = sum of Y**2    (n,)
    count    = m

in ``dtype`` (float64 by default) on ``device``. Memory is ``O(N^2 + N n)``, independent of
``m``. ``update(X, Y)`` adds a chunk; ``merge(other)`` adds another object's sums (chunks or
machines in any order give the same statistics up to float rounding; with boolean masks
``xtx`` and ``x_sum`` are exact). ``to_dict()`` / ``from_dict()`` expose the sums (and
``y_shift``, which is not a sum: see below) as plain tensors so
``torch.distributed.all_reduce`` (:func:`captum_coar.coar.distributed.all_reduce_statistics`)
or a ``.pt`` / ``.npz`` file can carry them.

Non-finite outputs raise a ``ValueError`` naming the rows (global, counted from the first
row this object saw) and columns where they occur.

Rows: ``rows`` lists the mask rows the sums cover as ``[start, stop)`` runs when every
``update`` said which rows it adds (``update(X, Y, rows=...)``, as collection does), else None
(unknown). Adding a row twice -- by ``update``, ``merge`` or a second all-reduce -- raises
``ValueError``, and :meth:`check_rows` (run by every solver's ``fit``) refuses statistics whose
``count`` disagrees with their rows.

Offset outputs: statistics in a dtype other than float64 (opt-in float32) accumulate the
outputs minus ``y_shift``, the per-output mean of the first chunk they receive, so outputs
with a large offset (e.g. logits near 1000) keep their precision (the centred sums are
invariant to the shift). ``xty``, ``y_sum`` and ``y_sq_sum`` hold sums of ``Y - y_shift``;
``y_shift`` is zero for float64, so there they are the plain sums. :meth:`means` gives the
true means; ``merge`` and all-reduce bring the other part to this object's shift first.

Memory: the constructor refuses, by name and with the bytes needed, statistics that would not
fit in the device's available memory (:mod:`captum_coar.solvers._footprint`).

From the sums, :meth:`centered` gives the centred cross products used by every solver and
:meth:`mse` evaluates the mean squared error of any linear model ``b + X w`` on the rows the
statistics describe, without the raw data; :meth:`minus_prediction` gives the statistics of
the residual ``Y - X W`` of a fixed linear map (for fits that shrink toward a prior).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ._footprint import check_statistics_memory
from ._ranges import RowRanges, add_ranges, count_rows, row_ranges

__all__ = ["SufficientStatistics"]

_KEYS = ("xtx", "xty", "x_sum", "y_sum", "y_sq_sum", "count")
# Rows per internal sub-chunk are chosen so a float copy of X stays around 2**24 elements.
_SUBCHUNK_ELEMENTS = 1 << 24
# Sums of 0/1 products are exact in float32 while every partial sum stays below 2**24.
_EXACT_FLOAT32_ROWS = 1 << 24


def _describe_nonfinite(bad: torch.Tensor, row_offset: int, what: str) -> str:
    idx = torch.nonzero(bad, as_tuple=False)
    shown = ", ".join(f"(row {int(r) + row_offset}, column {int(c)})" for r, c in idx[:10].tolist())
    more = f" and {idx.shape[0] - 10} more" if idx.shape[0] > 10 else ""
    rows = torch.unique(idx[:, 0]).numel()
    return (
        f"{what} contains {idx.shape[0]} non-finite value(s) in {rows} row(s): {shown}{more}. "
        "Rows are counted from the first row these statistics received; all outputs must be "
        "finite (check the model output function for inf/NaN under ablation)."
    )


class SufficientStatistics:
    """Running X'X, X'Y, column sums, output sums, squared output sums and row count.

    Parameters
    ----------
    n_components:
        N, the number of mask columns.
    n_outputs:
        n, the number of outputs (examples) per row.
    dtype:
        Floating dtype of the sums (float64 recommended).
    device:
        Where the sums live; chunks are moved there. Defaults to the CPU.
    """

    def __init__(
        self,
        n_components: int,
        n_outputs: int,
        dtype: torch.dtype = torch.float64,
        device: Optional[Union[torch.device, str]] = None,
    ) -> None:
        for name, value in (("n_components", n_components), ("n_outputs", n_outputs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}.")
        self.n_components = n_components
        self.n_outputs = n_outputs
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        check_statistics_memory(n_components, n_outputs, dtype, self.device)
        dev = self.device
        self.xtx = torch.zeros((n_components, n_components), dtype=dtype, device=dev)
        self.xty = torch.zeros((n_components, n_outputs), dtype=dtype, device=dev)
        self.x_sum = torch.zeros((n_components,), dtype=dtype, device=dev)
        self.y_sum = torch.zeros((n_outputs,), dtype=dtype, device=dev)
        self.y_sq_sum = torch.zeros((n_outputs,), dtype=dtype, device=dev)
        self.y_shift = torch.zeros((n_outputs,), dtype=dtype, device=dev)
        self.count = 0
        self.rows: Optional[RowRanges] = []  # [start, stop) runs covered; None = unknown

    # -- accumulation -----------------------------------------------------------------
    def _check_chunk(self, X: torch.Tensor, Y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(X, torch.Tensor) or not isinstance(Y, torch.Tensor):
            raise TypeError(
                f"X and Y must be torch tensors, got {type(X).__name__} and {type(Y).__name__}."
            )
        if Y.dim() == 1 and self.n_outputs == 1:
            Y = Y.unsqueeze(1)
        if X.dim() != 2 or X.shape[1] != self.n_components:
            raise ValueError(
                f"X must have shape (rows, {self.n_components}), got {tuple(X.shape)}."
            )
        if Y.dim() != 2 or Y.shape[1] != self.n_outputs or Y.shape[0] != X.shape[0]:
            raise ValueError(
                f"Y must have shape ({X.shape[0]}, {self.n_outputs}) to match X "
                f"{tuple(X.shape)}, got {tuple(Y.shape)}."
            )
        if X.dtype.is_complex:
            raise ValueError(f"X must be bool or real, got dtype {X.dtype}.")
        Y = Y.to(device=self.device)
        if not Y.is_floating_point() or Y.dtype == torch.float16 or Y.dtype == torch.bfloat16:
            Y = Y.to(self.dtype)
        bad = ~torch.isfinite(Y)
        if bool(bad.any()):
            raise ValueError(_describe_nonfinite(bad, self.count, "Y (outputs)"))
        X = X.to(device=self.device)
        if X.dtype != torch.bool:
            X = X.to(self.dtype)
            bad = ~torch.isfinite(X)
            if bool(bad.any()):
                raise ValueError(_describe_nonfinite(bad, self.count, "X (masks)"))
        return X, Y

    def update(self, X: torch.Tensor, Y: torch.Tensor, rows: Any = None) -> "SufficientStatistics":
        """Add a chunk: ``X`` (r, N) bool or float keep masks, ``Y`` (r, n) outputs, and
        optionally the indices of the ``r`` mask rows (see the module docstring)."""
        X, Y = self._check_chunk(X, Y)
        covered = self._rows_after(X.shape[0], rows)
        if self.count == 0 and X.shape[0] and self.dtype != torch.float64:
            self.y_shift = Y.to(torch.float64).mean(0).to(self.dtype)
        Y = (Y - self.y_shift.to(Y.dtype)).to(self.dtype)
        self.rows = covered
        rows = X.shape[0]
        step = max(1, min(_EXACT_FLOAT32_ROWS, _SUBCHUNK_ELEMENTS // max(1, self.n_components)))
        for lo in range(0, rows, step):
            x, y = X[lo : lo + step], Y[lo : lo + step]
            if x.dtype == torch.bool:
                # 0/1 products summed over < 2**24 rows are exact in float32 (twice as fast).
                x32 = x.to(torch.float32)
                self.xtx += (x32.T @ x32).to(self.dtype)
                self.x_sum += x32.sum(0, dtype=torch.float64).to(self.dtype)
                xf = x32.to(self.dtype)
            else:
                xf = x
                self.xtx += xf.T @ xf
                self.x_sum += xf.sum(0)
            self.xty += xf.T @ y
            self.y_sum += y.sum(0)
            self.y_sq_sum += (y * y).sum(0)
        self.count += rows
        return self

    @classmethod
    def from_arrays(
        cls,
        X: torch.Tensor,
        Y: torch.Tensor,
        dtype: torch.dtype = torch.float64,
        device: Optional[Union[torch.device, str]] = None,
    ) -> "SufficientStatistics":
        """Statistics of all rows of ``X`` (m, N) and ``Y`` (m, n) (or (m,) for n = 1)."""
        n_outputs = 1 if Y.dim() == 1 else int(Y.shape[1])
        if X.dim() != 2:
            raise ValueError(f"X must have shape (rows, n_components), got {tuple(X.shape)}.")
        return cls(int(X.shape[1]), n_outputs, dtype=dtype, device=device).update(X, Y)

    def _rows_after(self, n_rows: int, rows: Any) -> Optional[RowRanges]:
        """The rows covered after adding ``n_rows`` rows with indices ``rows`` (None: unknown)."""
        if n_rows == 0:
            return self.rows
        if rows is None or self.rows is None:
            return None
        index = np.asarray(torch.as_tensor(rows).cpu().numpy() if isinstance(rows, torch.Tensor)
                           else rows, dtype=np.int64).reshape(-1)
        unique = np.unique(index)
        if index.size != n_rows or unique.size != n_rows:
            raise ValueError(f"rows must give {n_rows} distinct row indices, one per row of X;"
                             f" got {index.size} indices, {unique.size} distinct")
        return add_ranges(self.rows, row_ranges(unique), "these statistics", "the chunk")

    def check_rows(self) -> None:
        """``ValueError`` unless ``count`` equals the number of rows covered (when known)."""
        if self.rows is not None and count_rows(self.rows) != self.count:
            raise ValueError(
                f"these statistics count {self.count} rows but cover {count_rows(self.rows)}"
                f" ({self.rows[:4]}{' ...' if len(self.rows) > 4 else ''} as [start, stop) runs):"
                " some rows were added twice (e.g. statistics all-reduced twice) or the sums were"
                " changed by hand; collect or merge them again")

    def shift_to(self, shift: torch.Tensor) -> "SufficientStatistics":
        """Re-express the sums relative to ``shift`` (n,) instead of ``y_shift`` (in place)."""
        new = shift.to(device=self.device, dtype=self.dtype)
        d = self.y_shift - new  # Y - new = (Y - y_shift) + d
        if bool((d != 0).any()):
            m = float(self.count)
            self.y_sq_sum += 2.0 * d * self.y_sum + m * d * d
            self.xty += torch.outer(self.x_sum, d)
            self.y_sum += m * d
        self.y_shift = new.clone()
        return self

    def merge(self, other: "SufficientStatistics") -> "SufficientStatistics":
        """Add ``other``'s sums into this object (in place) and return ``self``; rows are not
        counted twice (see the module docstring)."""
        if not isinstance(other, SufficientStatistics):
            raise TypeError(f"can only merge SufficientStatistics, got {type(other).__name__}.")
        if (other.n_components, other.n_outputs) != (self.n_components, self.n_outputs):
            raise ValueError(
                "cannot merge statistics of different shapes: "
                f"(n_components, n_outputs) = {(self.n_components, self.n_outputs)} vs "
                f"{(other.n_components, other.n_outputs)}."
            )
        rows = (None if self.rows is None or other.rows is None else
                add_ranges(self.rows, other.rows, "these statistics", "the other"))
        if self.count == 0 and other.count:
            self.y_shift = other.y_shift.to(device=self.device, dtype=self.dtype).clone()
        part = other
        if not torch.equal(other.y_shift.to(device=self.device, dtype=self.dtype), self.y_shift):
            part = SufficientStatistics.from_dict(other.to_dict(), device=self.device)
            part.shift_to(self.y_shift)
        for key in _KEYS[:-1]:
            getattr(self, key).add_(getattr(part, key).to(device=self.device, dtype=self.dtype))
        self.count += other.count
        self.rows = rows
        return self

    # -- serialisation ----------------------------------------------------------------
    def to_dict(self) -> Dict[str, torch.Tensor]:
        """The sums as tensors (``count`` as a 0-dim float64 tensor, so all_reduce SUM works)."""
        out = {key: getattr(self, key) for key in _KEYS[:-1]}
        out["count"] = torch.tensor(float(self.count), dtype=torch.float64, device=self.device)
        out["y_shift"] = self.y_shift
        return out

    @classmethod
    def from_dict(
        cls,
        state: Mapping[str, torch.Tensor],
        device: Optional[Union[torch.device, str]] = None,
    ) -> "SufficientStatistics":
        """Rebuild from :meth:`to_dict` output (shapes are checked)."""
        missing = [k for k in _KEYS if k not in state]
        if missing:
            raise ValueError(f"state is missing keys {missing}; expected keys {list(_KEYS)}.")
        xty = torch.as_tensor(state["xty"])
        if xty.dim() != 2:
            raise ValueError(f"state['xty'] must be 2-D (N, n), got shape {tuple(xty.shape)}.")
        n_components, n_outputs = int(xty.shape[0]), int(xty.shape[1])
        dev = device if device is not None else xty.device
        dtype = xty.dtype if xty.dtype.is_floating_point else torch.float64
        stats = cls(n_components, n_outputs, dtype=dtype, device=dev)
        expected = {
            "xtx": (n_components, n_components),
            "xty": (n_components, n_outputs),
            "x_sum": (n_components,),
            "y_sum": (n_outputs,),
            "y_sq_sum": (n_outputs,),
        }
        for key, shape in expected.items():
            value = torch.as_tensor(state[key])
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"state[{key!r}] must have shape {shape}, got {tuple(value.shape)}."
                )
            setattr(stats, key, value.to(device=stats.device, dtype=dtype).clone())
        if "y_shift" in state:
            shift = torch.as_tensor(state["y_shift"])
            if tuple(shift.shape) != (n_outputs,):
                raise ValueError(f"state['y_shift'] must have shape {(n_outputs,)}, got"
                                 f" {tuple(shift.shape)}.")
            stats.y_shift = shift.to(device=stats.device, dtype=dtype).clone()
        stats.rows = None  # tensors do not say which rows they cover
        count = float(torch.as_tensor(state["count"]).item())
        if count < 0 or count != round(count):
            raise ValueError(f"state['count'] must be a non-negative integer, got {count}.")
        stats.count = int(round(count))
        return stats

    # -- derived quantities -----------------------------------------------------------
    @property
    def n_samples(self) -> int:
        """Number of rows (masks) accumulated, m."""
        return self.count

    def means(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Column means of X (N,) and of Y (n,)."""
        self._require_rows(1)
        return self.x_sum / self.count, self.y_sum / self.count + self.y_shift

    def centered(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centred sums ``Sxx`` (N, N), ``Sxy`` (N, n), ``Syy`` (n,) (not divided by m)."""
        self._require_rows(1)
        mx, my = self.x_sum / self.count, self.y_sum / self.count  # my of Y - y_shift
        m = self.count
        sxx = self.xtx - m * torch.outer(mx, mx)
        sxx = 0.5 * (sxx + sxx.T)
        sxy = self.xty - m * torch.outer(mx, my)
        syy = (self.y_sq_sum - m * my * my).clamp_min(0.0)
        return sxx, sxy, syy

    def minus_prediction(self, weights: torch.Tensor) -> "SufficientStatistics":
        """A new object: the statistics of ``Y - X @ weights`` (``weights`` (N, n)) on the same
        rows (``X``'s sums are shared values, copied)."""
        w = weights.to(device=self.device, dtype=self.dtype)
        if tuple(w.shape) != (self.n_components, self.n_outputs):
            raise ValueError(f"weights must have shape {(self.n_components, self.n_outputs)},"
                             f" got {tuple(w.shape)}.")
        state = self.to_dict()
        xtx_w = self.xtx @ w
        state["xty"] = self.xty - xtx_w
        state["y_sum"] = self.y_sum - self.x_sum @ w
        state["y_sq_sum"] = (self.y_sq_sum - 2.0 * (w * self.xty).sum(0)
                             + (w * xtx_w).sum(0)).clamp_min(0.0)
        result = SufficientStatistics.from_dict(state, device=self.device)
        result.rows = None if self.rows is None else [list(r) for r in self.rows]
        return result

    def mse(self, coef: torch.Tensor, intercept: torch.Tensor) -> torch.Tensor:
        """Mean squared error (n,) of ``intercept + X @ coef.T`` on the rows summarised.

        ``coef`` is (n, N) and ``intercept`` (n,), as in :class:`FitResult`.
        """
        coef = coef.to(device=self.device, dtype=self.dtype)
        intercept = intercept.to(device=self.device, dtype=self.dtype)
        if tuple(coef.shape) != (self.n_outputs, self.n_components):
            raise ValueError(
                f"coef must have shape {(self.n_outputs, self.n_components)}, "
                f"got {tuple(coef.shape)}."
            )
        sxx, sxy, syy = self.centered()
        mx, my = self.means()
        w = coef.T  # (N, n)
        quad = ((sxx @ w) * w).sum(0)
        resid_ss = (syy - 2.0 * (sxy * w).sum(0) + quad).clamp_min(0.0)
        offset = my - intercept - mx @ w
        return resid_ss / self.count + offset * offset

    def _require_rows(self, minimum: int) -> None:
        if self.count < minimum:
            raise ValueError(
                f"these statistics hold {self.count} row(s); at least {minimum} needed."
            )

    def __repr__(self) -> str:
        return (
            f"SufficientStatistics(n_components={self.n_components}, "
            f"n_outputs={self.n_outputs}, count={self.count}, dtype={self.dtype}, "
            f"device={self.device})"
        )

