"""Minibatch solver for problems too large for an N x N Gram matrix.

Contract
--------
:class:`MinibatchRidge` fits, for all ``n`` examples at once, the ridge objective of
:class:`~captum_coar.solvers.least_squares.Ridge`,
``||y - X w - b||^2 + alpha ||w||^2`` (``alpha = 0``: least squares), from passes over
``chunks()``, a zero-argument callable returning a fresh iterable of ``(X, Y)`` chunks
(``X`` (r, N) bool/float keep masks, ``Y`` (r, n) outputs). Memory is ``O(N n)``.

1. One pass computes the row count, column means and standard deviations of ``X`` and the
   output means (non-finite outputs raise ``ValueError`` naming rows and columns).
2. ``epochs`` passes run Adam on the standardised problem
   ``(X - mean) / std -> Y - mean(Y)`` (well conditioned for random masks), with a cosine
   learning-rate decay to zero over all steps; chunks are split into minibatches of
   ``batch_size`` rows when given. The weights of the last epoch are averaged
   (Polyak averaging), which removes most of the minibatch noise.
3. The weights are mapped back to mask units and ``intercept = mean(Y) - mean(X) . coef``.

It approaches the exact solution as epochs grow but is not exact; use
:class:`~captum_coar.solvers.least_squares.LeastSquares` or ``Ridge`` when the Gram matrix
fits in memory. Feed chunks in random row order (masks sampled i.i.d. already are).
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Optional, Tuple

import torch

from ._constraints import FloatDtype, Interval, RealPair
from .base import ChunkSource, FitResult, StreamingSolver
from .statistics import SufficientStatistics, _describe_nonfinite

__all__ = ["MinibatchRidge"]


def _iter_batches(
    chunks: ChunkSource, batch_size: Optional[int]
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    source = chunks()
    for item in source:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(
                f"chunks() must yield (X, Y) pairs of tensors, got {type(item).__name__}."
            )
        X, Y = item
        if not isinstance(X, torch.Tensor) or not isinstance(Y, torch.Tensor):
            raise TypeError(
                f"chunks() must yield tensors, got {type(X).__name__} and {type(Y).__name__}."
            )
        if Y.dim() == 1:
            Y = Y.unsqueeze(1)
        if X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0]:
            raise ValueError(
                "each chunk must be X (r, N) and Y (r, n) with the same r, got "
                f"{tuple(X.shape)} and {tuple(Y.shape)}."
            )
        step = X.shape[0] if batch_size is None else batch_size
        for lo in range(0, X.shape[0], max(1, step)):
            yield X[lo : lo + step], Y[lo : lo + step]


class _Params(NamedTuple):
    alpha: float
    epochs: int
    lr: float
    eps: float
    batch_size: Optional[int]
    b1: float
    b2: float


class MinibatchRidge(StreamingSolver):
    """Ridge / least squares by minibatch Adam over streamed chunks, memory ``O(N n)``.

    Parameters
    ----------
    alpha:
        Ridge penalty in :class:`Ridge` scaling (0 = least squares).
    epochs:
        Passes of Adam over the data (plus one statistics pass).
    lr:
        Peak Adam learning rate on the standardised problem (decays to 0, cosine).
    batch_size:
        Rows per minibatch (default 256, so a store's large chunks still give many Adam
        steps per epoch); None uses each chunk as one minibatch.
    betas, eps:
        Adam parameters.
    dtype:
        Floating dtype of the weights and arithmetic.
    """

    name = "minibatch_ridge"
    _parameter_constraints = {
        "alpha": [Interval(0.0)], "epochs": [Interval(1, integer=True)],
        "lr": [Interval(0.0, low_open=True)], "batch_size": [Interval(1, integer=True), None],
        "betas": [RealPair(0.0, 1.0)], "eps": [Interval(0.0, low_open=True)],
        "dtype": [FloatDtype()]}

    def __init__(
        self,
        alpha: float = 0.0,
        epochs: int = 20,
        lr: float = 0.05,
        batch_size: Optional[int] = 256,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.alpha = alpha
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.betas = betas
        self.eps = eps
        self.dtype = dtype

    def _validate(self) -> _Params:
        """The arguments, checked against ``_parameter_constraints``."""
        self._validate_params()
        b1, b2 = (float(b) for b in self.betas)
        batch_size = None if self.batch_size is None else int(self.batch_size)
        return _Params(float(self.alpha), int(self.epochs), float(self.lr), float(self.eps),
                       batch_size, b1, b2)

    def fit(
        self,
        chunks: ChunkSource,
        validation_stats: Optional[SufficientStatistics] = None,
    ) -> FitResult:
        """Fit from ``chunks()`` (called once per pass); see the module docstring."""
        p = self._validate()
        if not callable(chunks):
            raise TypeError(
                "chunks must be a zero-argument callable returning an iterable of (X, Y) "
                f"(so it can be read several times), got {type(chunks).__name__}."
            )
        dtype = self.dtype
        # -- pass 0: counts, means, standard deviations ---------------------------------
        m, n_batches = 0, 0
        device: Optional[torch.device] = None
        x_sum = x_sq = y_sum = None
        for X, Y in _iter_batches(chunks, p.batch_size):
            if device is None:
                device = X.device
                N, n = X.shape[1], Y.shape[1]
                x_sum = torch.zeros(N, dtype=dtype, device=device)
                x_sq = torch.zeros(N, dtype=dtype, device=device)
                y_sum = torch.zeros(n, dtype=dtype, device=device)
            assert x_sum is not None and x_sq is not None and y_sum is not None
            if X.shape[1] != x_sum.shape[0] or Y.shape[1] != y_sum.shape[0]:
                raise ValueError(
                    f"chunk shapes changed: expected X (r, {x_sum.shape[0]}) and "
                    f"Y (r, {y_sum.shape[0]}), got {tuple(X.shape)} and {tuple(Y.shape)}."
                )
            Xf, Yf = X.to(device=device, dtype=dtype), Y.to(device=device, dtype=dtype)
            bad = ~torch.isfinite(Yf)
            if bool(bad.any()):
                raise ValueError(_describe_nonfinite(bad, m, "Y (outputs)"))
            x_sum += Xf.sum(0)
            x_sq += (Xf * Xf).sum(0)
            y_sum += Yf.sum(0)
            m += X.shape[0]
            n_batches += 1
        if m < 2 or device is None:
            raise ValueError(f"MinibatchRidge needs at least 2 rows, chunks() gave {m}.")
        assert x_sum is not None and x_sq is not None and y_sum is not None
        mx, my = x_sum / m, y_sum / m
        var = (x_sq / m - mx * mx).clamp_min(0.0)
        constant = var <= 1e-12 * var.max().clamp_min(1e-300)
        sx = torch.where(constant, torch.ones_like(var), var.sqrt())
        inv_sx = torch.where(constant, torch.zeros_like(var), 1.0 / sx)
        N, n = x_sum.shape[0], y_sum.shape[0]

        # -- Adam on the standardised problem ---------------------------------------------
        W = torch.zeros((N, n), dtype=dtype, device=device)
        mom = torch.zeros_like(W)
        vel = torch.zeros_like(W)
        avg = torch.zeros_like(W)
        penalty = 2.0 * p.alpha / m * (inv_sx * inv_sx)
        total = p.epochs * n_batches
        b1, b2, eps, lr = p.b1, p.b2, p.eps, p.lr
        step = 0
        last_epoch_sse = torch.zeros(n, dtype=dtype, device=device)
        for epoch in range(p.epochs):
            last = epoch == p.epochs - 1
            seen = 0
            for X, Y in _iter_batches(chunks, p.batch_size):
                Z = (X.to(device=device, dtype=dtype) - mx) * inv_sx
                R = Z @ W - (Y.to(device=device, dtype=dtype) - my)
                r = X.shape[0]
                grad = (2.0 / r) * (Z.T @ R) + penalty[:, None] * W
                step += 1
                mom.mul_(b1).add_(grad, alpha=1 - b1)
                vel.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                rate = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
                m_hat = mom / (1 - b1**step)
                v_hat = vel / (1 - b2**step)
                W -= rate * m_hat / (v_hat.sqrt() + eps)
                seen += 1
                if last:
                    last_epoch_sse += (R * R).sum(0)
                    avg += W
            if seen != n_batches:
                raise ValueError(
                    f"chunks() gave {seen} minibatches in epoch {epoch + 1} but {n_batches} in "
                    "the first pass; it must yield the same data every time it is called."
                )
        W_final = avg / n_batches
        coef = (W_final * inv_sx[:, None]).T.contiguous()
        intercept = my - mx @ coef.T
        return FitResult(
            coef=coef,
            intercept=intercept,
            solver=self.name,
            alpha=p.alpha,
            train_mse=None,
            validation_mse=None
            if validation_stats is None
            else validation_stats.mse(coef, intercept),
            n_iter=step,
            diagnostics={
                "epochs": p.epochs,
                "minibatches_per_epoch": n_batches,
                "n_samples": m,
                "last_epoch_running_mse": (last_epoch_sse / m),
                "constant_columns": int(constant.sum()),
            },
        )
