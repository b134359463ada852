"""Running ``nn.MultiheadAttention``'s output projection as a module, so hooks on it fire.

Contract
--------
``nn.MultiheadAttention`` computes its output projection functionally, so hooks on its
``out_proj`` never fire. :func:`patch_multihead_attention` gives each such module whose
``out_proj`` is a grouped module of a :class:`~captum_coar.components.ComponentSet` an
instance-level forward that asks ``F.multi_head_attention_forward`` for the concatenated heads
(identity output weight, no bias) and then calls ``out_proj`` as a module, so head gates at
``out_proj``'s input, and neuron gates at its output, apply as everywhere else. A module that
is already patched (by an enclosing context) is left alone and not returned, so nested
contexts each remove only their own patches; :func:`unpatch_multihead_attention` removes them.

The patched forward returns its output with the memory layout PyTorch's own forward gives (a
transposed view for ``batch_first``), so a dropout after it draws the same mask: with all gates
at 1 and the same seed, a model in train mode is reproduced bit for bit.

PyTorch's transformer fast paths (nested tensors for padded ``nn.TransformerEncoder`` input,
the fused encoder layer and attention kernels) bypass module hooks and cannot be transposed
or gated. While any grouped module lies inside an ``nn.MultiheadAttention`` or a
``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``, the outermost patch turns them
off (``torch.backends.mha.set_fastpath_enabled(False)``) and the matching unpatch restores the
previous setting; results are those of PyTorch's standard path.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .components import ComponentSet

__all__ = ["patch_multihead_attention", "unpatch_multihead_attention"]


_FAST_PATH_TYPES = (nn.MultiheadAttention, nn.TransformerEncoderLayer,
                    nn.TransformerDecoderLayer)
_fast_path_holders: List[object] = []


class PatchedModules(List[nn.MultiheadAttention]):
    """The modules one :func:`patch_multihead_attention` call patched, and whether it turned
    PyTorch's transformer fast path off (to be restored by the matching unpatch)."""

    fast_path_previous: Optional[bool] = None


def patch_multihead_attention(components: ComponentSet) -> PatchedModules:
    """Patch every ``nn.MultiheadAttention`` whose ``out_proj`` is grouped; return those patched.

    Also turns PyTorch's transformer fast path off while grouped modules lie inside attention
    or transformer layers (restored by :func:`unpatch_multihead_attention`).
    """
    grouped = {g.module_name for g in components.groups}
    patched = PatchedModules()
    inside_fast_path = False
    for name, module in components.model.named_modules():
        if isinstance(module, _FAST_PATH_TYPES) and any(
                g == name or g.startswith(name + ".") for g in grouped):
            inside_fast_path = True
        if (isinstance(module, nn.MultiheadAttention) and f"{name}.out_proj" in grouped
                and "forward" not in module.__dict__):
            module.forward = _module_out_proj_forward(module)  # type: ignore[method-assign]
            patched.append(module)
    if inside_fast_path and not _fast_path_holders:
        patched.fast_path_previous = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        _fast_path_holders.append(patched)
    return patched


def unpatch_multihead_attention(patched: List[nn.MultiheadAttention]) -> None:
    """Remove the patches of :func:`patch_multihead_attention` (empties ``patched``)."""
    for mha in patched:
        mha.__dict__.pop("forward", None)
    patched.clear()
    if isinstance(patched, PatchedModules) and patched.fast_path_previous is not None:
        if patched in _fast_path_holders:
            _fast_path_holders.remove(patched)
        torch.backends.mha.set_fastpath_enabled(patched.fast_path_previous)
        patched.fast_path_previous = None


def _module_out_proj_forward(mha: nn.MultiheadAttention) -> Callable[..., Tuple[Tensor, Any]]:
    """A forward for ``mha`` that runs ``mha.out_proj`` as a module on the concatenated heads."""

    def forward(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None,
                average_attn_weights: bool = True, is_causal: bool = False) -> Tuple[Tensor, Any]:
        if query.dim() != 3:
            raise ValueError(
                "gating heads of nn.MultiheadAttention needs batched 3-d inputs, got a query of"
                f" shape {tuple(query.shape)}"
            )
        if mha.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        embed_dim = mha.embed_dim
        identity = torch.eye(embed_dim, dtype=query.dtype, device=query.device)
        extra: Dict[str, Any] = {}
        if not mha._qkv_same_embed_dim:
            extra = dict(use_separate_proj_weight=True, q_proj_weight=mha.q_proj_weight,
                         k_proj_weight=mha.k_proj_weight, v_proj_weight=mha.v_proj_weight)
        heads, weights = F.multi_head_attention_forward(
            query, key, value, embed_dim, mha.num_heads, mha.in_proj_weight, mha.in_proj_bias,
            mha.bias_k, mha.bias_v, mha.add_zero_attn, mha.dropout, identity, None,
            training=mha.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
            **extra,
        )
        output = mha.out_proj(heads.transpose(0, 1))  # batch first, so gates see batch on axis 0
        # PyTorch's own layout: (L, N, E) contiguous, seen transposed when batch_first
        output = output.transpose(0, 1).contiguous()
        return (output.transpose(0, 1) if mha.batch_first else output), weights

    return forward
