"""A plain sparse autoencoder (or transcoder) module, loadable from released weights, and a
small trainer.

Contract
--------
:class:`SparseAutoencoder` holds the weights in the layout SAELens and most released SAEs
use: ``W_enc (d_in, n_latents)``, ``b_enc (n_latents,)``, ``W_dec (n_latents, d_out)``,
``b_dec (d_out,)``, and computes

    z = act((x - b_dec) @ W_enc + b_enc)        (``- b_dec`` only with subtract_decoder_bias)
    reconstruction = z @ W_dec + b_dec

with ``act`` one of ``"relu"``, ``"jumprelu"`` (``pre * (pre > threshold)``, a per-latent
``threshold`` buffer: Gemma Scope) and ``"topk"`` (ReLU, then the ``k`` largest latents of
each vector kept). ``d_out != d_in`` is a transcoder. :meth:`SparseAutoencoder.from_weights`
copies given weights in (with their shapes checked), so a released SAE loads from its
``state_dict`` or ``.safetensors`` tensors; wrap it in
:class:`~captum_coar.dictionaries.Dictionary` to make its latents components.

:func:`train_sparse_autoencoder` fits one on activations (rows of ``(n, d_in)``, optionally
with targets ``(n, d_out)`` for a transcoder) with Adam on ``mse + l1 * sum |z| * ||W_dec
row||``, seeded and deterministic on the CPU, and returns it in eval mode with the fraction
of variance it explains (``explained_variance_``) and its mean number of active latents
(``l0_``) on the training rows. It is meant for small models trained in tests and tutorials,
not for training SAEs at scale.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["SparseAutoencoder", "train_sparse_autoencoder", "ACTIVATIONS"]

ACTIVATIONS = ("relu", "jumprelu", "topk")


class SparseAutoencoder(nn.Module):
    """A one-layer sparse autoencoder / transcoder in the SAELens weight layout.

    Args:
        d_in: width of what it reads.
        n_latents: number of latents.
        d_out: width of what it writes (default ``d_in``; different: a transcoder).
        activation: ``"relu"``, ``"jumprelu"`` or ``"topk"``.
        k: latents kept per vector for ``"topk"``.
        subtract_decoder_bias: subtract ``b_dec`` from the input first (SAELens's
            ``apply_b_dec_to_input``; only when ``d_out == d_in``).

    Example:
        >>> import torch
        >>> from captum_coar import SparseAutoencoder
        >>> sae = SparseAutoencoder(d_in=6, n_latents=12, activation="topk", k=3).eval()
        >>> z = sae.encode(torch.randn(5, 6))
        >>> z.shape, int((z != 0).sum(dim=1).max()) <= 3
        (torch.Size([5, 12]), True)
    """

    explained_variance_: Optional[float] = None
    l0_: Optional[float] = None

    def __init__(self, d_in: int, n_latents: int, d_out: Optional[int] = None,
                 activation: str = "relu", k: Optional[int] = None,
                 subtract_decoder_bias: bool = True) -> None:
        super().__init__()
        d_out = d_in if d_out is None else int(d_out)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not allowed; use one of {ACTIVATIONS}")
        if activation == "topk" and not (isinstance(k, int) and 1 <= k <= n_latents):
            raise ValueError(f"activation='topk' needs k in 1 .. {n_latents}, got k={k!r}")
        self.d_in, self.n_latents, self.d_out = int(d_in), int(n_latents), d_out
        self.activation, self.k = activation, k
        self.subtract_decoder_bias = bool(subtract_decoder_bias) and d_out == d_in
        self.W_enc = nn.Parameter(torch.empty(d_in, n_latents))
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(torch.empty(n_latents, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.register_buffer("threshold", torch.zeros(n_latents))
        nn.init.kaiming_uniform_(self.W_dec, a=5 ** 0.5)
        with torch.no_grad():
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
            self.W_enc.copy_(self.W_dec.T[:d_in] if d_out == d_in else
                             torch.randn(d_in, n_latents) / d_in ** 0.5)

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.activation == "topk" else ""
        return (f"d_in={self.d_in}, n_latents={self.n_latents}, d_out={self.d_out},"
                f" activation={self.activation!r}{k},"
                f" subtract_decoder_bias={self.subtract_decoder_bias}")

    def encode(self, x: Tensor) -> Tensor:
        """Latents ``(..., n_latents)`` of ``x`` ``(..., d_in)``."""
        if self.subtract_decoder_bias:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if self.activation == "jumprelu":
            threshold: Tensor = self.threshold  # type: ignore[assignment]
            return pre * (pre > threshold).to(pre.dtype)
        z = torch.relu(pre)
        if self.activation == "topk":
            top = torch.topk(z, int(self.k), dim=-1)  # type: ignore[arg-type]
            z = torch.zeros_like(z).scatter(-1, top.indices, top.values)
        return z

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction ``(..., d_out)`` of latents ``z``."""
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    @classmethod
    def from_weights(cls, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                     activation: str = "relu", threshold: Optional[Tensor] = None,
                     k: Optional[int] = None, subtract_decoder_bias: bool = True
                     ) -> "SparseAutoencoder":
        """An SAE holding copies of released weights (SAELens layout, shapes checked)."""
        d_in, n_latents = W_enc.shape
        d_out = W_dec.shape[1]
        expected = {"W_enc": (d_in, n_latents), "b_enc": (n_latents,),
                    "W_dec": (n_latents, d_out), "b_dec": (d_out,)}
        given = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
        if threshold is not None:
            expected["threshold"], given["threshold"] = (n_latents,), threshold
        wrong = {name: tuple(given[name].shape) for name in expected
                 if tuple(given[name].shape) != expected[name]}
        if wrong:
            raise ValueError(
                f"SparseAutoencoder.from_weights: shapes {wrong} do not fit W_enc"
                f" {tuple(W_enc.shape)} = (d_in, n_latents); expected {expected}. SAELens stores"
                " W_enc (d_in, d_sae) and W_dec (d_sae, d_in); transpose weights stored the"
                " other way (e.g. nn.Linear's (out, in))")
        sae = cls(d_in, n_latents, d_out, activation=activation, k=k,
                  subtract_decoder_bias=subtract_decoder_bias)
        with torch.no_grad():
            for name, value in given.items():
                target = getattr(sae, name)
                target.data = value.detach().clone().to(target.dtype if name == "threshold"
                                                        else value.dtype)
        return sae.eval()


def train_sparse_autoencoder(inputs: Tensor, n_latents: int, targets: Optional[Tensor] = None,
                             l1: float = 1e-3, steps: int = 1000, lr: float = 3e-3,
                             batch_size: int = 256, seed: int = 0) -> SparseAutoencoder:
    """Fit a ReLU SAE (or, with ``targets``, a transcoder) on rows of activations.

    Args:
        inputs: ``(n, d_in)`` activations (flatten batch and positions first).
        n_latents: number of latents.
        targets: ``(n, d_out)`` what a transcoder predicts (None: reconstruct ``inputs``).
        l1: sparsity weight (on ``|z|`` times the decoder row norms).
        steps, lr, batch_size, seed: Adam steps, learning rate, rows per step, seed.

    Returns:
        The SAE in eval mode, with ``explained_variance_`` and ``l0_`` measured on ``inputs``.

    Example:
        >>> import torch
        >>> from captum_coar import train_sparse_autoencoder
        >>> activations = torch.randn(256, 6).relu()
        >>> sae = train_sparse_autoencoder(activations, n_latents=12, steps=20)
        >>> sae.n_latents, 0 < sae.l0_ < 12
        (12, True)
    """
    if inputs.dim() != 2 or (targets is not None and (targets.dim() != 2
                                                      or targets.shape[0] != inputs.shape[0])):
        raise ValueError(f"inputs must be (n, d_in) and targets (n, d_out) with the same n; got"
                         f" {tuple(inputs.shape)} and"
                         f" {None if targets is None else tuple(targets.shape)}")
    x = inputs.detach().float()
    y = x if targets is None else targets.detach().float()
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        sae = SparseAutoencoder(x.shape[1], n_latents, y.shape[1],
                                subtract_decoder_bias=targets is None)
    with torch.no_grad():
        sae.b_dec.copy_(y.mean(dim=0))
    optimiser = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(int(steps)):
        rows = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator)
        z = sae.encode(x[rows])
        error = (sae.decode(z) - y[rows]).pow(2).sum(dim=-1).mean()
        sparsity = (z * sae.W_dec.norm(dim=1)).sum(dim=-1).mean()
        loss = error + l1 * sparsity
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    sae.eval()
    with torch.no_grad():
        z = sae.encode(x)
        residual = (sae.decode(z) - y).pow(2).sum()
        sae.explained_variance_ = float(1 - residual / (y - y.mean(dim=0)).pow(2).sum())
        sae.l0_ = float((z > 0).float().sum(dim=-1).mean())
    return sae
