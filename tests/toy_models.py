"""Tiny models with known structure, shared by the tests.

The model that is exactly additive in its components is
:class:`captum_coar.testing.AdditiveNet` (one toy model, shared with users' own checks).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ConvNet(nn.Module):
    """Two conv layers (with and without bias), BatchNorm, and a linear head."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width * 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width * 2)
        self.fc1 = nn.Linear(width * 2, 16)
        self.fc2 = nn.Linear(16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = x.mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics and affine parameters (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


class HandAttention(nn.Module):
    """Hand-written multi-head self-attention; heads are slices of ``proj``'s input."""

    def __init__(self, dim: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class AttentionClassifier(nn.Module):
    """Embedding, one attention block (hand-written or nn.MultiheadAttention), MLP, head."""

    def __init__(self, dim: int = 16, num_heads: int = 4, n_classes: int = 5,
                 torch_mha: bool = False, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.torch_mha = torch_mha
        self.batch_first = batch_first
        if torch_mha:
            self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=batch_first)
        else:
            self.attn = HandAttention(dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if self.torch_mha:
            seq = h if self.batch_first else h.transpose(0, 1)
            a, _ = self.attn(seq, seq, seq, need_weights=False)
            a = a if self.batch_first else a.transpose(0, 1)
        else:
            a = self.attn(h)
        h = h + a
        h = h + self.mlp(h)
        return self.head(h.mean(dim=1))


def tiny_gpt2(n_layer: int = 2, n_head: int = 4, n_embd: int = 32, vocab: int = 50, seed: int = 0):
    """A randomly initialised Hugging Face GPT-2 built from a config (no download)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"parameter {k} changed"


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def assert_close(actual, expected, rtol=1e-4, atol_scale=1e-5):
    """``assert_close`` with an absolute tolerance relative to the largest expected value."""
    scale = expected.abs().max().item() + 1e-12
    torch.testing.assert_close(actual, expected.to(actual), rtol=rtol, atol=atol_scale * scale)
