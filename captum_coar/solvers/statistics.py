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
``xtx`` and ``x_sum`` are exact). ``to_dict()`` / ``from_dict()`` expose the sums as plain
tensors so ``torch.distributed.all_reduce`` or a ``.pt`` / ``.npz`` file can carry them.

Non-finite outputs raise a ``ValueError`` naming the rows (global, counted from the first
row this object saw) and columns where they occur.

From the sums, :meth:`centered` gives the centred cross products used by every solver and
:meth:`mse` evaluates the mean squared error of any linear model ``b + X w`` on the rows the
statistics describe, without the raw data; :meth:`minus_prediction` gives the statistics of
the residual ``Y - X W`` of a fixed linear map (for fits that shrink toward a prior).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Union

import torch

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
        dev = self.device
        self.xtx = torch.zeros((n_components, n_components), dtype=dtype, device=dev)
        self.xty = torch.zeros((n_components, n_outputs), dtype=dtype, device=dev)
        self.x_sum = torch.zeros((n_components,), dtype=dtype, device=dev)
        self.y_sum = torch.zeros((n_outputs,), dtype=dtype, device=dev)
        self.y_sq_sum = torch.zeros((n_outputs,), dtype=dtype, device=dev)
        self.count = 0

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
        Y = Y.to(device=self.device, dtype=self.dtype)
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

    def update(self, X: torch.Tensor, Y: torch.Tensor) -> "SufficientStatistics":
        """Add a chunk: ``X`` (r, N) bool or float keep masks, ``Y`` (r, n) outputs."""
        X, Y = self._check_chunk(X, Y)
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

    def merge(self, other: "SufficientStatistics") -> "SufficientStatistics":
        """Add ``other``'s sums into this object (in place) and return ``self``."""
        if not isinstance(other, SufficientStatistics):
            raise TypeError(f"can only merge SufficientStatistics, got {type(other).__name__}.")
        if (other.n_components, other.n_outputs) != (self.n_components, self.n_outputs):
            raise ValueError(
                "cannot merge statistics of different shapes: "
                f"(n_components, n_outputs) = {(self.n_components, self.n_outputs)} vs "
                f"{(other.n_components, other.n_outputs)}."
            )
        for key in _KEYS[:-1]:
            getattr(self, key).add_(getattr(other, key).to(device=self.device, dtype=self.dtype))
        self.count += other.count
        return self

    # -- serialisation ----------------------------------------------------------------
    def to_dict(self) -> Dict[str, torch.Tensor]:
        """The sums as tensors (``count`` as a 0-dim float64 tensor, so all_reduce SUM works)."""
        out = {key: getattr(self, key) for key in _KEYS[:-1]}
        out["count"] = torch.tensor(float(self.count), dtype=torch.float64, device=self.device)
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
        return self.x_sum / self.count, self.y_sum / self.count

    def centered(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centred sums ``Sxx`` (N, N), ``Sxy`` (N, n), ``Syy`` (n,) (not divided by m)."""
        mx, my = self.means()
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
        return SufficientStatistics.from_dict(state, device=self.device)

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
