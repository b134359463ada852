"""Benchmark model zoo: small, hand-written, CPU-trainable models with named components.

Implementations
---------------
``ResNetSmall``
    ResNet-style CNN for (n, 1, 28, 28) inputs -> (n, num_classes) logits. Stem conv
    (stride 2 by default) + BN + ReLU, then three stages of ``blocks_per_stage`` basic
    blocks (conv-BN-ReLU-conv-BN + shortcut, ReLU). Stages 2 and 3 halve the resolution;
    their first block has a 1x1 stride-2 downsample conv + BN on the shortcut. Convs have no
    bias (BatchNorm follows each). Default widths 32/64/128 give 15 conv layers and 1,120
    conv filters (928 without the two downsample convs). Module names follow torchvision:
    ``conv1``, ``layer{1,2,3}.{b}.conv{1,2}``, ``layer{2,3}.0.downsample.0``, ``fc``.
    ``conv_layer_names(include_downsample=True)`` lists them in forward order.

``ViTSmall``
    Pre-LN vision transformer for (n, 1, 28, 28) -> (n, num_classes). Patch embedding is a
    ``patch_size`` strided conv (``patch_embed``), a learned CLS token and position
    embedding, ``depth`` blocks, final LayerNorm ``norm`` and linear ``head`` on the CLS
    token. Block i has ``blocks.{i}.attn.qkv`` (Linear dim -> 3 dim), and
    ``blocks.{i}.attn.proj`` (Linear dim -> dim) whose *input* is the concatenation of the
    heads' outputs, head h occupying input features [h * head_dim, (h + 1) * head_dim).
    So attention head h of block i = that slice of ``blocks.{i}.attn.proj``'s input. The
    MLP is ``blocks.{i}.mlp.fc1`` (Linear dim -> mlp_dim; its output rows are the MLP
    neurons), GELU, ``blocks.{i}.mlp.fc2``. The attention is written out by hand (no
    ``nn.MultiheadAttention``, no fused kernels), deterministic, no dropout.

``gpt2_small_config(...)`` / ``build_gpt2(...)``
    A small ``transformers.GPT2Config`` (default 2 layers, 4 heads, n_embd 128, vocab 64,
    n_positions 64, all dropout 0, eager attention) and a randomly initialised
    ``GPT2LMHeadModel`` built from it; nothing is downloaded. Heads are slices of
    ``transformer.h.{i}.attn.c_proj``'s input, MLP neurons are the output columns of
    ``transformer.h.{i}.mlp.c_fc`` (HF ``Conv1D``, weight shape (in, out)).

``build_llama(...)``
    A randomly initialised Llama-style ``LlamaForCausalLM`` (grouped-query attention: 4 query
    heads sharing 2 key/value heads, gated SiLU MLP, RMSNorm, rotary positions; default 2
    layers, hidden 64, intermediate 128, no dropout, eager attention). Components: query heads
    = input slices of ``model.layers.{i}.self_attn.o_proj``, MLP neurons = input features of
    ``model.layers.{i}.mlp.down_proj`` (found by ``ComponentSet.from_model``).

``build_model(name, **kwargs)`` maps "resnet" / "vit" / "gpt2" / "llama" to the above.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus (optionally downsampled) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class ResNetSmall(nn.Module):
    """Small ResNet for 1x28x28 images; see the module docstring for layout and names."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        blocks_per_stage: int = 2,
        stem_stride: int = 2,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must have 3 entries (one per stage); got {widths}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        for s, w in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(BasicBlock(c, w, stride))
                c = w
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)

    def conv_layer_names(self, include_downsample: bool = True) -> List[str]:
        """Names of all Conv2d modules in forward order."""
        return [
            n for n, m in self.named_modules()
            if isinstance(m, nn.Conv2d) and (include_downsample or "downsample" not in n)
        ]


# ----------------------------------------------------------------------------- ViT


class Attention(nn.Module):
    """Multi-head self-attention; ``proj`` receives the heads concatenated on its input."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (b, heads, t, head_dim)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        att = att.softmax(dim=-1)
        heads = (att @ v).transpose(1, 2).reshape(b, t, d)  # head h = [..., h*hd:(h+1)*hd]
        return self.proj(heads)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTSmall(nn.Module):
    """Small ViT for 1x28x28 images; see the module docstring for layout and names."""

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 28,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_dim: int = 128,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (b, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])

    def proj_names(self) -> List[str]:
        """``blocks.{i}.attn.proj`` for every block (heads live on their inputs)."""
        return [f"blocks.{i}.attn.proj" for i in range(len(self.blocks))]

    def fc1_names(self) -> List[str]:
        """``blocks.{i}.mlp.fc1`` for every block (MLP neurons = their output rows)."""
        return [f"blocks.{i}.mlp.fc1" for i in range(len(self.blocks))]


# ----------------------------------------------------------------------------- GPT-2


def gpt2_small_config(
    vocab_size: int = 64,
    n_positions: int = 64,
    n_embd: int = 128,
    n_layer: int = 2,
    n_head: int = 4,
    **overrides,
):
    """A small ``GPT2Config`` with all dropout off and eager (hand-written) attention."""
    from transformers import GPT2Config

    kw = dict(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, n_inner=4 * n_embd, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0, use_cache=False,
    )
    kw.update(overrides)
    cfg = GPT2Config(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def build_gpt2(config=None, seed: int = 0, **config_kwargs):
    """Randomly initialised ``GPT2LMHeadModel`` (``config`` or ``gpt2_small_config(**kw)``)."""
    from transformers import GPT2LMHeadModel

    if config is None:
        config = gpt2_small_config(**config_kwargs)
    elif config_kwargs:
        raise ValueError("pass either config or config keyword arguments, not both")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model


def build_llama(seed: int = 0, vocab_size: int = 33, hidden_size: int = 64, n_layer: int = 2,
                n_head: int = 4, n_kv_head: int = 2, intermediate_size: int = 128,
                max_positions: int = 64):
    """Randomly initialised small ``LlamaForCausalLM`` with grouped-query attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                         num_hidden_layers=n_layer, num_attention_heads=n_head,
                         num_key_value_heads=n_kv_head, intermediate_size=intermediate_size,
                         max_position_embeddings=max_positions, attention_dropout=0.0,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=None,
                         eos_token_id=None, use_cache=False)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def build_model(name: str, **kwargs) -> nn.Module:
    """"resnet" -> ResNetSmall, "vit" -> ViTSmall, "gpt2" -> build_gpt2, "llama" ->
    build_llama (kwargs passed on)."""
    if name == "resnet":
        return ResNetSmall(**kwargs)
    if name == "vit":
        return ViTSmall(**kwargs)
    if name == "gpt2":
        return build_gpt2(**kwargs)
    if name == "llama":
        return build_llama(**kwargs)
    raise ValueError(f"unknown model name {name!r}; allowed: 'resnet', 'vit', 'gpt2', 'llama'")
